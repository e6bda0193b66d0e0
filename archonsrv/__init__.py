"""archonsrv package of beamline-servers."""

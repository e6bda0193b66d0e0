"""specsrv package of beamline-servers."""

"""mrt package of beamline-servers."""

"""marserver package of beamline-servers."""

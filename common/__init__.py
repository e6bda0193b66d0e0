"""Shared runtime of beamline-servers: command line, daemon, lock, log, signals, servers."""

__version__ = "0.1.0"

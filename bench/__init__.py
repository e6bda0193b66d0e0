"""Benchmarks of beamline-servers (``make bench``); figures are ratios against baselines."""

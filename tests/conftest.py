"""Shared fixtures: loopback ports and real processes, always cleaned up."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.support import procs

# CI draws the same examples every run (a failure there comes back on the next
# run and on a developer's machine); elsewhere hypothesis explores as usual.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def port() -> int:
    return procs.free_port()


@pytest.fixture
def spawn():
    """Start ``python -m MODULE ARGS`` processes; all are stopped at teardown."""
    started = []

    def _spawn(module: str, *args: str, **kw):
        p = procs.start(module, *args, **kw)
        started.append(p)
        return p

    yield _spawn
    for p in started:
        procs.stop(p)

"""Shared fixtures: loopback ports and real processes, always cleaned up."""

from __future__ import annotations

import pytest

from tests.support import procs


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

"""Start ``eiger-zmq-sim`` and ``mr_t`` on loopback and fetch series (tests, demo, bench)."""

from __future__ import annotations

import socket
import time

import pytest

from mrt.client import MrTClient, SeriesData
from tests.support import procs


@pytest.fixture
def started():
    """Processes a test started; all stopped at teardown (import it into a test module)."""
    ps: list = []
    yield ps
    for p in ps:
        procs.stop(p)


def ports() -> tuple[int, int]:
    """A free TCP port (ZeroMQ) and a free UDP port on loopback."""
    return procs.free_port(), procs.free_port(socket.SOCK_DGRAM)


def read_log(path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def endpoint(port: int) -> str:
    return f"tcp://{procs.LOOPBACK}:{port}"


def start_sim(zmq_port: int, *args, **kw):
    """``python -m mrt.sim --bind tcp://127.0.0.1:PORT ARGS``."""
    return procs.start("mrt.sim", "--bind", endpoint(zmq_port), *map(str, args), **kw)


def start_mrt(udp_port: int, zmq_port: int | None, *args, **kw):
    """``python -m mrt.cli`` on 127.0.0.1:UDP_PORT reading tcp://127.0.0.1:ZMQ_PORT."""
    src = ["--eiger-zmq-host-and-port", endpoint(zmq_port)] if zmq_port else []
    return procs.start(
        "mrt.cli",
        *src,
        "--udp-host",
        procs.LOOPBACK,
        "--udp-port",
        str(udp_port),
        *map(str, args),
        **kw,
    )


def fetch_series(
    udp_port: int,
    *,
    series_id: int | None = None,
    wait: float = 30.0,
    **client_kw,
) -> SeriesData:
    """Wait for a series (``series_id`` or any) on 127.0.0.1:UDP_PORT and fetch it."""
    with MrTClient(procs.LOOPBACK, udp_port, **client_kw) as c:
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no series {series_id or ''} on UDP port {udp_port}")
            pong = c.wait_series(min(left, 1.0), ping_interval=0.02, new_only=False)
            if pong is not None and (series_id is None or pong.series_id == series_id):
                return c.fetch(pong)

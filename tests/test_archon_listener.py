"""camerad-listener: camerad's async messages on a shell user's terminal."""

from __future__ import annotations

import socket
import subprocess

import pytest

from archonsrv import protocol as P
from tests.support import procs
from tests.support.archon_rig import Rig

pytestmark = pytest.mark.timeout(60)


def test_decode_async():
    assert P.decode_async(b"FILE:/x.fits COMPLETE") == P.AsyncMessage("FILE", "/x.fits COMPLETE")
    assert P.decode_async(b"no tag here") == P.AsyncMessage("", "no tag here")
    assert isinstance(P.decode_async(b"bad\x00byte"), P.BadInput)
    assert isinstance(P.decode_async(b"x" * (P.MAX_DATAGRAM + 1)), P.BadInput)


def _start(*args: str) -> subprocess.Popen:
    return procs.start("archonsrv.listener", *args, stdout=subprocess.PIPE)


def test_listener_prints_filtered_messages(tmp_path):
    with Rig(tmp_path) as rig:
        # group and port as the original listener takes them, with a filter
        p = _start(
            rig.group, str(rig.asyncport), "TEST:hello", "--interface", "127.0.0.1", "-n", "2"
        )
        q = _start("--config", str(rig.cfgfile), "-n", "1", "--timeout", "20")
        try:
            for _ in range(100):  # until both have joined and printed enough
                rig.nb("test async hello there")
                if p.poll() is not None and q.poll() is not None:
                    break
                try:
                    p.wait(0.1)
                except subprocess.TimeoutExpired:
                    pass
            out_p, _ = p.communicate(timeout=10)
            out_q, _ = q.communicate(timeout=10)
        finally:
            for proc in (p, q):
                procs.stop(proc)
        assert p.returncode == 0 and q.returncode == 0
        assert out_p.decode().splitlines() == ["TEST:hello there", "TEST:hello there"]
        assert out_q.decode().startswith("TEST:hello there\n")


def test_listener_timeout_and_usage(tmp_path):
    port = procs.free_port(socket.SOCK_DGRAM)
    p = _start("239.255.1.2", str(port), "--timeout", "0.3")
    out, _ = p.communicate(timeout=10)
    assert p.returncode == 1 and out == b""
    res = procs.run("archonsrv.listener")
    assert res.returncode == 2

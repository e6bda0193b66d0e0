"""mrt command lines: usage errors, endpoint forms, daemon/lock/kill, the client command."""

from __future__ import annotations

import argparse
import socket
import subprocess
import time

import h5py
import hdf5plugin  # noqa: F401 - registers filter 32008 for reading
import numpy as np
import pytest

from common.lock import pid_alive, read_pid
from mrt.cli import byte_size, zmq_endpoint
from mrt.client import MrTClient
from mrt.protocol import ExtendedPong, JsonPong, Pong
from mrt.sim import FrameSource
from tests.support import mrt_rig as harness
from tests.support import procs

pytestmark = pytest.mark.timeout(90)


def test_endpoint_forms():
    assert zmq_endpoint("tcp://10.0.0.5:9999") == "tcp://10.0.0.5:9999"
    assert zmq_endpoint("eiger.example.org") == "tcp://eiger.example.org:9999"
    assert zmq_endpoint("10.0.0.5:31001") == "tcp://10.0.0.5:31001"
    assert zmq_endpoint("[::1]:5000") == "tcp://[::1]:5000"
    for bad in ("", "host:0", "host:99999", "a b", "udp//x"):
        with pytest.raises(argparse.ArgumentTypeError):
            zmq_endpoint(bad)


def test_byte_sizes():
    assert byte_size("1024") == 1024
    assert byte_size("512M") == 512 << 20
    assert byte_size("2G") == 2 << 30
    assert byte_size("64KiB") == 64 << 10
    for bad in ("0", "-1", "1X", "lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            byte_size(bad)


@pytest.mark.parametrize(
    "args",
    [
        ["--udp-host", "127.0.0.1", "--udp-port", "9000"],  # no input
        ["--eiger-zmq-host-and-port", "h", "--input-h5-file", "f", "--udp-host", "h",
         "--udp-port", "9000"],  # both inputs
        ["--eiger-zmq-host-and-port", "h", "--udp-port", "9000"],  # no UDP host
        ["--eiger-zmq-host-and-port", "h", "--udp-host", "h", "--udp-port", "0"],
        ["--eiger-zmq-host-and-port", "h", "--udp-host", "h", "--udp-port", "1",
         "--frame-cache-limit", "0"],
        ["--eiger-zmq-host-and-port", "h", "--udp-host", "h", "--udp-port", "1",
         "--udp-payload-size", "70000"],
        ["--eiger-zmq-host", "h", "--udp-host", "h", "--udp-port", "1"],  # no abbreviations
        ["--eiger-zmq-host-and-port", "h", "--udp-host", "h", "--udp-port", "1",
         "--extended-pong", "--pong-format", "json"],  # contradicting pong options
        ["--eiger-zmq-host-and-port", "h", "--udp-host", "h", "--udp-port", "1",
         "--pong-format", "xml"],
        ["--eiger-zmq-host-and-port", "h", "--udp-host", "h", "--udp-port", "1",
         "--udp-allow", "10.0.0.300/8"],
        ["--eiger-zmq-host-and-port", "h", "--udp-host", "h", "--udp-port", "1",
         "--status-port", "70000"],
        ["--eiger-zmq-host-and-port", "h", "--udp-host", "h", "--udp-port", "1",
         "--config", "/nonexistent/mr_t.conf"],
    ],
)  # fmt: skip
def test_usage_errors_exit_2(args):
    res = procs.run("mrt.cli", *args)
    assert res.returncode == 2, res.stderr
    assert b"mr_t: error:" in res.stderr


def test_unusable_inputs_exit_1(tmp_path):
    up = str(procs.free_port(socket.SOCK_DGRAM))
    res = procs.run("mrt.cli", "--input-h5-file", tmp_path / "missing.h5",
                    "--udp-host", "127.0.0.1", "--udp-port", up)  # fmt: skip
    assert res.returncode == 1 and b"missing.h5" in res.stderr
    res = procs.run("mrt.cli", "--eiger-zmq-host-and-port", "127.0.0.1", "--udp-host",
                    "127.0.0.1", "--udp-port", up, "--hdf5-output", tmp_path / "nodir")  # fmt: skip
    assert res.returncode == 1 and b"not a directory" in res.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        res = procs.run("mrt.cli", "--eiger-zmq-host-and-port", "127.0.0.1", "--udp-host",
                        "127.0.0.1", "--udp-port", str(s.getsockname()[1]))  # fmt: skip
        assert res.returncode == 1
        assert f"cannot listen: 127.0.0.1:{s.getsockname()[1]}:".encode() in res.stderr


def test_daemon_lock_and_kill(tmp_path):
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    lock, log = tmp_path / "mr_t.pid", tmp_path / "mr_t.log"
    common = ["--eiger-zmq-host-and-port", harness.endpoint(zp), "--udp-host", "127.0.0.1",
              "--udp-port", str(up), "-L", str(lock), "-l", str(log)]  # fmt: skip
    res = procs.run("mrt.cli", *common, "-d")
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 10
    while read_pid(lock) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = read_pid(lock)
    try:
        assert pid and pid_alive(pid)
        second = procs.run("mrt.cli", *common)
        assert second.returncode == 1
        with procs.running("mrt.sim", "--bind", harness.endpoint(zp), "--frames", 2):
            assert len(harness.fetch_series(up).frames) == 2
    finally:
        res = procs.run("mrt.cli", "-k", "-L", str(lock))
    assert res.returncode == 0, res.stderr
    assert not lock.exists() and not pid_alive(pid)
    assert "mr_t stopped" in log.read_text()


def test_daemon_with_relative_paths(tmp_path):
    """A daemon works in / after the fork: relative paths given on the command
    line must still mean the directory mr_t was started in."""
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    (tmp_path / "out").mkdir()
    cmd = procs.command("mrt.cli", "--eiger-zmq-host-and-port", harness.endpoint(zp),
                        "--udp-host", "127.0.0.1", "--udp-port", up, "--hdf5-output", "out",
                        "-L", "mr_t.pid", "-l", tmp_path / "mr_t.log", "-d")  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=procs.env(), capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    lock = tmp_path / "mr_t.pid"
    assert procs.wait_until(lambda: read_pid(lock) is not None, 10)
    try:
        with procs.running("mrt.sim", "--bind", harness.endpoint(zp), "--frames", 2,
                           "--width", 16, "--height", 8):  # fmt: skip
            assert len(harness.fetch_series(up).frames) == 2
            master = tmp_path / "out" / "series_1_master.h5"
            assert procs.wait_until(
                lambda: "series_1_master.h5 complete" in read_text(tmp_path), 15
            )
        with h5py.File(master, "r") as f:
            assert (
                f["entry/data/data"][()] == [FrameSource(16, 8).pixels(k) for k in range(2)]
            ).all()
    finally:
        res = procs.run("mrt.cli", "-k", "-L", str(lock))
    assert res.returncode == 0, res.stderr


def read_text(tmp_path) -> str:
    try:
        return (tmp_path / "mr_t.log").read_text()
    except FileNotFoundError:
        return ""


def test_client_command_saves_frames(tmp_path):
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    with (
        procs.running("mrt.cli", "--eiger-zmq-host-and-port", f"127.0.0.1:{zp}",
                      "--udp-host", "127.0.0.1", "--udp-port", str(up)),
        procs.running("mrt.sim", "--bind", harness.endpoint(zp), "--width", 30, "--height", 20,
                      "--bits", 32, "--frames", 3, "--series", 2, "--pause", 0.5),
    ):  # fmt: skip
        res = procs.run("mrt.client", f"127.0.0.1:{up}", "--bits", "32", "--width", "30",
                        "--height", "20", "-o", tmp_path / "s%d.npy", "--wait", "20")  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(b"series 1: 3/3 frames, ")
        with MrTClient("127.0.0.1", up) as c:  # a new client would join the ended series 1
            deadline = time.monotonic() + 20
            while getattr(c.ping(), "series_id", 0) != 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        res = procs.run("mrt.client", f"127.0.0.1:{up}", "--raw", "-o", tmp_path / "raw.bin",
                        "--wait", "20")  # fmt: skip
        assert res.returncode == 0, res.stderr
        # the frames of series 2 were released after that fetch: a second
        # fetch gets fewer frames than announced, and says so in its status
        res = procs.run("mrt.client", f"127.0.0.1:{up}", "--raw", "-o", tmp_path / "again.bin",
                        "--wait", "20")  # fmt: skip
        assert res.stdout.startswith(b"series 2: "), res.stdout
        assert not res.stdout.startswith(b"series 2: 3/3"), res.stdout
        assert res.returncode == 1, res.stderr
    src = FrameSource(30, 20, 32)
    arr = np.load(tmp_path / "s1.npy")
    assert arr.dtype == np.uint32 and (arr == [src.pixels(k) for k in range(3)]).all()
    raw = (tmp_path / "raw.bin").read_bytes()
    assert raw == b"".join(src.blob(k) for k in range(3))


def test_client_usage_and_no_series():
    up = procs.free_port(socket.SOCK_DGRAM)
    res = procs.run("mrt.client", f"127.0.0.1:{up}", "-o", "x.npy", "--pong-format", "plain")
    assert res.returncode == 2 and b"extended or JSON pongs" in res.stderr
    res = procs.run("mrt.client", f"127.0.0.1:{up}", "--extended-pong", "--pong-format", "json")
    assert res.returncode == 2 and b"contradicts" in res.stderr
    res = procs.run("mrt.client", "nohostport")
    assert res.returncode == 2
    res = procs.run("mrt.client", f"127.0.0.1:{up}", "--wait", "0.5", "--timeout", "50")
    assert res.returncode == 3 and b"no series" in res.stderr


@pytest.mark.parametrize(
    "pong,flags,hint",
    [
        (ExtendedPong(1, 5, 16, 4, 4, "s"), ["--pong-format", "plain"], b"send plain pongs"),
        (Pong(1, 5), ["--extended-pong"], b"does the server send extended pongs"),
        (JsonPong(1, 5, "s", 4, 4, 16), ["--pong-format", "plain"], b"send plain pongs"),
        (b"\x01" + b"\x00" * 12, [], b"no pong generation fits"),
    ],
)
def test_client_says_when_pongs_are_of_the_other_kind(pong, flags, hint):
    # a real UDP peer that answers every ping with the pong of the other kind
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.settimeout(0.05)
        p = procs.start("mrt.client", f"127.0.0.1:{srv.getsockname()[1]}", "--wait", "1.5",
                        "--timeout", "50", *flags, stderr=subprocess.PIPE)  # fmt: skip
        try:
            end = time.monotonic() + 30
            while p.poll() is None and time.monotonic() < end:
                try:
                    data, addr = srv.recvfrom(64)
                except TimeoutError:
                    continue
                if data[:1] == b"\x00":
                    srv.sendto(pong if isinstance(pong, bytes) else pong.encode(), addr)
            _, err = p.communicate(timeout=30)
        finally:
            procs.stop(p)
    assert p.returncode == 3
    assert err.count(hint) == 1, err  # said once, not for every pong


def test_sim_cannot_bind(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = procs.run("mrt.sim", "--bind", harness.endpoint(s.getsockname()[1]))
    assert res.returncode == 1 and b"cannot bind" in res.stderr

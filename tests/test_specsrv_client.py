"""specsrv end to end with specsrv.client, spec-remote and the daemon runtime."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from specsrv import client as C
from specsrv.client import RemoteError, SpecConnection
from tests.support import procs

pytestmark = pytest.mark.timeout(120)

CONFIG = """\
motor m1 name="Motor One" steps=1000 low=-50 high=50 base=2000 slew=40000 accel=20
motor m2 steps=1000 low=-50 high=50 base=2000 slew=40000 accel=20
counter sec type=timer
counter mon type=monitor rate=1000
counter det type=detector rate=500
"""


wait_for = procs.wait_until


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "motors.conf"
    p.write_text(CONFIG)
    return p


@pytest.fixture(scope="module")
def server(cfg, tmp_path_factory):
    port = procs.free_port()
    with procs.running(
        "specsrv.cli",
        "--data-dir",  # files that commands name stay inside (tests' tmp_path)
        str(tmp_path_factory.getbasetemp()),
        "-S",
        str(port),
        "-H",
        "127.0.0.1",
        "-N",
        "fourc",
        "-c",
        str(cfg),
        "-s",
        wait_for=port,
    ):
        yield port


@pytest.fixture
def conn(server):
    c = SpecConnection(f"127.0.0.1:{server}", timeout=5)
    c.connect()
    yield c
    c.close()


def test_eval_get_put_and_types(conn):
    assert conn.server_name == "fourc"
    assert conn.remote_eval("2+2") == 4
    assert conn.remote_eval('"abc" "def"') == "abcdef"
    assert conn.prop_get("status/simulate") == 1
    assert conn.prop_get("status/ready") == 1
    conn.prop_put("var/test_var", 123)
    assert conn.prop_get("var/test_var") == 123
    with pytest.raises(RemoteError):
        conn.prop_put("var/x[1]", 0, check=True)  # element of a missing array: refused
    conn.remote_eval("x[1] = 1; x[1][2] = 5")
    conn.prop_put("var/x[1][2]", 7)
    assert conn.prop_get("var/x[1][2]") == 7
    assert conn.prop_get("var/x") == {"1": 1, "1\x1c2": 7}
    conn.remote_eval("y[1][2] = 5; y[1][3] = 6")
    assert conn.prop_get("var/y") == {"1": {"2": 5, "3": 6}}
    arr = np.linspace(0, 1, 11)
    conn.prop_put("var/vec", arr)
    np.testing.assert_array_equal(conn.prop_get("var/vec"), arr)
    assert conn.remote_eval("vec[10] + vec[0]") == 1
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    conn.prop_put("var/img", img)
    back = conn.prop_get("var/img")
    assert back.dtype == np.uint16 and back.shape == (3, 4)
    np.testing.assert_array_equal(back, img)
    conn.prop_put("var/dict", {"a": 1, "b": "two"})
    assert conn.prop_get("var/dict") == {"a": 1, "b": "two"}
    with pytest.raises(RemoteError):
        conn.prop_get("var/not_there")


def test_large_arrays_both_ways_and_buffers_not_reused_under_the_caller(conn):
    first = np.arange(300_000, dtype=np.float64)
    conn.prop_put("var/BIG", first)
    a = conn.prop_get("var/BIG")
    conn.remote_eval("BIG[0] = -1")  # copy on write: the shared array is not touched
    b = conn.prop_get("var/BIG")
    np.testing.assert_array_equal(a, first)  # a still holds the first reply's data
    assert b[0] == -1 and b[1] == 1 and b.shape == (300_000,)
    del a
    c = conn.prop_get("var/BIG")
    np.testing.assert_array_equal(c, b)
    big = (np.arange(3 * 200_000, dtype=np.int32) - 7).reshape(3, 200_000)
    conn.prop_put("var/BIGI", big)
    np.testing.assert_array_equal(conn.prop_get("var/BIGI"), big)
    assert conn.remote_eval("BIGI[2][199999]") == 599_992


def test_errors_carry_err_codes(conn):
    with pytest.raises(RemoteError) as e:
        conn.remote_eval("p (")
    assert e.value.err == 2
    with pytest.raises(RemoteError) as e:
        conn.remote_eval("mv m1 500")
    assert e.value.err == 1 and "limit" in str(e.value)
    with pytest.raises(RemoteError):
        conn.prop_put("motor/m1/step_size", 5, check=True)


def test_watch_moves_and_motor_commands(conn):
    events = []
    done = threading.Event()

    def cb(value, prop, flags):
        events.append((prop, value))
        if prop.endswith("move_done") and value == 0 and any(v == 1 for _, v in events):
            done.set()

    conn.prop_watch("motor/m1/position", cb)
    conn.prop_watch("motor/m1/move_done", cb)
    assert wait_for(lambda: conn.watched_value("motor/m1/move_done") == 0)
    conn.prop_put("motor/m1/start_one", 2.5)
    assert done.wait(10)
    assert conn.prop_get("motor/m1/position") == 2.5
    assert conn.watched_value("motor/m1/position") == 2.5
    # umv waits; set changes the user position through the offset
    out = conn.remote_eval("umv m1 1")
    assert "1.0000" in out
    conn.prop_put("motor/m1/position", 10)
    assert wait_for(lambda: conn.prop_get("motor/m1/position") == 10)
    assert conn.prop_get("motor/m1/offset") == 9
    conn.prop_put("motor/m1/offset", 0)
    assert wait_for(lambda: conn.prop_get("motor/m1/position") == 1)
    conn.prop_put("motor/m1/limits", "-5 5")
    assert wait_for(lambda: conn.prop_get("motor/m1/high_limit") == 5)
    conn.prop_put("motor/m1/high_limit", 7)
    assert wait_for(lambda: conn.prop_get("motor/m1/high_limit") == 7)
    assert conn.prop_get("motor/m1/low_limit") == -5
    conn.prop_put("motor/m1/slew_rate", 30000)
    assert wait_for(lambda: conn.prop_get("motor/m1/slew_rate") == 30000)
    conn.prop_put("motor/m1/search", "home 0.25")
    assert wait_for(lambda: conn.prop_get("motor/m1/dial_position") == 0.25)
    conn.prop_put("motor/m1/dial_position", 1)
    assert wait_for(lambda: conn.prop_get("motor/m1/dial_position") == 1)
    assert "Motor One" in conn.remote_eval("wa")
    conn.remote_eval('motor_par(m2, "disable", 1)')
    assert conn.prop_get("motor/m2/unusable") == 1
    with pytest.raises(RemoteError):
        conn.remote_eval("mv m2 1")
    conn.remote_eval('motor_par(m2, "disable", 0)')


def test_sync_check_is_answered_by_a_client(conn):
    seen = []
    conn.prop_watch("motor/m2/sync_check", lambda v, p, f: seen.append(v))
    conn.remote_eval("sim_slip(m2, 500)")
    ident = conn.remote_async("getangles; A[m2]")
    assert wait_for(lambda: seen, 5)
    spec_pos, ctrl_pos = (float(x) for x in str(seen[0]).split())
    assert ctrl_pos - spec_pos == pytest.approx(0.5)
    conn.prop_put("motor/m2/sync_check", 1)
    assert wait_for(lambda: conn.remote_poll(ident, "status") == 1)
    assert conn.remote_poll(ident) == pytest.approx(ctrl_pos)


def test_counting(conn):
    vals = []
    conn.prop_watch("scaler/.all./count", lambda v, p, f: vals.append(v))
    assert wait_for(lambda: vals == [0])
    out = conn.remote_eval("ct 0.3")
    assert "Detector" in out or "det" in out
    assert conn.prop_get("scaler/det/value") == 150
    assert vals[-2:] == [1, 0]
    assert conn.remote_eval("S[det]") == 150


def test_var_events_and_deletion(conn):
    seen = []
    conn.remote_eval("TEMP = 20")
    conn.prop_watch("var/TEMP", lambda v, p, f: seen.append((v, f)))
    assert wait_for(lambda: seen == [(20, 0)])
    conn.remote_eval("TEMP = 21.5")
    assert wait_for(lambda: seen[-1] == (21.5, 0))
    late = []
    conn.prop_watch("var/TEMP", lambda v, p, f: late.append(v))
    assert late == [21.5]  # a second watcher starts from the cached value
    conn.remote_eval("unglobal TEMP")
    assert wait_for(lambda: seen[-1][1] == 0x1000)
    # recreated: events resume
    conn.remote_eval("TEMP = 3")
    assert wait_for(lambda: seen[-1] == (3, 0))


def test_async_poll_and_abort(conn):
    ident = conn.remote_async("sleep(0.2); 6*7")
    assert conn.remote_poll(ident, "status") == 0
    assert wait_for(lambda: conn.remote_poll(ident, "status") == 1)
    assert conn.remote_poll(ident) == 42
    assert conn.remote_poll(ident, "status") == -1
    conn.timeout = 0.5
    with pytest.raises(TimeoutError):
        conn.remote_eval("while (1) { }")  # the timeout sends SV_ABORT
    conn.timeout = 5
    t0 = time.monotonic()
    assert conn.remote_eval("1+1") == 2
    assert time.monotonic() - t0 < 5
    conn.remote_cmd("sleep(30)")
    time.sleep(0.2)
    assert conn.prop_get("status/ready") == 0
    conn.remote_par("abort")
    assert wait_for(lambda: conn.prop_get("status/ready") == 1)


def test_func_shapes(conn):
    conn.remote_eval('def mymac(a, b, c) \'{ return a "-" b "-" c }\'')
    assert conn.remote_func("mymac", "tth", 3, 1.5) == "tth-3-1.5"
    assert conn.remote_func("sqrt", 2.25) == 1.5


def test_output_events_and_files(conn, tmp_path):
    out = []
    conn.prop_watch("output/tty", lambda v, p, f: out.append(v))
    f = tmp_path / "log.txt"
    conn.prop_watch(f"output/{f}", lambda v, p, fl: out.append(("file", v)))
    conn.remote_eval(f'p "to the screen"; fprintf("{f}", "to a file %d\\n", 5)')
    assert wait_for(lambda: "to the screen\n" in out and ("file", "to a file 5\n") in out)
    assert f.read_text() == "to a file 5\n"


def test_module_functions_by_name_with_port_scan(cfg):
    base = procs.free_port_block(3)
    args = ("specsrv.cli", "-S", f"{base}-{base + 2}", "-H", "127.0.0.1", "-c", str(cfg))
    with (
        procs.running(*args, "-N", "alpha", wait_for=base),
        procs.running(*args, "-N", "beta", wait_for=base + 1),
    ):
        host = "127.0.0.1:beta"
        C.connection(host, ports=range(base, base + 3))
        assert C.remote_stat(host, "?") == "not connected"
        assert C.remote_eval(host, "SPEC") == "beta"
        assert C.remote_stat(host) == 1 and C.remote_stat(host, "?") == "up"
        C.prop_put(host, "var/shared", "hello")
        assert C.prop_get(host, "var/shared") == "hello"
        ident = C.remote_async(host, "IS_SERVER")
        assert wait_for(lambda: C.remote_poll(ident, "status") == 1)
        assert C.remote_poll(ident) == base + 1
        assert C.remote_par(host, "timeout", 2) == 2
        C.remote_par(host, "close")
        assert C.remote_stat(host) == 0
        missing = SpecConnection("127.0.0.1:gamma", ports=range(base, base + 3), reconnect=False)
        with pytest.raises(ConnectionError):
            missing.connect()
        assert missing.remote_stat("?") == "no connection"


def test_reconnect_reregisters(cfg):
    port = procs.free_port()
    args = ("specsrv.cli", "-S", str(port), "-H", "127.0.0.1", "-c", str(cfg))
    proc = procs.start(*args)
    procs.wait_port(port, proc=proc)
    c = SpecConnection(f"127.0.0.1:{port}", timeout=3)
    try:
        c.connect()
        c.remote_eval("WATCHED = 1")
        seen = []
        c.prop_watch("var/WATCHED", lambda v, p, f: seen.append(v))
        assert wait_for(lambda: seen == [1])
        procs.stop(proc)
        assert wait_for(lambda: c.remote_stat("?") in ("lost", "trying"))
        proc = procs.start(*args)
        procs.wait_port(port, proc=proc)
        assert wait_for(lambda: c.remote_stat() == 1, 10)
        other = SpecConnection(f"127.0.0.1:{port}")
        other.connect()
        other.remote_eval("WATCHED = 99")
        other.close()
        assert wait_for(lambda: 99 in seen)
    finally:
        c.close()
        procs.stop(proc)


def test_spec_remote_command(server):
    host = f"127.0.0.1:{server}"
    r = procs.run("specsrv.client", host, "eval", "2+2")
    assert r.returncode == 0 and r.stdout == b"4\n"
    r = procs.run("specsrv.client", host, "put", "var/CLI", "5")
    assert r.returncode == 0
    r = procs.run("specsrv.client", host, "get", "var/CLI")
    assert r.stdout == b"5\n"
    r = procs.run("specsrv.client", host, "put", "-a", "var/CLIA", "x=1", "y=2")
    assert r.returncode == 0
    assert procs.run("specsrv.client", host, "get", "var/CLIA").stdout == b"x=1\ny=2\n"
    r = procs.run("specsrv.client", host, "eval", "p (")
    assert r.returncode == 4 and b"syntax error" in r.stderr
    r = procs.run("specsrv.client", host, "put", "motor/m1/sign", "-1")
    assert r.returncode == 4
    r = procs.run("specsrv.client", host, "watch", "-n", "1", "motor/m2/sign")
    assert r.returncode == 0 and r.stdout == b"motor/m2/sign 1\n"
    r = procs.run("specsrv.client", "-D", "0x1000", host, "eval", "3+3")
    assert r.stdout == b"6\n" and b"cW" in r.stderr and b"CMD_WITH_RETURN" in r.stderr
    r = procs.run("specsrv.client", "127.0.0.1:nosuch", "eval", "1", "--ports", "1-1")
    assert r.returncode == 1
    r = procs.run("specsrv.client", host, "stat")
    assert r.stdout == b"up\n"


def test_daemon_lock_reload_and_kill(tmp_path, cfg):
    port = procs.free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(CONFIG)
    lock = tmp_path / "specsrv.pid"
    logf = tmp_path / "specsrv.log"
    base = ("-S", str(port), "-H", "127.0.0.1", "-c", str(conf), "-L", str(lock), "-l", str(logf))
    r = procs.run("specsrv.cli", *base, "-d")
    assert r.returncode == 0, r.stderr
    try:
        procs.wait_port(port)
        assert wait_for(lock.exists)
        pid = int(lock.read_text().split()[0])
        c = SpecConnection(f"127.0.0.1:{port}")
        c.connect()
        assert c.prop_get("motor/m1/slew_rate") == 40000
        conf.write_text(CONFIG.replace("slew=40000", "slew=30000"))
        os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: c.prop_get("motor/m1/slew_rate") == 30000)
        conf.write_text("motor broken steps=0\n")
        os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: "steps must be non-zero" in logf.read_text())
        assert c.prop_get("motor/m1/slew_rate") == 30000
        c.close()
        # a second instance on the same lock refuses to start
        conf.write_text(CONFIG)
        r = procs.run("specsrv.cli", *base)
        assert r.returncode == 1 and b"running" in r.stderr
    finally:
        r = procs.run("specsrv.cli", "-k", "-L", str(lock))
    assert r.returncode == 0
    assert wait_for(lambda: not lock.exists())


def test_bad_config_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("motor tth steps=abc\n")
    r = procs.run("specsrv.cli", "-S", "65000", "-c", str(bad))
    assert r.returncode == 2 and b"bad value for steps" in r.stderr
    r = procs.run("specsrv.cli", "-S", "9-3")
    assert r.returncode == 2

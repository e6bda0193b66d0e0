"""specsrv behaves like spec to clients: discovery, console, errors, limits,
the command line and the state file (issue 14 items 1-4, 6, 7, 9; issue 12.3).

Each test starts the real server and speaks the wire protocol with the
independent client of test_specsrv_wire (``struct`` from the seed's header
layout); the last tests use certif-pyspec, CSS's own Python client, when it
is installed.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import procs
from tests.test_specsrv_wire import (
    ABORT,
    CHAN_SEND,
    CMD,
    CMD_WITH_RETURN,
    CONFIG,
    ERROR,
    EVENT,
    HELLO,
    HELLO_REPLY,
    REGISTER,
    REPLY,
    Raw,
    text,
)

pytestmark = pytest.mark.timeout(120)
NAME = "spectest"


def start(tmp_path: Path, *extra: str, name: str = NAME, config: str = CONFIG):
    cfg = tmp_path / "m.conf"
    cfg.write_text(config)
    port = procs.free_port()
    log = tmp_path / f"server-{port}.log"
    proc = procs.start(
        "specsrv.cli",
        "-S",
        str(port),
        "-H",
        "127.0.0.1",
        "-N",
        name,
        "-c",
        str(cfg),
        "-v",
        *extra,
        stderr=open(log, "wb"),
    )
    procs.wait_port(port, proc=proc)
    return proc, port, log


@pytest.fixture
def server(tmp_path):
    proc, port, log = start(tmp_path)
    yield port, log
    procs.stop(proc)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- item 1: discovery ---------------------------------------------------------------


def test_builtin_globals_describe_the_instrument(server):
    port, _ = server
    c = Raw(port)
    assert text(c.read("var/MOTORS")) == "3"
    assert text(c.read("var/COUNTERS")) == "3"
    names = c.eval('s = ""; for (i = 0; i < MOTORS; i++) s = s motor_mne(i) " "; s')
    assert text(names) == "m1 m2 lim "
    r = c.eval("MOTORS = 7", sn=12)
    assert r["type"] == ERROR and r["err"] > 0  # read-only, as in spec
    c.close()


def test_register_error_sends_no_initial_event(server):
    port, _ = server
    c = Raw(port)
    c.send(REGISTER, name="error")
    c.send(HELLO, sn=5)
    # the HELLO_REPLY is the next packet: no "No error" event came first
    first = c.recv()
    assert (first["cmd"], first["sn"]) == (HELLO_REPLY, 5)
    c.send(REGISTER, name="no/such/property")
    ev = c.expect(EVENT, "error")
    assert "no/such/property" in text(ev)
    c.close()


# -- item 2: command packets of any non-array type -------------------------------------


@pytest.mark.parametrize("type_", [0, 1, 2, 4, 99])
def test_command_text_in_any_non_array_type(server, type_):
    port, _ = server
    c = Raw(port)
    c.send(CMD_WITH_RETURN, sn=31, data=b"3*7\0", type_=type_)
    r = c.expect(REPLY, sn=31)
    assert (r["type"], text(r), r["err"]) == (2, "21", 0)
    c.send(CMD_WITH_RETURN, sn=32, data=b"\0\0\0\0\0\0\xf0\x3f", type_=5, rows=1, cols=1)
    r = c.expect(REPLY, sn=32)
    assert r["type"] == ERROR and r["err"] == 2  # an array is not command text
    c.close()


# -- item 4: unknown words -------------------------------------------------------------


@pytest.mark.parametrize(
    "command, word",
    [("umvv m1 1", "umvv"), ("nosuchmacro", "nosuchmacro"), ("foo(1)", "foo")],
)
def test_unknown_command_is_an_error_on_tty_and_in_the_reply(server, command, word):
    port, _ = server
    c = Raw(port)
    c.send(REGISTER, name="output/tty")
    c.send(CMD_WITH_RETURN, sn=41, data=command.encode() + b"\0")
    tty, r = "", None
    for _ in range(100):  # until the next prompt
        h = c.recv()
        if h["cmd"] == REPLY:
            r = h
        elif h["cmd"] == EVENT and h["name"] == "output/tty":
            tty += text(h)
            if tty.endswith(".SPECTEST> "):
                break
    assert r["type"] == ERROR and r["err"] != 0 and word in text(r)
    assert f"{command}\n{text(r)}\n" in tty
    # a known variable followed by words is still an expression
    c.eval('known = "a"', sn=42)
    assert text(c.eval('known "b"', sn=43)) == "ab"
    c.close()


# -- item 3: console transcript ---------------------------------------------------------


def test_console_transcript_prompt_echo_output(server):
    port, _ = server
    c = Raw(port)
    c.send(REGISTER, name="output/tty")
    prompt = re.compile(r"\n(\d+)\.SPECTEST> $")
    tty = ""
    c.send(CMD, data=b"p 6*7\0")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not prompt.search(tty):
        h = c.recv()
        if h["cmd"] == EVENT and h["name"] == "output/tty":
            tty += text(h)
    m = prompt.search(tty)
    assert m, tty
    assert tty == f"p 6*7\n42\n\n{m.group(1)}.SPECTEST> "
    n = int(m.group(1))
    # the next command gets the next number; its reply comes before the prompt
    c.send(CMD_WITH_RETURN, sn=7, data=b"1+1\0")
    seen = []
    while not (seen and seen[-1]["cmd"] == EVENT and prompt.search(text(seen[-1]))):
        seen.append(c.recv())
    kinds = [(h["cmd"], text(h)) for h in seen]
    assert kinds == [
        (EVENT, "1+1\n"),
        (REPLY, "2"),
        (EVENT, f"\n{n + 1}.SPECTEST> "),
    ]
    assert text(c.read("status/shell")) == "0"
    c.close()


# -- item 9: the deletion flag ----------------------------------------------------------


def test_deleted_flag_is_sv_deleted_by_default_and_0x0001_on_request(tmp_path):
    for extra, flag in (((), 0x1000), (("--deleted-flag", "0x0001"), 0x0001)):
        proc, port, _ = start(tmp_path, *extra)
        try:
            c = Raw(port)
            c.eval("gone = 1")
            c.send(REGISTER, name="var/gone")
            assert c.expect(EVENT, "var/gone")["flags"] == 0
            c.send(CMD, data=b"unglobal gone\0")
            assert c.expect(EVENT, "var/gone")["flags"] == flag
            c.close()
        finally:
            procs.stop(proc)


# -- issue 12.3: bounded memory and connections --------------------------------------------


def test_hostile_sizes_are_spec_errors_and_memory_stays_bounded(tmp_path):
    proc, port, _ = start(tmp_path, "--max-memory", str(32 << 20), "--max-array", str(8 << 20))
    try:
        c = Raw(port)
        base = rss_kib(proc.pid)
        hostile = [
            'sprintf("%999999999d", 1)',
            'sprintf("%.999999999f", 1)',
            'sprintf("%*d", 2000000000, 1)',
            'printf("%999999999s", "x")',
            "double array huge[100000][100000]",
            "ulong array h2[9e15]",
            's = "xxxxxxxxxxxxxxxx"; while (1) s = s s',
            'for (i = 0; i < 1000000; i++) big[i] = sprintf("%100000s", "")',
            "def f(n) '{ local a[]; for (i = 0; i < 1e6; i++)"
            ' a[i] = sprintf("%100000s", ""); }\'; f(1)',
        ]
        for sn, cmd in enumerate(hostile, 100):
            r = c.eval(cmd, sn=sn, timeout=60)
            assert r["type"] == ERROR and r["err"] == 1, (cmd, r["data"])
            msg = text(r)
            assert re.search("Out of memory|String longer|Bad array dimensions", msg), msg
        assert text(c.eval("1+1", sn=200)) == "2"  # serving on
        grown = rss_kib(proc.pid) - base
        assert grown < 200 * 1024, f"RSS grew by {grown} KiB"
        c.send(CHAN_SEND, name="var/ok", data=b"1\0")
        assert text(c.read("var/ok")) == "1"
        c.close()
    finally:
        procs.stop(proc)


def test_connection_limit_refuses_with_a_log_line_and_serves_on(tmp_path):
    proc, port, log = start(tmp_path, "--max-clients", "3")
    try:

        def hello(sn: int) -> Raw | None:
            try:
                c = Raw(port)
                c.send(HELLO, sn=sn)
                if c.expect(HELLO_REPLY, sn=sn)["name"] == NAME:
                    return c
            except (ConnectionError, OSError, AssertionError):
                pass
            return None

        idle: list[Raw] = []

        def one_more(sn: int) -> bool:
            c = hello(sn)
            if c is not None:
                idle.append(c)
            return c is not None

        for i in range(3):  # three are served (the port probe may still count briefly)
            assert procs.wait_until(lambda i=i: one_more(i), 5)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert extra.recv(10) == b""  # accepted and closed at once
        extra.close()
        assert procs.wait_until(lambda: "refused connection" in log.read_text(), 5)
        idle.pop().close()

        again = []
        assert procs.wait_until(lambda: again.append(hello(9)) or again[-1], 5)
        again[-1].close()
        for r in idle:
            r.close()
    finally:
        procs.stop(proc)


# -- item 6: the command line ---------------------------------------------------------


@pytest.mark.parametrize("argv", [["-S3"], ["-S", "80"], ["-S2", "100-200"], ["-S1023"]])
def test_privileged_ports_are_never_bound(argv):
    r = procs.run("specsrv.cli", *argv, "-H", "127.0.0.1")
    assert r.returncode == 2 and b"below 1024" in r.stderr


def test_spec_letters_d_and_D(tmp_path):
    proc, port, _ = start(tmp_path, "-d", "0x1000")
    try:
        c = Raw(port)
        assert text(c.read("var/DEBUG")) == "4096"
        c.close()
    finally:
        procs.stop(proc)
    proc, port, _ = start(tmp_path, "-D", "0x800000")  # the earlier spelling
    try:
        c = Raw(port)
        assert text(c.read("var/DEBUG")) == str(0x800000)
        c.close()
    finally:
        procs.stop(proc)


def test_site_macro_file_runs_at_start_up(tmp_path):
    site = tmp_path / "site.mac"
    site.write_text(
        "# site macros\n"
        "def sitemac '{ p \"site\", $1 }'\n"
        "def double(x) '{ return 2 * x }'\n"
        "SITE_READY = 1\n"
    )
    proc, port, _ = start(tmp_path, "-C", str(site))
    try:
        c = Raw(port)
        assert text(c.read("var/SITE_READY")) == "1"
        assert text(c.eval("sitemac 5")) == "site 5\n"
        assert text(c.eval("double(21)", sn=12)) == "42"
        c.close()
    finally:
        procs.stop(proc)


# -- item 7: the state file -------------------------------------------------------------


def test_motor_state_survives_a_restart_and_f_starts_fresh(tmp_path):
    state = tmp_path / "state"
    proc, port, _ = start(tmp_path, "--state-dir", str(state))
    try:
        c = Raw(port)
        for sn, cmd in enumerate(["umv m1 2.5", "set m2 7", "set_lm m1 -3 4"], 1):
            assert c.eval(cmd, sn=sn, timeout=30)["err"] == 0
        before = {p: text(c.read(p)) for p in PROPS}
        c.close()
    finally:
        assert procs.stop(proc) == 0
    settings = state / NAME / "settings"
    assert settings.is_file() and "motor m1 " in settings.read_text()
    assert not list(settings.parent.glob(".settings.*"))  # no temporary left
    proc, port, _ = start(tmp_path, "-D", str(state))  # spec's -D direc, same place
    try:
        c = Raw(port)
        assert {p: text(c.read(p)) for p in PROPS} == before
        assert text(c.eval("A[m1]")) == "2.5"
        c.close()
    finally:
        procs.stop(proc)
    proc, port, _ = start(tmp_path, "--state-dir", str(state), "-f")
    try:
        c = Raw(port)
        assert text(c.read("motor/m1/position")) == "0"
        assert text(c.read("motor/m1/high_limit")) == "50"
        c.close()
    finally:
        procs.stop(proc)
    # -f wrote the fresh state; a garbled file is skipped, not fatal
    settings.write_text("motor m1 dial=zzz\nnonsense\n")
    proc, port, log = start(tmp_path, "--state-dir", str(state))
    try:
        c = Raw(port)
        assert text(c.read("motor/m1/position")) == "0"
        c.close()
    finally:
        procs.stop(proc)
    assert "zzz" not in log.read_text()  # file content is never quoted


PROPS = (
    "motor/m1/position",
    "motor/m1/dial_position",
    "motor/m1/low_limit",
    "motor/m1/high_limit",
    "motor/m2/position",
    "motor/m2/offset",
)


# -- certif-pyspec, CSS's own client -----------------------------------------------------


def test_certif_pyspec_client(server):
    pytest.importorskip("asyncore", reason="certif-pyspec needs asyncore (Python < 3.12)")
    sc = pytest.importorskip("pyspec.client.SpecConnection", reason="certif-pyspec not installed")
    port, _ = server
    conn = sc.SpecConnection(f"127.0.0.1:{port}")
    errors = []
    try:
        conn.connect_event("error", lambda *a: errors.append(a))
        conn.wait_connected(timeout=10)
        assert conn.run_cmd("2+3", timeout=10) == 5
        motors = conn.get_motors()  # reads MOTORS, motor_mne(), motor_name()
        assert motors == {"m1": "Motor One", "m2": "Motor Two", "lim": "lim"}
        assert set(conn.get_positions()) == {"m1", "m2", "lim"}
        assert conn.read_channel("var/COUNTERS") == 3
        time.sleep(0.3)
        assert errors == []  # no initial "error" event taken for a failure
    finally:
        conn.close_connection()


# -- fuzz: any bytes, any command text; bounded memory, a live server ------------------


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    proc, port, _ = start(d, "--max-memory", str(16 << 20), "--max-data", str(1 << 20))
    yield proc, port
    procs.stop(proc)


_WORDS = [
    "sprintf(",
    '"%',
    "999999999",
    "d",
    '", 1)',
    "s = s s",
    "while (1)",
    "{",
    "}",
    ";",
    "array a[",
    "]",
    "umv m1 ",
    "ascan m1 0 1 2 0.01",
    "delete",
    "A[",
    "p ",
    "$1",
    "\\",
]


@settings(max_examples=40, deadline=None)
@given(
    raw=st.binary(max_size=600),
    words=st.lists(st.sampled_from(_WORDS), max_size=12),
    header=st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 1 << 21)),
)
def test_fuzzed_connections_leave_a_live_server_with_bounded_memory(
    fuzz_server, raw, words, header
):
    proc, port = fuzz_server
    cmd, type_, length = header
    c = Raw(port)
    try:
        text_cmd = "".join(words).encode()
        c.send(cmd, sn=1, data=text_cmd[:length], type_=type_, length=min(length, len(text_cmd)))
        c.sock.sendall(raw)
    except OSError:
        pass  # the server may close a connection whose stream cannot go on
    finally:
        c.close()
    probe = Raw(port)
    probe.send(HELLO, sn=77)
    assert probe.expect(HELLO_REPLY, sn=77, timeout=30)["name"] == NAME
    probe.send(ABORT)  # stop whatever the fuzzed command left running
    probe.close()
    assert rss_kib(proc.pid) < 400 * 1024

"""specsrv on the wire, checked by a client written from the seed's svr_head layout.

This test client shares no code with the server: it packs and unpacks the
header with ``struct`` straight from the seed's ``struct svr_head`` and the
version history (v2 124 bytes, v3 adds ``err``, v4 adds ``flags``), and it
checks bytes, not decoded objects.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.support import procs

pytestmark = pytest.mark.timeout(120)

MAGIC = 4277009102
FORMATS = {2: "IiiiIIiiIII80s", 3: "IiiiIIiiIIIi80s", 4: "IiIIIIiiIIIii80s"}
SIZES = {v: struct.calcsize("<" + f) for v, f in FORMATS.items()}
(
    CLOSE,
    ABORT,
    CMD,
    CMD_WITH_RETURN,
    RETURN,
    REGISTER,
    UNREGISTER,
    EVENT,
    FUNC,
    FUNC_WITH_RETURN,
    CHAN_READ,
    CHAN_SEND,
    REPLY,
    HELLO,
    HELLO_REPLY,
) = range(1, 16)
STRING, ERROR, ASSOC, ARR_DOUBLE, ARR_LONG = 2, 3, 4, 5, 7
NAME = "testspec"

CONFIG = """\
motor m1 name="Motor One" steps=1000 low=-50 high=50 base=2000 slew=40000 accel=20
motor m2 name="Motor Two" steps=1000 low=-50 high=50 base=2000 slew=40000 accel=20 backlash=100
motor lim steps=1000 low=-50 high=50 base=2000 slew=20000 accel=20 high_switch=0.5
counter sec name=Seconds type=timer
counter mon name=Monitor type=monitor rate=1000
counter det name=Detector type=detector rate=500
"""


class Raw:
    """Minimal spec protocol client: ``order`` '<' or '>', header version 2, 3 or 4."""

    def __init__(self, port: int, order: str = "<", vers: int = 4) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.order = order
        self.vers = vers

    def close(self) -> None:
        self.sock.close()

    def pack(
        self,
        cmd,
        sn=0,
        name="",
        data=b"",
        type_=STRING,
        rows=0,
        cols=0,
        err=0,
        flags=0,
        length=None,
    ):
        v = self.vers
        fields = [
            MAGIC,
            v,
            SIZES[v],
            sn,
            0,
            0,
            cmd,
            type_,
            rows,
            cols,
            len(data) if length is None else length,
        ]
        if v >= 3:
            fields.append(err)
        if v >= 4:
            fields.append(flags)
        fields.append(name.encode())
        return struct.pack(self.order + FORMATS[v], *fields) + data

    def send(self, *a, **kw) -> None:
        self.sock.sendall(self.pack(*a, **kw))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def recv(self, timeout: float = 5.0) -> dict:
        self.sock.settimeout(timeout)
        head = self._exact(12)
        order = "<" if struct.unpack("<I", head[:4])[0] == MAGIC else ">"
        assert struct.unpack(order + "I", head[:4])[0] == MAGIC, head.hex()
        vers, size = struct.unpack(order + "iI", head[4:12])
        head += self._exact(size - 12)
        v = min(vers, 4)
        names = ["magic", "vers", "size", "sn", "sec", "usec", "cmd", "type", "rows", "cols", "len"]
        names += ["err"] * (v >= 3) + ["flags"] * (v >= 4) + ["name"]
        h = dict(zip(names, struct.unpack(order + FORMATS[v], head[: SIZES[v]]), strict=True))
        h["order"] = order
        h["raw"] = head
        h["name"] = h["name"].split(b"\0")[0].decode()
        h["data"] = self._exact(h["len"]) if h["len"] else b""
        return h

    def expect(
        self, cmd: int, name: str | None = None, sn: int | None = None, timeout: float = 5.0
    ):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.recv(max(0.05, deadline - time.monotonic()))
            if (
                h["cmd"] == cmd
                and (name is None or h["name"] == name)
                and (sn is None or h["sn"] == sn)
            ):
                return h
        raise AssertionError(f"no packet cmd={cmd} name={name} sn={sn}")

    def events(self, names: set[str], until, timeout: float = 5.0) -> list[dict]:
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.recv(max(0.05, deadline - time.monotonic()))
            if h["cmd"] == EVENT and h["name"] in names:
                out.append(h)
                if until(out):
                    return out
        raise AssertionError(f"events incomplete: {[(e['name'], e['data']) for e in out]}")

    def read(self, prop: str, sn: int = 9):
        self.send(CHAN_READ, sn=sn, name=prop)
        return self.expect(REPLY, sn=sn)

    def eval(self, text: str, sn: int = 11, timeout: float = 5.0):
        self.send(CMD_WITH_RETURN, sn=sn, data=text.encode() + b"\0")
        return self.expect(REPLY, sn=sn, timeout=timeout)

    def eval_events(self, text: str, sn: int = 11) -> tuple[dict, list[dict]]:
        """Reply and the events that arrived before it."""
        self.send(CMD_WITH_RETURN, sn=sn, data=text.encode() + b"\0")
        seen = []
        for _ in range(1000):
            h = self.recv()
            if h["cmd"] == REPLY and h["sn"] == sn:
                return h, seen
            seen.append(h)
        raise AssertionError("no reply")


def text(h) -> str:
    assert h["data"].endswith(b"\0"), h["data"]
    return h["data"][:-1].decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("specsrv")
    cfg = d / "motors.conf"
    cfg.write_text(CONFIG)
    port = procs.free_port()
    log = open(d / "server.log", "wb")
    proc = procs.start(
        "specsrv.cli",
        "-S",
        str(port),
        "-H",
        "127.0.0.1",
        "-N",
        NAME,
        "-c",
        str(cfg),
        "-D",
        "0x1000",
        stderr=log,
    )
    try:
        procs.wait_port(port, proc=proc)
        yield port, d / "server.log"
    finally:
        procs.stop(proc)
        log.close()


@pytest.mark.parametrize("vers", [2, 3, 4])
@pytest.mark.parametrize("order", ["<", ">"])
def test_hello_in_each_version_and_byte_order(server, vers, order):
    port, _ = server
    c = Raw(port, order, vers)
    c.send(HELLO, sn=77, name="pytest")
    h = c.recv()
    c.close()
    assert h["order"] == order
    assert (h["cmd"], h["sn"], h["vers"], h["size"]) == (HELLO_REPLY, 77, vers, SIZES[vers])
    assert len(h["raw"]) == SIZES[vers]
    assert h["name"] == NAME and h["data"] == NAME.encode() + b"\0" and h["type"] == STRING


def test_version_2_client_gets_version_2_events_and_replies(server):
    port, _ = server
    c = Raw(port, ">", 2)
    c.send(REGISTER, name="motor/m1/sign")
    ev = c.expect(EVENT, "motor/m1/sign")
    assert (ev["vers"], ev["size"], len(ev["raw"]), ev["order"]) == (2, 124, 124, ">")
    r = c.eval("1+1", sn=3)
    assert (r["vers"], r["size"], text(r)) == (2, 124, "2")
    c.close()


def test_register_gives_initial_event_and_read_echoes_sn_and_name(server):
    port, _ = server
    c = Raw(port, ">")
    c.send(REGISTER, name="motor/m1/step_size")
    ev = c.expect(EVENT, "motor/m1/step_size")
    assert ev["sn"] == 0 and text(ev) == "1000"
    r = c.read("motor/m1/sign", sn=1234567)
    assert r["sn"] == 1234567 and r["name"] == "motor/m1/sign" and text(r) == "1"
    c.send(REGISTER, name="error")  # as real spec: no initial event without an error
    c.send(REGISTER, name="bogus/thing")
    assert "bogus/thing" in text(c.expect(EVENT, "error"))  # the first error event
    c.close()


def test_unknown_property_read_is_an_error_reply(server):
    port, _ = server
    c = Raw(port)
    r = c.read("var/does_not_exist", sn=5)
    assert r["type"] == ERROR and r["err"] != 0 and r["data"].endswith(b"\0")
    r = c.read("motor/nosuch/position", sn=6)
    assert r["type"] == ERROR and r["err"] != 0
    c.close()


def test_synchronized_move(server):
    port, _ = server
    c = Raw(port)
    props = {f"motor/{m}/{p}" for m in ("m1", "m2") for p in ("move_done", "position")}
    for p in sorted(props):
        c.send(REGISTER, name=p)
    c.events(props, lambda evs: len(evs) >= 4)
    c.send(CHAN_SEND, name="motor/../prestart_all")
    c.send(CHAN_SEND, name="motor/m1/start_one", data=b"1.5\0")
    c.send(CHAN_SEND, name="motor/m2/start_one", data=b"-1.25\0")
    c.send(CHAN_SEND, name="motor/../start_all")
    done = {"m1": [], "m2": []}

    def finished(evs):
        for e in evs:
            m = e["name"].split("/")[1]
            if e["name"].endswith("move_done") and (not done[m] or done[m][-1] != text(e)):
                done[m].append(text(e))
        return all(v[-1:] == ["0"] and "1" in v for v in done.values())

    evs = c.events(props, finished, timeout=10)
    positions = [float(text(e)) for e in evs if e["name"] == "motor/m2/position"]
    assert positions and min(positions) < -1.25  # backlash: overshoot, then approach
    assert text(c.read("motor/m1/position")) == "1.5"
    assert text(c.read("motor/m2/position")) == "-1.25"
    c.close()


def test_limit_switch_stops_the_motor(server):
    port, _ = server
    c = Raw(port)
    c.send(REGISTER, name="motor/lim/high_lim_hit")
    c.send(REGISTER, name="motor/lim/move_done")
    c.events({"motor/lim/move_done"}, lambda e: True)
    c.send(CHAN_SEND, name="motor/lim/start_one", data=b"2\0")
    evs = c.events(
        {"motor/lim/high_lim_hit", "motor/lim/move_done"},
        lambda e: (
            any(x["name"].endswith("high_lim_hit") and text(x) == "1" for x in e)
            and text(e[-1]) == "0"
        ),
        timeout=10,
    )
    assert evs
    assert text(c.read("motor/lim/position")) == "0.5"
    assert text(c.read("motor/lim/high_lim_hit")) == "1"
    c.close()


def test_counting_events_and_values(server):
    port, _ = server
    c = Raw(port)
    props = {"scaler/.all./count", "scaler/det/value", "scaler/sec/value"}
    for p in sorted(props):
        c.send(REGISTER, name=p)
    c.events(props, lambda e: len(e) >= 3)
    c.send(CHAN_SEND, name="scaler/.all./count", data=b"0.4\0")
    evs = c.events(
        props, lambda e: e[-1]["name"] == "scaler/.all./count" and text(e[-1]) == "0", 10
    )
    counts = [text(e) for e in evs if e["name"] == "scaler/.all./count"]
    assert counts[0] == "1" and counts[-1] == "0"
    assert text(c.read("scaler/det/value")) == "200"
    assert text(c.read("scaler/sec/value")) == "0.4"
    # count to monitor: negative preset
    r = c.eval("ct -300; S[det]", sn=12)
    assert text(r) == "150"
    c.close()


def test_assoc_round_trip_bytes(server):
    port, _ = server
    c = Raw(port)
    payload = b"alpha\x001\x00beta\x00two words\x00\x00"
    c.send(CHAN_SEND, name="var/wire_assoc", data=payload, type_=ASSOC)
    r = c.read("var/wire_assoc")
    assert r["type"] == ASSOC and r["data"] == payload
    r = c.read("var/wire_assoc[beta]")
    assert text(r) == "two words"
    c.send(CHAN_SEND, name="var/wire_assoc[alpha]", data=b"5\0")
    assert text(c.eval('wire_assoc["alpha"] * 2')) == "10"
    c.close()


@pytest.mark.parametrize("order", ["<", ">"])
def test_data_array_round_trip_in_client_byte_order(server, order):
    port, _ = server
    c = Raw(port, order)
    values = [1.5, -2.0, 3.25, 4.0, 5.5, 6.0]
    data = struct.pack(order + "6d", *values)
    c.send(CHAN_SEND, name="var/wire_arr", data=data, type_=ARR_DOUBLE, rows=2, cols=3)
    r = c.read("var/wire_arr")
    assert (r["type"], r["rows"], r["cols"]) == (ARR_DOUBLE, 2, 3)
    assert r["data"] == data  # no trailing NUL, client's byte order
    assert text(c.eval("wire_arr[1][2]")) == "6"
    # a client's array with a trailing NUL is accepted too
    ints = struct.pack(order + "3i", 7, 8, 9) + b"\0"
    c.send(CHAN_SEND, name="var/wire_ints", data=ints, type_=ARR_LONG, rows=1, cols=3)
    r = c.read("var/wire_ints")
    assert (r["type"], r["rows"], r["cols"], r["data"]) == (ARR_LONG, 1, 3, ints[:-1])
    c.close()


def test_sv_double_and_string_arrays(server):
    port, _ = server
    c = Raw(port, ">")
    c.send(CHAN_SEND, name="var/wire_dbl", data=struct.pack(">d", 2.5), type_=1)
    r = c.read("var/wire_dbl")
    assert r["type"] == STRING and r["data"] == b"2.5\0"  # numbers go out as text
    c.send(CHAN_SEND, name="var/wire_strs", data=b"ab\0cde\0\0", type_=13, rows=1, cols=3)
    r = c.read("var/wire_strs")
    assert (r["type"], r["rows"], r["cols"], r["data"]) == (13, 1, 3, b"ab\0cde\0\0")
    assert text(c.eval("wire_strs[1]")) == "cde"
    c.close()


def test_output_events_come_before_the_reply(server):
    port, _ = server
    c = Raw(port)
    c.send(REGISTER, name="output/tty")
    reply, seen = c.eval_events('print("Hello, world!")', sn=41)
    events = [text(h) for h in seen if h["cmd"] == EVENT and h["name"] == "output/tty"]
    # the console transcript: the command echoed, its output (the next
    # prompt follows the reply)
    assert events == ['print("Hello, world!")\n', "Hello, world!\n"]
    assert reply["sn"] == 41
    c.close()


def test_command_results_and_errors(server):
    port, _ = server
    c = Raw(port)
    r = c.eval("2+2", sn=419)
    assert (r["sn"], r["type"], r["data"], r["err"]) == (419, STRING, b"4\0", 0)
    r = c.eval("1 +", sn=420)
    assert r["type"] == ERROR and r["err"] == 2
    r = c.eval("p 1/0", sn=421)
    assert r["type"] == ERROR and r["err"] == 1
    r = c.eval("exit", sn=422)
    assert r["type"] == ERROR and r["err"] == 3
    # SV_FUNC_WITH_RETURN: name and arguments separated by NULs
    c.send(CMD, data=b"def addup(a, b) '{ return a + b }'\0")
    c.send(FUNC_WITH_RETURN, sn=423, data=b"addup\x002\x005\x00")
    assert text(c.expect(REPLY, sn=423)) == "7"
    c.send(FUNC_WITH_RETURN, sn=424, data=b"addup(1, 1)\0")
    assert text(c.expect(REPLY, sn=424)) == "2"
    c.close()


def test_deleted_flag_on_assoc_element(server):
    port, _ = server
    c = Raw(port)
    c.eval('wire_del["a"] = 1; wire_del["b"] = 2', sn=1)
    c.send(REGISTER, name="var/wire_del")
    ev = c.expect(EVENT, "var/wire_del")
    assert ev["data"] == b"a\x001\x00b\x002\x00\x00" and ev["flags"] == 0
    _, (ev,) = c.eval_events('delete wire_del["a"]', sn=2)
    assert ev["name"] == "var/wire_del"
    assert ev["flags"] == 0x1000 and ev["data"].startswith(b"a\x00")  # SV_DELETED, seed 002
    _, (ev,) = c.eval_events('wire_del["c"] = 3', sn=3)
    assert ev["flags"] == 0 and ev["data"] == b"c\x003\x00\x00"
    c.close()


def test_abort_stops_an_infinite_loop_and_others_keep_working(server):
    port, _ = server
    a, b = Raw(port), Raw(port)
    a.send(CMD_WITH_RETURN, sn=1, data=b"while (1) { x_loop++ }\0")
    time.sleep(0.3)
    assert text(b.read("motor/m1/step_size", sn=2)) == "1000"  # reads do not queue
    b.send(CMD_WITH_RETURN, sn=3, data=b"2+3\0")  # queued behind the loop
    a.send(ABORT)
    assert text(b.expect(REPLY, sn=3, timeout=10)) == "5"
    r = a.eval("3+3", sn=4)  # the aborted command got no reply
    assert r["sn"] == 4 and text(r) == "6"
    a.close()
    b.close()


def _closed(c: Raw, timeout: float = 5.0) -> bool:
    c.sock.settimeout(timeout)
    try:
        while c.sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_bad_input_closes_only_that_client(server):
    port, log = server
    good = Raw(port)
    # wrong magic
    c = Raw(port)
    c.sock.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(200))
    assert _closed(c)
    # a header whose len claims gigabytes
    c = Raw(port)
    c.send(CHAN_SEND, name="var/x", length=3_000_000_000)
    assert _closed(c)
    # half a header, then gone
    c = Raw(port)
    c.sock.sendall(c.pack(HELLO)[:60])
    c.close()
    # unknown command code, name without NUL, unknown data type, bad assoc: SV_ERROR replies
    c = Raw(port)
    c.send(99, sn=31)
    r = c.expect(REPLY, sn=31)
    assert r["type"] == ERROR and r["err"] != 0
    raw = bytearray(c.pack(CHAN_READ, sn=32, name="var/x"))
    raw[52:132] = b"v" * 80
    c.sock.sendall(bytes(raw))
    assert c.expect(REPLY, sn=32)["type"] == ERROR
    c.send(CHAN_SEND, sn=33, name="var/x", data=b"12345678", type_=42)
    assert c.expect(REPLY, sn=33)["type"] == ERROR
    c.send(CHAN_SEND, sn=34, name="var/x", data=b"k\0v\0", type_=ASSOC)
    assert c.expect(REPLY, sn=34)["type"] == ERROR
    c.send(CHAN_SEND, sn=35, name="motor/m1/start_one", data=b"1;exit\0")
    assert c.expect(REPLY, sn=35)["type"] == ERROR
    assert text(c.eval("1+1", sn=36)) == "2"
    c.close()
    good.send(HELLO, sn=5)
    assert good.expect(HELLO_REPLY, sn=5)["name"] == NAME
    good.close()
    assert "protocol error" in log.read_text()


def test_many_connect_disconnect_cycles(server):
    port, _ = server
    for i in range(1000):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 100 == 0:
            c = Raw.__new__(Raw)
            c.sock, c.order, c.vers = s, "<", 4
            c.send(HELLO, sn=i + 1)
            assert c.expect(HELLO_REPLY)["sn"] == i + 1
        s.close()
    c = Raw(port)
    assert text(c.eval("1+2")) == "3"
    c.close()


def test_debug_lines_in_the_seed_format(server):
    port, log = server
    c = Raw(port)
    c.eval("2+2", sn=4242)
    c.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()
        mine = [ln for ln in lines if " 4242 " in ln]
        if len(mine) >= 2:
            break
        time.sleep(0.05)
    assert any(
        ln.endswith("2 CMD_WITH_RETURN                  2+2") and "sR   4242" in ln for ln in mine
    )
    assert any(
        ln.endswith("2 REPLY                            4") and "sW   4242" in ln for ln in mine
    )


def test_debug_variable_switches_socket_dumps(server):
    port, log = server
    c = Raw(port)
    c.eval("DEBUG = 0xC01000", sn=1)
    c.eval("7*6", sn=5151)
    c.eval("DEBUG = 0x1000", sn=2)
    c.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "5151" not in log.read_text():
        time.sleep(0.05)
    text_ = log.read_text()
    assert "sock get  127.0.0.1:" in text_ and "b=132" in text_
    assert "0000  ce fa ed fe 04 00 00 00 84 00 00 00 1f 14 00 00" in text_  # sn 5151
    assert "0080  00 00 00 00 34 32 00" in text_  # the reply "42"


def test_allow_list_refuses_other_hosts(tmp_path):
    port = procs.free_port()
    log = tmp_path / "a.log"
    with (
        open(log, "wb") as fh,
        procs.running(
            "specsrv.cli",
            "-S",
            str(port),
            "-H",
            "127.0.0.1",
            "-A",
            "10.0.0.0/8",
            stderr=fh,
            wait_for=port,
        ),
    ):
        c = Raw(port)
        c.send(HELLO, sn=1)
        assert _closed(c)
        c.close()
    assert "refused connection from 127.0.0.1" in log.read_text()
    port = procs.free_port()
    with procs.running(
        "specsrv.cli",
        "-S",
        str(port),
        "-H",
        "127.0.0.1",
        "-A",
        "10.0.0.0/8",
        "-A",
        "127.0.0.1",
        wait_for=port,
    ):
        c = Raw(port)
        c.send(HELLO, sn=1)
        assert c.expect(HELLO_REPLY, sn=1)
        c.close()


def test_port_range_skips_taken_ports(tmp_path):
    base = procs.free_port_block(3)
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", base))
    taken.listen(1)
    try:
        with procs.running(
            "specsrv.cli",
            "-S2",
            f"{base}-{base + 2}",
            "-H",
            "127.0.0.1",
            "-N",
            "rangetest",
            wait_for=base + 1,
        ):
            c = Raw(base + 1)
            c.send(HELLO, sn=3)
            assert c.expect(HELLO_REPLY, sn=3)["name"] == "rangetest"
            assert text(c.eval("IS_SERVER")) == str(base + 1)
            # -S2: the slit blade's limit switch (dial 8) stops tth and the command too
            r = c.eval("mv s1t 9 tth 100; waitmove", sn=5, timeout=10)
            assert r["type"] == ERROR and "limit" in text(r)
            assert text(c.read("motor/s1t/position")) == "8"
            assert float(text(c.read("motor/tth/position"))) < 100
            assert text(c.read("motor/tth/move_done")) == "0"
            c.close()
    finally:
        taken.close()


def test_random_packets_never_take_the_server_down(server):
    import random

    port, _ = server
    rnd = random.Random(5)
    props = [
        "var/fz",
        "var/fz[1]",
        "motor/m1/position",
        "motor/../start_all",
        "scaler/.all./count",
        "motor/m1/search",
        "output/tty",
        "status/ready",
        "x" * 79,
        "",
    ]
    for _ in range(40):
        c = Raw(port, rnd.choice("<>"), rnd.choice([2, 3, 4]))
        c.sock.settimeout(5)
        for _ in range(5):
            data = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40)))
            cmd = rnd.choice(
                [
                    CMD_WITH_RETURN,
                    CHAN_READ,
                    CHAN_SEND,
                    REGISTER,
                    UNREGISTER,
                    FUNC,
                    HELLO,
                    EVENT,
                    REPLY,
                    0,
                    77,
                ]
            )
            c.send(
                cmd,
                sn=rnd.randint(0, 2**31),
                name=rnd.choice(props),
                data=data,
                type_=rnd.randint(0, 20),
                rows=rnd.randint(0, 3),
                cols=rnd.randint(0, 50),
            )
        c.close()
    good = Raw(port)
    good.send(HELLO, sn=99)
    assert good.expect(HELLO_REPLY, sn=99)["name"] == NAME
    assert text(good.eval("1+1", sn=100, timeout=10)) == "2"
    good.close()


def test_malformed_element_registration_is_an_error_event_not_a_crash(server):
    port, _ = server
    c = Raw(port)
    c.send(REGISTER, name="error")
    c.send(REGISTER, name="var/wire_bad[1")
    assert "var/wire_bad[1" in text(c.expect(EVENT, "error"))
    c.send(HELLO, sn=8)  # the same connection still works
    assert c.expect(HELLO_REPLY, sn=8)["name"] == NAME
    c.close()


def test_element_registered_with_a_quoted_key_gets_events(server):
    port, _ = server
    c = Raw(port)
    c.eval('wire_q["k"] = 1', sn=1)
    c.send(REGISTER, name='var/wire_q["k"]')
    assert text(c.expect(EVENT, 'var/wire_q["k"]')) == "1"
    _, seen = c.eval_events('wire_q["k"] = 5', sn=2)
    assert [(h["name"], text(h)) for h in seen] == [('var/wire_q["k"]', "5")]
    c.close()


def test_hello_with_a_full_debug_name_is_answered(server):
    port, _ = server
    c = Raw(port, ">", 3)
    raw = bytearray(c.pack(HELLO, sn=12))
    raw[48:128] = b"spec client debugging text " * 2 + b"x" * 26  # 80 bytes, no NUL
    c.sock.sendall(bytes(raw))
    h = c.expect(HELLO_REPLY, sn=12)
    assert h["name"] == NAME and text(h) == NAME
    c.close()


def test_commands_queued_by_a_client_that_closes_still_run(server):
    port, _ = server
    a = Raw(port)
    a.send(CMD_WITH_RETURN, sn=1, data=b"sleep(0.4)\0")  # keeps the command thread busy
    time.sleep(0.1)
    b = Raw(port)
    b.send(CMD, data=b"wire_kept = 5\0")
    b.send(CHAN_SEND, name="motor/m1/start_one", data=b"0.25\0")
    b.send(CLOSE)
    b.close()
    a.expect(REPLY, sn=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and text(a.read("motor/m1/position")) != "0.25":
        time.sleep(0.05)
    assert text(a.read("motor/m1/position")) == "0.25"
    assert text(a.read("var/wire_kept")) == "5"
    a.eval("mv m1 0; waitmove", sn=2)
    a.close()


def test_zz_no_tracebacks_in_the_server_log(server):
    """Runs last in this module: nothing above made a handler or thread crash."""
    port, log = server
    c = Raw(port)
    c.send(HELLO, sn=1)
    c.expect(HELLO_REPLY, sn=1)
    c.close()
    text_ = log.read_text()
    assert "Traceback" not in text_ and "error while serving" not in text_

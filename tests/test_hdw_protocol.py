"""specsrv.hdw protocol core and session logic, without sockets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specsrv.hdw import protocol as P
from specsrv.hdw.device import DataBlock, DeviceError
from specsrv.hdw.session import Session, SharedDevice
from tests.support.hdw_helpers import MemoryMca

pytestmark = pytest.mark.timeout(120)


# -- request lines -------------------------------------------------------------


def test_parse_request_forms():
    assert P.parse_request(b"=: 1 hello mca_server") == P.Request(1, "hello", ("mca_server",))
    assert P.parse_request(b"=: 7 get_status\r") == P.Request(7, "get_status")
    assert P.parse_request(b"=: 3 get a=0.1 rate") == P.Request(3, "get", ("rate",), 1)
    assert P.parse_request(b"=: 3 read a=0:2 0 9") == P.Request(3, "read", ("0", "9"), 2)
    assert P.parse_request(b"=: 3 set gain a=5 2") == P.Request(3, "set", ("gain", "2"), 5)
    assert P.parse_request(b"=:  12   run  1.5   2 ") == P.Request(12, "run", ("1.5", "2"))


def test_parse_request_errors():
    assert isinstance(P.parse_request(b"hello mca_server"), P.Garbage)
    assert isinstance(P.parse_request(b"=: x hello"), P.Garbage)
    assert isinstance(P.parse_request(b"@: 1 0#"), P.Garbage)
    assert isinstance(P.parse_request(b""), P.Garbage)
    assert P.parse_request(b"=: 4") == P.BadRequest(4, "missing command")
    bad = P.parse_request(b"=: 5 get a=zz rate")
    assert isinstance(bad, P.BadRequest) and bad.sn == 5 and "a=zz" in bad.message


def test_addresses():
    assert P.parse_address("0.0") == 0
    assert P.parse_address("0.1") == 1
    assert P.parse_address("0:3") == 3
    assert P.parse_address("2") == 2
    assert P.parse_address("-1") == -1
    for bad in ("x", "0.", "-2", "0.1.2"):
        with pytest.raises(P.ProtocolError):
            P.parse_address(bad)


def test_format_request_puts_address_after_command():
    assert P.format_request(3, "read", 0, 9, addr="0.1") == b"=: 3 read a=0.1 0 9\n"
    assert P.format_request(4, "get_status") == b"=: 4 get_status\n"
    assert P.format_request(5, "get", "x", addr=-1) == b"=: 5 get x\n"


# -- replies -----------------------------------------------------------------------


def test_reply_format_matches_the_seed_example():
    text = "hello back V2 certified.local 16891 Generic"
    assert P.format_reply(1, text) == b"@: 1 43#" + text.encode() + b"\n"
    assert P.format_reply(6, "") == b"@: 6 0#\n"
    assert P.format_reply(7, "no such command", ok=False) == b"!: 7 15#no such command\n"
    # LEN counts bytes, not characters; newlines never break the line
    assert P.format_reply(8, "µ") == "@: 8 2#µ\n".encode()
    assert P.format_reply(9, "a\nb") == b"@: 9 3#a b\n"


@given(st.integers(0, 10**12), st.text(max_size=200), st.booleans())
def test_reply_round_trip(sn, text, ok):
    line = P.format_reply(sn, text, ok=ok)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    rep = P.parse_reply(line[:-1])
    assert rep.sn == sn and rep.ok == ok
    assert rep.text == text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace").decode(
        "utf-8", "replace"
    )


def test_parse_reply_rejects_bad_length():
    with pytest.raises(P.ProtocolError):
        P.parse_reply(b"@: 1 5#abc")
    with pytest.raises(P.ProtocolError):
        P.parse_reply(b"?: 1 0#")


def test_payload_parsers():
    h = P.parse_hello("hello back V2 host 42 Simulated MCA, 4 elements")
    assert h == P.Hello("V2", "host", 42, "Simulated MCA, 4 elements")
    assert P.parse_config("long 1024") == P.Config("long", (1024,))
    assert P.parse_config("ushort 512 256").text() == "ushort 512 256"
    assert P.parse_read_reply("1024", "long") == (1024, "long")
    assert P.parse_read_reply("8192 ushort", "long") == (8192, "ushort")
    assert P.parse_write_reply("okay 12") == 12
    for bad in ("hello there", "hello back V2 host pid"):
        with pytest.raises(P.ProtocolError):
            P.parse_hello(bad)
    with pytest.raises(P.ProtocolError):
        P.parse_config("int 5")


# -- regions and data -----------------------------------------------------------------


def test_regions_are_inclusive_and_bounded():
    r = P.parse_region(["0", "1023"], (1024,))
    assert r.npts == 1024 and r.slices() == (slice(0, 1024),)
    r = P.parse_region(["0", "63", "0", "127"], (128, 128))
    assert r.shape == (64, 128) and r.npts == 8192  # the seed's "65: 0 -> 64" style
    for args, shape in (
        (["0", "1024"], (1024,)),
        (["5", "4"], (1024,)),
        (["-1", "4"], (1024,)),
        (["0"], (1024,)),
        (["0", "1", "0"], (4, 4)),
        (["0", "x"], (1024,)),
        (["0", "4", "0", "3"], (4, 4)),
    ):
        with pytest.raises(P.ProtocolError):
            P.parse_region(args, shape)


@pytest.mark.parametrize("type_name", sorted(P.DATA_TYPES))
@pytest.mark.parametrize("order", ["<", ">"])
def test_wire_round_trip_every_type_and_order(type_name, order):
    dt = P.dtype_for(type_name, "=")
    if dt.kind == "f":
        values = np.array([0.0, -1.5, 3.25e7, np.pi], dtype=dt)
    else:
        info = np.iinfo(dt)
        values = np.array([info.min, 0, 1, info.max], dtype=dt)
    wire = bytes(P.to_wire(values, type_name, order))
    assert len(wire) == values.size * dt.itemsize
    assert wire == values.astype(dt.newbyteorder(order)).tobytes()
    back = P.from_wire(wire, type_name, order)
    assert back.dtype.isnative and np.array_equal(back, values)
    assert P.type_name_of(dt) == type_name


def test_sizes_of_the_ten_types():
    sizes = {n: P.dtype_for(n).itemsize for n in P.DATA_TYPES}
    assert sizes == {
        "ubyte": 1, "ushort": 2, "ulong": 4, "ulong64": 8, "byte": 1,
        "short": 2, "long": 4, "long64": 8, "float": 4, "double": 8,
    }  # fmt: skip


# -- the request stream -------------------------------------------------------------------

request_words = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789.", min_size=1, max_size=8),
    min_size=1,
    max_size=4,
)


def events_of(stream: P.RequestStream, chunks) -> list:
    out = []
    for c in chunks:
        stream.feed(c)
        while (ev := stream.next_event()) is not None:
            out.append(ev)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@settings(max_examples=150, deadline=None)
@given(st.lists(request_words, min_size=1, max_size=12), st.lists(st.integers(0, 10**6)))
def test_any_split_gives_the_same_commands(requests, cuts):
    data = b"".join(P.format_request(i, *w) for i, w in enumerate(requests, 1))
    whole = events_of(P.RequestStream(), [data])
    assert [e.sn for e in whole] == list(range(1, len(requests) + 1))
    assert events_of(P.RequestStream(), split(data, cuts)) == whole
    assert events_of(P.RequestStream(), [bytes([b]) for b in data]) == whole


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 10**6), max_size=6))
def test_garbage_gives_events_never_exceptions(data, cuts):
    stream = P.RequestStream(max_line=256)
    for ev in events_of(stream, split(data, cuts)):
        assert isinstance(ev, P.Request | P.BadRequest | P.Garbage | P.Overlong)
    assert stream.buffered() <= 256 + 1


def test_overlong_line_reported_at_once_and_bounded():
    stream = P.RequestStream(max_line=100)
    evs = events_of(stream, [b"x" * 60, b"y" * 60])
    assert len(evs) == 1 and isinstance(evs[0], P.Overlong)
    for _ in range(100):  # a megabyte and more, no newline
        assert events_of(stream, [b"z" * 10000]) == []
        assert stream.buffered() <= 100
    assert events_of(stream, [b"zz\n=: 9 get_status\n"]) == [P.Request(9, "get_status")]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=500), st.lists(st.integers(0, 10**6), max_size=5))
def test_write_data_taken_in_any_split(payload, cuts):
    """Binary data after a write request never reach the line parser."""
    data = b"=: 1 write 0 9\n" + payload + b"=: 2 xfer_done\n"
    stream = P.RequestStream()
    got = bytearray(len(payload))
    view = memoryview(got)
    filled = None
    evs = []
    for chunk in split(data, cuts):
        stream.feed(chunk)
        while True:
            if filled is not None and filled < len(payload):
                filled += stream.drain_into(view[filled:])
                if filled < len(payload):
                    break
            ev = stream.next_event()
            if ev is None:
                break
            evs.append(ev)
            if isinstance(ev, P.Request) and ev.cmd == "write":
                filled = 0
    assert bytes(got) == payload
    assert evs == [P.Request(1, "write", ("0", "9")), P.Request(2, "xfer_done")]


def test_xfer_done_in_tail():
    assert P.xfer_done_in_tail(b"\x00\x01=: 12 xfer_done\n") == 12
    assert P.xfer_done_in_tail(b"=: 12 xfer_done\n\x00") is None
    assert P.xfer_done_in_tail(b"") is None


# -- the session (what the server does with each request) ----------------------------


class Toy(MemoryMca):
    """Eight short channels that remember what was written, and the calls."""

    name = "toy"

    def __init__(self):
        super().__init__("short", 8)
        self.calls = []

    def run(self, addr, mode, preset):
        self.calls.append(("run", addr, mode, preset))

    def stop(self, addr, mode):
        self.calls.append(("stop", addr, mode))

    def pars(self, addr, how, cmd, args):
        if cmd != "gain":
            raise DeviceError(f"unknown parameter {cmd}")
        self.calls.append(("pars", addr, how, cmd, args))
        return "7"


def session(**kw):
    return Session(SharedDevice(Toy(), "toy", "host", 42, **kw))


def reply_of(sess: Session, line: bytes):
    out = sess.handle(P.parse_request(line))
    assert len(out.out) >= 1
    return P.parse_reply(bytes(out.out[0]).rstrip(b"\n")), out


def test_session_hello_config_and_name_check():
    s = session()
    rep, _ = reply_of(s, b"=: 1 hello toy")
    assert rep == P.Reply(1, "hello back V2 host 42 Generic")
    rep, _ = reply_of(s, b"=: 2 hello other")
    assert not rep.ok and "toy" in rep.text
    rep, _ = reply_of(s, b"=: 3 config 0")
    assert rep == P.Reply(3, "short 8")


def test_session_duplicate_sn_ignored_and_goodbye_silent():
    s = session(quit_on_goodbye=True)
    reply_of(s, b"=: 5 get_status")
    assert s.handle(P.parse_request(b"=: 5 get_status")).out == []
    out = s.handle(P.parse_request(b"=: 6 goodbye 0"))
    assert out.out == [] and out.close and not out.shutdown
    out = s.handle(P.parse_request(b"=: 7 goodbye 1"))
    assert out.out == [] and out.shutdown


def test_session_run_halt_pars_and_argument_counts():
    s = session()
    dev = s.shared.device
    assert reply_of(s, b"=: 1 run 2.5 2")[0] == P.Reply(1, "")
    assert reply_of(s, b"=: 2 halt 1")[0] == P.Reply(2, "")
    assert reply_of(s, b"=: 3 get a=0.3 gain")[0] == P.Reply(3, "7")
    assert reply_of(s, b"=: 4 set gain 2")[0] == P.Reply(4, "7")
    assert dev.calls == [
        ("run", -1, 2, 2.5),
        ("stop", -1, 1),
        ("pars", 3, 0, "gain", []),
        ("pars", -1, 1, "gain", ["2"]),
    ]
    for n, line in enumerate(
        [b"run", b"run 1 2 3", b"run x 2", b"run -1 2", b"halt 1 2", b"get_status 1",
         b"get", b"set gain", b"clear 1", b"get other", b"read 0", b"read 0 8", b"frobnicate"],
        10,
    ):  # fmt: skip
        rep, _ = reply_of(s, b"=: %d " % n + line)
        assert not rep.ok and rep.sn == n and rep.text, line
    assert len(dev.calls) == 4  # no failed request reached the device


def test_session_read_and_write_with_byte_order():
    s = session()
    rep, out = reply_of(s, b"=: 1 read 2 5")
    assert rep.text == "4" and bytes(out.out[1]) == np.arange(2, 6, dtype="<i2").tobytes()
    assert reply_of(s, b"=: 2 set byte_order big")[0].text == "big"
    rep, out = reply_of(s, b"=: 3 read 2 5")
    assert bytes(out.out[1]) == np.arange(2, 6, dtype=">i2").tobytes()
    rep, out = reply_of(s, b"=: 4 write 0 1")
    assert rep.text == "okay 2" and len(out.receive) == 4
    out.receive[:] = np.array([-7, 300], dtype=">i2").tobytes()
    s.write_finished(4, b"")
    assert reply_of(s, b"=: 5 xfer_done")[0] == P.Reply(5, "")
    assert s.shared.device.data[:3].tolist() == [-7, 300, 2]


def test_session_short_write_is_dropped_with_an_error():
    s = session()
    rep, out = reply_of(s, b"=: 1 write 0 7")
    tail = b"=: 2 xfer_done\n"  # 15 of the 16 bytes expected
    out2 = s.write_finished(len(tail), tail)
    err = P.parse_reply(bytes(out2.out[0]).rstrip(b"\n"))
    assert err.sn == 2 and not err.ok and "short write" in err.text
    assert s.shared.device.data.tolist() == list(range(8))


request_lines = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda sn, words: b"=: %d %s" % (sn, " ".join(words).encode()),
        st.integers(0, 50),
        st.lists(
            st.sampled_from(
                ["hello", "toy", "config", "run", "halt", "get_status", "get", "set", "gain",
                 "read", "write", "xfer_done", "clear", "byte_order", "big", "a=0.1", "a=x",
                 "0", "7", "8", "-1", "1e400", "nan", "x", "goodbye", "1", "frob"]
            ),
            max_size=6,
        ),
    ),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(request_lines, max_size=20))
def test_session_answers_any_input_without_exceptions(lines):
    """Whatever arrives, each request with a new SN gets one well-formed reply or none."""
    s = session()
    for line in lines:
        ev = P.parse_request(line)
        out = s.handle(ev)
        if out.receive is not None:
            out.receive[:] = bytes(len(out.receive))
            s.write_finished(len(out.receive), b"")
        for piece in out.out[:1]:
            rep = P.parse_reply(bytes(piece).rstrip(b"\n"))
            assert isinstance(ev, P.Request | P.BadRequest) and rep.sn == ev.sn
    assert s.shared.device.data.dtype == np.int16 and s.shared.device.data.shape == (8,)


# -- review fixes ---------------------------------------------------------------------------


def test_fit_to_type_never_wraps_truncates_or_rounds():
    assert P.fit_to_type(np.array([2**64 - 1, 5], dtype=object), "ulong64").tolist() == [
        2**64 - 1,
        5,
    ]
    assert P.fit_to_type([1.0, -2.0], "long").dtype == np.dtype("=i4")
    assert P.fit_to_type([0.5, -1e300], "double").tolist() == [0.5, -1e300]
    assert P.fit_to_type(np.zeros(0), "ubyte").dtype == np.uint8
    for values, type_name, msg in (
        ([-1], "ulong", "0 to 4294967295"),
        (np.array([-1]), "ushort", "0 to 65535"),
        ([256], "ubyte", "0 to 255"),
        ([1.5], "long", "whole numbers"),
        ([float("nan")], "short", "whole numbers"),
        ([2**63], "long64", "to 9223372036854775807"),
        (np.array([2.0**63]), "long64", "to 9223372036854775807"),
        (["1"], "long", "numbers"),
    ):
        with pytest.raises(P.ProtocolError, match=msg):
            P.fit_to_type(values, type_name)


class RetypingMca(Toy):
    """An MCA whose send_data hands over doubles and names them (wrongly) as such."""

    def send_data(self, addr, block: DataBlock):
        block.data = self.data[block.region.slices()].astype(np.float64)
        block.type_name = "double"


def test_mca_read_data_travel_in_the_native_type():
    """The MCA read reply names no type, so the data must be the config type."""
    s = Session(SharedDevice(RetypingMca(), "toy", "host", 42))
    rep, out = reply_of(s, b"=: 1 read 2 5")
    assert rep.text == "4"
    assert bytes(out.out[1]) == np.arange(2, 6, dtype="<i2").tobytes()


def test_mca_read_is_a_snapshot_for_every_type():
    """send_data's array leaves the lock: it must not change with the spectrum."""
    from specsrv.hdw.mca import SimMca
    from tests.support.hdw_helpers import make_device

    for type_name in sorted(P.DATA_TYPES):
        dev = make_device(SimMca, "-t", type_name, "-n", "16", "-e", "1")
        dev.counts[0][:] = 3
        block = DataBlock(P.parse_region(["0", "15"], (16,)), type_name)
        dev.send_data(-1, block)
        dev.clear(-1)
        assert block.data.tolist() == [3] * 16, type_name

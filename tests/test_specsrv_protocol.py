"""specsrv.protocol without sockets: headers, values, stream splitting, debug formats."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specsrv import protocol as P
from specsrv.protocol import Cmd, Packet, Type

pytestmark = pytest.mark.timeout(120)

ORDERS = (P.LITTLE, P.BIG)

# The request header of the seed's hex dump (remote_eval("fourc", "2+2")).
SEED_REQUEST = bytes.fromhex(
    "cefaedfe040000008400000 0a3010000".replace(" ", "")
    + "889b7e5c5afd0100040000000200000000000000000000000400000000000000"
) + bytes(132 - 48)
SEED_REPLY_DUMP = """\
0000  ce fa ed fe 04 00 00 00 84 00 00 00 a3 01 00 00  ................
0010  88 9b 7e 5c ca fe 01 00 0d 00 00 00 02 00 00 00  ..~\\............
0020  00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00  ................
0030  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
*
0080  00 00 00 00 34 00                                ....4."""


def test_header_sizes_and_formats():
    assert P.HEADER_SIZES == {2: 124, 3: 128, 4: 132}
    assert P.LAYOUTS[4][0] == "IiIIIIiiIIIii80s"


def test_seed_request_decodes():
    d = P.Decoder()
    (pkt,) = P.events(d, SEED_REQUEST + b"2+2\0")
    assert d.order == P.LITTLE
    assert (pkt.cmd, pkt.sn, pkt.type, pkt.text(), pkt.vers, pkt.size) == (4, 419, 2, "2+2", 4, 132)
    assert (pkt.sec, pkt.usec) == (0x5C7E9B88, 0x1FD5A)


def test_seed_reply_bytes_and_hex_dump():
    pkt = P.make_packet(Cmd.REPLY, 4, sn=419)
    pkt.sec, pkt.usec = 0x5C7E9B88, 0x1FECA
    data = P.encode_packet(pkt)
    assert len(data) == 134
    assert P.hex_dump(data) == SEED_REPLY_DUMP


def test_seed_debug_line_columns():
    log = P.PacketLog("s")
    pkt = Packet(cmd=Cmd.CMD_WITH_RETURN, sn=421, data=b"2+2\0")
    log.line("R", pkt, 100.0)
    line = log.line("R", pkt, 100.71175)
    assert line == "sR    421  711.75  2 CMD_WITH_RETURN                  2+2"
    reply = Packet(cmd=Cmd.REPLY, sn=421, data=b"4\0")
    assert log.line("W", reply, 102.0) == "sW    421    0.00  2 REPLY                            4"


def test_octal_escape_and_socket_lines():
    assert P.octal_escape(b"\xce\xfa2+2\0") == "\\316\\3722+2\\000"
    lines = P.socket_lines("get", "spec_server:6510", b"2+2\0", P.DEBUG_SOCKET, 4)
    assert lines == ["sock get  spec_server:6510 b=4", "sock got cnt=4 s=<2+2\\000>"]
    lines = P.socket_lines("send", "h:1", b"4\0", P.DEBUG_SOCKET | P.DEBUG_HEX)
    assert lines[0].startswith("sock send h:1 b=2 s=<\n0000  34 00")


@pytest.mark.parametrize("vers", [2, 3, 4])
@pytest.mark.parametrize("order", ORDERS)
def test_header_round_trip_each_version(vers, order):
    pkt = Packet(cmd=Cmd.CHAN_READ, sn=7, name="motor/tth/position", err=0, flags=0)
    raw = P.encode_packet(pkt, order, vers)
    assert len(raw) == P.HEADER_SIZES[vers]
    assert struct.unpack(order + "I", raw[:4])[0] == P.SV_SPEC_MAGIC
    d = P.Decoder()
    (out,) = P.events(d, raw)
    assert d.order == order and out.vers == vers and out.name == pkt.name and out.sn == 7


def test_future_larger_header_is_tolerated():
    base = P.encode_header(Packet(cmd=Cmd.HELLO, sn=3, name="x"), P.LITTLE, 4)
    # a version-5 header, 16 bytes longer, name still last
    ints = bytearray(base[:52]) + bytes(16)
    struct.pack_into("<ii", ints, 4, 5, 132 + 16)
    raw = bytes(ints) + base[52:]
    (pkt,) = P.events(P.Decoder(), raw)
    assert pkt.cmd == Cmd.HELLO and pkt.vers == 5 and pkt.name == "x" and pkt.sn == 3


scalars = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40
    ),
    st.integers(min_value=-(10**14), max_value=10**14),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
)
keys = st.text(
    alphabet=st.characters(blacklist_characters="\0\x1c", blacklist_categories=("Cs",)), max_size=12
)
array_types = st.sampled_from(sorted(P.ARRAY_DTYPES))


@st.composite
def arrays(draw):
    t = draw(array_types)
    dt = np.dtype(P.ARRAY_DTYPES[t])
    rows = draw(st.integers(1, 5))
    cols = draw(st.integers(1, 7))
    raw = draw(st.binary(min_size=rows * cols * dt.itemsize, max_size=rows * cols * dt.itemsize))
    arr = np.frombuffer(raw, dtype=dt).reshape(rows, cols)
    if dt.kind == "f":
        arr = np.nan_to_num(arr)
    return arr if rows > 1 else arr.reshape(cols)


def _wire(value, order):
    t, rows, cols, data, err = P.encode_value(value, order)
    pkt = Packet(cmd=Cmd.REPLY, sn=5, type=t, rows=rows, cols=cols, data=data, err=err)
    (out,) = P.events(P.Decoder(), P.encode_packet(pkt, order))
    return out, P.decode_value(out)


@settings(max_examples=150, deadline=None)
@given(scalars, st.sampled_from(ORDERS))
def test_scalar_round_trip(value, order):
    pkt, back = _wire(value, order)
    assert pkt.type == Type.STRING and pkt.data.endswith(b"\0")
    if isinstance(value, str):
        assert back == value
    else:
        assert float(back) == pytest.approx(float(value), rel=1e-14, abs=1e-300)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(keys, st.one_of(keys, st.integers(-1000, 1000)), max_size=8),
    st.sampled_from(ORDERS),
)
def test_assoc_round_trip(items, order):
    pkt, back = _wire(items, order)
    assert pkt.type == Type.ASSOC
    assert pkt.data.endswith(b"\0\0") or not items
    assert back == {k: (v if isinstance(v, str) else str(v)) for k, v in items.items()}


@settings(max_examples=150, deadline=None)
@given(arrays(), st.sampled_from(ORDERS))
def test_array_round_trip_both_orders(arr, order):
    pkt, back = _wire(arr, order)
    assert pkt.type == P.array_type(arr)
    # no trailing NUL after array data; vectors are one row
    assert len(pkt.data) == arr.size * arr.dtype.itemsize
    if arr.ndim == 1:
        assert (pkt.rows, pkt.cols) == (1, arr.size)
    np.testing.assert_array_equal(back, arr)


def test_array_data_is_in_the_clients_byte_order():
    arr = np.array([1.0, 2.0])
    _, _, _, little, _ = P.encode_value(arr, P.LITTLE)
    _, _, _, big, _ = P.encode_value(arr, P.BIG)
    assert little == struct.pack("<2d", 1, 2) and big == struct.pack(">2d", 1, 2)


def test_array_accepts_one_trailing_nul_and_rejects_wrong_size():
    data = struct.pack("<3i", 1, 2, 3)
    np.testing.assert_array_equal(P.decode_array(Type.ARR_LONG, 1, 3, data + b"\0"), [1, 2, 3])
    with pytest.raises(P.ValueDecodeError):
        P.decode_array(Type.ARR_LONG, 1, 4, data)


def test_string_array_layout():
    arr = np.array(["ab", "c", ""])
    t, rows, cols, data, _ = P.encode_value(arr)
    assert (t, rows, cols, data) == (Type.ARR_STRING, 1, 3, b"ab\0c\0\0")
    assert list(P.decode_array(t, rows, cols, data)) == ["ab", "c", ""]
    # a character matrix without NULs is cut into rows of cols characters
    assert list(P.decode_array(t, 2, 3, b"abcdef")) == ["abc", "def"]


def test_error_value_and_two_dimensional_keys():
    t, _, _, data, err = P.encode_value(P.ErrorValue("bad", 2))
    assert (t, data, err) == (Type.ERROR, b"bad\0", 2)
    flat = P.decode_assoc(P.encode_assoc({"a": {"1": "x", "2": "y"}, "b": 3}))
    assert flat == {"a\x1c1": "x", "a\x1c2": "y", "b": "3"}
    assert P.nest_assoc(flat) == {"a": {"1": "x", "2": "y"}, "b": "3"}


def test_sv_double_accepted_binary_or_text():
    assert P.decode_double(struct.pack("<d", 2.5), P.LITTLE) == 2.5
    assert P.decode_double(b"7.25\0", P.LITTLE) == 7.25


def test_numbers_use_percent_15g():
    assert P.format_number(25.000001373291) == "25.000001373291"
    assert P.format_number(1 / 3) == "0.333333333333333"
    assert P.format_number(4.0) == "4" and P.format_number(1e20) == "1e+20"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 200), max_size=30), st.sampled_from(ORDERS), st.sampled_from([2, 3, 4])
)
def test_any_split_of_the_stream(cuts, order, vers):
    packets = [
        Packet(cmd=Cmd.HELLO, sn=1),
        Packet(cmd=Cmd.CMD_WITH_RETURN, sn=2, data=b"p 1+1\0"),
        P.make_packet(Cmd.CHAN_SEND, {"k": "v"}, name="var/x", order=order),
        P.make_packet(Cmd.CHAN_SEND, np.arange(5, dtype="i2"), name="var/y", order=order),
    ]
    stream = b"".join(P.encode_packet(p, order, vers) for p in packets)
    d = P.Decoder()
    out = []
    pos = 0
    for c in cuts:
        out += P.events(d, stream[pos : pos + c])
        pos += c
    out += P.events(d, stream[pos:])
    assert [(p.cmd, p.sn, p.name, p.data) for p in out] == [
        (p.cmd, p.sn, p.name, p.data) for p in packets
    ]
    np.testing.assert_array_equal(P.decode_value(out[3]), np.arange(5))


def test_garbage_magic_is_fatal():
    d = P.Decoder()
    with pytest.raises(P.ProtocolError):
        P.events(d, b"GET / HTTP/1.0\r\n\r\n")
    with pytest.raises(P.ProtocolError):  # the stream cannot go on
        P.events(d, P.encode_packet(Packet(cmd=Cmd.HELLO)))


def test_huge_len_refused_before_buffering():
    hdr = bytearray(P.encode_header(Packet(cmd=Cmd.CHAN_SEND, name="var/x")))
    struct.pack_into("<I", hdr, 40, 3_000_000_000)
    d = P.Decoder(max_data=1 << 20)
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.events(d, bytes(hdr))
    assert d.pending() == 0


def test_bad_header_size_is_fatal():
    hdr = bytearray(P.encode_header(Packet(cmd=Cmd.HELLO)))
    struct.pack_into("<I", hdr, 8, 10_000_000)
    with pytest.raises(P.ProtocolError):
        P.events(P.Decoder(), bytes(hdr))


def test_unknown_command_and_unterminated_name_are_not_fatal():
    bad_cmd = P.encode_packet(Packet(cmd=99, sn=4))
    hdr = bytearray(P.encode_header(Packet(cmd=Cmd.CHAN_READ, sn=5, name="x")))
    hdr[52:132] = b"y" * 80
    good = P.encode_packet(Packet(cmd=Cmd.HELLO, sn=6))
    out = P.events(P.Decoder(), bad_cmd + bytes(hdr) + good)
    assert isinstance(out[0], P.BadPacket) and out[0].packet.sn == 4
    assert isinstance(out[1], P.BadPacket) and "NUL" in str(out[1]) and out[1].packet.sn == 5
    assert isinstance(out[2], Packet) and out[2].sn == 6


def test_byte_order_switch_inside_a_connection_is_fatal():
    a = P.encode_packet(Packet(cmd=Cmd.HELLO), P.LITTLE)
    b = P.encode_packet(Packet(cmd=Cmd.HELLO), P.BIG)
    d = P.Decoder()
    d.feed(a + b)
    assert isinstance(d.next_event(), Packet)
    with pytest.raises(P.ProtocolError):
        d.next_event()


@pytest.mark.parametrize(
    "data",
    [b"a\0b\0", b"a\0", b"a\0b\0c\0\0", b"abc"],
    ids=["no-extra-nul", "key-only", "odd-items", "no-nul"],
)
def test_bad_assoc_raises(data):
    with pytest.raises(P.ValueDecodeError):
        P.decode_assoc(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_never_crashes_the_decoder(blob):
    d = P.Decoder(max_data=1 << 16)
    try:
        for item in P.events(d, blob):
            assert isinstance(item, Packet | P.BadPacket)
    except P.ProtocolError:
        pass  # fatal for the stream: allowed
    assert d.pending() <= (1 << 16) + P.MAX_HEADER_SIZE


def test_func_split():
    assert P.split_func(b"mymac\0'tth'\0003\0001.5\0") == ["mymac", "'tth'", "3", "1.5"]
    assert P.split_func(b"1+1\0") == ["1+1"]
    assert P.split_func(b"") == []


def test_bulk_receive_of_a_large_data_section():
    arr = np.arange(100_000, dtype=">f8")
    pkt = P.make_packet(Cmd.REPLY, arr, sn=3, order=P.BIG)
    raw = P.encode_packet(pkt, P.BIG)
    d = P.Decoder()
    assert P.events(d, raw[:1000]) == []
    assert d.data_remaining() == len(raw) - 1000
    buf, have = d.bulk_buffer()
    assert have == 1000 - 132 and len(buf) == 800_000
    buf[have:] = raw[1000:]
    d.bulk_done(buf)
    (out,) = P.events(d)
    np.testing.assert_array_equal(P.decode_value(out), np.arange(100_000))
    # the decoder is ready for the next packet
    (nxt,) = P.events(d, P.encode_packet(Packet(cmd=Cmd.HELLO, sn=4), P.BIG))
    assert nxt.sn == 4


def test_func_command_shapes():
    def is_fn(name):
        return name in ("mymac", "sqrt")

    assert P.func_command(b"1+1\0", is_fn) == "1+1"
    assert P.func_command(b"mymac('tth', 3)\0", is_fn) == "mymac('tth', 3)"
    assert P.func_command(b"mymac\0'tth'\x003\x001.5\0", is_fn) == "mymac('tth', 3, 1.5)"
    assert P.func_command(b"mv\0tth\x001\0", is_fn) == "mv tth 1"
    assert P.func_command(b"", is_fn) == ""


@pytest.mark.parametrize(
    "cmd, sn, due",
    [
        (Cmd.CMD_WITH_RETURN, 5, True),
        (Cmd.FUNC_WITH_RETURN, 0, True),
        (Cmd.CHAN_READ, 9, True),
        (Cmd.CHAN_SEND, 0, True),
        (Cmd.CMD, 4, False),
        (Cmd.FUNC, 4, False),
        (Cmd.REGISTER, 4, False),
        (Cmd.UNREGISTER, 0, False),
        (Cmd.ABORT, 3, False),
        (Cmd.CLOSE, 3, False),
        (Cmd.EVENT, 0, False),
        (Cmd.REPLY, 8, True),
        (99, 0, False),
        (99, 2, True),
    ],
)
def test_which_bad_requests_get_an_error_reply(cmd, sn, due):
    assert P.error_reply_due(Packet(cmd=cmd, sn=sn)) is due


def test_hello_name_without_nul_is_not_a_problem():
    raw = bytearray(P.encode_packet(Packet(cmd=Cmd.HELLO, sn=3)))
    raw[52:132] = b"d" * 80
    (pkt,) = P.events(P.Decoder(), bytes(raw))
    assert isinstance(pkt, Packet) and pkt.cmd == Cmd.HELLO and pkt.sn == 3
    raw[24:28] = struct.pack("<i", Cmd.CHAN_READ)
    (err,) = P.events(P.Decoder(), bytes(raw))
    assert isinstance(err, P.BadPacket)


@pytest.mark.parametrize("client, reply", [(2, 2), (3, 3), (4, 4), (5, 4), (17, 4), (None, 4)])
def test_reply_version_is_min_of_client_and_4(client, reply):
    assert P.reply_version(client) == reply

"""marserver's pure protocol core: framing, swapping, records (hypothesis)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.badinput import BadInput
from marserver import protocol as P

pytestmark = pytest.mark.timeout(120)

HW = st.sampled_from([P.MAR345, P.DTB])
I32 = st.integers(-(2**31), 2**31 - 1)


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def test_record_sizes_match_the_documented_layouts():
    assert P.MAR345.sizes == {
        P.Port.COMM: 60,
        P.Port.STAT: 404,
        P.Port.DATA: 16386,
        P.Port.MESS: 84,
    }
    assert P.DTB.sizes == {P.Port.COMM: 172, P.Port.STAT: 560, P.Port.DATA: 16, P.Port.MESS: 84}
    assert len(P.encode_command(P.MAR345, P.Command(P.Cmd.MOVE, 2, (1, 5)))) == 60
    assert len(P.encode_command(P.DTB, P.Command(3, 1, (1,) * 8))) == 172
    assert len(P.encode_status(P.MAR345, P.new_status(P.MAR345))) == 404
    assert len(P.encode_status(P.DTB, P.new_status(P.DTB))) == 560
    assert len(P.encode_message("MESS hello")) == 84
    assert len(P.encode_data_block(1, bytes(16384))) == 16386
    assert P.MAR345.port_number(P.Port.MESS) == 4444 and P.DTB.port_number(P.Port.COMM) == 4451


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from([16, 60, 84, 404, 560]),
    nrec=st.integers(0, 12),
    tail=st.integers(0, 559),
    points=st.lists(st.integers(0, 10**6), max_size=20),
    seed=st.integers(0, 255),
)
def test_record_framer_yields_whole_records_in_any_split(size, nrec, tail, points, seed):
    tail %= size
    stream = bytes((seed + i * 7) & 0xFF for i in range(nrec * size + tail))
    fr = P.RecordFramer(size)
    got = b""
    for piece in cuts(stream, points):
        fr.feed(piece)
        ev = fr.next_event()
        chunk = b"" if ev is None else ev.data
        assert fr.next_event() is None
        assert len(chunk) % size == 0
        got += chunk
        assert fr.pending() < size
    assert got == stream[: nrec * size]
    assert fr.pending() == tail
    assert fr.reset() == tail and fr.pending() == 0


def drain(fr: P.CommandFramer, piece: bytes) -> tuple[list[bytes], list[tuple[str, int]]]:
    """Feed one piece; (records, [(reason, size)]) of the events it completed."""
    fr.feed(piece)
    got, bad = [], []
    while (ev := fr.next_event()) is not None:
        if isinstance(ev, BadInput):
            bad.append((ev.reason, ev.size))
        else:
            got.append(ev.data)
    return got, bad


@settings(max_examples=300, deadline=None)
@given(hw=HW, data=st.binary(max_size=2000), points=st.lists(st.integers(0, 4000), max_size=20))
def test_fuzz_command_framer_any_bytes_any_split(hw, data, points):
    """Any bytes in any split: only CommandRecords or BadInput, nothing raised, bounded."""
    fr = P.CommandFramer(hw)
    size = hw.record_size(P.Port.COMM)
    accounted = 0
    for piece in cuts(data, points):
        fr.feed(piece)
        while (ev := fr.next_event()) is not None:
            assert isinstance(ev, P.CommandRecord | P.BadCommand | P.Unsynchronised)
            if isinstance(ev, BadInput):
                assert ev.size > 0 and ev.reason
                accounted += ev.size
            else:
                assert len(ev.data) == size and P.command_error(hw, ev.data) is None
                accounted += size
        # the caller feeds only when next_event has nothing: less than a record stays
        assert fr.pending() < size
    assert accounted + fr.pending() == len(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1000), hw=HW)
def test_fuzz_decoders_return_a_record_or_bad_input(data, hw):
    for decoded, kind in (
        (P.decode_command(hw, data), P.Command),
        (P.decode_status(hw, data), P.Status),
        (P.decode_message(data), str),
    ):
        assert isinstance(decoded, kind | P.WrongSize)
    assert P.message_body(data) is None or len(data) == 84
    assert P.parse_setparam(data) is None or len(data) == 84


@settings(max_examples=100, deadline=None)
@given(
    hw=HW,
    cmds=st.lists(
        st.tuples(st.integers(0, 15), I32, st.lists(I32, min_size=8, max_size=8)), max_size=8
    ),
    points=st.lists(st.integers(0, 10**5), max_size=12),
)
def test_command_framer_passes_valid_commands_whole(hw, cmds, points):
    n = hw.n_params - 2
    recs = [P.encode_command(hw, P.Command(c, m, tuple(p[:n]), b"x")) for c, m, p in cmds]
    wire = b"".join(recs)
    fr = P.CommandFramer(hw)
    out = []
    for piece in cuts(wire, points):
        got, bad = drain(fr, piece)
        assert not bad
        out += got
    assert out == recs
    assert fr.pending() == 0


@settings(max_examples=100, deadline=None)
@given(
    garbage=st.binary(min_size=1, max_size=300).filter(lambda b: P.COMMAND_ID not in b),
    points=st.lists(st.integers(0, 10**4), max_size=10),
)
def test_command_framer_drops_garbage_and_resynchronises(garbage, points):
    hw = P.MAR345
    good = [P.encode_command(hw, P.Command(P.Cmd.SET, 0, (97, i))) for i in range(3)]
    bogus = b"IPS\x00" + struct.pack(">i", 999) + bytes(52)  # command code out of range
    wire = bogus + garbage + b"".join(good)
    fr = P.CommandFramer(hw)
    out, rejected = [], 0
    for piece in cuts(wire, points):
        got, bad = drain(fr, piece)
        out += got
        rejected += sum(n for _, n in bad)
    assert out == good
    assert rejected == len(bogus) + len(garbage)


@given(hw=HW, data=st.data())
def test_swap_is_an_involution_and_leaves_text_alone(hw, data):
    for port in P.ALL_PORTS:
        size = hw.record_size(port)
        k = data.draw(st.integers(0, 3))
        rec = data.draw(st.binary(min_size=size * k, max_size=size * k))
        once = P.swap_records(hw, port, rec)
        assert len(once) == len(rec)
        assert P.swap_records(hw, port, once) == rec
        if port is P.Port.MESS:
            assert once == rec


def test_swap_map():
    hw = P.MAR345
    c = P.encode_command(hw, P.Command(P.Cmd.MOVE, 2, (1, 0x01020304), b"clockset"))
    s = P.swap_records(hw, P.Port.COMM, c)
    assert s[:4] == b"IPS\x00" and s[32:] == c[32:]
    assert struct.unpack_from("<7i", s, 4) == struct.unpack_from(">7i", c, 4)
    st_ = P.new_status(hw)
    st_.set(P.W_COUNTER, 77)
    rec = P.encode_status(hw, st_)
    assert struct.unpack_from("<i", P.swap_records(hw, P.Port.STAT, rec), 4 + 4 * 61)[0] == 77
    blk = P.encode_data_block(0x0102, struct.pack(">8192H", *range(8192)))
    sw = P.swap_records(hw, P.Port.DATA, blk)
    assert sw[:2] == b"\x02\x01" and struct.unpack_from("<H", sw, 4)[0] == 1
    dtb = P.encode_dtb_sample(1, 2, 3, 4)
    assert struct.unpack("<4i", P.swap_records(P.DTB, P.Port.DATA, dtb)) == (1, 2, 3, 4)
    with pytest.raises(ValueError):
        P.swap_records(hw, P.Port.STAT, rec[:-1])


@given(
    hw=HW,
    cmd=st.integers(0, 15),
    mode=I32,
    pars=st.lists(I32, max_size=8),
    text=st.binary(max_size=20),
)
def test_command_round_trip(hw, cmd, mode, pars, text):
    n = hw.n_params - 2
    pars = tuple(pars[:n])
    text = text.replace(b"\0", b"x")
    c = P.Command(cmd, mode, pars, text)
    d = P.decode_command(hw, P.encode_command(hw, c))
    assert (d.cmd, d.mode, d.params, d.text) == (cmd, mode, pars + (0,) * (n - len(pars)), text)
    assert P.describe_command(hw, d)


def test_describe_command_decodes_known_fields():
    hw = P.MAR345
    text = P.describe_command(hw, P.Command(P.Cmd.MOVE, 2, (1, 9000, 500)))
    assert text.startswith("MOVE mode=2(OMEGA) ABS steps=9000 speed=500")
    assert "SET mode=0(READ) param=97" in P.describe_command(hw, P.Command(P.Cmd.SET, 0, (97, 0)))
    assert "'clockset 12:00:00'" in P.describe_command(
        hw, P.Command(P.Cmd.SHELL, 0, (), b"clockset 12:00:00\r")
    )
    assert P.command_error(hw, P.encode_command(hw, P.Command(3))) is None
    bad = b"IPS\x00" + struct.pack(">i", 16) + bytes(52)
    assert "unknown command code 16" in P.command_error(hw, bad)


@given(hw=HW, words=st.data(), ns=st.integers(0, 2**63 - 1))
def test_status_round_trip_counter_and_time(hw, words, ns):
    st_ = P.Status(
        words=words.draw(st.lists(I32, min_size=hw.status_words, max_size=hw.status_words))
    )
    hi, lo = P.pack_time(ns)
    st_.set(hw.sim_time_word, hi)
    st_.set(hw.sim_time_word + 1, lo)
    rec = P.encode_status(hw, st_)
    back = P.decode_status(hw, rec)
    assert back.words == st_.words
    assert P.status_counter(hw, rec) == st_.word(hw.counter_word)
    assert P.unpack_time(back.word(hw.sim_time_word), back.word(hw.sim_time_word + 1)) == ns


@given(param=st.integers(0, 99999), value=st.integers(-(10**9), 10**9))
def test_setparam_message_positions(param, value):
    rec = P.encode_message(P.setparam_message(param, value))
    body = P.message_body(rec)
    assert body[17:].split()[0] == str(param)
    assert body[34:].split()[0] == str(value)
    assert P.parse_setparam(rec) == (param, value)
    assert P.parse_setparam(P.encode_message("MESS SCAN_DATA    Ended o.k.")) is None


def test_message_is_cut_and_padded():
    rec = P.encode_message("MESS " + "x" * 200)
    assert len(rec) == 84 and P.decode_message(rec) == "MESS " + "x" * 75
    assert P.message_body(P.encode_message("no marker")) is None


def test_port_spec():
    hw = P.MAR345
    assert P.parse_port_spec("ALL", hw) == set(P.ALL_PORTS)
    assert P.parse_port_spec("stat,MESS", hw) == {P.Port.STAT, P.Port.MESS}
    assert P.parse_port_spec("4443", hw) == {P.Port.DATA}
    assert P.parse_port_spec("5001", hw, base=5000) == {P.Port.STAT}
    for bad in ("4451", "FOO", ",", "44x"):
        with pytest.raises(ValueError):
            P.parse_port_spec(bad, hw)


def test_task_end_messages_are_the_texts_clients_wait_for():
    # ADmar345 waits for these exact substrings in the MESSAGE stream
    assert "SCAN_DATA    Ended o.k." in P.task_end_message(P.Cmd.SCAN)
    assert "MODE_CHANGE  Ended o.k." in P.task_end_message(P.Cmd.CHANGE)
    assert P.task_end_message(P.Cmd.ERASE) == "MESS ERASE Ended o.k."
    assert P.task_end_message(99) == "MESS 99 Ended o.k."


@given(st.sampled_from([P.MAR345, P.DTB]), st.integers(0, 2**63 - 1), st.integers(0, 3))
def test_send_time_round_trip_at_any_record(hw, ns, k):
    s = P.new_status(hw)
    P.set_send_time(hw, s, ns)
    size = hw.record_size(P.Port.STAT)
    chunk = bytes(size * k) + P.encode_status(hw, s)
    assert P.send_time(hw, chunk, size * k) == ns


def test_data_block_renumbering():
    buf = bytearray(P.encode_data_block(1, bytes(16384)) * 2)
    P.set_data_block_number(buf, 16386, 70000)
    assert P.data_block_number(buf) == 1 and P.data_block_number(buf, 16386) == 70000 % 65536

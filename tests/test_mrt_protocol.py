"""mrt pure cores: UDP codec, stream v1 codec, client state machine, series store rules."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.badinput import BadInput
from mrt import protocol
from mrt.protocol import (
    BadMessage,
    ExtendedPong,
    FrameFetch,
    Header,
    Image,
    JsonPong,
    PacketReply,
    PacketRequest,
    Ping,
    Pong,
    SeriesEnd,
)
from mrt.series import NO_FRAME, SeriesStore

pytestmark = pytest.mark.timeout(120)

u32 = st.integers(0, 0xFFFFFFFF)


# -- UDP codec -----------------------------------------------------------------------
def test_seed_layouts_byte_exact():
    assert Ping().encode() == b"\x00"
    assert Pong(7, 100).encode() == b"\x01\x00\x00\x00\x07\x00\x00\x00\x64"
    assert PacketRequest(2, 10000).encode() == b"\x02" + struct.pack(">II", 2, 10000)
    r = PacketReply(0, 1, 20, 30, b"abc").encode()
    assert r == b"\x03" + struct.pack(">IIII", 0, 1, 20, 30) + b"abc"
    x = ExtendedPong(1, 5, 16, 1028, 512, "lyso").encode()
    assert x == struct.pack(">BIBHHIH", 1, 1, 16, 1028, 512, 5, 4) + b"lyso"


@given(u32, u32)
def test_request_round_trip(frame, start):
    assert protocol.decode_request(PacketRequest(frame, start).encode()) == PacketRequest(
        frame, start
    )


@given(u32, u32, u32, u32, st.binary(max_size=64))
def test_reply_round_trip(pend, frame, start, total, payload):
    r = PacketReply(pend, frame, start, total, payload)
    assert protocol.decode_reply(r.encode()) == r


@given(u32, u32, st.integers(0, 255), st.integers(0, 65535), st.integers(0, 65535))
def test_pongs_round_trip(sid, count, bits, w, h):
    assert protocol.decode_reply(Pong(sid, count).encode()) == Pong(sid, count)
    x = ExtendedPong(sid, count, bits, w, h, "n\xe9")
    assert protocol.decode_reply(x.encode(), extended=True) == x


@given(st.binary(max_size=40))
@settings(max_examples=400)
def test_garbage_datagrams_give_errors_not_exceptions(data):
    for msg in (
        protocol.decode_request(data),
        protocol.decode_reply(data),
        protocol.decode_reply(data, extended=True),
    ):
        assert isinstance(
            msg,
            protocol.BadDatagram
            | Ping
            | Pong
            | ExtendedPong
            | JsonPong
            | PacketRequest
            | PacketReply,
        )
    for fmt in ("auto", "plain", "extended", "json"):
        msg = protocol.decode_pong(data, fmt)
        assert isinstance(msg, protocol.BadDatagram | Pong | ExtendedPong | JsonPong)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x02" + b"\x00" * 7, b"\x02" + b"\x00" * 9, b"\x01", b"\x03", b"\x09"],
)
def test_bad_requests_are_errors(data):
    bad = protocol.decode_request(data)
    assert isinstance(bad, protocol.BadDatagram) and isinstance(bad, BadInput)


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x00", b"\x00" * 9, b"\x00junk" * 100])
def test_any_datagram_starting_with_zero_is_a_ping(data):
    assert protocol.decode_request(data) == Ping()


def test_json_pong_round_trip_and_upstream_form():
    p = JsonPong(7, 100, name="lyso", width=2068, height=2162, bits=16, mask_path="/m.h5")
    data = p.encode()
    sid, count, n = struct.unpack_from(">IIH", data, 1)
    assert data[0] == 1 and (sid, count, n) == (7, 100, len(data) - 11)
    text = data[11:].decode("latin-1")
    inner = json.loads(text)
    assert isinstance(inner, str)  # the upstream's JSON string holding the object
    assert json.loads(inner) == {
        "id": 7,
        "name": "lyso",
        "shape": [2162, 2068],
        "bits_per_pixel": 16,
        "frame_count": 100,
        "mask_path": "/m.h5",
    }
    for fmt in ("json", "auto"):
        got = protocol.decode_pong(data, fmt)
        assert (got.series_id, got.frame_count, got.name, got.width, got.height, got.bits) == (
            7,
            100,
            "lyso",
            2068,
            2162,
            16,
        )
        assert got.mask_path == "/m.h5"
    # a plain JSON object (not double-encoded) is accepted as well
    obj = json.dumps(p.metadata()).encode()
    plain = struct.pack(">BIIH", 1, 7, 100, len(obj)) + obj
    assert protocol.decode_pong(plain, "auto").name == "lyso"
    # no series: the 11-byte header with length 0
    assert JsonPong().encode() == b"\x01" + b"\x00" * 10
    assert protocol.decode_pong(JsonPong().encode(), "auto") == JsonPong()
    # a name too long for the u16 length is shortened, never a broken datagram
    long = JsonPong(1, 1, name="x" * 70000, width=1, height=1, bits=8).encode()
    assert len(long) - 11 <= 0xFFFF and protocol.decode_pong(long, "json").series_id == 1


def test_auto_pong_tells_the_generations_apart():
    assert protocol.decode_pong(Pong(3, 4).encode(), "auto") == Pong(3, 4)
    x = ExtendedPong(3, 4, 16, 5, 6, "nm")
    assert protocol.decode_pong(x.encode(), "auto") == x
    assert protocol.decode_pong(ExtendedPong().encode(), "auto") == ExtendedPong()
    assert isinstance(protocol.decode_pong(b"\x01" * 13, "auto"), protocol.BadDatagram)


# -- stream codec -----------------------------------------------------------------------
def test_stream_messages_round_trip():
    cfg = {"nimages": 5, "ntrigger": 2, "x_pixels_in_detector": 4}
    for detail in ("none", "basic", "all"):
        parts = protocol.encode_header(
            3,
            detail,
            cfg,
            flatfield=b"\0" * 32,
            pixel_mask=b"\0" * 32,
            countrate=b"\0" * 16,
            shape_xy=(4, 2),
            appendix=b'"my series"',
        )
        h = protocol.decode_stream(parts)
        assert isinstance(h, Header) and h.detail == detail and h.series == 3
        assert h.name == "my series" and not h.warnings
        assert h.frame_count == (10 if detail != "none" else 0)
        if detail == "all":
            assert h.flatfield[0] == [4, 2] and h.countrate[0] == [2, 2]
    img = protocol.decode_stream(
        protocol.encode_image(3, 0, b"\1\2" * 8, (2, 4), "uint16", "<", appendix=b"x")
    )
    assert isinstance(img, Image)
    assert (img.shape, img.bits, img.encoding, bytes(img.data)) == ((2, 4), 16, "<", b"\1\2" * 8)
    assert img.appendix == b"x" and img.frame == 0 and not img.warnings
    assert protocol.decode_stream(protocol.encode_end(3)) == SeriesEnd(3)


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [b"not json"],
        [b"[1,2]"],
        [b'{"htype":"dimage_d-1.0","shape":[4,4]}'],
        [b'{"htype":"dconfig-1.0"}'],
        [b"\x00\x01\x02"],
        [b'{"htype":"dimage-1.0","frame":0}', b"{}"],
        [
            b'{"htype":"dimage-1.0"}',
            b'{"htype":"dimage_d-1.0","shape":[4],"type":"uint8","encoding":"<"}',
            b"x",
            b"{}",
        ],
        [
            b'{"htype":"dimage-1.0"}',
            b'{"htype":"dimage_d-1.0","shape":[2,2],"type":"uint8","encoding":"zstd"}',
            b"xxxx",
            b"{}",
        ],
        [b'{"htype":"whatever-9"}'],
    ],
)
def test_bad_stream_messages_are_errors(parts):
    assert isinstance(protocol.decode_stream(parts), BadMessage)


@given(st.lists(st.binary(max_size=60), max_size=10))
@settings(max_examples=300)
def test_stream_garbage_never_raises(parts):
    protocol.decode_stream(parts)


@given(
    st.lists(
        st.one_of(
            st.just(b'{"htype":"dheader-1.0","header_detail":"basic"}'),
            st.just(b'{"htype":"dimage-1.0","frame":1}'),
            st.just(b'{"htype":"dimage_d-1.0","shape":[2,2],"type":"uint8","encoding":"<"}'),
            st.just(b'{"nimages":"x","ntrigger":null}'),
            st.binary(max_size=8),
        ),
        max_size=10,
    )
)
def test_stream_near_misses_never_raise(parts):
    msg = protocol.decode_stream(parts)
    if isinstance(msg, Header):
        assert msg.frame_count >= 0 and isinstance(msg.name, str)


def test_header_oddities_tolerated():
    h = protocol.decode_stream(
        [
            json.dumps(
                {"htype": "dheader-1.0", "series": "08/15", "header_detail": "basic"}
            ).encode(),
            json.dumps({"nimages": 4, "ntrigger": None}).encode(),
        ]
    )
    assert h.frame_count == 4 and h.name == "series08/15"
    h = protocol.decode_stream([b'{"htype":"dheader-1.0","series":1,"header_detail":"all"}'])
    assert isinstance(h, Header) and h.frame_count == 0 and h.warnings
    h = protocol.decode_stream(
        [b'{"htype":"dheader-1.0","series":1,"header_detail":"none"}', b"\xff\xfe"]
    )
    assert h.name == "UNICODE_DECODE_ERROR"


# -- client state machine -------------------------------------------------------------
def test_fetch_state_machine():
    f = FrameFetch(2)
    assert f.next_request() == PacketRequest(0, 0)
    assert f.on_reply(PacketReply(0, 0, 5, 6, b"x")) == "stale"
    assert f.on_reply(PacketReply(0, 0, 0, 0)) == "wait"
    assert f.on_reply(PacketReply(0, 0, 0, 6, b"abcd")) == "progress"
    assert f.next_request() == PacketRequest(0, 4)
    assert f.on_reply(PacketReply(0, 0, 0, 6, b"abcd")) == "stale"  # duplicate
    assert f.on_reply(PacketReply(0, 0, 4, 6, b"ef")) == "progress"
    assert f.frames == [b"abcdef"] and f.next_request() == PacketRequest(1, 0)
    assert f.on_reply(PacketReply(0, 1, 0, 3, b"ghi")) == "done"
    assert f.done and f.frames == [b"abcdef", b"ghi"]
    g = FrameFetch(10)
    g.on_reply(PacketReply(0, 0, 0, 1, b"a"))
    assert g.on_reply(PacketReply(1, 1, 0, 0)) == "done"
    assert g.premature_end == 1 and g.frames == [b"a"]
    h = FrameFetch(0)
    assert h.on_reply(PacketReply(protocol.NO_FRAMES_ENDED, 0, 0, 0)) == "done"
    assert h.premature_end == 0 and h.frames == []


# -- series store ----------------------------------------------------------------------
def hdr(n=3, detail="basic", series=1):
    return Header(series, detail, {"nimages": n, "ntrigger": 1} if detail != "none" else None)


def img(data=b"0123456789", frame=None):
    return Image(1, frame, (1, len(data)), "uint8", "<", data)


def req(store, frame, start=0):
    replies, notes, _ = store.on_datagram(PacketRequest(frame, start).encode())
    return protocol.decode_reply(replies[0]) if replies else None


def pong(store):
    (reply,) = store.on_datagram(b"\x00")[0]
    return reply


def test_store_rules():
    s = SeriesStore(payload_size=4)
    assert pong(s) == Pong(0, 0).encode()
    assert req(s, 0) is None  # no series: ignored
    s.on_stream(hdr())
    assert pong(s) == Pong(1, 3).encode()
    assert req(s, 0) == PacketReply(0, 0, 0, 0)  # not there yet
    s.on_stream(img(b"abcdefghij"))
    s.on_stream(img(b"KLMNOP"))
    assert req(s, 0, 8) == PacketReply(0, 0, 8, 10, b"ij")
    assert req(s, 0, 99) == PacketReply(0, 0, 99, 10, b"")  # absurd offset
    assert req(s, 1, 0) == PacketReply(0, 1, 0, 6, b"KLMN")
    assert 0 not in s.cache  # evicted after the reply for frame 1
    assert req(s, 0) == PacketReply(0, 0, 0, 0)
    s.on_stream(SeriesEnd(1))
    assert req(s, 1, 4) == PacketReply(0, 1, 4, 6, b"OP")  # frame 1 still served
    assert req(s, 5) == PacketReply(2, 5, 0, 0)  # ended early: 2 frames were sent
    assert req(s, 1) == PacketReply(0, 1, 0, 6, b"KLMN")  # an empty reply releases nothing
    s.on_stream(hdr(series=2))  # new series drops the cache, next id
    assert pong(s) == Pong(2, 3).encode() and not s.cache


def test_store_bounds_and_eviction():
    s = SeriesStore(frame_limit=2, byte_limit=25)
    s.on_stream(hdr(10))
    assert s.has_room()
    s.on_stream(img())
    s.on_stream(img())
    assert not s.has_room()  # frame limit
    req(s, 1)
    assert s.has_room() and list(s.cache) == [1]
    assert s.fits(10) and not s.fits(16)  # byte limit
    s.on_stream(img())
    assert not s.has_room()
    req(s, 5)  # "not yet" for a frame ahead releases nothing: others may need them
    assert list(s.cache) == [1, 2]
    req(s, 2)  # a data reply for frame 2 releases everything below it
    assert list(s.cache) == [2] and s.has_room()


def test_store_released_only_after_a_data_reply():
    s = SeriesStore()
    s.on_stream(hdr(10))
    for _ in range(3):
        s.on_stream(img())
    assert req(s, 0xFFFFFFFF) == PacketReply(0, 0xFFFFFFFF, 0, 0)
    assert list(s.cache) == [0, 1, 2]  # a hostile "frame 2^32-1" releases nothing
    req(s, 1)
    assert list(s.cache) == [1, 2]


def test_store_disk_backed_spill_and_read_back():
    s = SeriesStore(byte_limit=32, disk_backed=True)
    s.on_stream(hdr(10))
    for _ in range(4):
        s.on_stream(img(b"01234567"))  # 4 x 8 bytes: full
    assert not s.fits(8)
    assert s.spill_to_fit(8) == 0  # nothing on disk yet: nothing leaves memory
    s.on_disk = 2
    assert s.spill_to_fit(8) == 1 and list(s.cache) == [1, 2, 3] and s.fits(8)
    assert s.stats.spilled == 1
    # frame 0 left memory: the store asks for it from disk, then answers with it
    replies, _, _ = s.on_datagram(PacketRequest(0, 0).encode())
    assert replies == [] and s.wanted_from_disk == 0
    s.set_disk_frame(1, 0, b"DISKDATA")
    assert req(s, 0) == PacketReply(0, 0, 0, 8, b"DISKDATA")
    assert s.stats.served_from_disk == 1
    # a frame the files cannot give is answered as not cached
    s.spill_to_fit(32)
    assert 1 not in s.cache
    s.on_datagram(PacketRequest(1, 0).encode())
    s.set_disk_frame(1, 1, None)
    assert req(s, 1) == PacketReply(0, 1, 0, 0)


def test_store_odd_streams():
    s = SeriesStore()
    n, notes = s.on_stream(img())
    assert n is None and "before any series" in notes[0].text
    _, notes = s.on_stream(SeriesEnd(1))
    assert notes and s.current is None
    s.on_stream(hdr(detail="none"))
    assert pong(s) == Pong(1, 0).encode()  # unknown count
    assert s.on_stream(img(frame=0))[0] == 0
    n, notes = s.on_stream(img(frame=5))
    assert n == 1 and any("gap" in x.text for x in notes)
    s.on_stream(SeriesEnd(1))
    assert s.on_stream(img())[0] is None  # after the end
    assert req(s, 2) == PacketReply(2, 2, 0, 0)
    _, notes = s.on_stream(BadMessage("junk"))
    assert s.stats.skipped_messages == 4 and "junk" in notes[0].text


def test_store_ended_without_frames_is_visible():
    s = SeriesStore()
    s.on_stream(hdr(5))
    s.on_stream(SeriesEnd(1))
    assert req(s, 0) == PacketReply(protocol.NO_FRAMES_ENDED, 0, 0, 0)


def test_store_extended_pong():
    s = SeriesStore(extended_pong=True)
    s.on_stream(Header(1, "basic", {"nimages": 2}, appendix=b"lyso_3"))
    assert protocol.decode_reply(s.pong(), True) == ExtendedPong()  # before the first image
    s.on_stream(Image(1, 0, (2, 3), "uint16", "<", b"\0" * 12))
    assert protocol.decode_reply(s.pong(), True) == ExtendedPong(1, 2, 16, 3, 2, "lyso_3")


@given(st.lists(st.tuples(st.sampled_from("hiepq"), st.integers(0, 6), st.integers(0, 30))))
@settings(max_examples=200)
def test_store_invariants_under_any_sequence(ops):
    s = SeriesStore(frame_limit=3, byte_limit=40, payload_size=7)
    for op, a, b in ops:
        if op == "h":
            s.on_stream(hdr(a))
        elif op == "i":
            if s.has_room():
                s.on_stream(img(b"x" * (b % 15 + 1)))
        elif op == "e":
            s.on_stream(SeriesEnd(1))
        elif op == "p":
            assert protocol.decode_reply(pong(s))
        else:
            replies, _, _ = s.on_datagram(PacketRequest(a, b).encode())
            for r in replies:
                rep = protocol.decode_reply(r)
                assert len(rep.payload) <= 7 and rep.frame == a
        assert len(s.cache) <= 3
        assert s.cache_bytes == sum(len(v) for v in s.cache.values()) <= 40 + 15
        assert list(s.cache) == sorted(s.cache)
        assert s._lowest == (min(s.cache) if s.cache else NO_FRAME)  # eviction's shortcut


def test_empty_image_is_refused_not_served():
    """A 0-byte frame would be answered with ``bytes in frame`` 0, which the
    protocol reserves for "not cached yet": a client would wait for it for ever."""
    parts = protocol.encode_image(1, 0, b"", (2, 2), "uint8", "<")
    msg = protocol.decode_stream(parts)
    assert isinstance(msg, BadMessage) and "no data" in msg.reason
    s = SeriesStore()
    s.on_stream(hdr(2))
    s.on_stream(msg)
    assert not s.cache and s.stats.skipped_messages == 1
    s.on_stream(
        protocol.decode_stream(protocol.encode_image(1, 1, b"\1" * 4, (2, 2), "uint8", "<"))
    )
    assert req(s, 0) == PacketReply(0, 0, 0, 4, b"\1" * 4)  # the next frame is frame 0


@pytest.mark.parametrize(
    "mode, nimages, ntrigger, count",
    [("ints", 5, 3, 15), ("exts", 5, 3, 15), ("inte", 5, 3, 3), ("exte", 1, 7, 7),
     ("exte", None, 4, 4), (None, 5, None, 5), ("inte", 5, None, 1)],
)  # fmt: skip
def test_frame_count_follows_the_trigger_mode(mode, nimages, ntrigger, count):
    """ints/exts: nimages per trigger; inte/exte: one image per trigger."""
    cfg = {"nimages": nimages, "ntrigger": ntrigger, "trigger_mode": mode}
    h = protocol.decode_stream(protocol.encode_header(1, "basic", cfg))
    assert h.frame_count == count
    s = SeriesStore()
    s.on_stream(h)
    assert pong(s) == Pong(1, count).encode()


@pytest.mark.parametrize("name", ["x" * 70000, "\u00e9" * 30000, "\u20ac" * 20000])
def test_pongs_of_long_names_fit_one_datagram(name):
    """A pong never exceeds the largest UDP payload; the name is cut, not dropped."""
    j = protocol.JsonPong(7, 10, name=name, width=4, height=2, bits=16).encode()
    assert len(j) <= protocol.MAX_DATAGRAM
    back = protocol.decode_reply(j, "json")
    assert back.name and name.startswith(back.name)
    x = protocol.ExtendedPong(7, 10, bits=16, width=4, height=2, name=name).encode()
    assert len(x) <= protocol.MAX_DATAGRAM

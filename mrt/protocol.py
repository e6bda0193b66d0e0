"""Mr. T wire formats, pure: the UDP request/reply protocol and EIGER stream v1.

UDP (all integers big-endian, byte 0 is the message type):

====  ==============  =========================================================
type  message         layout
====  ==============  =========================================================
0     Ping            type (1 byte; any datagram whose first byte is 0)
1     Pong            type, series id u32 (0 = none), frame count u32 (9 bytes)
1     extended Pong   type, series id u32, bits u8, width u16, height u16,
                      frame count u32, name length u16, name (latin-1)
1     JSON Pong       type, series id u32, frame count u32, length u16, then
                      ``length`` bytes of JSON text (latin-1): an object with
                      ``id``, ``name``, ``shape``, ``bits_per_pixel``,
                      ``frame_count``, ``mask_path``, or (the upstream's form)
                      a JSON string whose content is that object's JSON
2     Packet request  type, frame u32, start byte u32 (9 bytes)
3     Packet reply    type, premature end u32, frame u32, start byte u32,
                      bytes in frame u32, payload
====  ==============  =========================================================

EIGER stream v1 messages are ZeroMQ multipart messages whose first part is a
JSON object with an ``htype``: ``dheader-1.0`` (1, 2 or 8 parts for
``header_detail`` none, basic, all, plus an optional appendix),
``dimage-1.0`` (4 parts, 5 with an appendix) and ``dseries_end-1.0``.

Decoders return typed messages or a :class:`BadDatagram` /
:class:`BadMessage` value (:class:`common.badinput.BadInput`); they never
raise on bad input.  :class:`FrameFetch` is the client side of the UDP
procedure as a state machine (which request to send next, which reply to
accept).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from common.badinput import BadInput, quote

from . import codec

# -- UDP ------------------------------------------------------------------------
PING, PONG, PACKET_REQUEST, PACKET_REPLY = 0, 1, 2, 3
DEFAULT_PAYLOAD = 10000
U32_MAX = 0xFFFFFFFF
#: premature-end value of a series that ended before its first frame
NO_FRAMES_ENDED = U32_MAX

_PONG = struct.Struct(">BII")
#: the largest UDP payload over IPv4; a pong must fit into one datagram
MAX_DATAGRAM = 65507
_XPONG = struct.Struct(">BIBHHIH")
_REQ = struct.Struct(">BII")
_REPLY = struct.Struct(">BIIII")
REPLY_HEADER = _REPLY.size


@dataclass(frozen=True)
class BadDatagram(BadInput):
    """A UDP datagram that is no message of the protocol (skipped)."""


@dataclass(frozen=True)
class BadMessage(BadInput):
    """A ZeroMQ stream message (or one of its parts) that cannot be used."""


#: pong generations: the seed's, the original's later (HEAD) and the newest (JSON)
PONG_FORMATS = ("plain", "extended", "json")
_JPONG = struct.Struct(">BIIH")
JSON_PONG_HEADER = _JPONG.size


@dataclass(frozen=True)
class Ping:
    def encode(self) -> bytes:
        return bytes([PING])


@dataclass(slots=True)
class Pong:
    series_id: int = 0
    frame_count: int = 0

    def encode(self) -> bytes:
        return _PONG.pack(PONG, self.series_id, self.frame_count)


@dataclass(slots=True)
class ExtendedPong:
    """The pong of the original's later versions: adds bits, shape and a name."""

    series_id: int = 0
    frame_count: int = 0
    bits: int = 0
    width: int = 0
    height: int = 0
    name: str = ""

    def encode(self) -> bytes:
        name = self.name.encode("latin-1", "ignore")[: MAX_DATAGRAM - _XPONG.size]
        return (
            _XPONG.pack(
                PONG,
                self.series_id,
                self.bits & 0xFF,
                min(self.width, 0xFFFF),
                min(self.height, 0xFFFF),
                self.frame_count,
                len(name),
            )
            + name
        )


@dataclass(slots=True)
class JsonPong:
    """The newest upstream pong: counts plus a JSON object of series metadata.

    ``encode`` writes the object as the upstream does, a JSON string holding
    the object's JSON ("double-encoded"); ``decode_reply`` accepts that and a
    plain JSON object.  A name that would make the pong longer than one UDP
    datagram (:data:`MAX_DATAGRAM`) is cut to the longest prefix that fits.
    No series: the 11-byte header with length 0.
    """

    series_id: int = 0
    frame_count: int = 0
    name: str = ""
    width: int = 0
    height: int = 0
    bits: int = 0
    mask_path: str = ""
    extra: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        return {
            "id": self.series_id,
            "name": self.name,
            "shape": [self.height, self.width],
            "bits_per_pixel": self.bits,
            "frame_count": self.frame_count,
            "mask_path": self.mask_path,
        }

    def encode(self) -> bytes:
        if self.series_id == 0:
            return _JPONG.pack(PONG, 0, 0, 0)
        meta = self.metadata()
        limit = MAX_DATAGRAM - _JPONG.size

        def text_of(m: dict) -> bytes:
            return json.dumps(json.dumps(m)).encode("latin-1")  # ASCII: escapes inside

        text = text_of(meta)
        if len(text) > limit:
            # the longest prefix of the name that fits (by its escaped length)
            name, lo, hi = meta["name"], 0, len(meta["name"])
            while lo < hi:
                mid = (lo + hi + 1) // 2
                meta["name"] = name[:mid]
                lo, hi = (mid, hi) if len(text_of(meta)) <= limit else (lo, mid - 1)
            meta["name"] = name[:lo]
            text = text_of(meta)
        if len(text) > limit:  # a mask path this long: drop the strings
            meta["name"], meta["mask_path"] = "", ""
            text = text_of(meta)
        return _JPONG.pack(PONG, self.series_id, self.frame_count, len(text)) + text


def _decode_json_pong(data: bytes) -> JsonPong | BadDatagram:
    _, sid, count, n = _JPONG.unpack_from(data)
    if len(data) != _JPONG.size + n:
        return BadDatagram(f"JSON pong of {len(data)} bytes, header says {n} + 11", len(data))
    if n == 0:
        return JsonPong(sid, count)
    try:
        value = json.loads(data[_JPONG.size :].decode("latin-1"))
        if isinstance(value, str):  # the upstream's JSON string holding the JSON object
            value = json.loads(value)
    except ValueError:
        return BadDatagram("JSON pong whose text is not JSON", len(data))
    if not isinstance(value, dict):
        return BadDatagram("JSON pong whose JSON is not an object", len(data))
    shape = value.get("shape")
    h = w = 0
    if isinstance(shape, list) and len(shape) == 2 and _positive_ints(shape):
        h, w = shape
    bits = value.get("bits_per_pixel")
    name, mask = value.get("name"), value.get("mask_path")
    return JsonPong(
        sid,
        count,
        name=name if isinstance(name, str) else "",
        width=w,
        height=h,
        bits=bits if type(bits) is int and bits in (8, 16, 32) else 0,
        mask_path=mask if isinstance(mask, str) else "",
        extra=value,
    )


def decode_pong(data: bytes, fmt: str = "auto") -> Pong | ExtendedPong | JsonPong | BadDatagram:
    """A pong of generation ``fmt`` (``plain``, ``extended``, ``json``), or ``auto``.

    ``auto`` tells them apart by size: 9 bytes is plain; 11 + the u16 at byte 9
    with JSON text after the header is JSON; 16 + the u16 at byte 14 is extended.
    """
    n = len(data)
    if fmt == "auto":
        if n == _PONG.size:
            fmt = "plain"
        elif n >= _JPONG.size and n == _JPONG.size + struct.unpack_from(">H", data, 9)[0]:
            got = _decode_json_pong(data)
            if isinstance(got, JsonPong):
                return got
            fmt = "extended"
        elif n >= _XPONG.size and n == _XPONG.size + struct.unpack_from(">H", data, 14)[0]:
            fmt = "extended"
        else:
            return BadDatagram(f"pong of {n} bytes, of no known layout", n)
    if fmt == "json":
        if n < _JPONG.size:
            return BadDatagram(f"JSON pong of {n} bytes, shorter than its header", n)
        return _decode_json_pong(data)
    if fmt == "extended":
        if n < _XPONG.size:
            return BadDatagram(f"extended pong of {n} bytes, shorter than its header", n)
        _, sid, bits, w, h, count, nlen = _XPONG.unpack_from(data)
        name = data[_XPONG.size : _XPONG.size + nlen].decode("latin-1")
        return ExtendedPong(sid, count, bits, w, h, name)
    if n != _PONG.size:
        return BadDatagram(f"pong of {n} bytes, expected {_PONG.size}", n)
    _, sid, count = _PONG.unpack(data)
    return Pong(sid, count)


@dataclass(slots=True)
class PacketRequest:
    frame: int
    start: int

    def encode(self) -> bytes:
        return _REQ.pack(PACKET_REQUEST, self.frame, self.start)


@dataclass(slots=True)
class PacketReply:
    premature_end: int
    frame: int
    start: int
    frame_bytes: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return (
            _REPLY.pack(PACKET_REPLY, self.premature_end, self.frame, self.start, self.frame_bytes)
            + self.payload
        )


def _u32(v: int) -> bool:
    return 0 <= v <= U32_MAX


def decode_request(data: bytes) -> Ping | PacketRequest | BadDatagram:
    """A datagram sent to the server: Ping or Packet request.

    Any datagram whose first byte is 0 is a ping, whatever its length (the
    upstream answers padded pings too)."""
    if not data:
        return BadDatagram("empty datagram")
    kind = data[0]
    if kind == PING:
        return Ping()
    if kind == PACKET_REQUEST:
        if len(data) != _REQ.size:
            return BadDatagram(
                f"packet request of {len(data)} bytes, expected {_REQ.size}", len(data)
            )
        _, frame, start = _REQ.unpack(data)
        return PacketRequest(frame, start)
    return BadDatagram(
        f"unexpected message type {kind} ({len(data)} bytes: {quote(data, 8)})", len(data)
    )


def decode_reply(
    data: bytes, extended: bool | str = False
) -> Pong | ExtendedPong | JsonPong | PacketReply | BadDatagram:
    """A datagram sent to the client: a Pong (``extended``: False = plain, True =
    extended, or a name of :data:`PONG_FORMATS` or ``auto``) or a Packet reply."""
    if not data:
        return BadDatagram("empty datagram")
    kind = data[0]
    if kind == PONG:
        fmt = extended if isinstance(extended, str) else ("extended" if extended else "plain")
        return decode_pong(data, fmt)
    if kind == PACKET_REPLY:
        if len(data) < _REPLY.size:
            return BadDatagram(
                f"packet reply of {len(data)} bytes, shorter than its header", len(data)
            )
        _, pend, frame, start, total = _REPLY.unpack_from(data)
        return PacketReply(pend, frame, start, total, bytes(data[_REPLY.size :]))
    return BadDatagram(f"unexpected message type {kind} ({len(data)} bytes)", len(data))


def encode_reply_header(premature_end: int, frame: int, start: int, frame_bytes: int) -> bytes:
    return _REPLY.pack(PACKET_REPLY, premature_end, frame, start, frame_bytes)


# -- client procedure -----------------------------------------------------------
@dataclass
class FrameFetch:
    """Client side of one series: request byte ranges in order, accept matches.

    ``next_request()`` is the request to (re)send; ``on_reply(reply)`` returns
    True when the reply was the one awaited and advanced the state (stale or
    duplicate replies return False and change nothing).  ``done`` is set when
    ``frame_count`` frames are complete, or a premature end has been reached.
    """

    frame_count: int  # 0 = unknown (header_detail none): stop at the premature end
    frames: list[bytes] = field(default_factory=list)
    frame: int = 0
    start: int = 0
    premature_end: int | None = None
    done: bool = False
    _parts: list[bytes] = field(default_factory=list)

    def next_request(self) -> PacketRequest:
        return PacketRequest(self.frame, self.start)

    def _finish_frame(self) -> None:
        self.frames.append(b"".join(self._parts))
        self._parts = []
        self.frame += 1
        self.start = 0
        if self.frame_count and self.frame >= self.frame_count:
            self.done = True

    def on_reply(self, reply: PacketReply) -> str:
        """Apply a reply; returns ``"stale"`` (not the awaited one: ignore),
        ``"wait"`` (frame not there yet: ask again later), ``"progress"`` or
        ``"done"``."""
        if self.done or reply.frame != self.frame or reply.start != self.start:
            return "stale"
        if reply.premature_end:
            # the series ended early; frames 0 .. end-1 were sent (mr_t(1)).
            # The server says so only for a frame it no longer has.
            self.premature_end = (
                0 if reply.premature_end == NO_FRAMES_ENDED else reply.premature_end
            )
            self.done = True
            return "done"
        if reply.frame_bytes == 0:
            return "wait"
        if self.start + len(reply.payload) > reply.frame_bytes:
            return "stale"  # inconsistent with the frame size: ignore it
        if reply.payload:
            self._parts.append(reply.payload)
            self.start += len(reply.payload)
        if self.start >= reply.frame_bytes:
            self._finish_frame()
            return "done" if self.done else "progress"
        return "progress" if reply.payload else "wait"


# -- EIGER stream v1 -------------------------------------------------------------
HEADER, IMAGE, SERIES_END = "dheader-1.0", "dimage-1.0", "dseries_end-1.0"
DETAIL_PARTS = {"none": 1, "basic": 2, "all": 8}
#: trigger modes in which each trigger's length is one exposure: one image per trigger
ENABLE_TRIGGER_MODES = ("inte", "exte")
MAX_JSON = 1 << 20


@dataclass
class Header:
    series: Any  # the detector's series id (usually int; some send strings)
    detail: str
    config: dict | None = None
    flatfield: tuple[list, str, bytes] | None = None  # (shape [X,Y], type, data)
    pixel_mask: tuple[list, str, bytes] | None = None
    countrate: tuple[list, str, bytes] | None = None
    appendix: bytes | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def frame_count(self) -> int:
        """Images in the series from the config; 0 when unknown.

        nimages x ntrigger, except in the trigger modes ``inte`` and ``exte``
        where every trigger makes one image (its length is the exposure)."""
        if not self.config:
            return 0
        n, t = self.config.get("nimages"), self.config.get("ntrigger")
        if t is None:
            t = 1
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            return 0
        if self.config.get("trigger_mode") in ENABLE_TRIGGER_MODES:
            return min(t, U32_MAX)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return 0
        return min(n * t, U32_MAX)

    @property
    def name(self) -> str:
        """Series name: the appendix if it is (or decodes to) a string."""
        if self.appendix is not None:
            try:
                text = bytes(self.appendix).decode("utf-8")
            except UnicodeDecodeError:
                return "UNICODE_DECODE_ERROR"
            try:
                value = json.loads(text)
            except ValueError:
                return text
            if isinstance(value, str):
                return value
        return f"series{self.series}"


@dataclass
class Image:
    series: Any
    frame: int | None
    shape: tuple[int, int]  # (height, width), numpy order
    dtype: str
    encoding: str
    data: Any  # bytes or memoryview, as received
    config: Any = None  # the dconfig-1.0 part as received (times; not used by Mr. T)
    appendix: bytes | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def bits(self) -> int:
        return codec.TYPE_BITS.get(self.dtype, 32)

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass
class SeriesEnd:
    series: Any


StreamMessage = Header | Image | SeriesEnd


_json_decode = json.JSONDecoder().decode


def _q(value) -> str:
    """A value from the stream in a reason text: short and escaped (common.badinput)."""
    return quote(str(value).encode("utf-8", "backslashreplace"))


def _json(part, what: str) -> dict | BadMessage:
    if len(part) > MAX_JSON:
        return BadMessage(f"{what}: {len(part)} bytes of JSON, more than {MAX_JSON}")
    try:
        # the stream's JSON is UTF-8; decoding it here skips json.loads' detection
        value = _json_decode(bytes(part).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return BadMessage(f"{what}: invalid JSON ({exc})")
    if not isinstance(value, dict):
        return BadMessage(f"{what}: JSON is not an object")
    return value


def _array_part(desc_part, data_part, htype: str, warnings: list[str]):
    desc = _json(desc_part, htype)
    if isinstance(desc, BadMessage):
        warnings.append(desc.reason)
        return None
    if desc.get("htype") != htype:
        warnings.append(f"expected {htype}, got htype {_q(desc.get('htype'))}")
        return None
    shape = desc.get("shape")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s > 0 for s in shape)):
        warnings.append(f"{htype}: bad shape {_q(shape)}")
        return None
    return (shape, str(desc.get("type", "")), bytes(data_part))


def decode_stream(parts: list) -> StreamMessage | BadMessage:
    """One ZeroMQ multipart message (bytes or buffers) -> typed message or error."""
    if not parts:
        return BadMessage("empty message")
    first = _json(parts[0], "part 1")
    if isinstance(first, BadMessage):
        return BadMessage(f"stray or garbage message ({len(parts)} parts): {first.reason}")
    htype = first.get("htype")
    if htype == HEADER:
        return _decode_header(first, parts)
    if htype == IMAGE:
        return _decode_image(first, parts)
    if htype == SERIES_END:
        return SeriesEnd(first.get("series"))
    return BadMessage(f"unknown or stray htype {_q(htype)} ({len(parts)} parts)")


def _decode_header(first: dict, parts: list) -> Header | BadMessage:
    detail = first.get("header_detail")
    warnings: list[str] = []
    if detail not in DETAIL_PARTS:
        warnings.append(f"unknown header_detail {_q(detail)}, read as 'none'")
        detail = "none"
    expected = DETAIL_PARTS[detail]
    h = Header(first.get("series"), detail, warnings=warnings)
    if len(parts) not in (expected, expected + 1):
        warnings.append(f"header_detail {detail}: {len(parts)} parts, expected {expected}")
    if detail in ("basic", "all"):
        if len(parts) >= 2:
            cfg = _json(parts[1], "detector config")
            if isinstance(cfg, BadMessage):
                warnings.append(cfg.reason)
            else:
                h.config = cfg
        else:
            warnings.append("header without its config part: frame count unknown")
    if detail == "all" and len(parts) >= 8:
        h.flatfield = _array_part(parts[2], parts[3], "dflatfield-1.0", warnings)
        h.pixel_mask = _array_part(parts[4], parts[5], "dpixelmask-1.0", warnings)
        h.countrate = _array_part(parts[6], parts[7], "dcountrate_table-1.0", warnings)
    if len(parts) == expected + 1:
        h.appendix = bytes(parts[expected])
    return h


def _positive_ints(values: list) -> bool:
    for v in values:
        if type(v) is not int or v <= 0:  # bool is not a valid size either
            return False
    return True


def _decode_image(first: dict, parts: list) -> Image | BadMessage:
    if len(parts) < 3:
        return BadMessage(f"image with {len(parts)} parts, expected 4 or 5")
    warnings: list[str] = []
    d = _json(parts[1], "image part 2")
    if isinstance(d, BadMessage):
        return d
    if d.get("htype") != "dimage_d-1.0":
        return BadMessage(f"image part 2 has htype {_q(d.get('htype'))}, expected dimage_d-1.0")
    shape = d.get("shape")
    if not (isinstance(shape, list) and len(shape) in (2, 3) and _positive_ints(shape)):
        return BadMessage(f"image with bad shape {_q(shape)}")
    if len(shape) == 3:
        if shape[2] != 1:
            return BadMessage(f"image with 3-D shape {_q(shape)} is not supported")
        shape = shape[:2]
    dtype = d.get("type")
    if dtype not in codec.TYPE_BITS:
        warnings.append(f"image type {_q(dtype)}, served as 32-bit")
        dtype = str(dtype)
    enc = d.get("encoding")
    try:
        codec.parse_encoding(enc)
    except codec.CodecError as exc:
        return BadMessage(f"image: {exc}")
    data = parts[2]
    if not len(data):
        # a reply with 0 bytes in frame means "not cached yet": a client would wait
        # for this frame for ever, so it cannot be served
        return BadMessage("image with no data (0 bytes)")
    size = d.get("size")
    if isinstance(size, int) and size != len(data):
        warnings.append(f"image size field {size} but {len(data)} bytes of data")
    frame = first.get("frame")
    if not isinstance(frame, int) or isinstance(frame, bool):
        frame = None
    if len(parts) not in (4, 5):
        warnings.append(f"image with {len(parts)} parts, expected 4 or 5")
    return Image(
        series=first.get("series"),
        frame=frame,
        shape=(shape[1], shape[0]),
        dtype=dtype,
        encoding=enc,
        data=data,
        config=parts[3] if len(parts) >= 4 else None,
        appendix=bytes(parts[4]) if len(parts) >= 5 else None,
        warnings=warnings,
    )


# -- stream encoders (the simulator) ----------------------------------------------
def _j(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_header(
    series: Any,
    detail: str,
    config: dict | None = None,
    *,
    flatfield: bytes = b"",
    pixel_mask: bytes = b"",
    countrate: bytes = b"",
    shape_xy: tuple[int, int] = (0, 0),
    appendix: bytes | None = None,
) -> list[bytes]:
    parts = [_j({"htype": HEADER, "series": series, "header_detail": detail})]
    if detail in ("basic", "all"):
        parts.append(_j(config or {}))
    if detail == "all":
        x, y = shape_xy
        parts += [
            _j({"htype": "dflatfield-1.0", "shape": [x, y], "type": "float32"}),
            flatfield,
            _j({"htype": "dpixelmask-1.0", "shape": [x, y], "type": "uint32"}),
            pixel_mask,
            _j(
                {
                    "htype": "dcountrate_table-1.0",
                    "shape": [2, len(countrate) // 8],
                    "type": "float32",
                }
            ),
            countrate,
        ]
    if appendix is not None:
        parts.append(appendix)
    return parts


def encode_image(
    series: Any,
    frame: int,
    blob: bytes,
    shape_yx: tuple[int, int],
    dtype: str,
    encoding: str,
    *,
    times: tuple[int, int, int] = (0, 0, 0),
    appendix: bytes | None = None,
    hash_: str = "",
) -> list[bytes]:
    parts = [
        _j({"htype": IMAGE, "series": series, "frame": frame, "hash": hash_}),
        _j(
            {
                "htype": "dimage_d-1.0",
                "shape": [shape_yx[1], shape_yx[0]],
                "type": dtype,
                "encoding": encoding,
                "size": len(blob),
            }
        ),
        blob,
        _j(
            {
                "htype": "dconfig-1.0",
                "start_time": times[0],
                "stop_time": times[1],
                "real_time": times[2],
            }
        ),
    ]
    if appendix is not None:
        parts.append(appendix)
    return parts


def encode_end(series: Any) -> list[bytes]:
    return [_j({"htype": SERIES_END, "series": series})]

"""Mr. T wire formats, pure: the UDP request/reply protocol and EIGER stream v1.

UDP (all integers big-endian, byte 0 is the message type):

====  ==============  =========================================================
type  message         layout
====  ==============  =========================================================
0     Ping            type (1 byte)
1     Pong            type, series id u32 (0 = none), frame count u32 (9 bytes)
1     extended Pong   type, series id u32, bits u8, width u16, height u16,
                      frame count u32, name length u16, name (latin-1)
2     Packet request  type, frame u32, start byte u32 (9 bytes)
3     Packet reply    type, premature end u32, frame u32, start byte u32,
                      bytes in frame u32, payload
====  ==============  =========================================================

EIGER stream v1 messages are ZeroMQ multipart messages whose first part is a
JSON object with an ``htype``: ``dheader-1.0`` (1, 2 or 8 parts for
``header_detail`` none, basic, all, plus an optional appendix),
``dimage-1.0`` (4 parts, 5 with an appendix) and ``dseries_end-1.0``.

Decoders return typed messages or a :class:`WireError` value; they never
raise on bad input.  :class:`FrameFetch` is the client side of the UDP
procedure as a state machine (which request to send next, which reply to
accept).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from . import codec

# -- UDP ------------------------------------------------------------------------
PING, PONG, PACKET_REQUEST, PACKET_REPLY = 0, 1, 2, 3
DEFAULT_PAYLOAD = 10000
U32_MAX = 0xFFFFFFFF
#: premature-end value of a series that ended before its first frame
NO_FRAMES_ENDED = U32_MAX

_PONG = struct.Struct(">BII")
_XPONG = struct.Struct(">BIBHHIH")
_REQ = struct.Struct(">BII")
_REPLY = struct.Struct(">BIIII")
REPLY_HEADER = _REPLY.size


@dataclass(frozen=True)
class WireError:
    """Bad input: the reason, for a log line.  Falsy, so ``if msg:`` works."""

    reason: str

    def __bool__(self) -> bool:
        return False


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
        name = self.name.encode("latin-1", "ignore")[:0xFFFF]
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


def decode_request(data: bytes) -> Ping | PacketRequest | WireError:
    """A datagram sent to the server: Ping or Packet request."""
    if not data:
        return WireError("empty datagram")
    kind = data[0]
    if kind == PING:
        # the seed's ping is exactly one byte; tolerate nothing else
        if len(data) != 1:
            return WireError(f"ping of {len(data)} bytes, expected 1")
        return Ping()
    if kind == PACKET_REQUEST:
        if len(data) != _REQ.size:
            return WireError(f"packet request of {len(data)} bytes, expected {_REQ.size}")
        _, frame, start = _REQ.unpack(data)
        return PacketRequest(frame, start)
    return WireError(f"unexpected message type {kind} ({len(data)} bytes)")


def decode_reply(
    data: bytes, extended: bool = False
) -> Pong | ExtendedPong | PacketReply | WireError:
    """A datagram sent to the client: Pong (plain or extended) or Packet reply."""
    if not data:
        return WireError("empty datagram")
    kind = data[0]
    if kind == PONG:
        if extended:
            if len(data) < _XPONG.size:
                return WireError(f"extended pong of {len(data)} bytes, shorter than its header")
            _, sid, bits, w, h, count, nlen = _XPONG.unpack_from(data)
            name = data[_XPONG.size : _XPONG.size + nlen].decode("latin-1")
            return ExtendedPong(sid, count, bits, w, h, name)
        if len(data) != _PONG.size:
            return WireError(f"pong of {len(data)} bytes, expected {_PONG.size}")
        _, sid, count = _PONG.unpack(data)
        return Pong(sid, count)
    if kind == PACKET_REPLY:
        if len(data) < _REPLY.size:
            return WireError(f"packet reply of {len(data)} bytes, shorter than its header")
        _, pend, frame, start, total = _REPLY.unpack_from(data)
        return PacketReply(pend, frame, start, total, bytes(data[_REPLY.size :]))
    return WireError(f"unexpected message type {kind} ({len(data)} bytes)")


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


def _json(part, what: str) -> dict | WireError:
    if len(part) > MAX_JSON:
        return WireError(f"{what}: {len(part)} bytes of JSON, more than {MAX_JSON}")
    try:
        # the stream's JSON is UTF-8; decoding it here skips json.loads' detection
        value = _json_decode(bytes(part).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return WireError(f"{what}: invalid JSON ({exc})")
    if not isinstance(value, dict):
        return WireError(f"{what}: JSON is not an object")
    return value


def _array_part(desc_part, data_part, htype: str, warnings: list[str]):
    desc = _json(desc_part, htype)
    if isinstance(desc, WireError):
        warnings.append(desc.reason)
        return None
    if desc.get("htype") != htype:
        warnings.append(f"expected {htype}, got htype {desc.get('htype')!r}")
        return None
    shape = desc.get("shape")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s > 0 for s in shape)):
        warnings.append(f"{htype}: bad shape {shape!r}")
        return None
    return (shape, str(desc.get("type", "")), bytes(data_part))


def decode_stream(parts: list) -> StreamMessage | WireError:
    """One ZeroMQ multipart message (bytes or buffers) -> typed message or error."""
    if not parts:
        return WireError("empty message")
    first = _json(parts[0], "part 1")
    if isinstance(first, WireError):
        return WireError(f"stray or garbage message ({len(parts)} parts): {first.reason}")
    htype = first.get("htype")
    if htype == HEADER:
        return _decode_header(first, parts)
    if htype == IMAGE:
        return _decode_image(first, parts)
    if htype == SERIES_END:
        return SeriesEnd(first.get("series"))
    return WireError(f"unknown or stray htype {htype!r} ({len(parts)} parts)")


def _decode_header(first: dict, parts: list) -> Header | WireError:
    detail = first.get("header_detail")
    warnings: list[str] = []
    if detail not in DETAIL_PARTS:
        warnings.append(f"unknown header_detail {detail!r}, read as 'none'")
        detail = "none"
    expected = DETAIL_PARTS[detail]
    h = Header(first.get("series"), detail, warnings=warnings)
    if len(parts) not in (expected, expected + 1):
        warnings.append(f"header_detail {detail}: {len(parts)} parts, expected {expected}")
    if detail in ("basic", "all"):
        if len(parts) >= 2:
            cfg = _json(parts[1], "detector config")
            if isinstance(cfg, WireError):
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


def _decode_image(first: dict, parts: list) -> Image | WireError:
    if len(parts) < 3:
        return WireError(f"image with {len(parts)} parts, expected 4 or 5")
    warnings: list[str] = []
    d = _json(parts[1], "image part 2")
    if isinstance(d, WireError):
        return d
    if d.get("htype") != "dimage_d-1.0":
        return WireError(f"image part 2 has htype {d.get('htype')!r}, expected dimage_d-1.0")
    shape = d.get("shape")
    if not (isinstance(shape, list) and len(shape) in (2, 3) and _positive_ints(shape)):
        return WireError(f"image with bad shape {shape!r}")
    if len(shape) == 3:
        if shape[2] != 1:
            return WireError(f"image with 3-D shape {shape!r} is not supported")
        shape = shape[:2]
    dtype = d.get("type")
    if dtype not in codec.TYPE_BITS:
        warnings.append(f"image type {dtype!r}, served as 32-bit")
        dtype = str(dtype)
    enc = d.get("encoding")
    try:
        codec.parse_encoding(enc)
    except codec.CodecError as exc:
        return WireError(f"image: {exc}")
    data = parts[2]
    if not len(data):
        # a reply with 0 bytes in frame means "not cached yet": a client would wait
        # for this frame for ever, so it cannot be served
        return WireError("image with no data (0 bytes)")
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

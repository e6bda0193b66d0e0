"""spec server-mode wire protocol: the ``svr_head`` packet, sans I/O.

Every packet is a fixed header (124 bytes in version 2, 128 in version 3,
132 in version 4) followed by ``len`` bytes of data.  The header's first word
is the magic 0xFEEDFACE; its byte order tells the server the client's byte
order, which is then used for everything sent to that client (headers and
binary array data).  This module turns bytes into :class:`Packet` objects and
back, encodes and decodes the data types (strings, errors, associative
arrays, data arrays), and formats the debug lines spec prints at DEBUG
levels 0x1000, 0x800000 and 0x400000.  No sockets, threads or clocks here:
callers pass the time in.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from common import badinput

SV_SPEC_MAGIC = 0xFEEDFACE
SV_VERSION = 4
SV_NAME_LEN = 80
SV_PORT_FIRST = 6510
SV_PORT_LAST = 6530

#: SV_DELETED flag bit sent with events for deleted variables/elements (seed
#: 002, spec's server help text); ``specsrv --deleted-flag`` can send the
#: other value some clients test for instead
SV_DELETED = 0x1000
#: the value certif-pyspec's SpecMessage.DELETED tests for
SV_DELETED_ALT = 0x0001

#: default bound on ``len`` of one incoming packet (a 1e6-double array is 8 MB)
DEFAULT_MAX_DATA = 64 << 20

#: key separator of two-dimensional associative-array indices
ASSOC_SEP = "\x1c"


class Cmd(IntEnum):
    CLOSE = 1
    ABORT = 2
    CMD = 3
    CMD_WITH_RETURN = 4
    RETURN = 5
    REGISTER = 6
    UNREGISTER = 7
    EVENT = 8
    FUNC = 9
    FUNC_WITH_RETURN = 10
    CHAN_READ = 11
    CHAN_SEND = 12
    REPLY = 13
    HELLO = 14
    HELLO_REPLY = 15


class Type(IntEnum):
    DOUBLE = 1
    STRING = 2
    ERROR = 3
    ASSOC = 4
    ARR_DOUBLE = 5
    ARR_FLOAT = 6
    ARR_LONG = 7
    ARR_ULONG = 8
    ARR_SHORT = 9
    ARR_USHORT = 10
    ARR_CHAR = 11
    ARR_UCHAR = 12
    ARR_STRING = 13
    ARR_LONG64 = 14
    ARR_ULONG64 = 15


#: numpy dtype character of each numeric array type (byte order added later)
ARRAY_DTYPES: dict[int, str] = {
    Type.ARR_DOUBLE: "f8",
    Type.ARR_FLOAT: "f4",
    Type.ARR_LONG: "i4",
    Type.ARR_ULONG: "u4",
    Type.ARR_SHORT: "i2",
    Type.ARR_USHORT: "u2",
    Type.ARR_CHAR: "i1",
    Type.ARR_UCHAR: "u1",
    Type.ARR_LONG64: "i8",
    Type.ARR_ULONG64: "u8",
}
_DTYPE_TO_TYPE = {np.dtype(v).kind + str(np.dtype(v).itemsize): k for k, v in ARRAY_DTYPES.items()}

# Header layouts by version: (format without byte-order char, field names).
_FIELDS_V2 = ("magic", "vers", "size", "sn", "sec", "usec", "cmd", "type", "rows", "cols", "len")
LAYOUTS: dict[int, tuple[str, tuple[str, ...]]] = {
    2: ("IiiiIIiiIII80s", _FIELDS_V2 + ("name",)),
    3: ("IiiiIIiiIIIi80s", _FIELDS_V2 + ("err", "name")),
    4: ("IiIIIIiiIIIii80s", _FIELDS_V2 + ("err", "flags", "name")),
}
HEADER_SIZES = {v: struct.calcsize("<" + f) for v, (f, _) in LAYOUTS.items()}
assert HEADER_SIZES == {2: 124, 3: 128, 4: 132}
#: largest header accepted from a (future) client
MAX_HEADER_SIZE = 4096

LITTLE = "<"
BIG = ">"


class ProtocolError(badinput.ProtocolError):
    """Fatal for this connection: the stream is out of step (bad magic, a
    header size or data length that cannot be trusted, a byte-order switch).
    The I/O layer logs one line and closes the connection."""


class ValueDecodeError(ValueError):
    """Data of one well-framed packet that is not a value of its type (used
    inside :func:`decode_value`, which returns a :class:`BadValue` for it)."""


@dataclass
class Packet:
    """One protocol message (header fields plus raw data bytes)."""

    cmd: int
    sn: int = 0
    type: int = Type.STRING
    name: str = ""
    data: bytes | bytearray | memoryview = b""
    rows: int = 0
    cols: int = 0
    err: int = 0
    flags: int = 0
    sec: int = 0
    usec: int = 0
    vers: int = SV_VERSION
    size: int = HEADER_SIZES[SV_VERSION]
    order: str = LITTLE  # byte order the packet arrived in (decoded packets)
    raw_header: bytes = field(default=b"", repr=False)  # header bytes as received

    @property
    def cmd_name(self) -> str:
        try:
            return Cmd(self.cmd).name
        except ValueError:
            return f"CMD_{self.cmd}"

    def text(self) -> str:
        """The data as text, without its terminating NUL."""
        return decode_text(self.data)


@dataclass(frozen=True)
class ErrorValue:
    """A value that is an error message (type SV_ERROR)."""

    message: str
    err: int = 1


@dataclass(frozen=True)
class BadPacket(badinput.BadInput):
    """A well-framed packet whose header breaks the protocol (unknown command
    code, a name without its NUL): the stream goes on; ``packet`` is the
    packet as decoded, so the server can answer with an SV_ERROR reply."""

    packet: Packet | None = None


@dataclass(frozen=True)
class BadValue(badinput.BadInput):
    """Packet data that is not a value of its type (see :func:`decode_value`)."""


# -- headers ----------------------------------------------------------------


def reply_version(client_vers: int | None) -> int:
    """Header version of everything sent to a client: min(its version, 4)."""
    return min(max(client_vers or SV_VERSION, 2), SV_VERSION)


def header_version(vers: int) -> int:
    """Header layout used for a client's ``vers`` (v4 layout for newer ones)."""
    if vers <= 2:
        return 2
    if vers == 3:
        return 3
    return 4


_STRUCTS = {(o, v): struct.Struct(o + f) for o in ("<", ">") for v, (f, _) in LAYOUTS.items()}
_PREFIX = {o: struct.Struct(o + "Iii") for o in ("<", ">")}
_M32 = 0xFFFFFFFF


def encode_header(pkt: Packet, order: str = LITTLE, vers: int = SV_VERSION) -> bytes:
    """Pack a header in byte ``order`` using the layout of version ``vers``."""
    layout = header_version(vers)
    name = pkt.name.encode("latin-1", "replace")[: SV_NAME_LEN - 1]
    head = (
        SV_SPEC_MAGIC,
        vers,
        HEADER_SIZES[layout],
        pkt.sn & _M32 if layout == 4 else _signed(pkt.sn),
        pkt.sec & _M32,
        pkt.usec & _M32,
        pkt.cmd,
        pkt.type,
        pkt.rows & _M32,
        pkt.cols & _M32,
        len(pkt.data),
    )
    st = _STRUCTS[order, layout]
    if layout == 2:
        return st.pack(*head, name)
    if layout == 3:
        return st.pack(*head, pkt.err, name)
    return st.pack(*head, pkt.err, pkt.flags, name)


def _signed(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def encode_packet(pkt: Packet, order: str = LITTLE, vers: int = SV_VERSION) -> bytes:
    return encode_header(pkt, order, vers) + pkt.data


def detect_order(first4: bytes) -> str:
    """Byte order from the magic word, or raise ProtocolError."""
    if len(first4) < 4:
        raise ProtocolError("short header")
    if struct.unpack("<I", first4[:4])[0] == SV_SPEC_MAGIC:
        return LITTLE
    if struct.unpack(">I", first4[:4])[0] == SV_SPEC_MAGIC:
        return BIG
    raise ProtocolError(f"bad magic {first4[:4].hex()} (want feedface in either byte order)")


def header_size(prefix: bytes, order: str) -> int:
    """Total header size announced by the first 12 bytes (magic, vers, size)."""
    _, vers, size = _PREFIX[order].unpack_from(prefix)
    if vers < 2:
        raise ProtocolError(f"unsupported header version {vers}")
    if size < HEADER_SIZES[header_version(vers)] or size > MAX_HEADER_SIZE:
        # A v2/v3/v4 client always sends its exact size; anything smaller or
        # huge leaves us unable to find the data.
        raise ProtocolError(f"bad header size {size} for version {vers}")
    return size


def decode_header(buf: bytes, order: str) -> tuple[Packet, int, str | None]:
    """Unpack a complete header: (packet without data, data length, problem or None)."""
    _, vers, size = _PREFIX[order].unpack_from(buf)
    layout = header_version(vers)
    v = _STRUCTS[order, layout].unpack_from(buf)
    # v: magic vers size sn sec usec cmd type rows cols len [err] [flags] name
    err = v[11] if layout >= 3 else 0
    flags = v[12] if layout == 4 else 0
    raw_name = v[-1] if size <= HEADER_SIZES[4] else buf[size - SV_NAME_LEN : size]
    # (a future, larger header keeps the v4 fields first and the name last)
    nul = raw_name.find(b"\0")
    pkt = Packet(
        cmd=v[6],
        sn=v[3] & _M32,
        type=v[7],
        name=raw_name[: nul if nul >= 0 else len(raw_name)].decode("latin-1"),
        rows=v[8],
        cols=v[9],
        err=err,
        flags=flags,
        sec=v[4],
        usec=v[5],
        vers=vers,
        size=size,
        order=order,
    )
    problem = None if nul >= 0 else "property name without terminating NUL"
    if v[6] == Cmd.HELLO:
        problem = None  # HELLO's name is a debug text the server ignores
    return pkt, v[10], problem


class Decoder:
    """Incremental packet decoder for one connection: a stream core.

    ``feed(data)`` stores bytes (any split); ``next_event()`` returns the
    next :class:`Packet`, a :class:`BadPacket` for a well-framed packet that
    breaks the protocol (the stream goes on), or ``None`` when more bytes are
    needed, and raises :class:`ProtocolError` when the stream cannot go on
    (see common/badinput.py).  The byte order is taken from the magic of the
    first packet and kept (``order``); later packets must use the same order.
    ``max_data`` bounds the data of one packet, so a header claiming
    gigabytes is refused before anything is buffered; bytes fed are kept
    only up to one header plus one data section.
    """

    def __init__(self, max_data: int = DEFAULT_MAX_DATA, order: str | None = None) -> None:
        self.max_data = max_data
        self.order = order
        self.version: int | None = None
        self._buf = bytearray()
        self._hdr: Packet | None = None
        self._need_data = 0
        self._hsize = 0
        self._problem: str | None = None
        self._spare: np.ndarray | None = None
        self._ready: Packet | BadPacket | None = None
        self.broken: ProtocolError | None = None

    def pending(self) -> int:
        return len(self._buf)

    def data_remaining(self) -> int:
        """Data bytes of the current packet not yet received (0 outside data)."""
        if self._hdr is None:
            return 0
        return self._need_data - len(self._buf)

    def bulk_buffer(self) -> tuple[memoryview, int]:
        """For a large data section: one buffer of its full size, and how much
        of it already arrived.  The caller fills the rest (``recv_into``) and
        passes the buffer to :meth:`bulk_done`; the data is never copied again.
        """
        assert self._hdr is not None and len(self._buf) <= self._need_data
        buf = memoryview(self._bulk_store(self._need_data))
        have = len(self._buf)
        buf[:have] = self._buf
        self._buf.clear()
        return buf, have

    def _bulk_store(self, n: int) -> np.ndarray:
        """A buffer of n bytes: the previous one again if nothing refers to it
        any more (its pages are already mapped, so the read runs at full
        speed), else a fresh ``np.empty`` (no zero-filling)."""
        spare = self._spare
        if spare is not None and spare.size >= n and sys.getrefcount(spare) == 2:
            return spare[:n]
        if n >= self.max_data // 4 or n < (1 << 20):
            self._spare = None
            return np.empty(n, dtype=np.uint8)
        self._spare = np.empty(n, dtype=np.uint8)
        return self._spare[:n]

    def bulk_done(self, buf) -> None:
        """The buffer of :meth:`bulk_buffer` is full: its packet is the next event."""
        pkt = self._hdr
        self._hdr, self._need_data = None, 0
        # arrays are decoded from the buffer in place; other types as bytes
        pkt.data = buf if pkt.type in ARRAY_DTYPES else bytes(buf)
        self._ready = self._checked(pkt)

    def feed(self, data: bytes) -> None:
        if self.broken is None:
            self._buf += data

    def next_event(self) -> Packet | BadPacket | None:
        if self._ready is not None:
            item, self._ready = self._ready, None
            return item
        if self.broken is not None:
            raise self.broken
        try:
            return self._step()
        except ProtocolError as exc:
            self.broken = exc
            self._buf.clear()
            raise

    def _checked(self, pkt: Packet) -> Packet | BadPacket:
        size = len(pkt.raw_header) + len(pkt.data)
        if self._problem is not None:
            return BadPacket(self._problem, size, pkt)
        if pkt.cmd not in _CMD_VALUES:
            return BadPacket(f"unknown command code {pkt.cmd}", size, pkt)
        return pkt

    def _step(self) -> Packet | BadPacket | None:
        if self._hdr is None:
            if not self._hsize:
                if len(self._buf) < 12:
                    return None
                order = detect_order(bytes(self._buf[:4]))
                if self.order is None:
                    self.order = order
                elif order != self.order:
                    raise ProtocolError("byte order changed within the connection")
                self._hsize = header_size(bytes(self._buf[:12]), self.order)
            if len(self._buf) < self._hsize:
                return None
            hbuf = bytes(self._buf[: self._hsize])
            del self._buf[: self._hsize]
            self._hsize = 0
            pkt, length, problem = decode_header(hbuf, self.order)
            pkt.raw_header = hbuf
            if length > self.max_data:
                raise ProtocolError(f"data length {length} exceeds the limit of {self.max_data}")
            if self.version is None:
                self.version = pkt.vers
            self._hdr = pkt
            self._need_data = length
            self._problem = problem
        if len(self._buf) < self._need_data:
            return None
        pkt = self._hdr
        pkt.data = bytes(self._buf[: self._need_data])
        del self._buf[: self._need_data]
        self._hdr, self._need_data = None, 0
        return self._checked(pkt)


def events(decoder: Decoder, data: bytes = b"") -> list[Packet | BadPacket]:
    """Feed ``data`` and take every event now complete (raises ProtocolError
    as :meth:`Decoder.next_event` does)."""
    decoder.feed(data)
    out = []
    while (item := decoder.next_event()) is not None:
        out.append(item)
    return out


_CMD_VALUES = frozenset(int(c) for c in Cmd)


# -- values ------------------------------------------------------------------


def format_number(v: float | int) -> str:
    """spec's ``%.15g`` (integers stay integers, ``inf``/``nan`` as C prints them)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v) if abs(v) < 10**15 else f"{v:.15g}"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.15g}"


def decode_text(data: bytes) -> str:
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    return data.decode("utf-8", "replace")


def encode_text(text: str) -> bytes:
    return text.encode("utf-8", "replace") + b"\0"


def encode_assoc(items: dict) -> bytes:
    """``key NUL value NUL ... NUL`` (two-level dicts become ``k1 0x1C k2`` keys)."""
    parts: list[bytes] = []
    for k, v in _flatten_assoc(items):
        parts.append(k.encode("utf-8", "replace") + b"\0")
        parts.append(_scalar_text(v).encode("utf-8", "replace") + b"\0")
    return b"".join(parts) + b"\0"


def _flatten_assoc(items: dict):
    for k, v in items.items():
        key = k if isinstance(k, str) else _scalar_text(k)
        if isinstance(v, dict):
            for k2, v2 in v.items():
                yield key + ASSOC_SEP + (k2 if isinstance(k2, str) else _scalar_text(k2)), v2
        else:
            yield key, v


def _scalar_text(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, int | float | np.integer | np.floating):
        return format_number(v.item() if isinstance(v, np.generic) else v)
    return str(v)


def decode_assoc(data: bytes) -> dict[str, str]:
    """Inverse of :func:`encode_assoc`; keys and values stay text (flat keys)."""
    if not data:
        return {}
    if not data.endswith(b"\0"):
        raise ValueDecodeError("associative array data without terminating NUL")
    body = data[:-1]
    if body.endswith(b"\0"):
        body = body[:-1]  # the extra NUL after the last value
    elif body:
        raise ValueDecodeError("associative array without its final extra NUL")
    if not body:
        return {}
    items = body.split(b"\0")
    if len(items) % 2:
        raise ValueDecodeError("associative array with an index but no value")
    out: dict[str, str] = {}
    for i in range(0, len(items), 2):
        out[items[i].decode("utf-8", "replace")] = items[i + 1].decode("utf-8", "replace")
    return out


def nest_assoc(flat: dict[str, str]) -> dict:
    """Turn ``k1 0x1C k2`` keys into nested dicts (what clients usually want)."""
    out: dict = {}
    for k, v in flat.items():
        if ASSOC_SEP in k:
            k1, k2 = k.split(ASSOC_SEP, 1)
            sub = out.setdefault(k1, {})
            if isinstance(sub, dict):
                sub[k2] = v
            else:
                out[k] = v
        else:
            out[k] = v
    return out


def array_type(arr: np.ndarray) -> int:
    if arr.dtype.kind in "US":
        return Type.ARR_STRING
    key = arr.dtype.kind + str(arr.dtype.itemsize)
    if key == "b1":
        return Type.ARR_UCHAR
    if key not in _DTYPE_TO_TYPE:
        raise ValueError(f"no spec array type for {arr.dtype}")
    return _DTYPE_TO_TYPE[key]


def array_shape(arr: np.ndarray) -> tuple[int, int]:
    """Header rows/cols: vectors are one row of N columns."""
    if arr.ndim == 0:
        return 1, 1
    if arr.ndim == 1:
        return 1, arr.shape[0]
    if arr.ndim == 2:
        return arr.shape[0], arr.shape[1]
    raise ValueError("spec arrays have one or two dimensions")


def encode_array(
    arr: np.ndarray, order: str = LITTLE, copy: bool = True
) -> tuple[int, int, int, bytes | memoryview]:
    """(type, rows, cols, bytes) of a data array, elements in byte ``order``.

    With ``copy=False`` the data may be a memoryview of ``arr`` itself (no
    copy when its layout already fits); the caller must not change ``arr``
    until the bytes are sent.
    """
    rows, cols = array_shape(arr)
    t = array_type(arr)
    if t == Type.ARR_STRING:
        strings = [
            (s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s))
            for s in np.asarray(arr).reshape(-1)
        ]
        return t, 1, len(strings), b"".join(encode_text(s) for s in strings)
    if arr.dtype == np.bool_:
        arr = arr.astype("u1")
    dt = np.dtype(ARRAY_DTYPES[t]).newbyteorder(order)
    buf = np.ascontiguousarray(arr, dtype=dt)
    if copy:
        return t, rows, cols, buf.tobytes()
    return t, rows, cols, memoryview(buf.reshape(-1)).cast("B")


def decode_array(t: int, rows: int, cols: int, data: bytes, order: str = LITTLE) -> np.ndarray:
    """Data array from a packet; a trailing NUL byte is accepted and ignored."""
    if t == Type.ARR_STRING:
        if b"\0" in data:
            body = data[:-1] if data.endswith(b"\0") else data
            strings = [s.decode("utf-8", "replace") for s in body.split(b"\0")]
        elif cols:
            strings = [
                data[i : i + cols].decode("utf-8", "replace") for i in range(0, len(data), cols)
            ]
        else:
            strings = []
        return np.array(strings, dtype=str)
    if t not in ARRAY_DTYPES:
        raise ValueDecodeError(f"unknown array data type {t}")
    dt = np.dtype(ARRAY_DTYPES[t]).newbyteorder(order)
    n = rows * cols
    size = n * dt.itemsize
    if len(data) not in (size, size + 1):
        raise ValueDecodeError(
            f"array {rows}x{cols} of {dt.itemsize}-byte elements needs {size} bytes, "
            f"got {len(data)}"
        )
    arr = np.frombuffer(data, dtype=dt, count=n)
    if not dt.isnative:
        arr = arr.astype(dt.newbyteorder("="))
    elif not arr.flags.writeable:
        arr = arr.copy()  # received as bytes; a bytearray buffer is used in place
    if rows <= 1:
        return arr.reshape(n)  # a vector is one row (rows N, cols 1 stays 2-D, as clients do)
    return arr.reshape(rows, cols)


def encode_value(value, order: str = LITTLE, copy: bool = True) -> tuple[int, int, int, bytes, int]:
    """Python value -> (type, rows, cols, data, err).

    Numbers and strings travel as text (``%.15g``); dicts as SV_ASSOC; numpy
    arrays as SV_ARR_*; :class:`ErrorValue` as SV_ERROR with its err code;
    ``None`` as an empty string.  SV_DOUBLE is never produced.
    """
    if isinstance(value, ErrorValue):
        return Type.ERROR, 0, 0, encode_text(value.message), value.err
    if value is None:
        return Type.STRING, 0, 0, encode_text(""), 0
    if isinstance(value, dict):
        return Type.ASSOC, 0, 0, encode_assoc(value), 0
    if isinstance(value, np.ndarray):
        t, rows, cols, data = encode_array(value, order, copy)
        return t, rows, cols, data, 0
    if isinstance(value, list | tuple):
        return encode_value(np.array(value), order)
    return Type.STRING, 0, 0, encode_text(_scalar_text(value)), 0


def decode_value(pkt: Packet):
    """Packet data -> Python value (str, dict, ndarray, float or ErrorValue),
    or a :class:`BadValue` when the data is not a value of its type."""
    try:
        return _decode_value(pkt)
    except ValueDecodeError as exc:
        return BadValue(str(exc), len(pkt.data))


def _decode_value(pkt: Packet):
    t = pkt.type
    if t == Type.STRING:
        return pkt.text()
    if t == Type.ERROR:
        return ErrorValue(pkt.text(), pkt.err or 1)
    if t == Type.ASSOC:
        return decode_assoc(pkt.data)
    if t == Type.DOUBLE:
        return decode_double(pkt.data, pkt.order)
    if t in ARRAY_DTYPES or t == Type.ARR_STRING:
        return decode_array(t, pkt.rows, pkt.cols, pkt.data, pkt.order)
    raise ValueDecodeError(f"unknown data type {t}")


def decode_double(data: bytes, order: str) -> float:
    """SV_DOUBLE: accepted as 8 binary bytes or as text (clients disagree)."""
    if len(data) in (8, 9) and not _looks_text(data):
        return struct.unpack(order + "d", data[:8])[0]
    try:
        return float(decode_text(data))
    except ValueError:
        raise ValueDecodeError("SV_DOUBLE data is neither 8 bytes nor a number") from None


def _looks_text(data: bytes) -> bool:
    body = data.rstrip(b"\0")
    return bool(body) and all(c in b"0123456789+-.eEinfatyINFATY " for c in body)


def make_packet(
    cmd: int, value=None, *, sn: int = 0, name: str = "", flags: int = 0, order=LITTLE, copy=True
):
    """A packet carrying ``value`` encoded for byte ``order`` (see encode_array for ``copy``)."""
    t, rows, cols, data, err = encode_value(value, order, copy)
    return Packet(
        cmd=cmd, sn=sn, type=t, name=name, data=data, rows=rows, cols=cols, err=err, flags=flags
    )


def split_func(data: bytes) -> list[str]:
    """SV_FUNC data: name and arguments separated by NUL bytes."""
    body = data
    while body.endswith(b"\0"):
        body = body[:-1]
    return [p.decode("utf-8", "replace") for p in body.split(b"\0")] if body else []


def func_command(data: bytes, is_function) -> str:
    """SV_FUNC data as one command line.

    One item (``1+1``, ``mymac('tth', 3)``) is the command itself; a name
    with arguments becomes ``name(a, b)`` when ``is_function(name)``, else the
    command form ``name a b`` (the server adds "parentheses, commas or space
    characters, as needed").
    """
    items = split_func(data)
    if len(items) <= 1:
        return items[0] if items else ""
    name, args = items[0], items[1:]
    if is_function(name):
        return f"{name}({', '.join(args)})"
    return " ".join([name, *args])


#: the first header version with SV_FUNC and SV_FUNC_WITH_RETURN (codes 9 and
#: 10 were SV_HDW and SV_ACK in version 2): older servers get the command
#: text through SV_CMD_WITH_RETURN instead
FUNC_MIN_VERSION = 3

#: client requests always answered by an SV_REPLY with the request's sn
REPLIED_REQUESTS = frozenset({Cmd.CMD_WITH_RETURN, Cmd.FUNC_WITH_RETURN, Cmd.CHAN_READ})
#: client requests that get no reply (failures go to the log, or to the
#: ``error`` property for REGISTER)
UNANSWERED_REQUESTS = frozenset(
    {Cmd.CMD, Cmd.FUNC, Cmd.REGISTER, Cmd.UNREGISTER, Cmd.CLOSE, Cmd.ABORT}
)


def error_reply_due(pkt: Packet) -> bool:
    """Whether a request the server cannot serve is answered with SV_ERROR.

    Requests that get a reply anyway, a refused SV_CHAN_SEND (with the sn it
    came with, usually 0), and any other packet (unknown code, a server-only
    code) that carries a serial number the client may be waiting on.
    """
    if pkt.cmd in REPLIED_REQUESTS or pkt.cmd == Cmd.CHAN_SEND:
        return True
    return pkt.cmd not in UNANSWERED_REQUESTS and pkt.sn != 0


# -- debug formatting ----------------------------------------------------------

DEBUG_PACKETS = 0x001000
DEBUG_HEX = 0x400000
DEBUG_SOCKET = 0x800000


def describe_data(pkt: Packet, limit: int = 60) -> str:
    t = pkt.type
    if not pkt.data:
        return ""
    if t in (Type.STRING, Type.ERROR):
        text = pkt.text()
    elif t == Type.ASSOC:
        try:
            items = decode_assoc(pkt.data)
            text = "{" + ", ".join(f"{k}={v}" for k, v in items.items()) + "}"
        except ValueDecodeError:
            text = "<bad assoc>"
    elif t in ARRAY_DTYPES or t == Type.ARR_STRING:
        text = f"<{pkt.rows}x{pkt.cols} {Type(t).name}>"
    else:
        text = f"<{len(pkt.data)} bytes>"
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class PacketLog:
    """Formats spec's DEBUG 0x1000 packet lines; ``side`` is ``s`` or ``c``."""

    side: str = "s"
    _last: float | None = field(default=None, repr=False)

    def line(self, direction: str, pkt: Packet, now: float) -> str:
        """``sR    421  711.75  2 CMD_WITH_RETURN                  2+2``"""
        if self._last is None:
            ms = 0.0
        else:
            ms = (now - self._last) * 1000.0
            if ms > 1000.0 or ms < 0:
                ms = 0.0
        self._last = now
        return (
            f"{self.side}{direction}{pkt.sn:7d}{ms:8.2f}{pkt.type:3d} "
            f"{pkt.cmd_name:<15} {pkt.name:<16} {describe_data(pkt)}"
        ).rstrip()


def octal_escape(data: bytes, limit: int = 256) -> str:
    """Bytes as a string with non-printables as octal escapes (``\\316``)."""
    out = []
    for b in data[:limit]:
        if 32 <= b < 127 and b != 0x5C:
            out.append(chr(b))
        elif b == 0x5C:
            out.append("\\\\")
        else:
            out.append(f"\\{b:03o}")
    return "".join(out) + (" ..." if len(data) > limit else "")


def hex_dump(data: bytes, limit: int = 1 << 16) -> str:
    """Conventional 16-per-row dump; ``*`` stands for repeated rows."""
    lines = []
    prev = None
    starred = False
    shown = data[:limit]
    for off in range(0, len(shown), 16):
        row = shown[off : off + 16]
        if row == prev and len(row) == 16 and off + 16 < len(shown):
            if not starred:
                lines.append("*")
                starred = True
            continue
        starred = False
        prev = row
        hexpart = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{off:04x}  {hexpart:<47}  {text}")
    if len(data) > limit:
        lines.append(f"... ({len(data) - limit} more bytes)")
    return "\n".join(lines)


def socket_lines(kind: str, peer: str, data: bytes, level: int, requested: int = 0) -> list[str]:
    """DEBUG 0x800000 lines for one read (``get``) or write (``send``)."""

    def body() -> str:
        if level & DEBUG_HEX:
            return "<\n" + hex_dump(data) + "\n>"
        return "<" + octal_escape(data) + ">"

    if kind == "get":
        return [f"sock get  {peer} b={requested}", f"sock got cnt={len(data)} s={body()}"]
    return [f"sock send {peer} b={len(data)} s={body()}"]

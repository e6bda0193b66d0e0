"""The server-hardware ASCII protocol, sans I/O.

spec (the client) sends request lines ``=: SN command [args...]\\n``; the
server answers every request but ``goodbye`` with exactly one line,
``@: SN LEN#text\\n`` on success or ``!: SN LEN#text\\n`` on error, where LEN
counts the bytes of ``text``.  ``read`` and ``write`` move arrays as raw
binary data right after a reply line (``read``) or after ``okay NPTS``
(``write``).

This module turns bytes into typed messages and messages into bytes.  It
holds no sockets, threads or clocks: the server, the client, the tests and
the benchmark all use the same rules from here.

Bad input follows :mod:`common.badinput`: :class:`RequestStream` is a stream
core whose ``next_event`` gives a :class:`Request` or a :class:`BadInput`
(:class:`BadRequest`, :class:`Garbage`, :class:`Overlong`), never raises on
received bytes; :func:`parse_request` is its whole-line decoder.
:class:`ProtocolError` is :class:`common.badinput.ProtocolError`'s subclass
raised by the client-side parsers (``parse_reply`` and friends, a reply the
client cannot go on with) and by encoders for values the wire cannot carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from common import badinput
from common.badinput import BadInput
from common.framing import LineBuffer, OverlongLine

PROTOCOL_VERSION = "V2"
DEFAULT_PORT = 5000
MAX_LINE = 4096

#: the ten data types of the seed and their numpy kinds (byte order added later)
DATA_TYPES: dict[str, str] = {
    "ubyte": "u1",
    "ushort": "u2",
    "ulong": "u4",
    "ulong64": "u8",
    "byte": "i1",
    "short": "i2",
    "long": "i4",
    "long64": "i8",
    "float": "f4",
    "double": "f8",
}

#: byte order names accepted by ``set byte_order`` and ``-B``
BYTE_ORDERS = {"little": "<", "big": ">"}

#: commands handled by the framework; anything else goes to the device's cmd hook
BUILTIN_COMMANDS = frozenset(
    {
        "hello",
        "goodbye",
        "config",
        "exit",
        "clear",
        "run",
        "halt",
        "get_status",
        "get",
        "set",
        "read",
        "write",
        "xfer_done",
    }
)

_REQ_RE = re.compile(rb"=:[ \t]+(\S+)(?:[ \t]+(.*))?\Z", re.S)
_REPLY_RE = re.compile(rb"([@!]):[ \t]+(\d+)[ \t]+(\d+)#(.*)\Z", re.S)
_XFER_DONE_TAIL_RE = re.compile(rb"=:[ \t]+(\d+)[ \t]+xfer_done[ \t]*\r?\n\Z")


class ProtocolError(badinput.ProtocolError):
    """A message that breaks the protocol; the text goes into an ``!:`` reply."""


def dtype_for(type_name: str, order: str = "<") -> np.dtype:
    """numpy dtype of a seed type name in byte order ``<`` or ``>``."""
    try:
        kind = DATA_TYPES[type_name]
    except KeyError:
        raise ProtocolError(f"unknown data type {type_name!r}") from None
    return np.dtype(order + kind)


def type_name_of(dtype: np.dtype) -> str:
    """Seed type name of a numpy dtype (byte order ignored)."""
    key = dtype.kind + str(dtype.itemsize)
    for name, kind in DATA_TYPES.items():
        if kind == key:
            return name
    raise ProtocolError(f"no protocol data type for {dtype}")


def byte_order_code(name: str) -> str:
    try:
        return BYTE_ORDERS[name.lower()]
    except KeyError:
        raise ProtocolError(
            f"byte order must be {' or '.join(BYTE_ORDERS)}, not {name!r}"
        ) from None


# -- addresses ----------------------------------------------------------------

NO_ADDRESS = -1
_ADDR_RE = re.compile(r"(\d+)[.:](\d+)\Z")


def parse_address(text: str) -> int:
    """The sub-address of ``a=ADDR``: ``0.1`` and ``0:1`` give 1, ``3`` gives 3.

    The digit(s) left of the separator are spec's unit number, which the
    server knows already (one server, one unit); the device sees the
    sub-address, as the C ``device_funcs`` do.  No ``a=`` word means -1.
    """
    m = _ADDR_RE.match(text)
    if m:
        return int(m.group(2))
    try:
        value = int(text)
    except ValueError:
        raise ProtocolError(f"bad device address a={text}") from None
    if value < NO_ADDRESS:
        raise ProtocolError(f"bad device address a={text}")
    return value


# -- requests (client -> server) ----------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request line: sequence number, command word, arguments, address."""

    sn: int
    cmd: str
    args: tuple[str, ...] = ()
    addr: int = NO_ADDRESS

    def encode(self) -> bytes:
        return format_request(self.sn, self.cmd, *self.args, addr=self.addr)


@dataclass(frozen=True, init=False)
class BadRequest(BadInput):
    """A request with a sequence number that cannot be executed: reply ``!:``."""

    sn: int = 0
    message: str = ""

    def __init__(self, sn: int, message: str, size: int = 0) -> None:
        object.__setattr__(self, "reason", message)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "sn", sn)
        object.__setattr__(self, "message", message)


@dataclass(frozen=True, init=False)
class Garbage(BadInput):
    """A line that is not a request (no ``=:``, no sequence number): log only."""

    line: bytes = b""

    def __init__(self, line: bytes, reason: str) -> None:
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "size", len(line))
        object.__setattr__(self, "line", line)


@dataclass(frozen=True, init=False)
class Overlong(BadInput):
    """A line past the length limit, discarded: log only."""

    def __init__(self, size: int) -> None:
        object.__setattr__(self, "reason", f"line of {size}+ bytes past the length limit")
        object.__setattr__(self, "size", size)


Event = Request | BadRequest | Garbage | Overlong


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def parse_request(line: bytes) -> Request | BadRequest | Garbage:
    """Parse one request line (without its newline)."""
    m = _REQ_RE.match(line.strip(b" \t\r"))
    if not m:
        return Garbage(line, "not a request (no '=: ' prefix)")
    sn_raw, rest = m.group(1), m.group(2) or b""
    if not sn_raw.isdigit() or len(sn_raw) > 18:
        return Garbage(line, "bad sequence number")
    sn = int(sn_raw)
    words = _text(rest).split()
    if not words:
        return BadRequest(sn, "missing command")
    cmd, args = words[0], words[1:]
    addr = NO_ADDRESS
    kept = []
    seen_addr = False
    for w in args:
        if w.startswith("a=") and not seen_addr:
            seen_addr = True
            try:
                addr = parse_address(w[2:])
            except ProtocolError as exc:
                return BadRequest(sn, str(exc))
        else:
            kept.append(w)
    return Request(sn, cmd, tuple(kept), addr)


def format_request(sn: int, cmd: str, *args: object, addr: int | str | None = None) -> bytes:
    """``=: SN cmd [a=ADDR] args...\\n`` (the address right after the command)."""
    words = [cmd]
    if addr is not None and addr != NO_ADDRESS:
        words.append(f"a={addr}")
    words.extend(str(a) for a in args)
    text = " ".join(words)
    if "\n" in text or "\r" in text:
        raise ProtocolError("a request must be one line")
    return f"=: {sn} {text}\n".encode()


class RequestStream:
    """Bounded, sans-I/O splitter of the byte stream from a client.

    ``feed`` bytes in any split, then call ``next_event`` until it returns
    None.  Binary data that follow a ``write`` are taken with ``drain_into``
    before the next event is asked for, so the line parser never sees them.
    Unfinished data never take more than ``max_line`` bytes plus what one
    ``feed`` brought, because the caller feeds only when ``next_event`` has
    nothing left.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._raw = bytearray()
        self._lines = LineBuffer(max_line)
        self._discard_reported = False

    def feed(self, data: bytes) -> None:
        self._raw += data

    def buffered(self) -> int:
        """Bytes received but not yet parsed (raw, plus an unfinished line)."""
        return len(self._raw) + len(self._lines)

    def next_event(self) -> Event | None:
        while self._raw:
            idx = self._raw.find(b"\n")
            cut = len(self._raw) if idx < 0 else idx + 1
            chunk = bytes(self._raw[:cut])
            del self._raw[:cut]
            out = self._lines.feed(chunk)
            if out:
                item = out[0]
                if isinstance(item, OverlongLine):
                    if self._discard_reported:
                        self._discard_reported = False
                        continue
                    return Overlong(item.size)
                self._discard_reported = False
                return parse_request(item)
            if self._lines.discarding and not self._discard_reported:
                # report a runaway line at once, not when (if ever) it ends
                self._discard_reported = True
                return Overlong(self._lines.discarding)
        return None

    def drain_into(self, view: memoryview) -> int:
        """Move buffered bytes (an unfinished line first) into ``view``; return the count."""
        pending = self._lines.pending()
        if pending:
            self._lines = LineBuffer(self._lines.max_line)
            self._raw[:0] = pending
        n = min(len(view), len(self._raw))
        view[:n] = self._raw[:n]
        del self._raw[:n]
        return n


#: how many of the last bytes of a short ``write`` are searched for ``xfer_done``
XFER_DONE_TAIL = 128


def xfer_done_in_tail(data: bytes) -> int | None:
    """SN of an ``=: SN xfer_done`` line ending ``data`` (a short ``write``)."""
    m = _XFER_DONE_TAIL_RE.search(data[-XFER_DONE_TAIL:])
    return int(m.group(1)) if m else None


# -- replies (server -> client) -----------------------------------------------


@dataclass(frozen=True)
class Reply:
    sn: int
    text: str
    ok: bool = True

    def encode(self) -> bytes:
        return format_reply(self.sn, self.text, ok=self.ok)


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def format_reply(sn: int, text: str = "", *, ok: bool = True) -> bytes:
    """``@: SN LEN#text\\n`` (``!:`` when not ok); LEN is the byte count of text."""
    body = _one_line(text).encode("utf-8", "replace")
    return b"%s: %d %d#%s\n" % (b"@" if ok else b"!", sn, len(body), body)


def parse_reply(line: bytes) -> Reply:
    """Parse one reply line (without its newline); ProtocolError if malformed."""
    m = _REPLY_RE.match(line.rstrip(b"\r"))
    if not m:
        raise ProtocolError(f"malformed reply {line[:80]!r}")
    kind, sn, length, body = m.groups()
    if int(length) != len(body):
        raise ProtocolError(f"reply length {int(length)} does not match text of {len(body)} bytes")
    return Reply(int(sn), _text(body), kind == b"@")


# -- the payloads of particular replies -----------------------------------------


@dataclass(frozen=True)
class Hello:
    version: str
    host: str
    pid: int
    description: str


def hello_text(host: str, pid: int, description: str) -> str:
    return f"hello back {PROTOCOL_VERSION} {host} {pid} {description}".rstrip()


def parse_hello(text: str) -> Hello:
    words = text.split(None, 5)
    if len(words) < 5 or words[:2] != ["hello", "back"] or not words[4].isdigit():
        raise ProtocolError(f"not a hello reply: {text!r}")
    return Hello(words[2], words[3], int(words[4]), words[5] if len(words) > 5 else "")


@dataclass(frozen=True)
class Config:
    """The ``config`` reply: native type and shape (``(npts,)`` or ``(rows, cols)``)."""

    type_name: str
    shape: tuple[int, ...]

    def text(self) -> str:
        return " ".join([self.type_name, *map(str, self.shape)])


def parse_config(text: str) -> Config:
    words = text.split()
    if len(words) not in (2, 3) or words[0] not in DATA_TYPES:
        raise ProtocolError(f"not a config reply: {text!r}")
    try:
        shape = tuple(int(w) for w in words[1:])
    except ValueError:
        raise ProtocolError(f"not a config reply: {text!r}") from None
    return Config(words[0], shape)


@dataclass(frozen=True)
class Region:
    """An inclusive region: ``((first, last),)`` or ``((row_beg, row_end), (col_beg, col_end))``."""

    bounds: tuple[tuple[int, int], ...] = field(default=())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(hi - lo + 1 for lo, hi in self.bounds)

    @property
    def npts(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(lo, hi + 1) for lo, hi in self.bounds)

    def args(self) -> tuple[int, ...]:
        return tuple(v for pair in self.bounds for v in pair)


def parse_region(args: tuple[str, ...] | list[str], shape: tuple[int, ...]) -> Region:
    """Check ``read``/``write`` arguments against the device shape.

    MCA: ``first last``; image: ``row_beg row_end col_beg col_end``; all
    inclusive, zero-based, beginning not after end, inside the device.
    """
    ndim = len(shape)
    want = "FIRST LAST" if ndim == 1 else "ROW_BEG ROW_END COL_BEG COL_END"
    if len(args) != 2 * ndim:
        raise ProtocolError(f"expected {want}, got {len(args)} argument(s)")
    try:
        values = [int(a) for a in args]
    except ValueError:
        raise ProtocolError(f"expected {want} as whole numbers") from None
    bounds = []
    for axis, size in enumerate(shape):
        lo, hi = values[2 * axis], values[2 * axis + 1]
        if not 0 <= lo <= hi < size:
            what = ("channels", "rows", "cols")[axis + (ndim - 1)]
            raise ProtocolError(f"{what} {lo} to {hi} outside 0 to {size - 1} or reversed")
        bounds.append((lo, hi))
    return Region(tuple(bounds))


def read_reply_text(npts: int, type_name: str, ndim: int) -> str:
    """``NPTS`` for an MCA read, ``NPTS TYPE`` for an image read."""
    return str(npts) if ndim == 1 else f"{npts} {type_name}"


def parse_read_reply(text: str, default_type: str) -> tuple[int, str]:
    words = text.split()
    if not words or not words[0].isdigit() or len(words) > 2:
        raise ProtocolError(f"not a read reply: {text!r}")
    type_name = words[1] if len(words) == 2 else default_type
    if type_name not in DATA_TYPES:
        raise ProtocolError(f"unknown data type in read reply: {type_name!r}")
    return int(words[0]), type_name


def write_reply_text(npts: int) -> str:
    return f"okay {npts}"


def parse_write_reply(text: str) -> int:
    words = text.split()
    if len(words) != 2 or words[0] != "okay" or not words[1].isdigit():
        raise ProtocolError(f"not a write reply: {text!r}")
    return int(words[1])


def fit_to_type(values, type_name: str) -> np.ndarray:
    """``values`` as an array of ``type_name`` (native byte order), or ProtocolError.

    An integer type takes only whole numbers inside its range; nothing is
    wrapped, truncated or rounded on the way (a float type takes any number).
    Python ints of any size are checked exactly, not through float64.
    """
    dtype = dtype_for(type_name, "=")
    arr = np.asarray(values)
    if arr.dtype.kind not in "biufO":
        raise ProtocolError(f"{type_name} data must be numbers, not {arr.dtype}")
    if dtype.kind == "f" or arr.size == 0:
        return arr.astype(dtype)
    if arr.dtype.kind == "O":  # Python ints too big for int64, mixed with floats
        flat = arr.reshape(-1).tolist()
        if not all(
            isinstance(v, int | np.integer) or (isinstance(v, float) and v.is_integer())
            for v in flat
        ):
            raise ProtocolError(f"{type_name} data must be whole numbers")
        ints = [int(v) for v in flat]
        lo, hi = min(ints), max(ints)
        arr = np.array(ints, dtype=object).reshape(arr.shape)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr) & (arr == np.trunc(arr))):
            raise ProtocolError(f"{type_name} data must be whole numbers")
        lo, hi = float(arr.min()), float(arr.max())
    else:
        lo, hi = int(arr.min()), int(arr.max())
    info = np.iinfo(dtype)
    if lo < info.min or hi > info.max:
        raise ProtocolError(f"{type_name} data must lie in {info.min} to {info.max}")
    return arr.astype(dtype)


def to_wire(data: np.ndarray, type_name: str, order: str) -> memoryview:
    """Bytes of ``data`` as ``type_name`` in byte order ``order`` (no copy when possible)."""
    arr = np.ascontiguousarray(data, dtype=dtype_for(type_name, order))
    return memoryview(arr).cast("B")


def from_wire(raw: bytes | bytearray | memoryview, type_name: str, order: str) -> np.ndarray:
    """Array (native byte order) from wire bytes of ``type_name`` in ``order``."""
    arr = np.frombuffer(raw, dtype=dtype_for(type_name, order))
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)

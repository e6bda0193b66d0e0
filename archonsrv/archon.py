"""Pure core of the STA Archon controller wire protocol (no sockets, threads or clocks).

``>xxCMD`` commands, ``<xx...`` and ``?xx`` replies, ``KEY=VALUE`` status
lines (SYSTEM, STATUS, FRAME), the binary FETCH reply (``<xx:`` + 1024
bytes per block), configuration-memory lines (WCONFIG/RCONFIG) and every
other command spelling.  camerad's controller layer, archonsim, the tests
and the benchmark use these functions; Archon wire spellings live nowhere
else.

Bad input follows :mod:`common.badinput`: :class:`CommandStream` and
:class:`ReplyStream` are stream cores (``feed`` + ``next_event``) that give
typed messages or :class:`BadInput` values; :class:`ProtocolError` is raised
only for a stream that cannot go on (a FETCH block header out of step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from common.badinput import BadInput, ProtocolError, quote

# ---------------------------------------------------------------------------
# Archon framing
# ---------------------------------------------------------------------------

BLOCK = 1024  # bytes of pixel data per FETCH block
BLOCK_HEADER = 4  # "<xx:"
BLOCK_WIRE = BLOCK + BLOCK_HEADER
MAX_ARCHON_LINE = 1 << 20  # a FRAME/STATUS reply is a few kB; bound it anyway


class Garbled(BadInput):
    """A line that is not an Archon command or reply (skipped)."""


class Overlong(BadInput):
    """A line longer than :data:`MAX_ARCHON_LINE` (skipped up to its newline)."""


def encode_command(ref: int, command: str) -> bytes:
    """``>xxCOMMAND\\n`` with the 2-digit upper-case hex message reference."""
    if not 0 <= ref <= 0xFF:
        raise ValueError(f"message reference out of range: {ref}")
    if "\n" in command or "\r" in command:
        raise ValueError("an Archon command cannot contain a newline")
    return b">%02X%s\n" % (ref, command.encode("ascii", "replace"))


@dataclass(frozen=True)
class ArchonCommand:
    ref: int
    text: str


_CMD_RE = re.compile(rb"^>([0-9A-Fa-f]{2})(.*)$", re.S)


def decode_command(line: bytes) -> ArchonCommand | Garbled:
    """Parse ``>xxCOMMAND`` (newline already removed); :class:`Garbled` if not one."""
    m = _CMD_RE.match(line.rstrip(b"\r"))
    if not m:
        return Garbled(f"not >xxCOMMAND: {quote(line)}", len(line))
    try:
        text = m.group(2).decode("ascii")
    except UnicodeDecodeError:
        return Garbled("command is not ASCII", len(line))
    return ArchonCommand(int(m.group(1), 16), text)


def encode_reply(ref: int, text: str = "") -> bytes:
    return b"<%02X%s\n" % (ref, text.encode("ascii", "replace"))


def encode_error(ref: int) -> bytes:
    return b"?%02X\n" % ref


@dataclass(frozen=True)
class ArchonReply:
    ref: int
    ok: bool
    text: str = ""


_REPLY_RE = re.compile(rb"^([<?])([0-9A-Fa-f]{2})(.*)$", re.S)


def decode_reply(line: bytes) -> ArchonReply | Garbled:
    """Parse one text reply line (newline removed); :class:`Garbled` if not one."""
    m = _REPLY_RE.match(line.rstrip(b"\r"))
    if not m:
        return Garbled(f"not an Archon reply: {quote(line)}", len(line))
    text = m.group(3).decode("ascii", "replace")
    return ArchonReply(int(m.group(2), 16), m.group(1) == b"<", text)


class _LineStream:
    """Bounded newline framing shared by the two stream cores."""

    def __init__(self, max_line: int = MAX_ARCHON_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = 0  # bytes of an overlong line being skipped

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()
        self._skipping = 0

    def __len__(self) -> int:
        return len(self._buf)

    def _next_line(self) -> bytes | Overlong | None:
        while True:
            idx = self._buf.find(b"\n")
            if self._skipping:
                if idx < 0:
                    self._skipping += len(self._buf)
                    self._buf.clear()
                    return None
                size = self._skipping + idx
                del self._buf[: idx + 1]
                self._skipping = 0
                return Overlong(f"line longer than {self.max_line} bytes", size)
            if idx < 0:
                if len(self._buf) > self.max_line:
                    self._skipping = len(self._buf)
                    self._buf.clear()
                return None
            if idx > self.max_line:
                del self._buf[: idx + 1]
                return Overlong(f"line longer than {self.max_line} bytes", idx)
            line = bytes(self._buf[:idx])
            del self._buf[: idx + 1]
            return line

    def next_event(self):
        line = self._next_line()
        if line is None or isinstance(line, BadInput):
            return line
        return self.decode(line)


class CommandStream(_LineStream):
    """Controller side: bytes in, :class:`ArchonCommand` or :class:`BadInput` out."""

    decode = staticmethod(decode_command)


class ReplyStream(_LineStream):
    """Client side: bytes in, :class:`ArchonReply` or :class:`BadInput` out."""

    decode = staticmethod(decode_reply)


def parse_kv(text: str) -> dict[str, str]:
    """Space-separated ``KEY=VALUE`` tokens of SYSTEM, STATUS and FRAME replies."""
    out: dict[str, str] = {}
    for tok in text.split():
        if "=" not in tok:
            raise ProtocolError(f"token without '=': {quote(tok.encode())}")
        k, v = tok.split("=", 1)
        out[k] = v
    return out


def format_kv(items: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in items.items())


def timer_text(ticks: int) -> str:
    """TIMER reply value: 16 upper-case hex digits of 10 ns ticks."""
    return f"{ticks & 0xFFFFFFFFFFFFFFFF:016X}"


def fetch_command(address: int, blocks: int) -> str:
    return f"FETCH{address & 0xFFFFFFFF:08X}{blocks & 0xFFFFFFFF:08X}"


_FETCH_RE = re.compile(r"^FETCH([0-9A-Fa-f]{8})([0-9A-Fa-f]{8})$")


def parse_fetch(text: str) -> tuple[int, int] | None:
    m = _FETCH_RE.match(text)
    if not m:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


# -- configuration memory: WCONFIG / RCONFIG and parameter lines --------------

MAX_CONFIG_LINES = 0x10000  # line numbers are 4 hex digits
_PARAM_KEY_RE = re.compile(r"^PARAMETER\d+$")
_WCONFIG_RE = re.compile(r"^WCONFIG([0-9A-Fa-f]{4})([^=]+)=(.*)$", re.S)
_RCONFIG_RE = re.compile(r"^RCONFIG([0-9A-Fa-f]{4})$")


def wconfig_command(line: int, key: str, value: str) -> str:
    if not 0 <= line < MAX_CONFIG_LINES:
        raise ProtocolError(f"config line {line} out of range")
    return f"WCONFIG{line:04X}{key}={value}"


def parse_wconfig(text: str) -> tuple[int, str, str] | None:
    """``WCONFIGllllKEY=VALUE`` -> (line, KEY, VALUE); None if malformed."""
    m = _WCONFIG_RE.match(text)
    if not m:
        return None
    return int(m.group(1), 16), m.group(2), m.group(3)


def rconfig_command(line: int) -> str:
    if not 0 <= line < MAX_CONFIG_LINES:
        raise ProtocolError(f"config line {line} out of range")
    return f"RCONFIG{line:04X}"


def parse_rconfig(text: str) -> int | None:
    m = _RCONFIG_RE.match(text)
    return int(m.group(1), 16) if m else None


def is_param_key(key: str) -> bool:
    """``PARAMETERn`` (a parameter line), not the count line ``PARAMETERS``."""
    return bool(_PARAM_KEY_RE.match(key))


def is_param_related(key: str) -> bool:
    """``PARAMETERn`` or the count line ``PARAMETERS``: not a CDS/system key."""
    return key.startswith("PARAMETER")


def has_binary_reply(command: str) -> bool:
    """FETCH answers in binary blocks, not one text line."""
    return command.upper().startswith("FETCH")


def param_entry(key: str, value: str) -> tuple[str, str] | None:
    """(name, value) of a config line ``PARAMETERn=name=value``; None otherwise."""
    if not is_param_key(key) or "=" not in value:
        return None
    name, v = value.split("=", 1)
    return name, v


def parse_param_reply(text: str) -> tuple[str, str] | None:
    """An RCONFIG reply ``PARAMETERn=name=value`` -> (name, value)."""
    key, sep, value = text.strip().partition("=")
    return param_entry(key, value) if sep else None


def blocks_for(nbytes: int) -> int:
    return -(-nbytes // BLOCK)


def fetch_wire(payload: bytes | memoryview | np.ndarray, blocks: int) -> np.ndarray:
    """A FETCH reply as a (blocks, 1028) uint8 array, headers still blank.

    The payload fills the 1024-byte data part of each block; a short payload
    is padded with 0xFF.  :func:`set_fetch_headers` writes the ``<xx:``
    headers once the message reference is known.
    """
    out = np.empty((blocks, BLOCK_WIRE), dtype=np.uint8)
    if isinstance(payload, np.ndarray):
        src = payload.reshape(-1).view(np.uint8)
    else:
        src = np.frombuffer(payload, dtype=np.uint8)
    n = min(len(src), blocks * BLOCK)
    full, rest = divmod(n, BLOCK)
    if full:
        out[:full, BLOCK_HEADER:] = src[: full * BLOCK].reshape(full, BLOCK)
    if full < blocks:
        out[full:, BLOCK_HEADER:] = 0xFF
    if rest:
        out[full, BLOCK_HEADER : BLOCK_HEADER + rest] = src[full * BLOCK : n]
    return out


def set_fetch_headers(wire: np.ndarray, ref: int) -> None:
    wire[:, :BLOCK_HEADER] = np.frombuffer(b"<%02X:" % ref, dtype=np.uint8)


def encode_fetch_reply(ref: int, payload: bytes | memoryview | np.ndarray, blocks: int) -> bytes:
    """``blocks`` x (``<xx:`` + 1024 bytes); payload padded with 0xFF if short."""
    wire = fetch_wire(payload, blocks)
    set_fetch_headers(wire, ref)
    return wire.tobytes()


class FetchDecoder:
    """Receive a FETCH reply block by block into one preallocated buffer.

    The I/O layer asks for :meth:`writable` (a memoryview to ``recv_into``),
    then reports how many bytes arrived with :meth:`advance`.  Each block's
    4-byte header is checked as soon as the block is complete, so a ``?xx``
    error or a wrong reference is caught at the block where it happens, and
    headers are stripped per block (never by searching the data).
    """

    def __init__(self, ref: int, blocks: int, buffer: np.ndarray | None = None) -> None:
        self.ref = ref
        self.blocks = blocks
        self.header = b"<%02X:" % ref
        need = blocks * BLOCK_WIRE
        if buffer is not None and buffer.dtype == np.uint8 and buffer.size >= need:
            self._buf = buffer.reshape(-1)[:need]  # reuse: no page faults while receiving
        else:
            self._buf = np.empty(need, dtype=np.uint8)
        self._rows = self._buf.reshape(blocks, BLOCK_WIRE) if blocks else None
        self._hdr = np.frombuffer(self.header, dtype=np.uint8)
        self.received = 0
        self.checked = 0  # complete blocks whose header has been verified
        self.delivered = 0  # blocks handed out by take()

    @property
    def total(self) -> int:
        return self.blocks * BLOCK_WIRE

    @property
    def done(self) -> bool:
        return self.checked == self.blocks

    def writable(self) -> memoryview:
        return memoryview(self._buf)[self.received :]

    def advance(self, n: int) -> None:
        if n <= 0:
            return
        self.received = min(self.total, self.received + n)
        complete = self.received // BLOCK_WIRE
        if complete > self.checked:
            heads = self._rows[self.checked : complete, :BLOCK_HEADER]
            bad = np.nonzero(~np.all(heads == self._hdr, axis=1))[0]
            if len(bad):
                self._fail(self.checked + int(bad[0]))
            self.checked = complete
        # an error reply can be shorter than a block: look at a partial header
        part = self.received - self.checked * BLOCK_WIRE
        if part and self.checked < self.blocks:
            start = self.checked * BLOCK_WIRE
            got = bytes(self._buf[start : start + min(part, BLOCK_HEADER)])
            if not self.header.startswith(got):
                self._fail(self.checked)

    def _fail(self, block: int) -> None:
        start = block * BLOCK_WIRE
        got = bytes(self._buf[start : start + BLOCK_HEADER])
        if got[:1] == b"?":
            raise ProtocolError(f"controller error reply at FETCH block {block}")
        raise ProtocolError(
            f"bad FETCH block header {got!r} at block {block} (want {self.header!r})"
        )

    def take(self) -> np.ndarray:
        """Data parts (k, 1024) of the blocks verified since the last call."""
        start, self.delivered = self.delivered, self.checked
        if self._rows is None:
            return np.empty((0, BLOCK), dtype=np.uint8)
        return self._rows[start : self.checked, BLOCK_HEADER:]

    def payload(self, nbytes: int | None = None) -> np.ndarray:
        """The data bytes with every header removed (first ``nbytes`` of them)."""
        if not self.done:
            raise ProtocolError(f"FETCH incomplete: {self.checked} of {self.blocks} blocks")
        if not self.blocks:
            return np.empty(0, dtype=np.uint8)
        data = np.array(self._rows[:, BLOCK_HEADER:], copy=True).reshape(-1)  # never a view
        return data if nbytes is None else data[:nbytes]


# ---------------------------------------------------------------------------
# FRAME status
# ---------------------------------------------------------------------------


@dataclass
class BufferStatus:
    index: int  # 1-based
    sample: int = 0
    complete: int = 0
    mode: int = 0
    base: int = 0
    frame: int = 0
    width: int = 0
    height: int = 0
    pixels: int = 0
    lines: int = 0
    rawoffset: int = 0
    timestamp: int = 0


@dataclass
class FrameStatus:
    timer: int = 0
    rbuf: int = 0
    wbuf: int = 0
    buffers: list[BufferStatus] = field(default_factory=list)

    def newest(self) -> BufferStatus | None:
        """The complete buffer with the highest frame number (camerad's rule)."""
        done = [b for b in self.buffers if b.complete]
        if not done:
            return None
        return max(done, key=lambda b: b.frame)

    def find_frame(self, number: int) -> BufferStatus | None:
        for b in self.buffers:
            if b.complete and b.frame == number:
                return b
        return None

    def writing(self) -> BufferStatus | None:
        for b in self.buffers:
            if b.index == self.wbuf:
                return b
        return None


_BUF_FIELDS = {
    "SAMPLE": "sample",
    "COMPLETE": "complete",
    "MODE": "mode",
    "BASE": "base",
    "FRAME": "frame",
    "WIDTH": "width",
    "HEIGHT": "height",
    "PIXELS": "pixels",
    "LINES": "lines",
    "RAWOFFSET": "rawoffset",
    "TIMESTAMP": "timestamp",
}
_BUFKEY_RE = re.compile(r"^BUF(\d)([A-Z]+)$")


def _num(key: str, value: str) -> int:
    try:
        return int(value, 16) if "TIME" in key else int(value)
    except ValueError:
        raise ProtocolError(f"{key}: not a number: {value[:20]!r}") from None


def parse_frame(text: str) -> FrameStatus:
    kv = parse_kv(text)
    fs = FrameStatus()
    bufs: dict[int, BufferStatus] = {}
    for k, v in kv.items():
        if k == "TIMER":
            fs.timer = _num(k, v)
        elif k == "RBUF":
            fs.rbuf = _num(k, v)
        elif k == "WBUF":
            fs.wbuf = _num(k, v)
        else:
            m = _BUFKEY_RE.match(k)
            if m and m.group(2) in _BUF_FIELDS:
                n = int(m.group(1))
                b = bufs.setdefault(n, BufferStatus(n))
                setattr(b, _BUF_FIELDS[m.group(2)], _num(k, v))
    fs.buffers = [bufs[i] for i in sorted(bufs)]
    return fs


def format_frame(fs: FrameStatus) -> str:
    items: dict[str, object] = {
        "TIMER": timer_text(fs.timer),
        "RBUF": fs.rbuf,
        "WBUF": fs.wbuf,
    }
    for b in fs.buffers:
        n = b.index
        items.update(
            {
                f"BUF{n}SAMPLE": b.sample,
                f"BUF{n}COMPLETE": b.complete,
                f"BUF{n}MODE": b.mode,
                f"BUF{n}BASE": b.base,
                f"BUF{n}FRAME": b.frame,
                f"BUF{n}WIDTH": b.width,
                f"BUF{n}HEIGHT": b.height,
                f"BUF{n}PIXELS": b.pixels,
                f"BUF{n}LINES": b.lines,
                f"BUF{n}RAWBLOCKS": 0,
                f"BUF{n}RAWLINES": 0,
                f"BUF{n}RAWOFFSET": b.rawoffset,
                f"BUF{n}TIMESTAMP": timer_text(b.timestamp),
            }
        )
    return format_kv(items)


# ---------------------------------------------------------------------------
# Module types (SYSTEM reply)
# ---------------------------------------------------------------------------

MODULE_TYPES = {
    0: "none",
    1: "Driver",
    2: "AD",
    3: "LVBias",
    4: "HVBias",
    5: "Heater",
    7: "HS",
    8: "HVXBias",
    9: "LVXBias",
    10: "LVDS",
    11: "HeaterX",
    12: "XVBias",
    13: "ADF",
    14: "ADX",
    15: "ADLN",
}


def module_types(system: dict[str, str]) -> dict[int, str]:
    """Slot number (1-based) -> module type name, from a SYSTEM reply."""
    out: dict[int, str] = {}
    for slot in range(1, 13):
        v = system.get(f"MOD{slot}_TYPE")
        if v is None:
            continue
        try:
            code = int(v)
        except ValueError:
            continue
        if code:
            out[slot] = MODULE_TYPES.get(code, f"type{code}")
    return out


# ---------------------------------------------------------------------------
# Command spellings: the controller layer's typed verbs are built from these
# ---------------------------------------------------------------------------

SYSTEM = "SYSTEM"
STATUS = "STATUS"
FRAME = "FRAME"
TIMER = "TIMER"
FETCHLOG = "FETCHLOG"
POLLOFF = "POLLOFF"
POLLON = "POLLON"
CLEARCONFIG = "CLEARCONFIG"
APPLYALL = "APPLYALL"
APPLYCDS = "APPLYCDS"
APPLYSYSTEM = "APPLYSYSTEM"
LOADTIMING = "LOADTIMING"
LOADPARAMS = "LOADPARAMS"
POWERON = "POWERON"
POWEROFF = "POWEROFF"
HOLDTIMING = "HOLDTIMING"
RELEASETIMING = "RELEASETIMING"
RESETTIMING = "RESETTIMING"
FETCHLOG_EMPTY = "(null)"

#: commands whose traffic is not logged at debug level (polled often)
QUIET_COMMANDS = (STATUS, TIMER, "WCONFIG", FRAME, "RCONFIG", FETCHLOG)
#: commands that take the controller a while (longer reply timeout)
SLOW_COMMANDS = (APPLYALL, LOADTIMING, POWERON, POWEROFF, "APPLYMOD", "APPLYDIO", APPLYCDS)

#: POWER= codes of a STATUS reply
POWER_NAMES = {
    0: "unknown",
    1: "not_configured",
    2: "OFF",
    3: "intermediate",
    4: "ON",
    5: "standby",
}


def apply_mod_command(module: int) -> str:
    """``APPLYMODxx`` for a 1-based module: xx = module - 1 in 2 hex digits (camerad)."""
    return f"APPLYMOD{module - 1:02X}"


def apply_dio_command(module: int) -> str:
    return f"APPLYDIO{module - 1:02X}"


def parse_module_suffix(suffix: str) -> int | None:
    """The 1-based module named by an APPLYMOD/APPLYDIO suffix; None if malformed.

    Two forms are in use: camerad's two hex digits of module - 1 (``04`` =
    module 5) and the decimal module number of other clients (``5``,
    ``12``).  One digit is decimal; two digits are hex 00-0B, else decimal
    10-12.
    """
    if not 1 <= len(suffix) <= 2 or not suffix.isascii() or not suffix.isalnum():
        return None
    if len(suffix) == 1:
        return int(suffix) if suffix.isdigit() and suffix != "0" else None
    try:
        zero_based = int(suffix, 16)
    except ValueError:
        return None
    if zero_based <= 11:
        return zero_based + 1
    if suffix.isdigit() and 10 <= int(suffix) <= 12:
        return int(suffix)
    return None


def param_command(verb: str, name: str, value: str) -> str:
    """``PREPPARAM``/``LOADPARAM``/``FASTPREPPARAM``/``FASTLOADPARAM name value``."""
    if verb not in ("PREPPARAM", "LOADPARAM", "FASTPREPPARAM", "FASTLOADPARAM"):
        raise ProtocolError(f"not a parameter verb: {verb}")
    if not name or any(c.isspace() for c in name + value):
        raise ProtocolError("parameter name and value cannot contain spaces")
    return f"{verb} {name} {value}"


def lock_command(buffer: int) -> str:
    if not 0 <= buffer <= 9:
        raise ProtocolError(f"buffer number out of range: {buffer}")
    return f"LOCK{buffer}"


def parse_timer(text: str) -> int:
    """Ticks (10 ns) of a ``TIMER=xxxxxxxxxxxxxxxx`` reply."""
    try:
        return int(parse_kv(text).get("TIMER", "0"), 16)
    except ValueError:
        raise ProtocolError("TIMER reply is not hex") from None

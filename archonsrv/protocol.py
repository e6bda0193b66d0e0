"""Pure protocol core of camerad and archonsim (no sockets, threads or clocks).

Two protocols live here:

* the STA Archon controller protocol: ``>xxCMD`` commands, ``<xx...`` and
  ``?xx`` replies, ``KEY=VALUE`` status lines (SYSTEM, STATUS, FRAME), the
  binary FETCH reply (``<xx:`` + 1024 bytes per block), the ACF file and the
  detector geometry derived from it;
* the camerad client protocol: one ASCII command line in, ``value DONE`` /
  ``ERROR [text]`` out, ``TAG:message`` datagrams on the async port, FITS
  file naming and user keyword parsing.

camerad, archonsim, the tests and the benchmark all use these functions;
protocol rules live nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------
# Archon framing
# ---------------------------------------------------------------------------

BLOCK = 1024  # bytes of pixel data per FETCH block
BLOCK_HEADER = 4  # "<xx:"
BLOCK_WIRE = BLOCK + BLOCK_HEADER
MAX_ARCHON_LINE = 1 << 20  # a FRAME/STATUS reply is a few kB; bound it anyway


class ProtocolError(ValueError):
    """Bytes that do not follow the protocol."""


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


def decode_command(line: bytes) -> ArchonCommand | None:
    """Parse ``>xxCOMMAND`` (newline already removed); None if garbled."""
    m = _CMD_RE.match(line.rstrip(b"\r"))
    if not m:
        return None
    try:
        text = m.group(2).decode("ascii")
    except UnicodeDecodeError:
        return None
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


def decode_reply(line: bytes) -> ArchonReply:
    """Parse one text reply line (newline removed)."""
    m = _REPLY_RE.match(line.rstrip(b"\r"))
    if not m:
        raise ProtocolError(f"not an Archon reply: {line[:40]!r}")
    text = m.group(3).decode("ascii", "replace")
    return ArchonReply(int(m.group(2), 16), m.group(1) == b"<", text)


def parse_kv(text: str) -> dict[str, str]:
    """Space-separated ``KEY=VALUE`` tokens of SYSTEM, STATUS and FRAME replies."""
    out: dict[str, str] = {}
    for tok in text.split():
        if "=" not in tok:
            raise ProtocolError(f"token without '=': {tok[:40]!r}")
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
# ACF files and geometry
# ---------------------------------------------------------------------------


class AcfError(ValueError):
    """An ACF file that cannot be used."""


@dataclass
class Mode:
    name: str
    acf: dict[str, str] = field(default_factory=dict)  # ACF:KEY=VALUE overrides
    arch: dict[str, str] = field(default_factory=dict)  # ARCH:KEY=VALUE
    fits: dict[str, tuple[str, str]] = field(default_factory=dict)  # FITS:KEY=VALUE/COMMENT


@dataclass
class Acf:
    """The parts of an ACF file camerad uses.

    ``lines`` is the controller configuration memory in order (line number =
    index); ``params`` maps a parameter name to its line number.
    """

    lines: list[tuple[str, str]] = field(default_factory=list)
    system: dict[str, str] = field(default_factory=dict)
    modes: dict[str, Mode] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {k: i for i, (k, _) in enumerate(self.lines)}

    def params(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, (k, v) in enumerate(self.lines):
            if re.match(r"^PARAMETER\d+$", k) and "=" in v:
                out[v.split("=", 1)[0]] = i
        return out

    def values(self) -> dict[str, str]:
        return dict(self.lines)


def normalize_acf_line(key: str, value: str) -> tuple[str, str]:
    """Tabs to spaces, backslashes to slashes, double quotes removed."""
    key = key.replace("\t", " ").replace("\\", "/").replace('"', "").strip()
    value = value.replace("\t", " ").replace("\\", "/").replace('"', "").strip()
    return key, value


_SECTION_RE = re.compile(r"^\[([^\]]+)\]$")


def parse_acf(text: str, source: str = "<acf>") -> Acf:
    acf = Acf()
    section = ""
    mode: Mode | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        m = _SECTION_RE.match(line)
        if m:
            section = m.group(1).strip().upper()
            mode = None
            if section.startswith("MODE_"):
                name = section[5:]
                if not name:
                    raise AcfError(f"{source}:{lineno}: empty mode name")
                if name == "RAW":
                    raise AcfError(f"{source}:{lineno}: mode name RAW is reserved")
                if name in acf.modes:
                    raise AcfError(f"{source}:{lineno}: duplicate mode {name}")
                mode = acf.modes[name] = Mode(name)
            continue
        if "=" not in line:
            raise AcfError(f"{source}:{lineno}: expected KEY=VALUE, got {line[:60]!r}")
        key, value = line.split("=", 1)
        if section == "CONFIG":
            acf.lines.append(normalize_acf_line(key, value))
        elif section == "SYSTEM":
            k, v = normalize_acf_line(key, value)
            acf.system[k] = v
        elif mode is not None:
            kind, _, rest = line.partition(":")
            kind = kind.strip().upper()
            if "=" not in rest:
                raise AcfError(f"{source}:{lineno}: expected {kind}:KEY=VALUE")
            k, v = rest.split("=", 1)
            if kind == "ACF":
                k, v = normalize_acf_line(k, v)
                mode.acf[k] = v
            elif kind == "ARCH":
                mode.arch[k.strip().upper()] = v.strip()
            elif kind == "FITS":
                val, _, comment = v.partition("/")
                mode.fits[k.strip().upper()[:8]] = (val.strip(), comment.strip())
            else:
                raise AcfError(f"{source}:{lineno}: unknown mode line type {kind!r}")
    if not acf.lines:
        raise AcfError(f"{source}: no [CONFIG] section")
    if len(acf.lines) > 0xFFFF:
        raise AcfError(f"{source}: more than 65535 configuration lines")
    idx = acf.index()
    params = acf.params()
    for m in acf.modes.values():
        for k in m.acf:
            if k not in idx and k not in params:
                raise AcfError(f"{source}: mode {m.name}: ACF:{k} is not in [CONFIG]")
    if "DEFAULT" not in acf.modes:
        raise AcfError(f"{source}: no [MODE_DEFAULT] section")
    for m in acf.modes.values():
        for k in ("NUM_DETECT", "HORI_AMPS", "VERT_AMPS"):
            if m.name == "DEFAULT" and k not in m.arch:
                raise AcfError(f"{source}: [MODE_DEFAULT] needs ARCH:{k}")
    return acf


GEOMETRY_KEYS = (
    "FRAMEMODE",
    "LINECOUNT",
    "PIXELCOUNT",
    "RAWENABLE",
    "RAWSEL",
    "RAWSAMPLES",
    "RAWENDLINE",
    "BIGBUF",
    "SAMPLEMODE",
    "TAPLINES",
)


@dataclass
class Geometry:
    cols: int  # image width of one detector
    rows: int
    num_detect: int
    hori_amps: int
    vert_amps: int
    bytes_per_pixel: int
    raw: bool
    framemode: int
    activebufs: int
    amp_sections: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def width(self) -> int:
        """Width of the frame buffer image (detectors side by side)."""
        return self.cols * self.num_detect

    @property
    def height(self) -> int:
        return self.rows

    @property
    def image_bytes(self) -> int:
        return self.width * self.height * self.bytes_per_pixel

    @property
    def blocks(self) -> int:
        return blocks_for(self.image_bytes)

    @property
    def bitpix(self) -> int:
        return 16 if self.bytes_per_pixel == 2 else 32


def _int_key(values: dict[str, str], key: str, lo: int = 0) -> int:
    if key not in values:
        raise AcfError(f"ACF key {key} missing")
    try:
        v = int(values[key])
    except ValueError:
        raise AcfError(f"ACF key {key} is not an integer: {values[key]!r}") from None
    if v < lo:
        raise AcfError(f"ACF key {key} must be >= {lo}: {v}")
    return v


def compute_geometry(values: dict[str, str], arch: dict[str, str], raw: bool = False) -> Geometry:
    """Image geometry from config-memory values and a mode's ARCH: keys."""
    for k in GEOMETRY_KEYS:
        if k not in values:
            raise AcfError(f"ACF key {k} missing")
    num = _int_key(arch, "NUM_DETECT", 1)
    hori = _int_key(arch, "HORI_AMPS", 1)
    vert = _int_key(arch, "VERT_AMPS", 1)
    framemode = _int_key(values, "FRAMEMODE")
    pixelcount = _int_key(values, "PIXELCOUNT", 1)
    linecount = _int_key(values, "LINECOUNT", 1)
    samplemode = _int_key(values, "SAMPLEMODE")
    bigbuf = _int_key(values, "BIGBUF")
    activebufs = 2 if bigbuf == 1 else 3
    if raw:
        cols = _int_key(values, "RAWSAMPLES", 1)
        rows = _int_key(values, "RAWENDLINE") + 1
        return Geometry(cols, rows, 1, 1, 1, 2, True, framemode, activebufs, [(1, cols, 1, rows)])
    cols = pixelcount * hori
    rows = linecount * vert
    sections: list[tuple[int, int, int, int]] = []
    if framemode == 2:
        for y in range(vert):
            for x in range(hori):
                sections.append(
                    (
                        x * pixelcount + 1,
                        (x + 1) * pixelcount,
                        y * linecount + 1,
                        (y + 1) * linecount,
                    )
                )
    else:
        for x in range(hori):
            sections.append((x * pixelcount + 1, (x + 1) * pixelcount, 1, rows))
    bpp = 2 if samplemode == 0 else 4
    return Geometry(cols, rows, num, hori, vert, bpp, False, framemode, activebufs, sections)


_TAPLINE_RE = re.compile(r"^(AD|AM)(\d+)[LR]?$", re.I)


def tap_gains(values: dict[str, str]) -> dict[int, tuple[str, str]]:
    """0-based AD channel -> (gain, offset) from ``TAPLINEn=ADxx[L|R],gain,offset``."""
    out: dict[int, tuple[str, str]] = {}
    for k, v in values.items():
        if not re.match(r"^TAPLINE\d+$", k):
            continue
        parts = [p.strip() for p in v.split(",")]
        if len(parts) != 3:
            continue
        m = _TAPLINE_RE.match(parts[0])
        if not m:
            continue
        out[int(m.group(2)) - 1] = (parts[1], parts[2])
    return out


# ---------------------------------------------------------------------------
# camerad client protocol
# ---------------------------------------------------------------------------

MAX_COMMAND_LINE = 1024


def split_command(line: str) -> tuple[str, str]:
    """First word (command) and the rest of the line (arguments, unparsed)."""
    line = line.replace("\r", "").replace("\n", "").strip()
    cmd, _, rest = line.partition(" ")
    return cmd, rest.strip()


def decode_command_line(data: bytes) -> str | None:
    """Printable ASCII text of a command line, or None for binary garbage."""
    data = data.replace(b"\r", b"")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c != "\t" for c in text) or "\x7f" in text:
        return None
    return text.replace("\t", " ")


def format_done(value: str = "") -> str:
    return f"{value} DONE" if value else "DONE"


def format_error(message: str = "", longerror: bool = False, value: str = "") -> str:
    head = f"{value} " if value else ""
    if longerror and message:
        return f"{head}ERROR {message}"
    return f"{head}ERROR"


def async_message(tag: str, message: str) -> bytes:
    """One async datagram: ``TAG:message``, no newline, bounded length."""
    data = f"{tag}:{message}".encode("ascii", "replace")
    return data[:MAX_DATAGRAM]


MAX_DATAGRAM = 8192


def native_async_lines(command: str, reply: str) -> list[str]:
    """``CMD:BEGIN``, one ``CMD:token`` per reply token, ``CMD:END``."""
    word = command.split()[0].upper() if command.split() else command
    return [f"{word}:BEGIN", *(f"{word}:{t}" for t in reply.split()), f"{word}:END"]


def bounded_int(text: str, what: str, lo: int, hi: int) -> int:
    """A decimal integer in lo..hi, or ValueError with a message for the user."""
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {text[:40]!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, got {v}")
    return v


def parse_bool_word(text: str) -> bool | None:
    v = text.strip().lower()
    if v in ("true", "yes", "1", "on"):
        return True
    if v in ("false", "no", "0", "off"):
        return False
    return None


# -- user FITS keywords ------------------------------------------------------


@dataclass(frozen=True)
class UserKey:
    keyword: str
    value: object  # bool, int, float or str; None means delete
    comment: str = ""


_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
_FITS_KEY_RE = re.compile(r"^[A-Z0-9_-]{1,8}$")


def parse_user_key(arg: str) -> UserKey:
    """``KEYWORD=VALUE//COMMENT`` -> :class:`UserKey`; ``VALUE`` of ``.`` deletes."""
    if "=" not in arg:
        raise ValueError("expected KEYWORD=VALUE[//COMMENT]")
    kw, rest = arg.split("=", 1)
    kw = kw.strip().upper()[:8]
    if not _FITS_KEY_RE.match(kw):
        raise ValueError(f"invalid FITS keyword {kw!r}")
    value, _, comment = rest.partition("//")
    value = value.strip()
    comment = comment.strip()
    if value == ".":
        return UserKey(kw, None, "")
    if value == "":
        raise ValueError(f"{kw}: missing value")
    if not all(32 <= ord(c) < 127 for c in value + comment):
        raise ValueError(f"{kw}: value and comment must be printable ASCII")
    if len(value) > 68:
        raise ValueError(f"{kw}: value longer than 68 characters")
    typed: object
    if value in ("T", "F"):
        typed = value == "T"
    elif _INT_RE.match(value):
        typed = int(value)
    elif _FLOAT_RE.match(value):
        typed = float(value)
    else:
        typed = value
    return UserKey(kw, typed, comment)


# -- FITS file naming --------------------------------------------------------


def fits_basename(basename: str, naming: str, imnum: int, stamp: str) -> str:
    """``<basename>_<suffix>.fits``; suffix YYYYMMDDHHMMSS or imnum (>= 4 digits)."""
    suffix = stamp if naming == "time" else f"{imnum:04d}"
    return f"{basename}_{suffix}.fits"


def with_counter(name: str, n: int) -> str:
    """``image_0001.fits`` -> ``image_0001-2.fits`` for the n-th duplicate."""
    stem = name[:-5] if name.endswith(".fits") else name
    return f"{stem}-{n}.fits"


def valid_basename(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")

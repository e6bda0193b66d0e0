"""The mar345 / mardtb hardware protocol: a pure, sans-I/O core.

Everything marserver and marsim know about the wire lives here: which ports
a hardware type has, the fixed record size on each port, how records are cut
out of a byte stream (:class:`RecordFramer`, :class:`CommandFramer`), how
``--swap`` reorders bytes (:func:`swap_records`), and how command, status,
message and data records are encoded and decoded.  No sockets, threads or
clocks.

Bad input follows :mod:`common.badinput`: the framers are stream cores
(``feed(bytes)`` + ``next_event()`` returning a message, a :class:`BadInput`
subclass or None) and the ``decode_*`` functions return the decoded record
or a :class:`WrongSize`; nothing raises on received bytes.

The wire is big-endian (the controller's native order).  Records:

=========== ======= ====== ===============================================
hardware    port    size   layout
=========== ======= ====== ===============================================
mar345      COMMAND 60     4-byte id ``IPS\\0``, cmd, mode, par1..par5 (int32), 28-byte string
mar345      STATUS  404    4-byte leading word + 100 int32 (ESD status block)
mar345      DATA    16386  uint16 block number + 8192 uint16 pixels
both        MESSAGE 84     4-byte id + 80 characters of text
dtb         COMMAND 172    4-byte id, cmd, mode, par1..par8 (int32), 128-byte string
dtb         STATUS  560    140 int32
dtb         DATA    16     4 int32: pos1, adc1, pos2, adc2
=========== ======= ====== ===============================================
"""

from __future__ import annotations

import enum
import struct
from array import array
from dataclasses import dataclass, field

from common.badinput import BadInput

# ---------------------------------------------------------------------------
# hardware types and ports


class Port(enum.IntEnum):
    """Hardware port index: hardware port number = base + index."""

    COMM = 0
    STAT = 1
    DATA = 2
    MESS = 3

    @property
    def label(self) -> str:
        return PORT_LABELS[self]


PORT_LABELS = {Port.COMM: "COMMAND", Port.STAT: "STATUS", Port.DATA: "DATA", Port.MESS: "MESSAGE"}


@dataclass(frozen=True)
class RecordLayout:
    """What a hardware type looks like on the wire: port numbers and record sizes."""

    name: str
    base: int
    sizes: dict[Port, int]
    n_params: int  # integer fields in a command record after the id (cmd, mode, pars)
    cmd_text: int  # bytes of the command string field
    status_words: int
    status_lead: int  # bytes before the status words
    counter_word: int  # 1-based status word holding the status counter
    data_swap: int  # word size for swapping DATA records
    sim_time_word: int  # first of two status words where marsim puts its send time

    def port_number(self, port: Port, base: int | None = None) -> int:
        return (self.base if base is None else base) + int(port)

    def record_size(self, port: Port) -> int:
        return self.sizes[port]


MAR345 = RecordLayout(
    name="mar345",
    base=4441,
    sizes={Port.COMM: 60, Port.STAT: 404, Port.DATA: 16386, Port.MESS: 84},
    n_params=7,
    cmd_text=28,
    status_words=100,
    status_lead=4,
    counter_word=62,
    data_swap=2,
    sim_time_word=63,  # words 63..69 are unused by the hardware
)

# The dtb status block carries no documented counter; marsim keeps its counter
# in the last word (140) and its send time in words 138-139; marserver never
# looks at either.
DTB = RecordLayout(
    name="dtb",
    base=4451,
    sizes={Port.COMM: 172, Port.STAT: 560, Port.DATA: 16, Port.MESS: 84},
    n_params=10,
    cmd_text=128,
    status_words=140,
    status_lead=0,
    counter_word=140,
    data_swap=4,
    sim_time_word=138,
)

HARDWARE = {"mar345": MAR345, "dtb": DTB}

ALL_PORTS = (Port.COMM, Port.STAT, Port.DATA, Port.MESS)

_PORT_NAMES = {
    "COMM": Port.COMM,
    "COMMAND": Port.COMM,
    "STAT": Port.STAT,
    "STATUS": Port.STAT,
    "DATA": Port.DATA,
    "MESS": Port.MESS,
    "MESSAGE": Port.MESS,
}


def parse_port_spec(text: str, hw: RecordLayout, base: int | None = None) -> set[Port]:
    """Parse ``-port`` arguments: ``#``, ``STAT``, ``COMM``, ``DATA``, ``MESS``, ``ALL``.

    Several may be joined with commas.  A number must be one of the four
    hardware port numbers (base .. base+3).  Raises ``ValueError``.
    """
    base = hw.base if base is None else base
    out: set[Port] = set()
    for item in text.replace(" ", ",").split(","):
        word = item.strip().upper()
        if not word:
            continue
        if word == "ALL":
            out.update(ALL_PORTS)
        elif word in _PORT_NAMES:
            out.add(_PORT_NAMES[word])
        elif word.isdigit():
            n = int(word)
            if not base <= n < base + 4:
                raise ValueError(f"port {n} is not a {hw.name} hardware port ({base}-{base + 3})")
            out.add(Port(n - base))
        else:
            raise ValueError(
                f"unknown port {item.strip()!r} (use a number, STAT, COMM, DATA, MESS or ALL)"
            )
    if not out:
        raise ValueError("empty port list")
    return out


# ---------------------------------------------------------------------------
# framing


@dataclass(frozen=True)
class Records:
    """One or more whole records, as they came (``len(data)`` is a multiple of the size)."""

    data: bytes

    def __len__(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class CommandRecord:
    """One whole COMMAND record from a client (big-endian wire order)."""

    data: bytes


@dataclass(frozen=True)
class BadCommand(BadInput):
    """A whole COMMAND record with an impossible command code: dropped."""


@dataclass(frozen=True)
class Unsynchronised(BadInput):
    """Bytes before the next command id, skipped while resynchronising."""


@dataclass(frozen=True)
class WrongSize(BadInput):
    """A record handed to a decoder does not have its port's size."""


class RecordFramer:
    """Cut a byte stream into whole fixed-size records (a stream core).

    :meth:`feed` stores bytes; :meth:`next_event` returns every whole record
    fed so far as one :class:`Records` (a length that is a multiple of
    ``size``), or None.  Any bytes are valid records, so there is no bad
    input here.  At most ``size - 1`` bytes of an unfinished record are held
    back, plus what one :meth:`feed` brought until it is taken.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("record size must be positive")
        self.size = size
        self._partial = bytearray()
        self._ready: bytes = b""

    def pending(self) -> int:
        """Bytes of an unfinished record held back."""
        return len(self._partial)

    def buffered(self) -> int:
        """Every byte held: whole records not yet taken and an unfinished one."""
        return len(self._ready) + len(self._partial)

    def reset(self) -> int:
        """Forget an unfinished record; return how many bytes it had."""
        n = len(self._partial)
        self._partial.clear()
        return n

    def feed(self, data: bytes) -> None:
        size = self.size
        if self._partial:
            need = size - len(self._partial)
            if len(data) < need:
                self._partial += data
                return
            self._partial += data[:need]
            head = bytes(self._partial)
            self._partial.clear()
            data = data[need:]
        else:
            head = b""
        whole = len(data) - len(data) % size
        if whole < len(data):
            self._partial += data[whole:]
        body = bytes(data) if whole == len(data) else bytes(data[:whole])
        chunk = head + body if head else body
        self._ready = self._ready + chunk if self._ready else chunk

    def next_event(self) -> Records | None:
        if not self._ready:
            return None
        out, self._ready = self._ready, b""
        return Records(out)


def split_records(chunk: bytes, size: int) -> list[bytes]:
    return [chunk[i : i + size] for i in range(0, len(chunk), size)]


# ---------------------------------------------------------------------------
# byte swapping (--swap)


def _swap_words(data: bytes | bytearray | memoryview, width: int) -> bytes:
    arr = array("H" if width == 2 else "I")
    assert arr.itemsize == width
    arr.frombytes(data)
    arr.byteswap()
    return arr.tobytes()


def swap_records(hw: RecordLayout, port: Port, chunk: bytes) -> bytes:
    """Swap the byte order of whole records as ``--swap`` does.

    COMMAND: only the integer fields (bytes 4 .. 4 + 4*n) as 32-bit words;
    STATUS: every 32-bit word; DATA: 16-bit words on the mar345, 32-bit on the
    dtb; MESSAGE: never (text).  ``chunk`` is one or more whole records.
    """
    size = hw.record_size(port)
    if len(chunk) % size:
        raise ValueError(f"{len(chunk)} bytes is not a whole number of {size}-byte records")
    if port is Port.MESS or not chunk:
        return bytes(chunk)
    if port is Port.STAT:
        return _swap_words(chunk, 4)
    if port is Port.DATA:
        return _swap_words(chunk, hw.data_swap)
    # COMMAND: id and text untouched
    out = bytearray(chunk)
    lo, hi = 4, 4 + 4 * hw.n_params
    for off in range(0, len(out), size):
        out[off + lo : off + hi] = _swap_words(out[off + lo : off + hi], 4)
    return bytes(out)


# ---------------------------------------------------------------------------
# COMMAND records

COMMAND_ID = b"IPS\x00"


class Cmd(enum.IntEnum):
    """mar345 (ESD) command codes."""

    NULL = 0
    STEP = 1
    RADIAL = 2
    XFER = 3
    SHUTTER = 4
    LOCK = 5
    ABORT = 6
    COLLECT = 7
    ADC = 8
    CHANGE = 9
    SCAN = 10
    SET = 11
    ERASE = 12
    MOVE = 13
    ION_CHAMBER = 14
    SHELL = 15


MAX_CMD = 16


class Axis(enum.IntEnum):
    DISTANCE = 1
    OMEGA = 2
    CHI = 3
    THETA = 4
    RADIAL = 5
    PHI = 6


class MoveKind(enum.IntEnum):
    REL = 0
    ABS = 1
    INIT_NEAR = 2
    INIT_FAR = 3
    STOP_SMOOTH = 4
    STOP_NOW = 5
    DEFINE = 6


SET_MODES = {0: "READ", 1: "WRITE", -1: "SETDEF"}
COLLECT_MODES = {1: "DOSE", 2: "TIME"}
SHUTTER_MODES = {0: "CLOSE", 1: "OPEN"}
ION_MODES = {0: "DISABLE", 1: "ENABLE"}


@dataclass(frozen=True)
class Command:
    """A decoded command record.  ``params`` holds par1.. (5 on mar345, 8 on dtb)."""

    cmd: int
    mode: int = 0
    params: tuple[int, ...] = ()
    text: bytes = b""
    ident: bytes = COMMAND_ID


def _cmd_struct(hw: RecordLayout) -> struct.Struct:
    return struct.Struct(f">4s{hw.n_params}i{hw.cmd_text}s")


def encode_command(hw: RecordLayout, c: Command) -> bytes:
    n = hw.n_params - 2
    if len(c.params) > n:
        raise ValueError(f"{hw.name} commands have at most {n} parameters")
    params = tuple(c.params) + (0,) * (n - len(c.params))
    if len(c.text) > hw.cmd_text:
        raise ValueError(f"command string longer than {hw.cmd_text} bytes")
    return _cmd_struct(hw).pack(c.ident, c.cmd, c.mode, *params, c.text)


def decode_command(hw: RecordLayout, record: bytes) -> Command | WrongSize:
    if len(record) != hw.record_size(Port.COMM):
        return WrongSize(
            f"a {hw.name} command record has {hw.record_size(Port.COMM)} bytes", len(record)
        )
    ident, cmd, mode, *rest = _cmd_struct(hw).unpack(record)
    text = rest.pop()
    return Command(cmd=cmd, mode=mode, params=tuple(rest), text=text.rstrip(b"\0"), ident=ident)


def command_error(hw: RecordLayout, record: bytes) -> str | None:
    """Why ``record`` (big-endian wire order) is not a plausible command, or None.

    Only mar345 commands are checked (command code 0..15); the dtb command
    codes are not public, so dtb records are always accepted.
    """
    if hw is not MAR345:
        return None
    cmd = struct.unpack_from(">i", record, 4)[0]
    if not 0 <= cmd < MAX_CMD:
        return f"unknown command code {cmd}"
    return None


def _name(table, value) -> str:
    try:
        return table(value).name
    except ValueError:
        return str(value)


def describe_command(hw: RecordLayout, c: Command) -> str:
    """One-line summary for the log: code, mode and parameters, decoded where known."""
    if hw is not MAR345:
        pars = " ".join(str(p) for p in c.params)
        return f"cmd={c.cmd} mode={c.mode} par=[{pars}]" + (
            f" str={c.text.decode('latin-1')!r}" if c.text else ""
        )
    name = _name(Cmd, c.cmd)
    mode = str(c.mode)
    p = c.params
    extra = ""
    if c.cmd == Cmd.MOVE:
        mode = f"{c.mode}({_name(Axis, c.mode)})"
        extra = f" {_name(MoveKind, p[0])} steps={p[1]} speed={p[2]}"
    elif c.cmd == Cmd.SET:
        mode = f"{c.mode}({SET_MODES.get(c.mode, '?')})"
        extra = f" param={p[0]} value={p[1]}"
    elif c.cmd == Cmd.COLLECT:
        mode = f"{c.mode}({COLLECT_MODES.get(c.mode, '?')})"
        extra = f" phi_steps={p[0]} units={p[1]} delay={p[2]}"
    elif c.cmd == Cmd.SHUTTER:
        mode = f"{c.mode}({SHUTTER_MODES.get(c.mode, '?')})"
    elif c.cmd == Cmd.ION_CHAMBER:
        mode = f"{c.mode}({ION_MODES.get(c.mode, '?')})"
    if c.cmd == Cmd.SHELL:
        extra = f" {c.text.decode('latin-1').strip()!r}"
    pars = ",".join(str(x) for x in p)
    return f"{name} mode={mode}{extra} par=[{pars}]"


class CommandFramer:
    """Cut one client's COMMAND stream into whole records (a stream core).

    :meth:`next_event` returns a :class:`CommandRecord` to forward, a
    :class:`BadCommand` (a whole record with an impossible command code) or
    an :class:`Unsynchronised` (bytes skipped), or None when more bytes are
    needed.  After a bad mar345 record the framer resynchronises on the next
    ``IPS\\0`` id.  Clients speak the big-endian wire order; ``--swap`` is
    applied to the records afterwards, on their way to the hardware.  The
    caller feeds only when :meth:`next_event` returned None, so at most one
    record plus one :meth:`feed` is buffered.
    """

    def __init__(self, hw: RecordLayout) -> None:
        self.hw = hw
        self.size = hw.record_size(Port.COMM)
        self._buf = bytearray()
        self._resync = False

    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_event(self) -> CommandRecord | BadCommand | Unsynchronised | None:
        size = self.size
        if self._resync:
            idx = self._buf.find(COMMAND_ID)
            if idx < 0:
                keep = len(COMMAND_ID) - 1
                dropped = max(0, len(self._buf) - keep)
                if dropped:
                    del self._buf[:dropped]
                    return Unsynchronised("no command id, discarded while resynchronising", dropped)
                return None
            self._resync = False
            if idx:
                del self._buf[:idx]
                return Unsynchronised("discarded while resynchronising", idx)
        if len(self._buf) < size:
            return None
        rec = bytes(self._buf[:size])
        del self._buf[:size]
        why = command_error(self.hw, rec)
        if why is None:
            return CommandRecord(rec)
        self._resync = True
        return BadCommand(why, size)


# ---------------------------------------------------------------------------
# STATUS records

# mar345 task word bits as the clients test them
TASK_DONE = 0x001
TASK_ACTIVE = 0x002
TASK_STARTED = 0x004
TASK_QUEUED = 0x010
TASK_ERROR = 0x100

# mar345 status words (1-based)
W_STEPPER = 1  # 6 axes x (actual, target, status)
W_HW_STATUS1 = 19
W_TASK = 20  # 20 task words, one per command code
W_VALID_DATA = 40
W_INTENSITY = 41
W_SCANMODE = 42
W_SERVO_STATE = 47
W_COUNTER = 62
W_SIM_TIME = 63  # unused by the hardware; marsim puts its send time here (2 words)

HW1_SHUTTER_CLOSED = 1 << 11


@dataclass
class Status:
    """A decoded status record: ``words[0]`` is word 1."""

    words: list[int] = field(default_factory=list)
    lead: int = 0

    def word(self, n: int) -> int:
        return self.words[n - 1]

    def set(self, n: int, value: int) -> None:
        self.words[n - 1] = value


def new_status(hw: RecordLayout) -> Status:
    return Status(words=[0] * hw.status_words)


def encode_status(hw: RecordLayout, st: Status) -> bytes:
    if len(st.words) != hw.status_words:
        raise ValueError(f"{hw.name} status has {hw.status_words} words")
    body = struct.pack(f">{hw.status_words}i", *st.words)
    if hw.status_lead:
        return struct.pack(">i", st.lead) + body
    return body


def decode_status(hw: RecordLayout, record: bytes) -> Status | WrongSize:
    if len(record) != hw.record_size(Port.STAT):
        return WrongSize(
            f"a {hw.name} status record has {hw.record_size(Port.STAT)} bytes", len(record)
        )
    lead = struct.unpack_from(">i", record, 0)[0] if hw.status_lead else 0
    words = list(struct.unpack_from(f">{hw.status_words}i", record, hw.status_lead))
    return Status(words=words, lead=lead)


def status_counter(hw: RecordLayout, record: bytes) -> int:
    """The status counter of a STATUS record (wire order)."""
    return struct.unpack_from(">i", record, hw.status_lead + 4 * (hw.counter_word - 1))[0]


def set_send_time(hw: RecordLayout, st: Status, ns: int) -> None:
    """marsim's send time (64-bit ns) in the two unused status words."""
    hi, lo = pack_time(ns)
    st.set(hw.sim_time_word, hi)
    st.set(hw.sim_time_word + 1, lo)


def send_time(hw: RecordLayout, record: bytes, offset: int = 0) -> int:
    """The send time marsim put into the STATUS record at ``offset`` (wire order)."""
    at = offset + hw.status_lead + 4 * (hw.sim_time_word - 1)
    return unpack_time(*struct.unpack_from(">ii", record, at))


def stepper_words(axis: int) -> tuple[int, int, int]:
    """Status word numbers of (actual, target, status) for a mar345 axis 1..6."""
    first = W_STEPPER + 3 * (axis - 1)
    return first, first + 1, first + 2


def pack_time(ns: int) -> tuple[int, int]:
    """Split a 64-bit nanosecond time into two signed 32-bit status words."""
    hi, lo = (ns >> 32) & 0xFFFFFFFF, ns & 0xFFFFFFFF
    return tuple(v - (1 << 32) if v >= 1 << 31 else v for v in (hi, lo))  # type: ignore[return-value]


def unpack_time(hi: int, lo: int) -> int:
    return ((hi & 0xFFFFFFFF) << 32) | (lo & 0xFFFFFFFF)


# ---------------------------------------------------------------------------
# MESSAGE records

MESSAGE_TEXT = 80
MESSAGE_ID = b"MSG\x00"


def encode_message(text: str, ident: bytes = MESSAGE_ID) -> bytes:
    """An 84-byte message: id + text (``MESS ...``), NUL padded, cut at 80."""
    raw = text.encode("latin-1", "replace")[:MESSAGE_TEXT]
    return struct.pack(f">4s{MESSAGE_TEXT}s", ident, raw)


def decode_message(record: bytes) -> str | WrongSize:
    if len(record) != 4 + MESSAGE_TEXT:
        return WrongSize("a message record has 84 bytes", len(record))
    return record[4:].split(b"\0", 1)[0].decode("latin-1")


def message_body(record: bytes) -> str | None:
    """What follows ``MESS`` in a message, as the clients print it."""
    text = decode_message(record)
    if isinstance(text, BadInput):
        return None
    idx = text.find("MESS")
    return None if idx < 0 else text[idx + 4 :]


def setparam_message(param: int, value: int) -> str:
    """A SET READ answer: after ``MESS`` the parameter number is at character
    17 and its value at character 34, where the clients read them."""
    body = f"{' SETPARAM':<17}{param:<17d}{value}"
    return "MESS" + body


# task names as the controller prints them; clients wait for the exact texts
# "SCAN_DATA    Ended o.k." and "MODE_CHANGE  Ended o.k." (4 and 2 spaces)
_TASK_NAMES = {Cmd.SCAN: "SCAN_DATA   ", Cmd.CHANGE: "MODE_CHANGE "}


def task_end_message(cmd: int) -> str:
    """The MESSAGE text that reports the end of task ``cmd``."""
    return f"MESS {_TASK_NAMES.get(cmd) or _name(Cmd, cmd)} Ended o.k."


def parse_setparam(record: bytes) -> tuple[int, int] | None:
    body = message_body(record)
    if body is None or "SETPARAM" not in body[:17]:
        return None
    try:
        return int(body[17:34].split()[0]), int(body[34:].split()[0])
    except (ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------
# DATA records

DATA_PIXELS = 8192


def encode_data_block(block: int, pixels: bytes) -> bytes:
    """A mar345 DATA block: uint16 block number + 8192 uint16 pixels (big-endian)."""
    if len(pixels) != 2 * DATA_PIXELS:
        raise ValueError("a data block carries 8192 16-bit pixels")
    return struct.pack(">H", block & 0xFFFF) + pixels


def data_block_number(record: bytes, offset: int = 0) -> int:
    return struct.unpack_from(">H", record, offset)[0]


def set_data_block_number(buf: bytearray, offset: int, block: int) -> None:
    """Renumber the mar345 DATA block at ``offset`` of ``buf`` in place."""
    struct.pack_into(">H", buf, offset, block & 0xFFFF)


def encode_dtb_sample(pos1: int, adc1: int, pos2: int, adc2: int) -> bytes:
    return struct.pack(">4i", pos1, adc1, pos2, adc2)

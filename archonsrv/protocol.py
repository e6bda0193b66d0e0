"""Pure core of camerad's own client protocol (no sockets, threads or clocks).

One ASCII command line in, ``value DONE`` / ``ERROR [text]`` out,
``TAG:message`` datagrams on the async port, FITS file naming and user
keyword parsing.  The controller's wire protocol is in :mod:`archonsrv.archon`,
the ACF format in :mod:`archonsrv.acf`.

Bad input follows :mod:`common.badinput`: :class:`CommandStream` is the
stream core of the command ports (``feed`` + ``next_event`` giving
:class:`CommandLine` or a :class:`BadInput` subclass).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from common.badinput import BadInput
from common.framing import LineBuffer, OverlongLine

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


@dataclass(frozen=True)
class CommandLine:
    """One command line as text (printable ASCII, tabs made spaces)."""

    text: str


class Overlong(BadInput):
    """A command line longer than :data:`MAX_COMMAND_LINE` (skipped)."""


class NotText(BadInput):
    """A command line with non-printable or non-ASCII bytes (skipped)."""


def decode_line(data: bytes) -> CommandLine | NotText:
    """A received line (newline removed) as a :class:`CommandLine`."""
    text = decode_command_line(data)
    if text is None:
        return NotText("command contains non-printable or non-ASCII bytes", len(data))
    return CommandLine(text)


def overlong(size: int) -> Overlong:
    return Overlong(f"command line too long ({size} bytes, limit {MAX_COMMAND_LINE})", size)


class CommandStream:
    """Bytes of a command port in any split -> :class:`CommandLine` / BadInput."""

    def __init__(self, max_line: int = MAX_COMMAND_LINE) -> None:
        self.frames = LineBuffer(max_line=max_line)
        self._ready: list[bytes | OverlongLine] = []

    def feed(self, data: bytes) -> None:
        self._ready.extend(self.frames.feed(data))
        if len(self._ready) > 1024:  # bounded: a burst of lines keeps only the newest
            del self._ready[:-1024]

    def pending_lines(self) -> int:
        return len(self._ready)

    def clear(self) -> int:
        """Forget complete and partial lines; return how many were dropped."""
        dropped = len(self._ready)
        self._ready.clear()
        if len(self.frames):  # (an overlong line being skipped stays skipped)
            dropped += 1
            self.frames.feed(b"\n")
            self._ready.clear()
        return dropped

    def at_eof(self) -> CommandLine | BadInput | None:
        """The partial line left at end of input (``echo -n cmd | nc``), if any."""
        if self.frames.discarding:
            return overlong(self.frames.discarding)
        rest = self.frames.pending()
        return decode_line(rest) if rest else None

    def next_event(self) -> CommandLine | BadInput | None:
        if not self._ready:
            return None
        item = self._ready.pop(0)
        if isinstance(item, OverlongLine):
            return overlong(item.size)
        return decode_line(item)


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


@dataclass(frozen=True)
class AsyncMessage:
    """One async datagram: ``TAG:message`` (a datagram without a colon has tag "")."""

    tag: str
    text: str

    def line(self) -> str:
        return f"{self.tag}:{self.text}" if self.tag else self.text


def decode_async(data: bytes) -> AsyncMessage | NotText:
    """A received async datagram; :class:`NotText` for non-ASCII or control bytes."""
    if len(data) > MAX_DATAGRAM:
        return NotText(f"datagram longer than {MAX_DATAGRAM} bytes", len(data))
    text = decode_command_line(data)
    if text is None:
        return NotText("datagram is not printable ASCII", len(data))
    tag, sep, rest = text.partition(":")
    if not sep or not tag or " " in tag:
        return AsyncMessage("", text)
    return AsyncMessage(tag, rest)


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
        if not math.isfinite(typed):  # FITS headers cannot hold inf
            raise ValueError(f"{kw}: number {value[:30]} out of range")
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

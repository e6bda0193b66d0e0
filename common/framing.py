"""Bounded, sans-I/O line framing.

:class:`LineBuffer` turns a byte stream, fed in any split, into lines.  It
never holds more than ``max_line`` bytes of an unfinished line: a longer line
is reported once as :class:`OverlongLine` and the rest of it is discarded up
to the next newline, so a client sending a megabyte without a newline costs
the server ``max_line`` bytes, not a megabyte.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OverlongLine:
    """Stands in for a line longer than the limit; ``size`` counts what was seen."""

    size: int


class LineBuffer:
    def __init__(self, max_line: int = 4096, newline: bytes = b"\n", strip_cr: bool = True):
        if max_line <= 0:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self.newline = newline
        self.strip_cr = strip_cr
        self._buf = bytearray()
        self._discarding = 0  # bytes of an overlong line seen so far, 0 = not discarding

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def discarding(self) -> int:
        """Bytes of an overlong line being discarded so far (0 when not discarding)."""
        return self._discarding

    def pending(self) -> bytes:
        """Bytes of an unfinished line (for a partial-line-at-EOF message)."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[bytes | OverlongLine]:
        out: list[bytes | OverlongLine] = []
        nl = self.newline
        pos = 0
        n = len(data)
        while pos < n:
            idx = data.find(nl, pos)
            if self._discarding:
                if idx < 0:
                    self._discarding += n - pos
                    return out
                self._discarding += idx - pos
                out.append(OverlongLine(self._discarding))
                self._discarding = 0
                pos = idx + len(nl)
                continue
            if idx < 0:
                self._buf += data[pos:]
                if len(self._buf) > self.max_line:
                    self._discarding = len(self._buf)
                    self._buf.clear()
                return out
            if len(self._buf) + (idx - pos) > self.max_line:
                out.append(OverlongLine(len(self._buf) + idx - pos))
                self._buf.clear()
                pos = idx + len(nl)
                continue
            self._buf += data[pos:idx]
            line = bytes(self._buf)
            self._buf.clear()
            if self.strip_cr and line.endswith(b"\r"):
                line = line[:-1]
            out.append(line)
            pos = idx + len(nl)
        return out

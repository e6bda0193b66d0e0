"""The one convention for bad input in every pure protocol core of the suite.

Every ``protocol.py`` (and ``hdw/protocol.py``) follows these rules, so that
one fuzz invariant holds for the whole suite: *any* bytes fed to a core give
typed messages or :class:`BadInput` values, and the only exception a core may
raise on received bytes is :class:`ProtocolError`, for a stream that cannot
go on.

Stream cores (TCP byte streams, fed in any split)
    ``feed(data: bytes) -> None`` stores bytes (bounded), and
    ``next_event() -> Message | BadInput | None`` returns the next complete
    message, a :class:`BadInput` for a malformed or overlong piece (the core
    has already skipped it and stays usable), or ``None`` when more bytes are
    needed.  The I/O layer answers a ``BadInput`` as the protocol allows (an
    error reply, or only a rate-limited log line) and reads on.

Datagram and whole-message cores (UDP datagrams, ZeroMQ multipart messages,
one already-framed record or line)
    ``decode(data) -> Message | BadInput``: never ``None``, never an exception
    for bad input.

Fatal input
    :class:`ProtocolError` is raised only when the stream itself cannot go on
    (framing lost with no way to resynchronise, e.g. a binary header whose
    length cannot be trusted).  The I/O layer logs one line and closes that
    connection; the server keeps serving everyone else.

Encoding our own values
    ``encode``/``format_*`` functions raise :class:`ProtocolError` for a value
    the wire cannot carry (a newline in a one-line reply, a number out of
    range): that is a programming or configuration error, never peer input.

What a BadInput may say
    ``reason`` is a short fixed text that names the rule broken ("line is
    not =: SN cmd", "header magic 0x1234 is not 4277009102").  It never
    quotes more than :data:`QUOTE_LIMIT` bytes of the input, escaped (see
    :func:`quote`), and never quotes bytes read from a file: replies and log
    lines must not disclose file content.  ``size`` is how many bytes the bad
    piece had.
"""

from __future__ import annotations

from dataclasses import dataclass

#: at most this many bytes of peer input appear in a reason text
QUOTE_LIMIT = 32


class ProtocolError(ValueError):
    """Fatal for this stream (or a value our side cannot encode)."""


@dataclass(frozen=True)
class BadInput:
    """A malformed or overlong piece of input that the core skipped.

    Cores subclass it to say what kind (``Garbage``, ``Overlong``, ...); the
    I/O layer can treat every subclass alike through ``reason`` and ``size``.
    """

    reason: str
    size: int = 0

    def __str__(self) -> str:
        return self.reason


def quote(data: bytes, limit: int = QUOTE_LIMIT) -> str:
    """A short, printable, escaped excerpt of peer input for a reason text."""
    head = bytes(data[:limit])
    text = head.decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return repr(text + ("..." if len(data) > limit else ""))

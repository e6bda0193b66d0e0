"""Socket helpers shared by the server and the client (the I/O side of protocol.py).

``fill`` does one read's worth of work: small packets arrive in
64 KiB reads fed to the sans-I/O :class:`~specsrv.protocol.Decoder`; a large
data section (an image, a million doubles) is received straight into one
buffer of its final size with ``recv_into``, so it is never copied on the way
in.  ``send_nowait`` writes what the socket takes without blocking.
"""

from __future__ import annotations

import socket

from .protocol import Decoder

CHUNK = 1 << 16
BULK = 1 << 18


def fill(sock: socket.socket, decoder: Decoder) -> bool:
    """One read's worth of bytes into ``decoder``; False at end of file.

    Take the events with ``decoder.next_event()`` afterwards.
    """
    if decoder.data_remaining() >= BULK:
        buf, have = decoder.bulk_buffer()
        while have < len(buf):
            n = sock.recv_into(buf[have:], min(len(buf) - have, 1 << 22))
            if not n:
                return False
            have += n
        decoder.bulk_done(buf)
        return True
    data = sock.recv(CHUNK)
    if not data:
        return False
    decoder.feed(data)
    return True


def send_nowait(sock: socket.socket, buffers: list) -> list:
    """Send as much of ``buffers`` as the socket takes now; return what is left."""
    left = list(buffers)
    while left:
        buf = left[0]
        try:
            n = sock.send(buf, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return left
        if n < len(buf):
            left[0] = memoryview(buf)[n:]
            return left
        left.pop(0)
    return left

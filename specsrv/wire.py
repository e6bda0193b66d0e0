"""Socket helpers shared by the server and the client (the I/O side of protocol.py).

``read_items`` does one read's worth of work: small packets arrive in
64 KiB reads fed to the sans-I/O :class:`~specsrv.protocol.Decoder`; a large
data section (an image, a million doubles) is received straight into one
buffer of its final size with ``recv_into``, so it is never copied on the way
in.  ``send_nowait`` writes what the socket takes without blocking.
"""

from __future__ import annotations

import socket

from .protocol import Decoder, Packet, ProtocolError

CHUNK = 1 << 16
BULK = 1 << 18


def read_items(sock: socket.socket, decoder: Decoder) -> list[Packet | ProtocolError] | None:
    """Packets (and protocol errors) from the next read; None at end of file."""
    if decoder.data_remaining() >= BULK:
        buf, have = decoder.bulk_buffer()
        while have < len(buf):
            n = sock.recv_into(buf[have:], min(len(buf) - have, 1 << 22))
            if not n:
                return None
            have += n
        return decoder.bulk_done(buf)
    data = sock.recv(CHUNK)
    if not data:
        return None
    return decoder.feed(data)


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

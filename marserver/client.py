"""Client-side helpers: what a monitor or logger on a marserver port does.

Used by the demo, the tests and the benchmark: connect to a client port and
read for a while, or read an exact number of bytes, with bounded waits.
"""

from __future__ import annotations

import socket
import time


def connect(
    port: int, host: str = "127.0.0.1", rcvbuf: int | None = None, timeout: float = 5.0
) -> socket.socket:
    """Connect to ``host:port``; a small ``rcvbuf`` makes a client that stalls quickly."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def recv_for(sock: socket.socket, seconds: float, limit: int = 64 << 20) -> bytes:
    """Everything that arrives within ``seconds`` (at most ``limit`` bytes)."""
    buf = bytearray()
    deadline = time.monotonic() + seconds
    while len(buf) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def recv_exact(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    """Exactly ``n`` bytes; ``TimeoutError`` or ``ConnectionError`` otherwise."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"got {len(buf)} of {n} bytes")
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"end of file after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def whole(data: bytes, size: int) -> list[bytes]:
    """The whole ``size``-byte records at the start of ``data``."""
    end = len(data) - len(data) % size
    return [data[i : i + size] for i in range(0, end, size)]

"""Helpers for the specsrv.hdw tests: in-process servers and a raw protocol socket."""

from __future__ import annotations

import contextlib
import socket

import numpy as np

from common.framing import OverlongLine
from common.server import SocketReader
from specsrv.hdw import protocol as P
from specsrv.hdw.cli import build_parser
from specsrv.hdw.device import McaDevice
from specsrv.hdw.server import HdwServer, make_shared_device

LOOP = "127.0.0.1"


def make_device(cls, *argv: str):
    """A device configured from its own command-line options."""
    dev = cls()
    dev.parse_args(build_parser(cls, cls.name).parse_args(list(argv)))
    return dev


class MemoryMca(McaDevice):
    """An MCA that keeps exactly what was written (channel i starts as i)."""

    name = "memory"
    writable = True

    def __init__(self, type_name: str = "short", chans: int = 8):
        super().__init__()
        self.type_name, self.shape = type_name, (chans,)
        self.data = np.arange(chans).astype(P.dtype_for(type_name, "="))

    def send_data(self, addr, block):
        block.data = self.data[block.region.slices()].copy()

    def receive_data(self, addr, block):
        self.data[block.region.slices()] = block.data


@contextlib.contextmanager
def inproc(device, name: str | None = None, **kw):
    """The real HdwServer on an ephemeral loopback port, in this process."""
    shutdowns = []
    shared = make_shared_device(device, name or device.name)
    shared.quit_on_goodbye = kw.pop("quit_on_goodbye", False)
    srv = HdwServer((LOOP, 0), shared, on_shutdown=lambda: shutdowns.append(1), **kw)
    srv.shutdowns = shutdowns
    srv.start()
    try:
        yield srv
    finally:
        left = srv.stop()
        assert left == 0, "handler threads left running"


class Raw:
    """A plain socket speaking the protocol byte by byte, for exact wire checks."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((LOOP, port), timeout=timeout)
        self.reader = SocketReader(self.sock, max_line=1 << 16)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        got = self.reader.read_line()
        assert not isinstance(got, OverlongLine)
        return got

    def ask(self, sn: int, text: str) -> P.Reply:
        self.send(f"=: {sn} {text}\n".encode())
        rep = P.parse_reply(self.line())
        assert rep.sn == sn
        return rep

    def data(self, n: int) -> bytes:
        return self.reader.read_exact(n)

    def nothing_within(self, seconds: float) -> bool:
        """True if no byte arrives within ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            return not self.reader.buffered() and not self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5.0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""A client of the server-hardware protocol: what spec does on its side.

>>> with Client("localhost", 5000) as c:          # doctest: +SKIP
...     c.hello("mca_server")
...     c.config()
...     c.clear(); c.run(2.0, 2)
...     while c.status(): time.sleep(0.1)
...     spectrum = c.read(0, 1023)

Every request gets a fresh sequence number; an ``!:`` reply raises
:class:`HdwError`.  ``read`` returns numpy arrays (native byte order) and
sends ``xfer_done`` as spec does; ``write`` sends numpy arrays.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from common.framing import OverlongLine
from common.server import ConnectionClosed, SocketReader

from . import protocol as P


class HdwError(Exception):
    """The server answered with an ``!:`` error line."""

    def __init__(self, cmd: str, text: str) -> None:
        super().__init__(f"{cmd}: {text}")
        self.cmd = cmd
        self.text = text


class Client:
    def __init__(
        self,
        host: str = "localhost",
        port: int = P.DEFAULT_PORT,
        *,
        timeout: float | None = 10.0,
        byte_order: str = "<",
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.byte_order = byte_order
        self.sock: socket.socket | None = None
        self.reader: SocketReader | None = None
        self.sn = 0
        self.info: P.Hello | None = None
        self.config_info: P.Config | None = None

    # -- connection ------------------------------------------------------------
    def connect(self) -> Client:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = SocketReader(self.sock, max_line=P.MAX_LINE)
        if self.byte_order != "<":
            self.request("set", "byte_order", "big")
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Client:
        return self.connect() if self.sock is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw requests ---------------------------------------------------------------
    def send(self, cmd: str, *args: object, addr: int | str | None = None) -> int:
        """Send one request; return its sequence number."""
        self.sn += 1
        self.sock.sendall(P.format_request(self.sn, cmd, *args, addr=addr))
        return self.sn

    def reply(self, sn: int) -> P.Reply:
        """The reply to request ``sn`` (replies to older requests are skipped)."""
        while True:
            line = self.reader.read_line()
            if isinstance(line, OverlongLine):
                raise P.ProtocolError(f"reply line of {line.size} bytes")
            rep = P.parse_reply(line)
            if rep.sn == sn:
                return rep

    def request(self, cmd: str, *args: object, addr: int | str | None = None) -> str:
        """Send a request and return the reply text; HdwError on ``!:``."""
        rep = self.reply(self.send(cmd, *args, addr=addr))
        if not rep.ok:
            raise HdwError(cmd, rep.text)
        return rep.text

    # -- the messages --------------------------------------------------------------------
    def hello(self, name: str | None = None) -> P.Hello:
        self.info = P.parse_hello(self.request("hello", *([name] if name else [])))
        return self.info

    def config(self, arg: str = "") -> P.Config:
        self.config_info = P.parse_config(self.request("config", *arg.split()))
        return self.config_info

    def clear(self) -> None:
        self.request("clear")

    def run(self, preset: float = 0.0, mode: int = 4) -> None:
        self.request("run", f"{preset:g}", mode)

    def halt(self, mode: int = 0) -> None:
        self.request("halt", mode)

    def status(self) -> int:
        return int(self.request("get_status"))

    def wait(self, timeout: float = 60.0, interval: float = 0.05) -> bool:
        """Poll ``get_status`` until idle; False if still busy after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.status():
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True

    def get(self, par: str, *args: object, addr: int | str | None = None) -> str:
        return self.request("get", par, *args, addr=addr)

    def set(self, par: str, *values: object, addr: int | str | None = None) -> str:
        return self.request("set", par, *values, addr=addr)

    def goodbye(self, how: int = 0) -> None:
        """Send ``goodbye`` (no reply comes) and close the connection."""
        self.send("goodbye", how)
        self.close()

    def exit(self) -> str:
        return self.request("exit")

    def _native(self) -> str:
        if self.config_info is None:
            self.config()
        return self.config_info.type_name

    def read_region(self, *bounds: int, addr: int | str | None = None) -> np.ndarray:
        """``read`` + binary data + ``xfer_done``; shape ``(n,)`` or ``(rows, cols)``."""
        default_type = self._native()
        text = self.request("read", *bounds, addr=addr)
        npts, type_name = P.parse_read_reply(text, default_type)
        data = np.empty(npts, dtype=P.dtype_for(type_name, self.byte_order))
        if npts:
            self.reader.read_into(memoryview(data).cast("B"))
        self.request("xfer_done")
        data = data.astype(data.dtype.newbyteorder("="), copy=False)
        if len(bounds) == 4:
            shape = (bounds[1] - bounds[0] + 1, bounds[3] - bounds[2] + 1)
            if shape[0] * shape[1] == npts:
                return data.reshape(shape)
        return data

    def read(self, first: int, last: int, addr: int | str | None = None) -> np.ndarray:
        return self.read_region(first, last, addr=addr)

    def read_image(self, row_beg: int, row_end: int, col_beg: int, col_end: int, addr=None):
        return self.read_region(row_beg, row_end, col_beg, col_end, addr=addr)

    def write_region(self, data, *bounds: int, addr: int | str | None = None) -> None:
        """``write`` + ``okay NPTS`` + binary data in the native type + ``xfer_done``."""
        type_name = self._native()
        arr = np.asarray(data).reshape(-1)
        want = P.Region(tuple(zip(bounds[::2], bounds[1::2], strict=True))).npts
        if arr.size != want:
            raise ValueError(f"region {bounds} holds {want} points, data has {arr.size}")
        npts = P.parse_write_reply(self.request("write", *bounds, addr=addr))
        if npts != arr.size:
            raise P.ProtocolError(f"server expects {npts} points, not {arr.size}")
        self.sock.sendall(P.to_wire(arr, type_name, self.byte_order))
        self.request("xfer_done")

    def write(self, first: int, last: int, data, addr: int | str | None = None) -> None:
        self.write_region(data, first, last, addr=addr)

    def write_image(self, row_beg, row_end, col_beg, col_end, data, addr=None) -> None:
        self.write_region(data, row_beg, row_end, col_beg, col_end, addr=addr)


__all__ = ["Client", "ConnectionClosed", "HdwError"]

"""Test rig for marserver: real processes, a scriptable fake hardware, clients."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

from marserver import protocol as P
from marserver.client import connect, recv_exact, recv_for  # noqa: F401 - re-exported
from tests.support import procs

HOST = procs.LOOPBACK


wait_for = procs.wait_until


def is_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the peer closed (EOF or reset) within ``timeout``; drains data."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def counters(hw: P.RecordLayout, data: bytes) -> list[int]:
    size = hw.record_size(P.Port.STAT)
    assert len(data) % size == 0, f"{len(data)} bytes is not whole STATUS records"
    return [P.status_counter(hw, r) for r in P.split_records(data, size)]


class FakeHardware:
    """Four listening ports that act like the controller, scripted by the test.

    ``conn[port]`` is the newest connection (a new one closes the previous,
    as the hardware does); ``commands`` collects the bytes on the COMMAND port.
    """

    def __init__(self, base: int | None = None) -> None:
        self.base = base or procs.free_port_block(4)
        self.listeners = []
        for port in P.ALL_PORTS:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, self.base + port))
            s.listen(8)
            s.settimeout(0.2)
            self.listeners.append(s)
        self.conn: dict[P.Port, socket.socket | None] = dict.fromkeys(P.ALL_PORTS)
        self.accepted = dict.fromkeys(P.ALL_PORTS, 0)
        self.commands = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._accept, args=(p,), daemon=True) for p in P.ALL_PORTS
        ]
        for t in self._threads:
            t.start()

    def _accept(self, port: P.Port) -> None:
        lst = self.listeners[port]
        while not self._stop.is_set():
            try:
                c, _ = lst.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                old, self.conn[port] = self.conn[port], c
                self.accepted[port] += 1
            if old is not None:
                old.close()
            if port is P.Port.COMM:
                threading.Thread(target=self._read_commands, args=(c,), daemon=True).start()

    def _read_commands(self, c: socket.socket) -> None:
        c.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = c.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.commands += data

    def connected(self, ports=P.ALL_PORTS, generation: int = 1) -> bool:
        return all(self.conn[p] is not None and self.accepted[p] >= generation for p in ports)

    def send(self, port: P.Port, data: bytes) -> None:
        self.conn[port].sendall(data)

    def drop_all(self) -> None:
        with self._lock:
            conns = [c for c in self.conn.values() if c is not None]
            self.conn = dict.fromkeys(P.ALL_PORTS)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def close(self) -> None:
        self._stop.set()
        for s in self.listeners:
            s.close()
        self.drop_all()
        for t in self._threads:
            t.join(1.0)


class Relay:
    """A marserver process between ``hw_base`` and clients on free ports."""

    def __init__(self, spawn, hw_base: int, *args: str, hardware: str = "-mar", log: Path):
        self.cbase = procs.free_port_block(4)
        self.add = self.cbase - hw_base
        self.log = log
        self.logf = open(log, "wb")  # closed by the test's tmp_path cleanup
        self.proc = spawn(
            "marserver",
            hardware,
            HOST,
            str(hw_base),
            "-a",
            str(self.add),
            "--listen",
            HOST,
            "--backoff",
            "0.5",
            "-v",
            *args,
            stderr=self.logf,
        )

    def port(self, p: P.Port) -> int:
        return self.cbase + int(p)

    def wait_listening(self, p: P.Port = P.Port.STAT) -> None:
        """Wait for the port, and for marserver to be done with the probe connection
        (so that it does not count against the 10-client limit)."""
        procs.wait_port(self.port(p), proc=self.proc)
        probe = re.compile(
            rf"{p.label}: client \S+ disconnected|{p.label} client port \d+: refused"
        )
        assert wait_for(lambda: probe.search(self.text()) is not None), "probe never left"

    def text(self) -> str:
        self.logf.flush()
        return self.log.read_text(errors="replace")

    def wait_registered(self, *socks: socket.socket) -> bool:
        """Wait until marserver has logged each client connection as registered."""
        return all(
            self.wait_log(f"client 127.0.0.1:{s.getsockname()[1]} connected (") for s in socks
        )

    def wait_log(self, needle: str, timeout: float = 10.0, count: int = 1) -> bool:
        return wait_for(lambda: self.text().count(needle) >= count, timeout)

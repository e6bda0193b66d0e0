"""The socket side of a server-hardware server.

:class:`HdwServer` is a :class:`common.server.ThreadedTCPServer` (one thread
per connection); each connection feeds the bytes it receives to a
:class:`~specsrv.hdw.protocol.RequestStream`, hands every event to its
:class:`~specsrv.hdw.session.Session` and sends what comes back.  ``write``
data are received straight into the session's buffer, with a time limit so
that a client whose data never arrive cannot hold the connection.
:class:`HdwService` plugs the server and its device into
:mod:`common.runtime` (lock file, daemon, signals).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from common import runtime
from common.server import LineHandler, ThreadedTCPServer

from . import protocol as P
from .device import Device
from .session import Outcome, Session, Shared

log = logging.getLogger(__name__)

RECV_CHUNK = 65536
SMALL_SEND = 65536
#: seconds to wait for the next bytes of ``write`` data before dropping the write
DATA_TIMEOUT = 10.0
MAX_CONNECTIONS = 8


class HdwHandler(LineHandler):
    max_line = P.MAX_LINE

    def handle(self) -> None:
        server: HdwServer = self.server
        stream = P.RequestStream(self.max_line)
        session = Session(server.shared, self.peer)
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        log.info("%s: connection from %s", server.name, self.peer)
        while True:
            ev = stream.next_event()
            if ev is None:
                try:
                    data = self.request.recv(RECV_CHUNK)
                except OSError as exc:
                    log.info("%s: %s: %s", server.name, self.peer, exc)
                    return
                if not data:
                    if stream.buffered():
                        log.info(
                            "%s: %s closed with %d bytes of an unfinished line",
                            server.name,
                            self.peer,
                            stream.buffered(),
                        )
                    return
                stream.feed(data)
                continue
            outcome = session.handle(ev)
            if not self._act(server, stream, session, outcome):
                return

    def _act(self, server: HdwServer, stream, session: Session, outcome: Outcome) -> bool:
        """Send, receive write data, close or shut down; False ends the connection."""
        pieces = outcome.out
        if len(pieces) > 1 and sum(len(p) for p in pieces) <= SMALL_SEND:
            pieces = [b"".join(pieces)]  # one segment: no Nagle / delayed-ACK stall
        for piece in pieces:
            if not self.send(piece):
                log.info("%s: %s gone while sending a reply", server.name, self.peer)
                return False
        if outcome.shutdown:
            server.request_shutdown()
        if outcome.close:
            return False
        if outcome.receive is not None:
            got, alive = self._receive(stream, outcome.receive, server.data_timeout)
            tail = bytes(outcome.receive[max(0, got - 128) : got])
            if not alive:
                session.write_finished(got, tail)
                return False
            return self._act(server, stream, session, session.write_finished(got, tail))
        return True

    def _receive(self, stream, view: memoryview, timeout: float) -> tuple[int, bool]:
        """Fill ``view`` from the buffer, then the socket; (bytes got, connection alive)."""
        got = stream.drain_into(view)
        want = len(view)
        if got >= want:
            return got, True
        self.request.settimeout(timeout)
        try:
            while got < want:
                n = self.request.recv_into(view[got:], min(want - got, 1 << 22))
                if n == 0:
                    log.info("%s: %s closed during write data", self.server.name, self.peer)
                    return got, False
                got += n
        except TimeoutError:
            log.info(
                "%s: %s: write data stopped after %d of %d bytes (%.1f s)",
                self.server.name,
                self.peer,
                got,
                want,
                timeout,
            )
        except OSError as exc:
            log.info("%s: %s: %s during write data", self.server.name, self.peer, exc)
            return got, False
        finally:
            try:
                self.request.settimeout(None)
            except OSError:
                pass
        return got, True


class HdwServer(ThreadedTCPServer):
    """The TCP server: a device, its shared state, one thread per client."""

    def __init__(
        self,
        addr,
        shared: Shared,
        *,
        data_timeout: float = DATA_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        on_shutdown=None,
    ) -> None:
        self.shared = shared
        self.data_timeout = data_timeout
        self.on_shutdown = on_shutdown or runtime.request_shutdown
        super().__init__(addr, HdwHandler, name=shared.name, max_connections=max_connections)

    def request_shutdown(self) -> None:
        log.info("%s: shutting down on client request", self.name)
        self.on_shutdown()


class SelectPoller:
    """Calls the device's ``select_poll`` every interval, under the device lock."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.interval = max(0.01, float(shared.device.select_poll_interval))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="select_poll", daemon=True)

    @staticmethod
    def wanted(device: Device) -> bool:
        return type(device).select_poll is not Device.select_poll

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self.shared.lock:
                if self.shared.exited:
                    return
                try:
                    self.shared.device.select_poll()
                except Exception:  # noqa: BLE001 - keep polling; log the device bug
                    log.exception("select_poll failed")

    def stop(self) -> int:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        return int(self._thread.is_alive())


def make_shared(device: Device, name: str, *, quit_on_goodbye=False, byte_order="<") -> Shared:
    return Shared(
        device=device,
        name=name,
        host=socket.gethostname(),
        pid=os.getpid(),
        quit_on_goodbye=quit_on_goodbye,
        byte_order=byte_order,
    )


class HdwService(runtime.Service):
    """A device server under :func:`common.runtime.run`."""

    def __init__(
        self,
        device: Device,
        name: str,
        port: int,
        *,
        host: str = "",
        quit_on_goodbye: bool = False,
        byte_order: str = "<",
        data_timeout: float = DATA_TIMEOUT,
    ) -> None:
        self.name = name
        self.device = device
        self.port = port
        self.host = host
        self.quit_on_goodbye = quit_on_goodbye
        self.byte_order = byte_order
        self.data_timeout = data_timeout
        self.server: HdwServer | None = None
        self.poller: SelectPoller | None = None
        self.shared: Shared | None = None

    def bind(self) -> list:
        self.shared = make_shared(
            self.device, self.name, quit_on_goodbye=self.quit_on_goodbye, byte_order=self.byte_order
        )
        self.server = HdwServer((self.host, self.port), self.shared, data_timeout=self.data_timeout)
        return [self.server]

    def start(self) -> None:
        # after the daemon fork: the PID in hello is the daemon's
        self.shared.pid = os.getpid()
        self.device.initialize()
        if SelectPoller.wanted(self.device):
            self.poller = SelectPoller(self.shared)
            self.poller.start()
        self.server.start()
        log.info(
            "%s: %s listening on port %d, %s %s",
            self.name,
            self.device.description(),
            self.port,
            self.device.type_name,
            "x".join(map(str, self.device.shape)),
        )

    def stop(self) -> int:
        left = self.server.stop() if self.server else 0
        if self.poller is not None:
            left += self.poller.stop()
        if self.shared is not None:
            self.shared.device_exit()
        return left

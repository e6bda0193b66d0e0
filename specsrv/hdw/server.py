"""The socket side of a server-hardware server.

:class:`HdwServer` is a :class:`common.server.ThreadedTCPServer` (one thread
per connection); each connection feeds the bytes it receives to a
:class:`~specsrv.hdw.protocol.RequestStream`, hands every event to its
:class:`~specsrv.hdw.session.Session` and sends what comes back.  ``write``
data are received straight into the session's buffer, with a time limit so
that a client whose data never arrive cannot hold the connection.

Connections are bounded so that idle ones never lock spec out:

* ``max_connections`` (``--max-connections``, default 8): when all are in
  use, a new client is still served if some connection has been idle (no
  request) for at least :data:`MIN_IDLE` s; the one to go is chosen by
  :func:`eviction_order` (connections that never sent a request first,
  oldest first; then the least recently active), closed with a log line;
* ``idle_timeout`` (``--idle-timeout``, default 0 = never): a connection that
  sends nothing for that long is closed;
* ``allow`` (``--allow``): only these client networks are served.

:class:`HdwService` plugs the server and its device into
:mod:`common.runtime` (lock file, daemon, signals, SIGHUP reload of the
live options).
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
import time
from dataclasses import dataclass

from common import runtime
from common.options import LiveOptions
from common.server import ThreadedTCPServer, address_allowed, parse_allow, send_all

from . import protocol as P
from .device import Device
from .session import Outcome, Session, SharedDevice

log = logging.getLogger(__name__)

RECV_CHUNK = 65536
SMALL_SEND = 65536
#: seconds to wait for the next bytes of ``write`` data before dropping the write
DATA_TIMEOUT = 10.0
MAX_CONNECTIONS = 8
#: default idle timeout in seconds (0: idle connections stay open)
IDLE_TIMEOUT = 0.0
#: a connection counts as idle, and may be closed for a new client, after this many seconds
MIN_IDLE = 1.0


@dataclass
class Connection:
    """What the server knows of one connection, for the eviction choice."""

    sock: socket.socket
    peer: str
    since: float  # when it connected (monotonic)
    last: float  # its last request (monotonic); == since if none yet
    requests: int = 0
    evicted: bool = False


def eviction_order(conns: list[Connection], now: float, min_idle: float = MIN_IDLE):
    """Connections that may be closed for a newcomer, the first to go first.

    Only connections idle for at least ``min_idle`` s qualify.  Those that
    never sent a request go first (oldest first): they are what holds a
    server full without using it; then the least recently active.
    """
    idle = [c for c in conns if not c.evicted and now - c.last >= min_idle]
    return sorted(idle, key=lambda c: (c.requests > 0, c.last if c.requests else c.since))


class HdwHandler(socketserver.BaseRequestHandler):
    max_line = P.MAX_LINE

    def setup(self) -> None:
        self.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        self.conn = self.server.register(self.request, self.peer)

    def finish(self) -> None:
        self.server.unregister(self.request)

    def send(self, data) -> bool:
        """Send all of ``data``; False if the peer is gone."""
        return send_all(self.request, data, self.server.name, self.peer)

    def _idle_timeout(self) -> float | None:
        return self.server.idle_timeout or None

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
                    self.request.settimeout(self._idle_timeout())
                    data = self.request.recv(RECV_CHUNK)
                except TimeoutError:
                    log.info(
                        "%s: closing %s: idle for %g s (--idle-timeout)",
                        server.name,
                        self.peer,
                        server.idle_timeout,
                    )
                    return
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
            if isinstance(ev, P.Request):
                self.conn.last = time.monotonic()
                self.conn.requests += 1
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
            tail = bytes(outcome.receive[max(0, got - P.XFER_DONE_TAIL) : got])
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
                self.request.settimeout(self._idle_timeout())
            except OSError:
                pass
        return got, True


class HdwServer(ThreadedTCPServer):
    """The TCP server: a device, its shared state, one thread per client."""

    def __init__(
        self,
        addr,
        shared: SharedDevice,
        *,
        data_timeout: float = DATA_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        allow=None,
        on_shutdown=None,
    ) -> None:
        self.shared = shared
        self.data_timeout = data_timeout
        self.idle_timeout = idle_timeout
        self.on_shutdown = on_shutdown or runtime.request_shutdown
        self._conns: dict[socket.socket, Connection] = {}
        self._conns_lock = threading.Lock()
        self.evictions = 0
        super().__init__(
            addr, HdwHandler, name=shared.name, max_connections=max_connections, allow=allow
        )

    # -- connections -------------------------------------------------------
    def register(self, sock: socket.socket, peer: str) -> Connection:
        now = time.monotonic()
        with self._conns_lock:
            conn = self._conns.get(sock)
            if conn is None:
                conn = self._conns[sock] = Connection(sock, peer, now, now)
        return conn

    def unregister(self, sock: socket.socket) -> None:
        with self._conns_lock:
            self._conns.pop(sock, None)

    def client_count(self) -> int:
        """Connections in use; one being closed for a newcomer no longer counts."""
        with self._conns_lock:
            evicted = sum(1 for c in self._conns.values() if c.evicted)
        return super().client_count() - evicted

    def verify_request(self, request, client_address) -> bool:
        if (
            self.max_connections
            and not self.stopping
            and address_allowed(client_address[0], self.allow)
            and self.client_count() >= self.max_connections
        ):
            self._make_room(f"{client_address[0]}:{client_address[1]}")
        return super().verify_request(request, client_address)

    def _make_room(self, newcomer: str) -> None:
        now = time.monotonic()
        with self._conns_lock:
            order = eviction_order(list(self._conns.values()), now)
            if not order:
                return
            victim = order[0]
            victim.evicted = True
        self.evictions += 1
        log.warning(
            "%s: all %d connections in use: closing %s (idle %.0f s, %d requests)"
            " for new client %s",
            self.name,
            self.max_connections,
            victim.peer,
            now - victim.last,
            victim.requests,
            newcomer,
        )
        try:
            victim.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def request_shutdown(self) -> None:
        log.info("%s: shutting down on client request", self.name)
        self.on_shutdown()


class SelectPoller:
    """Calls the device's ``select_poll`` every interval, under the device lock."""

    def __init__(self, shared: SharedDevice) -> None:
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


def make_shared_device(
    device: Device, name: str, *, quit_on_goodbye=False, byte_order="<"
) -> SharedDevice:
    return SharedDevice(
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
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        allow=None,
        options: LiveOptions | None = None,
    ) -> None:
        self.name = name
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.allow = allow
        self.options = options
        if options is not None:
            options.live.update(
                max_connections=self.set_max_connections,
                idle_timeout=self.set_idle_timeout,
                allow=self.set_allow,
            )
        self.device = device
        self.port = port
        self.host = host
        self.quit_on_goodbye = quit_on_goodbye
        self.byte_order = byte_order
        self.data_timeout = data_timeout
        self.server: HdwServer | None = None
        self.poller: SelectPoller | None = None
        self.shared: SharedDevice | None = None

    def bind(self) -> list:
        self.shared = make_shared_device(
            self.device, self.name, quit_on_goodbye=self.quit_on_goodbye, byte_order=self.byte_order
        )
        self.server = HdwServer(
            (self.host, self.port),
            self.shared,
            data_timeout=self.data_timeout,
            max_connections=self.max_connections,
            idle_timeout=self.idle_timeout,
            allow=self.allow,
        )
        return [self.server]

    # -- live settings (SIGHUP) ---------------------------------------------
    def set_max_connections(self, n) -> None:
        self.max_connections = self.server.max_connections = int(n)
        log.info("%s: at most %d connections from now on", self.name, n)

    def set_idle_timeout(self, seconds) -> None:
        # running handlers read it before their next wait
        self.idle_timeout = self.server.idle_timeout = float(seconds)
        log.info("%s: idle timeout now %g s (0: none)", self.name, self.idle_timeout)

    def set_allow(self, networks) -> None:
        self.allow = networks
        self.server.allow = parse_allow(networks)
        log.info(
            "%s: allow-list now %s",
            self.name,
            ", ".join(map(str, self.server.allow)) if self.server.allow else "empty (every host)",
        )

    def reload(self) -> str | None:
        return self.options.reload() if self.options is not None else None

    def on_tick(self) -> None:
        if self.shared is not None:
            self.shared.limiter.flush()

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

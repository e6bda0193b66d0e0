"""Threaded blocking-socket TCP server base, shared by every program.

One thread per connection, as the C originals do (``socketserver`` with
``select`` in the accept loop), plus what a long-running daemon needs:

* a per-port connection limit: the connection past the limit is accepted and
  closed at once, with a log line;
* an optional allow-list of client networks (CIDR), refusals logged;
* refusals and bad input (:meth:`LineHandler.log_bad_input`) are logged
  through a :class:`~common.ratelimit.LogLimiter` per server, keyed by kind
  and peer address: the first few lines per peer, then a count, so that no
  peer can flood the log;
* errors in a handler go to the log, never to a closed stderr;
* :meth:`ThreadedTCPServer.stop` closes the listener, shuts every client
  socket down so that blocked handler threads wake, and joins them;
* :class:`SocketReader` reads lines and exact byte counts with hard bounds.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterable

from .framing import OverlongLine
from .ratelimit import PERIOD, LogLimiter

log = logging.getLogger(__name__)

DEFAULT_MAX_LINE = 4096
RECV_CHUNK = 65536


class ConnectionClosed(Exception):
    """The peer closed the connection (EOF) or it broke."""


class SocketReader:
    """Bounded reads from a blocking socket.

    ``read_line`` returns one line without its newline (and without a
    trailing CR), an :class:`~common.framing.OverlongLine` for a line past
    ``max_line`` (whose bytes are discarded up to the next newline, so the
    buffer never grows past the bound), or raises :class:`ConnectionClosed` at
    EOF.  ``read_exact`` returns exactly ``n`` bytes, taking first what a line
    read left buffered, so binary data may follow a command line at once.  A
    socket timeout propagates as ``TimeoutError``.
    """

    def __init__(self, sock: socket.socket, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.sock = sock
        self.max_line = max_line
        self._buf = bytearray()
        self.eof_partial = b""

    def buffered(self) -> int:
        return len(self._buf)

    def _recv(self, limit: int = RECV_CHUNK) -> bytes:
        try:
            data = self.sock.recv(limit)
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            raise ConnectionClosed(str(exc)) from None
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from None
        if not data:
            self.eof_partial = bytes(self._buf)
            raise ConnectionClosed("end of file")
        return data

    def read_line(self) -> bytes | OverlongLine:
        discarded = 0
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line = bytes(self._buf[:idx])
                del self._buf[: idx + 1]
                if discarded or len(line) > self.max_line:
                    return OverlongLine(discarded + len(line))
                if line.endswith(b"\r"):
                    line = line[:-1]
                return line
            if len(self._buf) > self.max_line:
                discarded += len(self._buf)
                self._buf.clear()
            self._buf += self._recv()

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` completely (buffered bytes first), without extra copies."""
        n = len(view)
        got = min(n, len(self._buf))
        view[:got] = self._buf[:got]
        del self._buf[:got]
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], min(n - got, 1 << 22))
            except TimeoutError:
                raise
            except OSError as exc:
                raise ConnectionClosed(str(exc)) from None
            if not k:
                raise ConnectionClosed("end of file")
            got += k

    def read_exact(self, n: int) -> bytes:
        """Read exactly ``n`` bytes."""
        if n <= len(self._buf):
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out
        out = bytearray(self._buf)
        self._buf.clear()
        while len(out) < n:
            out += self._recv(min(n - len(out), 1 << 20))
        return bytes(out)


def parse_allow(networks: Iterable[str | ipaddress._BaseNetwork] | None):
    """Turn ``["10.0.0.0/8", "127.0.0.1"]`` into network objects (None = allow all)."""
    if not networks:
        return None
    out = []
    for n in networks:
        if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network):
            out.append(n)
        else:
            out.append(ipaddress.ip_network(str(n), strict=False))
    return out


def address_allowed(host: str, allow) -> bool:
    if allow is None:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in allow)


def bind_error(exc: OSError, address) -> OSError:
    """``exc`` from binding ``address``, its text naming the address ("127.0.0.1:3031: ...").

    Programs bind several ports; "cannot listen: Address already in use" alone
    does not say which one is taken.
    """
    host, port = address[0], address[1]
    where = f"{host}:{port}" if host else f"port {port}"
    return OSError(exc.errno, f"{where}: {exc.strerror or exc}")


class NamesAddressOnBindError:
    """Mixin for a ``socketserver`` server: a failed bind names the address."""

    def server_bind(self) -> None:
        try:
            super().server_bind()
        except OSError as exc:
            raise bind_error(exc, self.server_address) from None


class ThreadedTCPServer(NamesAddressOnBindError, socketserver.ThreadingTCPServer):
    """``ThreadingTCPServer`` with limits, an allow-list, logging and clean stop.

    ``name`` labels log lines (for example ``"STATUS client port"``).
    ``max_connections`` of 0 means unlimited.
    """

    allow_reuse_address = True
    daemon_threads = True
    # Clients that scan a port range connect in bursts; a short backlog makes
    # the kernel drop SYNs, which costs each client a 1 s retransmission.
    request_queue_size = 128

    def __init__(
        self,
        server_address,
        handler_class,
        *,
        name: str = "server",
        max_connections: int = 0,
        allow=None,
        bind_and_activate: bool = True,
        log_period: float = PERIOD,
    ) -> None:
        self.name = name
        # refusals and bad input: a few lines per peer and kind, then a count
        self.log_limiter = LogLimiter(log, period=log_period)
        self._next_log_flush = 0.0
        self.max_connections = max_connections
        self.allow = parse_allow(allow)
        self._clients: dict[socket.socket, threading.Thread | None] = {}
        self._clients_lock = threading.Lock()
        self._serving = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = 0
        self.accepted = 0
        super().__init__(server_address, handler_class, bind_and_activate)

    # -- accept-side policy -------------------------------------------------
    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def client_count(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def verify_request(self, request, client_address) -> bool:
        host = client_address[0]
        if not address_allowed(host, self.allow):
            self.refused += 1
            self.log_limiter.log(
                f"{self.name}: refused {host} (not in allow-list)",
                logging.WARNING,
                "%s: refused connection from %s (not in allow-list)",
                self.name,
                host,
            )
            return False
        if self._stopping.is_set():
            return False
        if self.max_connections and self.client_count() >= self.max_connections:
            self.refused += 1
            self.log_limiter.log(
                f"{self.name}: refused {host} (connection limit)",
                logging.WARNING,
                "%s: refused connection from %s:%s (already %d clients, the limit)",
                self.name,
                host,
                client_address[1],
                self.max_connections,
            )
            return False
        return True

    def process_request(self, request, client_address) -> None:
        self.accepted += 1
        t = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"{self.name}-{client_address[0]}:{client_address[1]}",
            daemon=True,
        )
        with self._clients_lock:
            self._clients[request] = t
        t.start()

    def shutdown_request(self, request) -> None:
        with self._clients_lock:
            self._clients.pop(request, None)
        super().shutdown_request(request)

    def service_actions(self) -> None:
        """Called by the accept loop about every poll interval: write the
        "N more ... suppressed" summaries of rate-limited log lines."""
        now = time.monotonic()
        if now >= self._next_log_flush:
            self._next_log_flush = now + 1.0
            self.log_limiter.flush()

    def handle_error(self, request, client_address) -> None:
        log.exception("%s: error while serving %s", self.name, client_address)

    # -- running and stopping ----------------------------------------------
    def serve_forever(self, poll_interval: float = 0.25) -> None:
        self._serving.set()
        try:
            super().serve_forever(poll_interval)
        finally:
            self._serving.clear()

    def start(self) -> threading.Thread:
        """Run the accept loop in a daemon thread (call after any fork)."""
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"{self.name}-accept", daemon=True
        )
        self._thread.start()
        return self._thread

    def close_clients(self) -> None:
        """Shut every client socket down so blocked handlers see EOF."""
        with self._clients_lock:
            socks = list(self._clients)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self, timeout: float = 1.5) -> int:
        """Stop accepting, disconnect clients, join handler threads.

        Returns the number of handler threads still alive after ``timeout``.
        """
        self._stopping.set()
        if self._serving.is_set():
            self.shutdown()
        self.server_close()
        self.close_clients()
        deadline = time.monotonic() + timeout
        with self._clients_lock:
            threads = [t for t in self._clients.values() if t is not None]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        left = sum(1 for t in threads if t.is_alive())
        self.log_limiter.flush()
        if left:
            log.warning("%s: %d client threads still running at stop", self.name, left)
        return left


# for handlers of servers that are not a ThreadedTCPServer
_FALLBACK_LIMITER = LogLimiter(log)


class LineHandler(socketserver.BaseRequestHandler):
    """Base for line-oriented handlers: ``self.reader`` and ``send_line``."""

    max_line = DEFAULT_MAX_LINE
    timeout: float | None = None

    def setup(self) -> None:
        self.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        if self.timeout is not None:
            self.request.settimeout(self.timeout)
        self.reader = SocketReader(self.request, self.max_line)
        log.debug("%s: connection from %s", self.server.name, self.peer)

    def log_bad_input(self, kind: str, msg: str = "", *args, level: int = logging.WARNING) -> bool:
        """Log bad input from this peer, rate-limited per ``kind`` and peer host.

        ``kind`` is a short fixed text ("overlong line", "bad command"); the
        line written is ``NAME: KIND from PEER[: msg % args]``.  Returns True if
        the line was written (False: counted, summarised later).
        """
        limiter = getattr(self.server, "log_limiter", None)
        if limiter is None:  # not "or": an empty LogLimiter is falsy (it has __len__)
            limiter = _FALLBACK_LIMITER
        name = getattr(self.server, "name", "server")
        text = f"%s: {kind} from %s" + (f": {msg}" if msg else "")
        return limiter.log(
            f"{name}: {kind} from {self.client_address[0]}", level, text, name, self.peer, *args
        )

    def send(self, data: bytes) -> bool:
        """Send all of ``data``; False if the peer is gone."""
        try:
            self.request.sendall(data)
            return True
        except OSError as exc:
            log.debug("%s: %s gone while sending: %s", self.server.name, self.peer, exc)
            return False

    def send_line(self, text: str) -> bool:
        return self.send(text.encode("utf-8", "replace") + b"\n")

    def finish(self) -> None:
        log.debug("%s: %s disconnected", self.server.name, self.peer)


class ServerThread:
    """Run any ``socketserver`` server's accept loop in a named daemon thread."""

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        self._started = True
        self.thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        if self._started:
            self.server.shutdown()
        self.server.server_close()
        if self._started:
            self.thread.join(timeout)

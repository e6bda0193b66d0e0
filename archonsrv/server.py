"""camerad's socket layer: blocking port, non-blocking port, async multicast.

* BLKPORT: one client at a time (up to BLK_MAX_CONNECTIONS - 1 more wait
  their turn, further ones are closed with a log line), kept open,
  telnet-friendly; one command at a time, and lines that arrive while a
  command runs are discarded, as the original documents.
* NBPORT: one command per connection, a thread each (at most
  NB_MAX_CONNECTIONS), the reply, then close; a connection that sends no
  complete line within 3 s is closed.
* Both: clients outside ALLOW are closed at once; refusals are logged
  through a LogLimiter.
* ASYNCPORT/ASYNCGROUP: ``TAG:message`` datagrams, never blocking the
  sender; multicast (TTL 2, loopback on) or, for a unicast ASYNCGROUP
  address, plain UDP to that address.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import queue
import socket
import socketserver
import threading
import time

from common import runtime
from common.ratelimit import LogLimiter
from common.server import LineHandler, ThreadedTCPServer, parse_allow

from . import config as C
from . import protocol as P
from .camera import Camera

log = logging.getLogger("camerad")

NB_TIMEOUT = 3.0


class CommandPortServer(ThreadedTCPServer):
    """BLKPORT or NBPORT: ALLOW and the connection limit (refusals are logged
    rate-limited by the base class).

    With ``pooled`` (NBPORT) connections are served by worker threads that
    are kept and reused, never more than the connection limit: a one-shot
    connection then costs no thread start.  Each accepted connection is
    assigned a free worker or, when none is free, a new one, so no
    connection waits for another to finish.
    """

    limiter: LogLimiter
    pooled = False

    def __init__(self, *args, pooled: bool = False, **kw) -> None:
        super().__init__(*args, **kw)
        self.pooled = pooled
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pool_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._free = 0

    def process_request(self, request, client_address) -> None:
        if not self.pooled:
            super().process_request(request, client_address)
            return
        self.accepted += 1
        with self._clients_lock:
            self._clients[request] = None
        with self._pool_lock:
            if self._free:
                self._free -= 1
            else:
                self._workers = [t for t in self._workers if t.is_alive()]
                t = threading.Thread(target=self._work, name=f"{self.name}-worker", daemon=True)
                self._workers.append(t)
                t.start()
        self._jobs.put((request, client_address))

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            request, client_address = job
            with self._clients_lock:
                if request in self._clients:
                    self._clients[request] = me
            self.process_request_thread(request, client_address)
            with self._pool_lock:
                # keep at most as many idle workers as connections allowed
                if self._free >= self.max_connections or self.stopping:
                    return
                self._free += 1

    def stop(self, timeout: float = 1.5) -> int:
        self._stopping.set()
        with self._pool_lock:
            workers = list(self._workers)
        for _ in workers:
            self._jobs.put(None)  # idle workers end; busy ones after their client
        left = super().stop(timeout)
        for t in workers:
            t.join(0.1)
        return left

    def configure(self, allow: list[str], max_connections: int) -> None:
        """Apply ALLOW and the limit (at start and on SIGHUP)."""
        self.allow = parse_allow(allow)
        self.max_connections = max_connections


class AsyncSender:
    """Send ``TAG:message`` datagrams to ASYNCGROUP:ASYNCPORT; thread-safe, non-blocking."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.dest: tuple[str, int] | None = None
        self.sent = 0
        self.dropped = 0
        self._warned: set[int] = set()

    def configure(self, cfg: C.CameraConfig) -> None:
        with self.lock:
            self._close()
            if not cfg.async_enabled:
                log.info("async port disabled")
                return
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            group = ipaddress.IPv4Address(cfg.asyncgroup)
            if group.is_multicast:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                if cfg.asyncif:
                    s.setsockopt(
                        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(cfg.asyncif)
                    )
            self.sock = s
            self.dest = (cfg.asyncgroup, cfg.asyncport)
            self._warned.clear()
            log.info(
                "async messages to %s:%d (%s%s)",
                cfg.asyncgroup,
                cfg.asyncport,
                "multicast" if group.is_multicast else "unicast",
                f" via {cfg.asyncif}" if cfg.asyncif else "",
            )

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.dest = None

    def close(self) -> None:
        with self.lock:
            self._close()

    def send(self, tag: str, message: str) -> None:
        data = P.async_message(tag, message)
        log.debug("async %s", data[:200].decode("ascii", "replace"))
        with self.lock:
            if self.sock is None or self.dest is None:
                return
            try:
                self.sock.sendto(data, self.dest)
                self.sent += 1
            except OSError as exc:
                self.dropped += 1
                if exc.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EHOSTUNREACH):
                    # no route for multicast: fall back to the loopback interface so
                    # that listeners on this host still get the messages
                    try:
                        self.sock.setsockopt(
                            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
                        )
                        self.sock.sendto(data, self.dest)
                        self.sent += 1
                        self.dropped -= 1
                        if -1 not in self._warned:
                            self._warned.add(-1)
                            log.warning("async: %s; sending via 127.0.0.1", exc.strerror)
                        return
                    except OSError:
                        pass
                if exc.errno not in self._warned:
                    self._warned.add(exc.errno or 0)
                    log.warning("async message dropped: %s", exc.strerror or exc)


class BlockingHandler(socketserver.BaseRequestHandler):
    """BLKPORT: commands one at a time on a long-lived connection."""

    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        slot: threading.Semaphore = self.server.slot
        waited = False
        while not slot.acquire(timeout=0.25):
            if not waited:
                log.info("blocking port: %s waits for the current client to finish", peer)
                waited = True
            if self.server.stopping:
                return
        try:
            self._serve(peer)
        finally:
            slot.release()

    def _serve(self, peer: str) -> None:
        camera: Camera = self.server.camera
        sock: socket.socket = self.request
        log.info("blocking port: connection from %s", peer)
        stream = P.CommandStream()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            stream.feed(data)
            event = stream.next_event()
            if event is None:
                continue
            together = stream.pending_lines()
            if together:
                self.server.limiter.log(
                    f"blocking port: commands sent together by {self.client_address[0]}",
                    logging.WARNING,
                    "blocking port: %d command(s) ignored (sent together)",
                    together,
                )
            reply = respond(camera, event, peer)
            if reply is None:
                return
            # lines that arrived while the command ran are ignored (documented)
            ignored = _discard_pending(sock, stream) - together
            if ignored:
                self.server.limiter.log(
                    f"blocking port: commands sent early by {self.client_address[0]}",
                    logging.WARNING,
                    "blocking port: %d command(s) sent before the previous one completed ignored",
                    ignored,
                )
            try:
                sock.sendall(reply.encode("ascii", "replace") + b"\n")
            except OSError:
                log.info("blocking port: %s gone before the reply", peer)
                break
        log.info("blocking port: %s disconnected", peer)


def _discard_pending(sock: socket.socket, stream: P.CommandStream) -> int:
    """Drop what is buffered or arrived while a command ran; return the lines dropped."""
    sock.setblocking(False)
    try:
        for _ in range(1024):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not data:
                break
            stream.feed(data)
    finally:
        sock.setblocking(True)
    return stream.clear()  # complete lines and a partial one


def respond(camera: Camera, event: P.CommandLine | P.BadInput, peer: str) -> str | None:
    """Reply text for one command line (without newline); None = close (exit)."""
    if isinstance(event, P.BadInput):
        host = peer.rsplit(":", 1)[0]
        camera.limiter.log(
            f"bad command line from {host}", logging.WARNING, "%s: %s", peer, event.reason
        )
        camera.notify("ERROR", f" {event.reason}")
        return P.format_error(event.reason, camera.longerror)
    text = event.text
    if not text.strip():
        return ""
    log.debug("%s: command %s", peer, text[:200])
    reply = camera.execute(text)
    # one line per command (command and reply): the log is on the NB port's hot path
    log.info("%s: %s -> %s", peer, text[:200], "(exit)" if reply is None else reply[:200])
    return reply


class NonBlockingHandler(LineHandler):
    """NBPORT: one command, the reply, close."""

    max_line = P.MAX_COMMAND_LINE
    timeout = NB_TIMEOUT

    def setup(self) -> None:
        # no SocketReader: the command is read by _read_command
        self.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        self.request.settimeout(NB_TIMEOUT)

    def handle(self) -> None:
        camera: Camera = self.server.camera
        line = self._read_command()
        if line is None:
            return
        # the reply goes out with the socket timeout still NB_TIMEOUT: a
        # client that does not read its reply cannot hold the thread
        reply = respond(camera, line, self.peer)
        if reply is None:
            return
        self.send_line(reply)

    def _read_command(self) -> P.CommandLine | P.BadInput | None:
        """The first line, if it is complete within NB_TIMEOUT of the connection.

        The 3 s bound the whole line, not each read: a client trickling a
        byte now and then cannot hold a thread.  A partial line at EOF counts
        as the command (``echo -n cmd | nc``).
        """
        sock: socket.socket = self.request
        stream = P.CommandStream()
        deadline = time.monotonic() + NB_TIMEOUT
        first = True  # the socket timeout is NB_TIMEOUT already (setup)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.server.limiter.log(
                    f"non-blocking port: silent client {self.client_address[0]}",
                    logging.INFO,
                    "non-blocking port: %s sent no complete line in %g s; closed",
                    self.peer,
                    NB_TIMEOUT,
                )
                return None
            if not first:
                sock.settimeout(left)
            first = False
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not data:
                return stream.at_eof()
            stream.feed(data)
            event = stream.next_event()
            if event is not None:
                return event


class Camerad(runtime.Service):
    name = "camerad"

    def __init__(self, path: str, cfg: C.CameraConfig) -> None:
        self.path = path
        self.cfg = cfg
        self.sender = AsyncSender()
        self.camera = Camera(cfg, self.sender.send)
        self.blk: ThreadedTCPServer | None = None
        self.nb: ThreadedTCPServer | None = None

    def bind(self):
        addr = self.cfg.bindaddr
        # one client is served at a time; a few more wait their turn (as in the
        # listen backlog of the original), beyond BLK_MAX_CONNECTIONS they are refused
        self.blk = CommandPortServer(
            (addr, self.cfg.blkport), BlockingHandler, name="blocking port"
        )
        self.blk.slot = threading.Semaphore(1)
        try:
            self.nb = CommandPortServer(
                (addr, self.cfg.nbport), NonBlockingHandler, name="non-blocking port", pooled=True
            )
        except OSError:
            self.blk.server_close()
            raise
        for srv in (self.blk, self.nb):
            srv.camera = self.camera
            srv.limiter = self.camera.limiter
        self._configure_ports(self.cfg)
        return [self.blk, self.nb]

    def _configure_ports(self, cfg: C.CameraConfig) -> None:
        self.blk.configure(cfg.allow, cfg.blk_max_connections)
        self.nb.configure(cfg.allow, cfg.nb_max_connections)
        if cfg.allow:
            log.info("command ports accept clients from %s only", ", ".join(cfg.allow))

    def start(self) -> None:
        self.sender.configure(self.cfg)
        log.info("%d lines read from %s", len(self.cfg.applied), self.path)
        for item in self.cfg.applied:
            self.sender.send("CONFIG", item)
        log.info("applied %d configuration lines to server/controller", len(self.cfg.applied))
        self.blk.start()
        self.nb.start()
        log.info(
            "camerad ready: blocking port %d, non-blocking port %d",
            self.cfg.blkport,
            self.cfg.nbport,
        )

    def reload(self):
        new = C.load(self.path)
        if not new.same_ports(self.cfg):
            log.warning("BLKPORT/NBPORT/BINDADDR changes need a restart; keeping the old ports")
            new.blkport, new.nbport, new.bindaddr = (
                self.cfg.blkport,
                self.cfg.nbport,
                self.cfg.bindaddr,
            )
        if new.log_utc != self.cfg.log_utc:
            log.warning("TM_ZONE_LOG change needs a restart; the log keeps its time zone")
        if new.tz_env and new.tz_env != self.cfg.tz_env:
            new.apply_tz()
            log.info("TZ_ENV: local time is now %s", new.tz_env)
        if new.logpath != self.cfg.logpath:
            log.warning("LOGPATH change needs a restart; still logging to %s", self.cfg.logpath)
        self.cfg = new
        self._configure_ports(new)
        self.camera.apply_config(new)
        self.sender.configure(new)
        for item in new.applied:
            self.sender.send("CONFIG", item)
        return f"{len(new.applied)} lines applied from {self.path}"

    def stop(self) -> int:
        left = 0
        self.camera.shutdown()
        for srv in (self.blk, self.nb):
            if srv is not None:
                left += srv.stop()
        self.sender.close()
        return left

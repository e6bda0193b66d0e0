"""marserver's I/O layer: one hardware socket per port, up to 10 clients each.

* :class:`HardwareLink` holds the only connection to each selected hardware
  port.  A supervisor thread connects all of them together, starts one
  reader per port and, when any of them fails (refused, reset, EOF,
  keepalive timeout), closes all hardware sockets together, keeps every
  client, and reconnects with capped exponential backoff.  A hardware that
  keeps closing marserver's connection (another program connected to it
  directly) makes marserver back off to the cap and warn.
* STATUS, DATA and MESSAGE records are cut at their fixed sizes and handed to
  a :class:`Fanout`, which gives each client its own bounded queue
  (:class:`ClientOutput`) and writer thread.  A client whose queue passes the
  bound is disconnected with a log line; nothing else waits for it.  Clients
  join at a record boundary because only whole records are published.
* COMMAND clients' bytes are cut into whole records (:class:`CommandFramer`)
  and written to the hardware one record at a time under one lock, so two
  clients' commands never interleave.  Commands arriving while the hardware
  is away are dropped with a log line.
"""

from __future__ import annotations

import collections
import logging
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass

from common import runtime
from common.log import TRACE
from common.server import ThreadedTCPServer

from . import protocol as P

log = logging.getLogger("marserver")

MAX_CLIENTS = 10
DEFAULT_QUEUE = 4 * 1024 * 1024
BACKOFF_MIN = 0.25
DEFAULT_BACKOFF_MAX = 10.0
CONNECT_TIMEOUT = 3.0
COMMAND_SEND_TIMEOUT = 5.0
RECV_SIZE = 256 * 1024
WRITE_BATCH = 256 * 1024
KICK_LIMIT = 3  # hardware-side closes ...
KICK_WINDOW = 60.0  # ... within this many seconds mean somebody else is connected
KICK_SHORT = 30.0  # a connection that lived less than this and then got EOF counts as a kick
BAD_COMMAND_LOG_LINES = 3
DROPPED_COMMAND_LOG_LINES = 10  # per outage; further drops are counted and summed up
STALL_WAIT = 3.0  # --backpressure: longest pause of the hardware reader when every client is behind


def set_keepalive(sock: socket.socket, idle: int = 10, interval: int = 5, count: int = 3) -> None:
    """SO_KEEPALIVE with short timers, so that a half-open peer is found in ~25 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
    ):
        opt = getattr(socket, name, None)
        if opt is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)
            except OSError:
                pass


def set_send_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_SNDTIMEO on a blocking socket (the receive side stays blocking)."""
    sec = int(seconds)
    usec = int((seconds - sec) * 1e6)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, usec))
    except OSError:
        pass


def _quiet_shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# fan-out to clients


class ClientOutput:
    """A client's bounded outgoing queue and the writer thread that drains it.

    While the queue is empty and nothing is being sent, :meth:`offer` tries a
    non-blocking send straight away (no thread hand-off, lowest latency); what
    the kernel does not take is queued for the writer thread, which is the
    only one to block on this client.
    """

    def __init__(
        self, sock: socket.socket, peer: str, label: str, limit: int, on_progress=None
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.label = label
        self.limit = limit
        self.on_progress = on_progress
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._busy = False  # a send (fast path or writer) is in progress
        self._cond = threading.Condition()
        self.closed = False
        self.reason = ""
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name=f"{label}-writer-{peer}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def backlog(self) -> int:
        """Bytes waiting (read without the lock: a hint for flow control)."""
        return self._queued

    def offer(self, chunk: bytes) -> bool:
        """Queue whole records without blocking; False if the client is (now) gone."""
        with self._cond:
            if self.closed:
                return False
            if self._queue or self._busy:
                if self._queued + len(chunk) > self.limit:
                    queued = self._queued
                    self._close_locked(f"fell behind by more than {self.limit} bytes")
                    log.warning(
                        "%s: disconnecting slow client %s: %d bytes queued, limit %d",
                        self.label,
                        self.peer,
                        queued,
                        self.limit,
                    )
                    return False
                self._queue.append(chunk)
                self._queued += len(chunk)
                self._cond.notify()
                return True
            self._busy = True
        try:
            n = self.sock.send(chunk, socket.MSG_DONTWAIT)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            with self._cond:
                self._busy = False
                self._close_locked(f"send failed: {exc.strerror or exc}")
            return False
        with self._cond:
            self._busy = False
            self.sent += n
            if n < len(chunk) and not self.closed:
                rest = chunk[n:]
                self._queue.appendleft(rest)
                self._queued += len(rest)
            if self._queue:  # records queued meanwhile or a remainder: wake the writer
                self._cond.notify()
        if n and self.on_progress is not None:
            self.on_progress()
        return True

    def close(self, reason: str = "closed") -> None:
        with self._cond:
            self._close_locked(reason)

    def _close_locked(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
            _quiet_shutdown(self.sock)

    def _take(self) -> bytes | None:
        with self._cond:
            while (not self._queue or self._busy) and not self.closed:
                self._cond.wait()
            if self.closed:
                return None
            first = self._queue.popleft()
            parts = [first]
            size = len(first)
            while self._queue and size + len(self._queue[0]) <= WRITE_BATCH:
                nxt = self._queue.popleft()
                parts.append(nxt)
                size += len(nxt)
            self._queued -= size
            self._busy = True
        return first if len(parts) == 1 else b"".join(parts)

    def _run(self) -> None:
        while True:
            data = self._take()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except OSError as exc:
                with self._cond:
                    self._busy = False
                    self._close_locked(f"send failed: {exc.strerror or exc}")
                return
            with self._cond:
                self._busy = False
                self.sent += len(data)
                if self._queue:
                    self._cond.notify()
            if self.on_progress is not None:
                self.on_progress()


class Fanout:
    """Every client of one hardware -> client port, and the records for them.

    By default (``high_water`` 0) :meth:`publish` never waits: the hardware
    reader hands each record to every client's queue and goes on, and a
    client whose queue passes its bound is dropped.

    Optional back-pressure (``high_water`` > 0, marserver's ``--backpressure``)
    follows the *fastest* client: when every client has more than
    ``high_water`` bytes waiting, :meth:`publish` waits (at most
    ``STALL_WAIT`` seconds, and not again until some client has made
    progress) until one of them has drained, so a hardware that sends faster
    than any client can read is slowed to the pace of the best reader instead
    of getting all clients dropped.  The hardware reader then does wait for
    clients (a lone stalled client holds it up to ``STALL_WAIT``), which is
    why it is off unless asked for.
    """

    def __init__(self, label: str, high_water: int = 0) -> None:
        self.label = label
        self.high_water = high_water
        self._lock = threading.Lock()
        self._clients: tuple[ClientOutput, ...] = ()
        self._space = threading.Condition()
        self._waiting = False
        self._gave_up = False
        self.records = 0
        self.waits = 0

    def add(self, out: ClientOutput) -> int:
        out.on_progress = self._wake
        self._gave_up = False  # a new client gets the benefit of flow control
        with self._lock:
            self._clients = self._clients + (out,)
            return len(self._clients)

    def remove(self, out: ClientOutput) -> int:
        with self._lock:
            self._clients = tuple(c for c in self._clients if c is not out)
            n = len(self._clients)
        self._wake()
        return n

    def clients(self) -> tuple[ClientOutput, ...]:
        return self._clients

    def _wake(self) -> None:
        self._gave_up = False
        if self._waiting:
            with self._space:
                self._space.notify_all()

    def _all_behind(self) -> bool:
        backlogs = [c.backlog for c in self._clients if not c.closed]
        return bool(backlogs) and min(backlogs) > self.high_water

    def publish(self, chunk: bytes) -> None:
        """Hand whole records to every client; never blocks on one client."""
        if self.high_water and not self._gave_up and self._all_behind():
            self.waits += 1
            deadline = time.monotonic() + STALL_WAIT
            with self._space:
                self._waiting = True
                while self._all_behind():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        # nobody drained for STALL_WAIT: stop waiting until a
                        # client makes progress; the stalled ones overflow
                        self._gave_up = True
                        break
                    self._space.wait(min(left, 0.005))
                self._waiting = False
        for c in self._clients:
            c.offer(chunk)


# ---------------------------------------------------------------------------
# the hardware side


class HardwareLink:
    """The connections to the hardware: connect, read, forward, reconnect."""

    def __init__(
        self,
        hw: P.Hardware,
        host: str,
        base: int,
        ports: set[P.Port],
        fanouts: dict[P.Port, Fanout],
        *,
        swap: bool = False,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        recv_size: int = RECV_SIZE,
    ) -> None:
        self.hw = hw
        self.recv_size = recv_size
        self.host = host
        self.base = base
        self.ports = sorted(ports)
        self.fanouts = fanouts
        self.swap = swap
        self.backoff_min = min(backoff_min, backoff_max)
        self.backoff_max = backoff_max
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._lost_reason = ""
        self._lost_kind = ""
        self._socks: dict[P.Port, socket.socket] = {}
        self._cmd_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._readers: list[threading.Thread] = []
        self.connected = threading.Event()
        self.connects = 0
        self.commands = 0
        self.dropped_commands = 0
        self._dropped_away = 0  # commands dropped during the current outage

    def describe_ports(self) -> str:
        return ", ".join(f"{p.label} {self.hw.port_number(p, self.base)}" for p in self.ports)

    # -- life cycle --------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="hardware", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> int:
        self._stop.set()
        self._lost.set()
        self._close_all()
        left = 0
        for t in [self._thread, *self._readers]:
            if t is not None:
                t.join(timeout)
                left += t.is_alive()
        return left

    # -- commands ----------------------------------------------------------
    def send_command(self, record: bytes, peer: str) -> bool:
        """Write one whole command record (client = big-endian order) to the hardware."""
        summary = None
        if log.isEnabledFor(logging.DEBUG):
            try:
                summary = P.describe_command(self.hw, P.decode_command(self.hw, record))
            except (ValueError, struct.error):  # pragma: no cover - sizes are fixed
                summary = record.hex()
        with self._cmd_lock:
            sock = self._socks.get(P.Port.COMM) if self.connected.is_set() else None
            if sock is None:
                self.dropped_commands += 1
                self._dropped_away += 1
                if self._dropped_away <= DROPPED_COMMAND_LOG_LINES:
                    log.warning(
                        "COMMAND: hardware not connected, command from %s dropped%s%s",
                        peer,
                        f": {summary}" if summary else "",
                        "; further commands dropped meanwhile are only counted"
                        if self._dropped_away == DROPPED_COMMAND_LOG_LINES
                        else "",
                    )
                return False
            try:
                sock.sendall(P.swap_records(self.hw, P.Port.COMM, record) if self.swap else record)
            except OSError as exc:
                self.dropped_commands += 1
                log.warning("COMMAND: command from %s not sent (%s); dropped", peer, exc)
                self._set_lost(f"COMMAND send failed: {exc}", "error")
                return False
            self.commands += 1
        log.debug("COMMAND from %s -> hardware: %s", peer, summary)
        return True

    # -- supervisor --------------------------------------------------------
    def _connect_all(self) -> dict[P.Port, socket.socket]:
        socks: dict[P.Port, socket.socket] = {}
        try:
            for port in self.ports:
                number = self.hw.port_number(port, self.base)
                try:
                    s = socket.create_connection((self.host, number), timeout=CONNECT_TIMEOUT)
                except OSError as exc:
                    raise OSError(f"{port.label} port {number}: {exc.strerror or exc}") from None
                s.settimeout(None)
                set_keepalive(s)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if port is P.Port.COMM:
                    set_send_timeout(s, COMMAND_SEND_TIMEOUT)
                socks[port] = s
        except OSError:
            for s in socks.values():
                s.close()
            raise
        return socks

    def _close_all(self) -> None:
        with self._cmd_lock, self._state_lock:
            self.connected.clear()
            socks, self._socks = self._socks, {}
        for s in socks.values():
            _quiet_shutdown(s)
            s.close()

    def _set_lost(self, reason: str, kind: str, generation: int | None = None) -> None:
        with self._state_lock:
            if generation is not None and generation != self.connects:
                return  # a reader of an earlier connection, already replaced
            if not self._lost.is_set():
                self._lost_reason = reason
                self._lost_kind = kind
                self._lost.set()

    def _supervise(self) -> None:
        delay = self.backoff_min
        failures = 0
        kicks: collections.deque[float] = collections.deque()
        where = f"{self.hw.name} hardware at {self.host}"
        while not self._stop.is_set():
            try:
                socks = self._connect_all()
            except OSError as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "%s: cannot connect (%s); retrying with backoff up to %g s",
                        where,
                        exc,
                        self.backoff_max,
                    )
                else:
                    log.debug(
                        "%s: attempt %d failed (%s); next in %g s", where, failures, exc, delay
                    )
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            if self._stop.is_set():
                for s in socks.values():
                    s.close()
                break
            self.connects += 1
            log.info(
                "%s: connected (%s)%s",
                where,
                self.describe_ports(),
                f" after {failures} failed attempts" if failures else "",
            )
            failures = 0
            self._lost.clear()
            with self._cmd_lock, self._state_lock:
                self._socks = dict(socks)
                self.connected.set()
                dropped, self._dropped_away = self._dropped_away, 0
            if dropped:
                log.warning(
                    "COMMAND: %d command(s) arrived while the hardware was away; "
                    "all were dropped, none is sent now",
                    dropped,
                )
            t0 = time.monotonic()
            self._readers = [
                threading.Thread(
                    target=self._read_port,
                    args=(port, sock, self.connects),
                    name=f"hw-{port.label}",
                    daemon=True,
                )
                for port, sock in socks.items()
            ]
            for t in self._readers:
                t.start()
            self._lost.wait()
            lived = time.monotonic() - t0
            self._close_all()
            for t in self._readers:
                t.join(2.0)
            if self._stop.is_set():
                break
            reason, kind = self._lost_reason, self._lost_kind
            delay = self.backoff_min
            now = time.monotonic()
            if kind == "eof" and lived < KICK_SHORT:
                kicks.append(now)
            while kicks and now - kicks[0] > KICK_WINDOW:
                kicks.popleft()
            if len(kicks) >= KICK_LIMIT:
                delay = self.backoff_max
                log.warning(
                    "%s closed marserver's connection %d times in %g s: another program is "
                    "probably connected to it directly; backing off %g s instead of fighting it",
                    where,
                    len(kicks),
                    KICK_WINDOW,
                    delay,
                )
                kicks.clear()
            log.warning(
                "%s lost after %.1f s (%s): all hardware sockets closed, clients kept; "
                "reconnecting in %g s",
                where,
                lived,
                reason,
                delay,
            )
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max)

    def _read_port(self, port: P.Port, sock: socket.socket, generation: int) -> None:
        size = self.hw.record_size(port)
        framer = P.RecordFramer(size)
        fanout = self.fanouts.get(port)
        trace = log.isEnabledFor(TRACE)
        ignored = 0
        try:
            while True:
                try:
                    data = sock.recv(max(size, self.recv_size))
                except OSError as exc:
                    self._set_lost(f"{port.label} port: {exc.strerror or exc}", "error", generation)
                    return
                if not data:
                    self._set_lost(f"{port.label} port closed by the hardware", "eof", generation)
                    return
                if fanout is None:  # COMMAND: the hardware never writes here
                    if not ignored:
                        log.debug("COMMAND: ignoring bytes the hardware sent on the command port")
                    ignored += len(data)
                    continue
                chunk = framer.feed(data)
                if not chunk:
                    continue
                if self.swap:
                    chunk = P.swap_records(self.hw, port, chunk)
                n = len(chunk) // size
                fanout.records += n
                if trace:
                    log.log(
                        TRACE,
                        "%s: %d record(s) -> %d client(s)",
                        port.label,
                        n,
                        len(fanout.clients()),
                    )
                fanout.publish(chunk)
        finally:
            partial = framer.pending()
            if partial and not self._stop.is_set():
                log.warning(
                    "%s: discarded %d bytes of an incomplete %d-byte record from the hardware",
                    port.label,
                    partial,
                    size,
                )


# ---------------------------------------------------------------------------
# client ports


class _ClientHandler(socketserver.BaseRequestHandler):
    server: ClientPort

    def setup(self) -> None:
        self.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        set_keepalive(self.request)


class FanoutHandler(_ClientHandler):
    """A STATUS / DATA / MESSAGE client: its writer sends, this thread watches for EOF."""

    def handle(self) -> None:
        port = self.server
        out = ClientOutput(self.request, self.peer, port.label, port.queue_limit)
        out.start()
        n = port.fanout.add(out)
        log.info("%s: client %s connected (%d clients)", port.label, self.peer, n)
        ignored = 0
        why = "client closed the connection"
        try:
            while True:
                try:
                    data = self.request.recv(4096)
                except OSError as exc:
                    why = f"connection error: {exc.strerror or exc}"
                    break
                if not data:
                    break
                if not ignored:
                    log.debug(
                        "%s: ignoring bytes from %s (this port is read-only)", port.label, self.peer
                    )
                ignored += len(data)
        finally:
            n = port.fanout.remove(out)
            if out.closed and out.reason:
                why = out.reason
            out.close(why)
            out.thread.join(2.0)
            log.info(
                "%s: client %s disconnected (%s; %d bytes sent; %d clients left)",
                port.label,
                self.peer,
                why,
                out.sent,
                n,
            )


class CommandHandler(_ClientHandler):
    """A COMMAND client: whole records go to the hardware, one at a time."""

    def handle(self) -> None:
        port = self.server
        link = port.link
        framer = P.CommandFramer(link.hw)
        log.info("%s: client %s connected (%d clients)", port.label, self.peer, port.client_count())
        bad_lines = 0
        bad_bytes = 0
        why = "client closed the connection"
        while True:
            try:
                data = self.request.recv(65536)
            except OSError as exc:
                why = f"connection error: {exc.strerror or exc}"
                break
            if not data:
                break
            records, bad = framer.feed(data)
            for reason, nbytes in bad:
                bad_bytes += nbytes
                bad_lines += 1
                if bad_lines <= BAD_COMMAND_LOG_LINES:
                    log.warning(
                        "%s: %d bytes from %s rejected (%s)%s",
                        port.label,
                        nbytes,
                        self.peer,
                        reason,
                        "; further rejections are counted"
                        if bad_lines == BAD_COMMAND_LOG_LINES
                        else "",
                    )
            for rec in records:
                link.send_command(rec, self.peer)
        partial = framer.pending()
        if partial:
            log.warning(
                "%s: client %s left %d bytes of an incomplete command; discarded",
                port.label,
                self.peer,
                partial,
            )
        log.info(
            "%s: client %s disconnected (%s%s)",
            port.label,
            self.peer,
            why,
            f"; {bad_bytes} bytes of garbage rejected" if bad_bytes else "",
        )


class ClientPort(ThreadedTCPServer):
    """Listener for one client port (hardware port + N)."""

    def __init__(
        self,
        address,
        port: P.Port,
        link: HardwareLink,
        fanout: Fanout | None,
        *,
        queue_limit: int,
        allow=None,
    ) -> None:
        self.hw_port = port
        self.link = link
        self.fanout = fanout
        self.queue_limit = queue_limit
        self.label = port.label
        handler = CommandHandler if port is P.Port.COMM else FanoutHandler
        super().__init__(
            address,
            handler,
            name=f"{port.label} client port {address[1]}",
            max_connections=MAX_CLIENTS,
            allow=allow,
        )


# ---------------------------------------------------------------------------
# the service


@dataclass
class Settings:
    hw: P.Hardware
    host: str = "localhost"
    base: int | None = None
    ports: frozenset[P.Port] = frozenset(P.ALL_PORTS)
    add: int = 1000
    swap: bool = False
    listen: str = ""
    allow: list | None = None
    backoff_max: float = DEFAULT_BACKOFF_MAX
    queue_limit: int = DEFAULT_QUEUE
    backpressure: bool = False

    @property
    def hw_base(self) -> int:
        return self.hw.base if self.base is None else self.base

    def client_port(self, port: P.Port) -> int:
        return self.hw.port_number(port, self.hw_base) + self.add


class MarServer(runtime.Service):
    name = "marserver"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings
        # a record must always fit, however small the bound
        biggest = max(s.hw.record_size(p) for p in s.ports)
        self.queue_limit = max(s.queue_limit, 2 * biggest)
        # the hardware reader never waits for clients unless back-pressure is asked for
        high_water = self.queue_limit // 2 if s.backpressure else 0
        self.fanouts = {
            p: Fanout(p.label, high_water=high_water) for p in s.ports if p is not P.Port.COMM
        }
        self.link = HardwareLink(
            s.hw,
            s.host,
            s.hw_base,
            set(s.ports),
            self.fanouts,
            swap=s.swap,
            backoff_max=s.backoff_max,
            recv_size=min(RECV_SIZE, self.queue_limit // 4),
        )
        self.servers: list[ClientPort] = []

    def bind(self) -> list:
        s = self.settings
        try:
            for port in sorted(s.ports):
                self.servers.append(
                    ClientPort(
                        (s.listen, s.client_port(port)),
                        port,
                        self.link,
                        self.fanouts.get(port),
                        queue_limit=self.queue_limit,
                        allow=s.allow,
                    )
                )
        except OSError:
            for srv in self.servers:
                srv.server_close()
            self.servers.clear()
            raise
        return self.servers

    def start(self) -> None:
        s = self.settings
        for srv in self.servers:
            srv.start()
        log.info(
            "replicating %s hardware at %s (%s%s) for clients on %s",
            s.hw.name,
            s.host,
            self.link.describe_ports(),
            ", swapping bytes" if s.swap else "",
            ", ".join(f"{srv.label} {srv.port}" for srv in self.servers),
        )
        self.link.start()

    def stop(self) -> int:
        left = self.link.stop()
        for srv in self.servers:
            left += srv.stop()
        return left

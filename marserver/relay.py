"""marserver's engine: the fan-out, the hardware link and its reconnect policy.

* :class:`HardwareLink` holds the only connection to each selected hardware
  port.  A supervisor thread connects all of them together, starts one
  reader per port and, when any of them fails (refused, reset, EOF,
  keepalive timeout), closes all hardware sockets together, keeps every
  client, and reconnects after the wait that :class:`ReconnectPolicy`
  gives: capped exponential backoff, and the cap at once when the hardware
  keeps closing marserver's connection (another program connected to it
  directly).  The policy is pure: it is told the times, it reads no clock.
* STATUS, DATA and MESSAGE records are cut at their fixed sizes
  (:class:`~marserver.protocol.RecordFramer`) and handed to a
  :class:`Fanout`, which gives each client its own bounded
  :class:`common.outqueue.OutQueue` (gathered writes, a writer thread per
  client).  A client whose queue passes the bound is disconnected with a
  log line; nothing else waits for it.  Clients join at a record boundary
  because only whole records are published.  DATA, the port with the bulk
  of the bytes, goes by reference where Linux allows it and nothing is
  swapped (:class:`SpliceFanout`: ``splice``/``tee`` through pipes, no copy
  in marserver), with the same limits and policy.
* COMMAND records from clients are written to the hardware one record at a
  time under one lock (:meth:`HardwareLink.send_command`), so two clients'
  commands never interleave.  Commands arriving while the hardware is away
  are dropped with a log line.

The socket servers for the clients are in :mod:`marserver.server`.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass

from common.log import TRACE
from common.outqueue import (
    PIPE_MAX,
    OutQueue,
    PipeOutQueue,
    make_pipe,
    tee_available,
)

from . import protocol as P

log = logging.getLogger("marserver")

MAX_CLIENTS = 10
DEFAULT_QUEUE = 4 * 1024 * 1024
BACKOFF_MIN = 0.25
DEFAULT_BACKOFF_MAX = 10.0
CONNECT_TIMEOUT = 3.0
COMMAND_SEND_TIMEOUT = 5.0
RECV_SIZE = 1024 * 1024
KICK_LIMIT = 3  # hardware-side closes ...
KICK_WINDOW = 60.0  # ... within this many seconds mean somebody else is connected
KICK_SHORT = 30.0  # a connection that lived less than this and then got EOF counts as a kick
DROPPED_COMMAND_LOG_LINES = 10  # per outage; further drops are counted and summed up
STALL_WAIT = 3.0  # --backpressure: longest pause of the hardware reader for a slow client
STALL_GRACE = 0.5  # --backpressure: a client that moved no byte for this long is not waited for


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


class Fanout:
    """Every client of one hardware -> client port, and the records for them.

    By default (``high_water`` 0) :meth:`publish` never waits: the hardware
    reader hands each record to every client's queue and goes on, and a
    client whose queue passes its bound is dropped.

    Optional back-pressure (``high_water`` > 0, marserver's ``--backpressure``)
    follows the slowest client that is still reading: when a client has more
    than ``high_water`` bytes waiting and has moved bytes within the last
    ``STALL_GRACE`` seconds, :meth:`publish` waits (at most ``STALL_WAIT``
    seconds, and not again until some client has made progress) until it
    has drained.  A hardware that sends faster than the clients read is so
    slowed to their pace instead of getting clients dropped; a client that
    has taken nothing for ``STALL_GRACE`` is not waited for and is dropped
    at its bound.  The hardware reader then does wait for clients (a
    stalled client holds it up to ``STALL_GRACE``), which is why it is off
    unless asked for.
    """

    #: a client that moved no byte for this long is not waited for (back-pressure)
    stall_grace = STALL_GRACE

    def __init__(self, label: str, high_water: int = 0) -> None:
        self.label = label
        self.high_water = high_water
        self._lock = threading.Lock()
        self._clients: tuple[OutQueue, ...] = ()
        self._space = threading.Condition()
        self._waiting = False
        self._gave_up = False
        self._waived: set[OutQueue] = set()  # silent clients not waited for
        self.records = 0
        self.waits = 0

    def attach(self, sock: socket.socket, **kw) -> OutQueue:
        """A started queue for a new client, added to the fan-out."""
        out = OutQueue(sock, **kw).start()
        self.add(out)
        return out

    def add(self, out: OutQueue) -> int:
        out.on_progress = self._wake
        self._gave_up = False  # a new client gets the benefit of flow control
        with self._lock:
            self._clients = self._clients + (out,)
            return len(self._clients)

    def remove(self, out: OutQueue) -> int:
        with self._lock:
            self._clients = tuple(c for c in self._clients if c is not out)
            n = len(self._clients)
        self._waived.discard(out)
        self._wake()
        return n

    def clients(self) -> tuple[OutQueue, ...]:
        return self._clients

    def _wake(self) -> None:
        self._gave_up = False
        if self._waiting:
            with self._space:
                self._space.notify_all()

    def _all_behind(self) -> bool:
        """A client still reading is more than ``high_water`` behind.

        A client silent for ``stall_grace`` is waived: not waited for again
        until it has caught up (a stalled client that the kernel lets take a
        few bytes now and then must not pause everyone each time).
        """
        now = time.monotonic()
        for c in self._clients:
            if c.closed:
                continue
            if c.backlog <= self._high(c):
                self._waived.discard(c)
                continue
            if c in self._waived:
                continue
            if now - c.last_progress >= self.stall_grace:
                self._waived.add(c)
                continue
            return True
        return False

    def _high(self, client: OutQueue) -> int:
        return self.high_water

    def publish(self, chunk: bytes) -> None:
        """Hand whole records to every client; never blocks on one client."""
        self._flow_control()
        for c in self._clients:
            c.put(chunk)

    def _flow_control(self) -> None:
        """With back-pressure: wait while every client is behind (bounded)."""
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


class SpliceFanout(Fanout):
    """A :class:`Fanout` that moves records by reference (Linux ``splice``/``tee``).

    :meth:`pump` splices the hardware socket into a pipe; whole records are
    duplicated into every client's :class:`~common.outqueue.PipeOutQueue`
    pipe with ``tee(2)`` and spliced on to the client sockets, so marserver
    copies no byte of them.  A client whose pipe has no room gets the bytes
    through its ordinary queue (read from the pipe once for all such
    clients); limits and the drop policy are those of :class:`Fanout`, and
    back-pressure waits at half a client's pipe already (or at
    ``high_water`` if lower), so that the records keep going by reference,
    and for at most ``stall_grace`` (50 ms) of a client's silence.
    Used for ports whose records are not byte-swapped.
    """

    CHUNK = 1024 * 1024
    #: a client not waited for only moves to its ordinary queue (copied, bound
    #: --queue) until it catches up, so a short pause is enough to tell
    stall_grace = 0.05

    @staticmethod
    def available() -> bool:
        return tee_available()

    def __init__(self, label: str, high_water: int = 0) -> None:
        super().__init__(label, high_water)
        self.pending = 0  # bytes of an unfinished record in the source pipe

    def _high(self, client: OutQueue) -> int:
        # with back-pressure, keep clients within their pipes: by reference, not copied
        return min(self.high_water, getattr(client, "pipe_size", self.high_water) // 2)

    def attach(self, sock: socket.socket, **kw) -> OutQueue:
        out = PipeOutQueue(sock, **kw).start()
        self.add(out)
        return out

    def pump(self, sock: socket.socket, size: int, stop: threading.Event) -> tuple[str, str]:
        """Relay ``sock`` until it ends; returns (``"eof"``|``"error"``, reason)."""
        src_r, src_w, cap = make_pipe(PIPE_MAX)
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.pending = 0
        try:
            while True:
                try:
                    k = os.splice(sock.fileno(), src_w, min(self.CHUNK, cap - self.pending))
                except OSError as exc:
                    return "error", exc.strerror or str(exc)
                if k == 0:
                    return "eof", "closed by the hardware"
                self.pending += k
                whole = self.pending - self.pending % size
                if not whole:
                    continue
                self.records += whole // size
                self._flow_control()
                rest = []
                for c in self._clients:
                    if not c.closed:
                        got = c.offer_pipe(src_r, whole)
                        if got < whole:
                            rest.append((c, got))
                if rest:
                    data = _read_exactly(src_r, whole)
                    for c, got in rest:
                        c.put(memoryview(data)[got:])
                else:
                    left = whole
                    while left:
                        left -= os.splice(src_r, devnull, left)
                self.pending -= whole
        finally:
            for fd in (src_r, src_w, devnull):
                os.close(fd)


def _read_exactly(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k <= 0:
            raise OSError("pipe ended early")
        got += k
    return buf


# ---------------------------------------------------------------------------
# reconnection policy (pure: no clock, no sockets)


@dataclass(frozen=True)
class Loss:
    """What :meth:`ReconnectPolicy.lost` decided."""

    delay: float  # seconds to wait before the next attempt
    lived: float  # how long the connection had lived
    kicks: int  # short-lived connections closed by the hardware, when it is "kicked"


class ReconnectPolicy:
    """When to try the hardware again; every time is passed in.

    * a failed attempt waits ``delay``, which doubles after each failure up
      to ``backoff_max``;
    * a lost connection starts again at ``backoff_min``;
    * ``kick_limit`` connections that lived less than ``kick_short`` s and
      were closed by the hardware (EOF) within ``kick_window`` s mean that
      another program is connected to the hardware directly: wait
      ``backoff_max`` at once instead of fighting it (``Loss.kicks`` > 0).
    """

    def __init__(
        self,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        *,
        kick_limit: int = KICK_LIMIT,
        kick_window: float = KICK_WINDOW,
        kick_short: float = KICK_SHORT,
    ) -> None:
        self.backoff_max = backoff_max
        self.backoff_min = min(backoff_min, backoff_max)
        self.kick_limit, self.kick_window, self.kick_short = kick_limit, kick_window, kick_short
        self.delay = self.backoff_min
        self.failures = 0
        self._since: float | None = None
        self._kicks: collections.deque[float] = collections.deque()

    def set_backoff_max(self, seconds: float) -> None:
        """A new cap (SIGHUP): applies from the next wait on."""
        self.backoff_max = seconds
        self.backoff_min = min(BACKOFF_MIN, seconds)
        self.delay = min(self.delay, seconds)

    def failed(self) -> float:
        """A connection attempt failed: the seconds to wait before the next."""
        self.failures += 1
        delay = self.delay
        self.delay = min(delay * 2, self.backoff_max)
        return delay

    def connected(self, now: float) -> int:
        """Connected at ``now``; returns how many attempts had failed before."""
        failures, self.failures = self.failures, 0
        self._since = now
        return failures

    def lost(self, now: float, closed_by_peer: bool) -> Loss:
        """The connection ended at ``now`` (``closed_by_peer``: EOF from the hardware)."""
        lived = now - self._since if self._since is not None else 0.0
        self._since = None
        delay = self.backoff_min
        kicks = 0
        if closed_by_peer and lived < self.kick_short:
            self._kicks.append(now)
        while self._kicks and now - self._kicks[0] > self.kick_window:
            self._kicks.popleft()
        if len(self._kicks) >= self.kick_limit:
            delay = self.backoff_max
            kicks = len(self._kicks)
            self._kicks.clear()
        self.delay = min(delay * 2, self.backoff_max)
        return Loss(delay, lived, kicks)


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
        self.policy = ReconnectPolicy(backoff_min, backoff_max)
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
            c = P.decode_command(self.hw, record)
            summary = P.describe_command(self.hw, c) if isinstance(c, P.Command) else str(c)
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
        policy = self.policy
        where = f"{self.hw.name} hardware at {self.host}"
        while not self._stop.is_set():
            try:
                socks = self._connect_all()
            except OSError as exc:
                delay = policy.failed()
                if policy.failures == 1:
                    log.warning(
                        "%s: cannot connect (%s); retrying with backoff up to %g s",
                        where,
                        exc,
                        policy.backoff_max,
                    )
                else:
                    log.debug(
                        "%s: attempt %d failed (%s); next in %g s",
                        where,
                        policy.failures,
                        exc,
                        delay,
                    )
                self._stop.wait(delay)
                continue
            if self._stop.is_set():
                for s in socks.values():
                    s.close()
                break
            self.connects += 1
            failures = policy.connected(time.monotonic())
            log.info(
                "%s: connected (%s)%s",
                where,
                self.describe_ports(),
                f" after {failures} failed attempts" if failures else "",
            )
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
            loss = policy.lost(time.monotonic(), self._lost_kind == "eof")
            self._close_all()
            for t in self._readers:
                t.join(2.0)
            if self._stop.is_set():
                break
            if loss.kicks:
                log.warning(
                    "%s closed marserver's connection %d times in %g s: another program is "
                    "probably connected to it directly; backing off %g s instead of fighting it",
                    where,
                    loss.kicks,
                    policy.kick_window,
                    loss.delay,
                )
            log.warning(
                "%s lost after %.1f s (%s): all hardware sockets closed, clients kept; "
                "reconnecting in %g s",
                where,
                loss.lived,
                self._lost_reason,
                loss.delay,
            )
            self._stop.wait(loss.delay)

    def _read_port(self, port: P.Port, sock: socket.socket, generation: int) -> None:
        size = self.hw.record_size(port)
        framer = P.RecordFramer(size)
        fanout = self.fanouts.get(port)
        if isinstance(fanout, SpliceFanout) and not self.swap:
            kind, why = fanout.pump(sock, size, self._stop)
            self._set_lost(f"{port.label} port: {why}", kind, generation)
            if fanout.pending and not self._stop.is_set():
                log.warning(
                    "%s: discarded %d bytes of an incomplete %d-byte record from the hardware",
                    port.label,
                    fanout.pending,
                    size,
                )
            return
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
                framer.feed(data)
                ev = framer.next_event()
                if ev is None:
                    continue
                chunk = ev.data
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

"""marserver's socket layer: the client ports and the service.

One :class:`ClientPort` listens on each replicated hardware port + N.  A
STATUS, DATA or MESSAGE client gets an :class:`~common.outqueue.OutQueue`
in its port's :class:`~marserver.relay.Fanout`; its handler thread only
watches for EOF.  A COMMAND client's bytes go through a
:class:`~marserver.protocol.CommandFramer`; whole records go to the
:class:`~marserver.relay.HardwareLink`, bad input becomes a rate-limited log
line (:class:`common.ratelimit.LogLimiter`, per client host).
:class:`MarServer` plugs all of it into :mod:`common.runtime` and applies
the live options on SIGHUP (:class:`common.options.LiveOptions`).
"""

from __future__ import annotations

import logging
import socket
import socketserver
from dataclasses import dataclass

from common import runtime
from common.badinput import BadInput
from common.options import LiveOptions
from common.outqueue import OutQueue
from common.ratelimit import LogLimiter
from common.server import ThreadedTCPServer, parse_allow

from . import protocol as P
from .relay import (
    DEFAULT_BACKOFF_MAX,
    DEFAULT_QUEUE,
    RECV_SIZE,
    Fanout,
    HardwareLink,
    SpliceFanout,
    set_keepalive,
)

log = logging.getLogger("marserver")

MAX_CLIENTS = 10
#: most records a client's queue holds (besides the byte bound ``--queue``)
MAX_QUEUED_RECORDS = 65536

__all__ = ["DEFAULT_BACKOFF_MAX", "DEFAULT_QUEUE", "MAX_CLIENTS", "MarServer", "Settings"]


class _ClientConnection(socketserver.BaseRequestHandler):
    server: ClientPort

    def setup(self) -> None:
        self.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        set_keepalive(self.request)


class FanoutHandler(_ClientConnection):
    """A STATUS / DATA / MESSAGE client: its writer sends, this thread watches for EOF."""

    def handle(self) -> None:
        port = self.server
        out = port.fanout.attach(
            self.request,
            max_bytes=port.queue_limit,
            max_records=MAX_QUEUED_RECORDS,
            name=f"{port.label}-{self.peer}",
            on_overflow=self._overflow,
        )
        n = len(port.fanout.clients())
        log.info("%s: client %s connected (%d clients)", port.label, self.peer, n)
        ignored = 0
        why = "client closed the connection"
        try:
            while True:
                try:
                    data = self.request.recv(4096)
                except TimeoutError:
                    continue  # the queue may set a (long) timeout; a quiet client is fine
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
            out.join(2.0)
            log.info(
                "%s: client %s disconnected (%s; %d bytes sent; %d clients left)",
                port.label,
                self.peer,
                why,
                out.sent,
                n,
            )

    def _overflow(self, out: OutQueue, queued: int, records: int) -> None:
        log.warning(
            "%s: disconnecting slow client %s: %d bytes queued, limit %d",
            self.server.label,
            self.peer,
            queued,
            out.max_bytes,
        )


class CommandHandler(_ClientConnection):
    """A COMMAND client: whole records go to the hardware, one at a time."""

    def handle(self) -> None:
        port = self.server
        link = port.link
        framer = P.CommandFramer(link.hw)
        host = self.client_address[0]
        log.info("%s: client %s connected (%d clients)", port.label, self.peer, port.client_count())
        bad_bytes = 0
        why = "client closed the connection"
        while True:
            ev = framer.next_event()
            if ev is None:
                try:
                    data = self.request.recv(65536)
                except OSError as exc:
                    why = f"connection error: {exc.strerror or exc}"
                    break
                if not data:
                    break
                framer.feed(data)
                continue
            if isinstance(ev, BadInput):
                bad_bytes += ev.size
                port.limiter.log(
                    f"{port.label}: bad input from {host}",
                    logging.WARNING,
                    "%s: %d bytes from %s rejected (%s)",
                    port.label,
                    ev.size,
                    self.peer,
                    ev.reason,
                )
                continue
            link.send_command(ev.data, self.peer)
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
        max_clients: int = MAX_CLIENTS,
        limiter: LogLimiter | None = None,
    ) -> None:
        self.hw_port = port
        self.link = link
        self.fanout = fanout
        self.queue_limit = queue_limit
        self.label = port.label
        self.limiter = limiter or LogLimiter(log)
        handler = CommandHandler if port is P.Port.COMM else FanoutHandler
        super().__init__(
            address,
            handler,
            name=f"{port.label} client port {address[1]}",
            max_connections=max_clients,
            allow=allow,
        )


# ---------------------------------------------------------------------------
# the service


@dataclass
class Settings:
    hw: P.RecordLayout
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
    max_clients: int = MAX_CLIENTS

    @property
    def hw_base(self) -> int:
        return self.hw.base if self.base is None else self.base

    def client_port(self, port: P.Port) -> int:
        return self.hw.port_number(port, self.hw_base) + self.add


class MarServer(runtime.Service):
    name = "marserver"

    def __init__(self, settings: Settings, options: LiveOptions | None = None) -> None:
        self.settings = settings
        s = settings
        self.queue_limit = self._queue_bound(s.queue_limit)
        # the hardware reader never waits for clients unless back-pressure is asked for
        high_water = self.queue_limit // 2 if s.backpressure else 0
        self.fanouts = {
            p: self._fanout_class(p)(p.label, high_water=high_water)
            for p in s.ports
            if p is not P.Port.COMM
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
        self.limiter = LogLimiter(log)
        self.servers: list[ClientPort] = []
        self.options = options
        if options is not None:
            options.live.update(
                max_clients=self.set_max_clients,
                allow=self.set_allow,
                queue=self.set_queue,
                backoff=self.link.policy.set_backoff_max,
            )

    def _fanout_class(self, port: P.Port) -> type[Fanout]:
        """DATA goes by reference (splice/tee) where the kernel can and nothing is swapped."""
        if port is P.Port.DATA and not self.settings.swap and SpliceFanout.available():
            return SpliceFanout
        return Fanout

    def _queue_bound(self, wanted: int) -> int:
        # a record must always fit, however small the bound
        biggest = max(self.settings.hw.record_size(p) for p in self.settings.ports)
        return max(wanted, 2 * biggest)

    # -- live settings (SIGHUP) ---------------------------------------------
    def set_max_clients(self, n) -> None:
        for srv in self.servers:
            srv.max_connections = int(n)
        log.info("at most %d clients per port from now on", n)

    def set_allow(self, networks) -> None:
        allow = parse_allow(networks)
        for srv in self.servers:
            srv.allow = allow
        log.info("allow-list now %s", ", ".join(map(str, allow)) if allow else "empty (every host)")

    def set_queue(self, nbytes) -> None:
        self.queue_limit = self._queue_bound(int(nbytes))
        for srv in self.servers:
            srv.queue_limit = self.queue_limit
        for fan in self.fanouts.values():
            if fan.high_water:
                fan.high_water = self.queue_limit // 2
            for out in fan.clients():
                out.max_bytes = self.queue_limit
        log.info("client queue bound now %d bytes", self.queue_limit)

    # -- runtime.Service -----------------------------------------------------
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
                        max_clients=s.max_clients,
                        limiter=self.limiter,
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

    def reload(self) -> str | None:
        return self.options.reload() if self.options is not None else None

    def on_tick(self) -> None:
        self.limiter.flush()

    def stop(self) -> int:
        left = self.link.stop()
        for srv in self.servers:
            left += srv.stop()
        return left

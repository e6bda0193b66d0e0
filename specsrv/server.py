"""spec server mode: the socket layer (I/O only).

One thread per client reads packets (``protocol.Decoder``) and hands each
well-formed one to the engine (:meth:`specsrv.engine.SpecEngine.handle`),
which answers HELLO, CHAN_READ and REGISTER at once from existing data and
puts commands on the single command queue.  A :class:`ClientWriter` per
client drains that client's bounded output queue, so a slow client never
holds up the motors, the command thread or the other clients; a client
whose queue overflows is disconnected with a log line.  Everything sent to
a client uses the byte order of its first packet and ``min(its version, 4)``.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time

from common.ratelimit import LogLimiter
from common.server import ThreadedTCPServer

from . import protocol as P
from . import wire
from .engine import SpecEngine, wire_value
from .protocol import Cmd, ErrorValue, Packet

log = logging.getLogger("specsrv")
dlog = logging.getLogger("specsrv.debug")
limited = LogLimiter(log)

MAX_OUT_PACKETS = 20000
MAX_OUT_BYTES = 256 << 20
SMALL = 1 << 16  # data sections up to this size are joined to their header
#: simultaneous client connections (a spec server has a handful of clients)
DEFAULT_MAX_CLIENTS = 64


class ClientWriter:
    """The bounded output queue of one client and the thread that drains it.

    ``send(data, more)`` queues one packet's bytes and sends at once what the
    socket takes without blocking; the rest goes out from the writer thread.
    Past ``MAX_OUT_PACKETS`` packets or ``MAX_OUT_BYTES`` bytes waiting, the
    client is too slow: it is disconnected with a log line.
    """

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.out: collections.deque[bytes] = collections.deque()
        self.out_bytes = 0
        self.writing = False
        self.out_cv = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._write_loop, name=f"writer-{peer}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def send(self, data: bytes, more=None) -> None:
        """Queue one packet's bytes (``more``: its large data section, not copied)."""
        size = len(data) + (len(more) if more is not None else 0)
        with self.out_cv:
            if self.closed:
                return
            if len(self.out) >= MAX_OUT_PACKETS or self.out_bytes + size > MAX_OUT_BYTES:
                log.warning(
                    "%s: client too slow, %d packets waiting; disconnecting",
                    self.peer,
                    len(self.out),
                )
                self._close_locked()
                return
            self.out.append(data)
            if more is not None:
                self.out.append(more)
            self.out_bytes += size
            if self.writing:
                return  # the writer (or another sender) will take it
            self.writing = True
            batch = list(self.out)
            self.out.clear()
        # Fast path: hand the bytes to the kernel from this thread without
        # blocking; whatever does not fit goes to the writer thread.
        try:
            left = wire.send_nowait(self.sock, batch)
        except OSError:
            left = []
            with self.out_cv:
                self._close_locked()
        with self.out_cv:
            if left:
                self.out.extendleft(reversed(left))
            self.out_bytes = sum(len(b) for b in self.out)
            self.writing = False
            if self.out:
                self.out_cv.notify()

    def _write_loop(self) -> None:
        while True:
            with self.out_cv:
                while (not self.out or self.writing) and not self.closed:
                    self.out_cv.wait()
                if self.closed:
                    return
                batch = list(self.out)
                self.out.clear()
                self.writing = True
            try:
                small = [b for b in batch if len(b) <= SMALL]
                if len(small) == len(batch) and len(batch) > 1:
                    self.sock.sendall(b"".join(batch))
                else:
                    for b in batch:
                        self.sock.sendall(b)
            except OSError as exc:
                log.debug("%s: send failed: %s", self.peer, exc)
                with self.out_cv:
                    self.writing = False
                    self._close_locked()
                return
            with self.out_cv:
                self.writing = False
                self.out_bytes = sum(len(b) for b in self.out)

    def close(self) -> None:
        with self.out_cv:
            self._close_locked()

    def _close_locked(self) -> None:
        if not self.closed:
            self.closed = True
            self.out.clear()
            self.out_cv.notify_all()
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def flush_and_close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.out_cv:
                if not self.out:
                    break
            time.sleep(0.01)
        self.close()


class ClientConnection:
    """One connected client: reads its packets, sends to it (the engine's Peer)."""

    def __init__(self, engine: SpecEngine, sock: socket.socket, peer: str) -> None:
        self.engine = engine
        self.sock = sock
        self.peer = peer
        self.order = P.LITTLE
        self.vers = P.SV_VERSION
        self.prestart: str | None = None
        self.registrations = 0
        self.pktlog = P.PacketLog("s")
        self.writer = ClientWriter(sock, peer)

    @property
    def closed(self) -> bool:
        return self.writer.closed

    # -- output (the Peer interface) ---------------------------------------------
    def encode(self, pkt: Packet) -> bytes:
        return P.encode_packet(pkt, self.order, self.vers)

    def send_packet(self, pkt: Packet) -> None:
        now = time.time()
        pkt.sec, pkt.usec = int(now), int((now % 1) * 1e6)
        head = P.encode_header(pkt, self.order, self.vers)
        if len(pkt.data) > SMALL:
            self.send_bytes(head, pkt=pkt, more=pkt.data)
        else:
            self.send_bytes(head + bytes(pkt.data), pkt=pkt)

    def send_bytes(self, data: bytes, pkt: Packet | None = None, pkt_hint=None, more=None) -> None:
        dbg = self.engine.debug
        if dbg:
            self._debug_write(dbg, data, pkt, pkt_hint, more)
        rec = self.engine.recorder
        if rec is not None:
            if pkt is None and pkt_hint is not None:
                pkt = P.make_packet(Cmd.EVENT, wire_value(pkt_hint[1]), name=pkt_hint[0])
            if pkt is not None:
                pkt.vers = self.vers
                rec.record("W", "server", self.peer, pkt)
        self.writer.send(data, more)

    def reply(self, sn: int, value, name: str = "") -> None:
        # data arrays in values are shared copy-on-write: they go out as views
        pkt = P.make_packet(Cmd.REPLY, value, sn=sn, name=name, order=self.order, copy=False)
        self.send_packet(pkt)

    def error_reply(self, sn: int, message: str, name: str = "", err: int = 1) -> None:
        self.reply(sn, ErrorValue(message, err), name=name)

    def flush_and_close(self, timeout: float) -> None:
        self.writer.flush_and_close(timeout)

    def _debug_write(self, dbg: int, data: bytes, pkt, pkt_hint, more) -> None:
        if dbg & P.DEBUG_PACKETS:
            if pkt is None and pkt_hint is not None:
                pkt = P.make_packet(Cmd.EVENT, wire_value(pkt_hint[1]), name=pkt_hint[0])
            if pkt is not None:
                dlog.info("%s", self.pktlog.line("W", pkt, time.monotonic()))
        if dbg & P.DEBUG_SOCKET:
            whole = data + bytes(more) if more is not None else data
            for line in P.socket_lines("send", self.peer, whole, dbg):
                dlog.info("%s", line)

    def _debug_read(self, pkt: Packet) -> None:
        dbg = self.engine.debug
        if dbg & P.DEBUG_SOCKET:
            for line in P.socket_lines("get", self.peer, pkt.raw_header, dbg, len(pkt.raw_header)):
                dlog.info("%s", line)
            if pkt.data:
                for line in P.socket_lines("get", self.peer, pkt.data, dbg, len(pkt.data)):
                    dlog.info("%s", line)
        if dbg & P.DEBUG_PACKETS:
            dlog.info("%s", self.pktlog.line("R", pkt, time.monotonic()))

    # -- input ---------------------------------------------------------------------
    def run(self) -> None:
        eng = self.engine
        with eng.reg_lock:
            eng.clients.add(self)
        self.writer.start()
        decoder = P.Decoder(max_data=eng.max_data)
        first = True
        try:
            while not self.closed:
                try:
                    if not wire.fill(self.sock, decoder):
                        if decoder.pending() or decoder.data_remaining():
                            log.info("%s: connection closed inside a packet", self.peer)
                        break
                    while (item := decoder.next_event()) is not None:
                        if first and decoder.order is not None:
                            self.order = decoder.order
                            self.vers = P.reply_version(decoder.version)
                            first = False
                        if isinstance(item, P.BadPacket):
                            self._bad_packet(item)
                        elif not self.handle_packet(item):
                            return
                except OSError:
                    break
                except P.ProtocolError as exc:
                    limited.log(
                        f"protocol error from {self.peer.rpartition(':')[0]}",
                        logging.WARNING,
                        "%s: protocol error, closing the connection: %s",
                        self.peer,
                        exc,
                    )
                    return
        finally:
            eng.forget(self)
            self.writer.close()
            self.writer.join(1)

    def _bad_packet(self, bad: P.BadPacket) -> None:
        pkt = bad.packet
        limited.log(
            f"bad packet from {self.peer.rpartition(':')[0]}",
            logging.WARNING,
            "%s: bad packet (%s, sn %d): %s",
            self.peer,
            pkt.cmd_name,
            pkt.sn,
            bad.reason,
        )
        if P.error_reply_due(pkt):
            self.error_reply(pkt.sn, bad.reason, name=pkt.name, err=2)

    def handle_packet(self, pkt: Packet) -> bool:
        """Act on one packet; False closes the connection."""
        if self.engine.debug:
            self._debug_read(pkt)
        if self.engine.recorder is not None:
            self.engine.recorder.record("R", "server", self.peer, pkt)
        return self.engine.handle(self, pkt)


class _Handler:
    """socketserver glue: a ClientConnection per accepted connection."""

    def __init__(self, request, client_address, server) -> None:
        peer = f"{client_address[0]}:{client_address[1]}"
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        log.debug("connection from %s", peer)
        try:
            ClientConnection(server.spec, request, peer).run()
        finally:
            log.debug("%s disconnected", peer)


def bind_first_free(
    host: str,
    ports: list[int],
    spec: SpecEngine,
    allow=None,
    max_clients: int = DEFAULT_MAX_CLIENTS,
) -> ThreadedTCPServer:
    """Listen on the first port of ``ports`` that is free."""
    last: OSError | None = None
    for port in ports:
        try:
            tcp = ThreadedTCPServer(
                (host, port), _Handler, name="specsrv", allow=allow, max_connections=max_clients
            )
        except OSError as exc:
            last = exc
            continue
        tcp.spec = spec
        spec.port = tcp.server_address[1]
        return tcp
    if last is None:
        raise OSError("no port to try")
    if len(ports) > 1:
        raise OSError(last.errno, f"no free port in {ports[0]}-{ports[-1]}")
    raise last

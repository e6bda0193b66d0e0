"""camerad's controller layer: a TCP client for the Archon and its typed verbs.

:class:`ArchonClient` moves bytes: framing and parsing come from
:mod:`archonsrv.archon`.  :class:`Controller` offers the controller's
commands as typed methods (``apply_module(5)``, ``frame()``,
``fetch(...)``), so that the camera engine never spells an Archon command
itself.  Every command holds the client lock from sending to the end of its
reply, so the hardware sees one command at a time no matter how many
client threads camerad runs.  A reply with a stale message reference (the
late answer to a command that timed out) is skipped.  After a broken
connection or a FETCH that stopped midway the socket is closed (the byte
stream can no longer be trusted) and the next command reconnects once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import numpy as np

from . import archon as A

log = logging.getLogger("camerad.archon")

QUIET = A.QUIET_COMMANDS
SLOW = A.SLOW_COMMANDS


class ArchonError(Exception):
    """A controller command failed (error reply, timeout, connection lost)."""


class ArchonClient:
    def __init__(
        self, timeout: float = 3.0, slow_timeout: float = 10.0, fetch_timeout: float = 5.0
    ):
        self.timeout = timeout
        self.slow_timeout = slow_timeout
        self.fetch_timeout = fetch_timeout
        self.lock = threading.RLock()
        self.host = ""
        self.port = 0
        self.sock: socket.socket | None = None
        self.wanted = False  # opened by the user and not closed: reconnect on demand
        self._ref = 0
        self._rx = A.ReplyStream()
        # receive buffer reused by every FETCH (its pages stay mapped); what a
        # sink was given must be consumed before the next FETCH starts
        self._fetchbuf: np.ndarray | None = None

    # -- connection --------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def connect(self, host: str, port: int) -> None:
        with self.lock:
            self._close_socket()
            self.host, self.port = host, port
            try:
                s = socket.create_connection((host, port), timeout=self.timeout)
            except OSError as exc:
                raise ArchonError(
                    f"cannot connect to Archon at {host}:{port}: {exc.strerror or exc}"
                ) from None
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):  # room for FETCH data while we write it out
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.sock = s
            self._rx.clear()
            self.wanted = True
            log.info("connected to Archon at %s:%d", host, port)

    def abort(self) -> None:
        """Break the connection from any thread (shutdown), waking a blocked reader."""
        self.wanted = False
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            self.wanted = False
            self._close_socket()

    def _close_socket(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
            self._rx.clear()

    def _broken(self, why: str) -> ArchonError:
        self._close_socket()
        log.error("Archon connection closed: %s", why)
        return ArchonError(why)

    def _ensure(self) -> socket.socket:
        if self.sock is None:
            if not self.wanted:
                raise ArchonError("not connected to the Archon (use open)")
            log.info("reconnecting to Archon at %s:%d", self.host, self.port)
            self.connect(self.host, self.port)
        return self.sock

    def _next_ref(self) -> int:
        self._ref = (self._ref + 1) & 0xFF
        return self._ref

    # -- reading -----------------------------------------------------------
    def _recv(self, sock: socket.socket, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise
        except OSError as exc:
            raise self._broken(f"Archon connection error: {exc.strerror or exc}") from None
        if not data:
            raise self._broken("Archon closed the connection")
        self._rx.feed(data)

    def _read_reply(self, sock: socket.socket, deadline: float) -> A.ArchonReply:
        while True:
            event = self._rx.next_event()
            if isinstance(event, A.Overlong):
                raise self._broken("Archon reply line too long")
            if isinstance(event, A.BadInput):
                raise self._broken(event.reason)
            if event is not None:
                return event
            self._recv(sock, deadline)

    # -- commands ----------------------------------------------------------
    def command(self, text: str, timeout: float | None = None) -> str:
        """Send one command, return the reply text; raise ArchonError."""
        if timeout is None:
            timeout = self.slow_timeout if text.startswith(SLOW) else self.timeout
        with self.lock:
            sock = self._ensure()
            ref = self._next_ref()
            if not text.startswith(QUIET):
                log.debug("archon> %s", text)
            try:
                sock.sendall(A.encode_command(ref, text))
            except OSError as exc:
                raise self._broken(f"cannot send to Archon: {exc.strerror or exc}") from None
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply = self._read_reply(sock, deadline)
                except TimeoutError:
                    raise ArchonError(
                        f"no reply from Archon to {text.split(' ')[0][:30]} within {timeout:g} s"
                    ) from None
                if reply.ref != ref:
                    log.warning("skipping stale Archon reply %02X %r", reply.ref, reply.text[:60])
                    continue
                if not reply.ok:
                    raise ArchonError(f"Archon error reply to {text.split(' ')[0][:30]}")
                if not text.startswith(QUIET):
                    log.debug("archon< %s", reply.text[:200])
                return reply.text

    def fetch(
        self,
        address: int,
        blocks: int,
        progress: Callable[[int, int], None] | None = None,
        sink: Callable[[np.ndarray], None] | None = None,
    ) -> np.ndarray | None:
        """FETCH ``blocks`` 1024-byte blocks; return the payload bytes.

        With ``sink``, each run of verified blocks is passed on as it
        arrives (a (k, 1024) view of a buffer that the next FETCH reuses) and
        nothing is returned; without, a copy of the payload is returned.  If the sink
        raises, the rest of the reply is still read (the stream stays in
        step) and the sink's exception is raised at the end.
        """
        sink_error: BaseException | None = None
        with self.lock:
            sock = self._ensure()
            ref = self._next_ref()
            text = A.fetch_command(address, blocks)
            log.debug("archon> %s", text)
            need = blocks * A.BLOCK_WIRE
            if self._fetchbuf is None or self._fetchbuf.size < need:
                self._fetchbuf = None  # free the old one first
                self._fetchbuf = np.empty(need, dtype=np.uint8)
            dec = A.FetchDecoder(ref, blocks, self._fetchbuf)
            if len(self._rx):  # bytes read before this command cannot belong to its reply
                log.warning("discarding %d stale bytes from the Archon", len(self._rx))
                self._rx.clear()
            try:
                sock.sendall(A.encode_command(ref, text))
            except OSError as exc:
                raise self._broken(f"cannot send to Archon: {exc.strerror or exc}") from None
            try:
                last_report = 0
                while not dec.done:
                    sock.settimeout(self.fetch_timeout)
                    try:
                        n = sock.recv_into(dec.writable())
                    except TimeoutError:
                        raise self._broken(
                            f"FETCH stopped after {dec.checked} of {blocks} blocks "
                            f"(nothing for {self.fetch_timeout:g} s)"
                        ) from None
                    except OSError as exc:
                        raise self._broken(
                            f"connection lost during FETCH at block {dec.checked} of {blocks}: "
                            f"{exc.strerror or exc}"
                        ) from None
                    if n == 0:
                        raise self._broken(
                            f"Archon closed the connection during FETCH at block "
                            f"{dec.checked} of {blocks}"
                        )
                    dec.advance(n)
                    if sink is not None and dec.checked > dec.delivered:
                        try:
                            sink(dec.take())
                        except Exception as exc:  # noqa: BLE001 - re-raised after the drain
                            sink_error = exc
                            sink = None
                    if progress is not None and dec.checked - last_report >= 4096:
                        last_report = dec.checked
                        progress(dec.checked, blocks)
            except A.ProtocolError as exc:
                raise self._broken(str(exc)) from None
            if sink_error is not None:
                raise sink_error
            if sink is not None:
                if dec.checked > dec.delivered:
                    sink(dec.take())
                return None
            return dec.payload()


class Controller:
    """The Archon's commands as typed methods over a link.

    ``link`` is an :class:`ArchonClient` (TCP) or anything with the same
    methods (``command``, ``fetch``, ``connect``, ``close``, ``abort``,
    ``lock``, ``is_open``, ``wanted``), such as archonsim's in-process
    :class:`~archonsrv.sim.SimLink`, so that the camera engine runs without
    sockets in tests.
    """

    def __init__(self, link=None) -> None:
        self.link = link if link is not None else ArchonClient()
        self.lock = self.link.lock

    # -- connection --------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.link.is_open

    @property
    def wanted(self) -> bool:
        return self.link.wanted

    def connect(self, host: str, port: int) -> None:
        self.link.connect(host, port)

    def close(self) -> None:
        self.link.close()

    def abort(self) -> None:
        self.link.abort()

    # -- queries -----------------------------------------------------------
    def native(self, text: str) -> str:
        """A command typed by the user (``native``), passed on as is."""
        return self.link.command(text)

    def system(self) -> dict[str, str]:
        return A.parse_kv(self.link.command(A.SYSTEM))

    def status(self) -> dict[str, str]:
        return A.parse_kv(self.link.command(A.STATUS))

    def frame(self) -> A.FrameStatus:
        return A.parse_frame(self.link.command(A.FRAME))

    def timer(self) -> int:
        return A.parse_timer(self.link.command(A.TIMER))

    def fetchlog(self) -> str | None:
        """The next controller log line, None when the log is empty."""
        entry = self.link.command(A.FETCHLOG)
        return None if entry.strip() in (A.FETCHLOG_EMPTY, "") else entry

    # -- configuration memory ---------------------------------------------
    def poll(self, on: bool) -> None:
        self.link.command(A.POLLON if on else A.POLLOFF)

    def clear_config(self) -> None:
        self.link.command(A.CLEARCONFIG)

    def write_config(self, line: int, key: str, value: str) -> None:
        self.link.command(A.wconfig_command(line, key, value))

    def read_config(self, line: int) -> str:
        return self.link.command(A.rconfig_command(line))

    def apply_all(self) -> None:
        self.link.command(A.APPLYALL)

    def load_timing(self) -> None:
        self.link.command(A.LOADTIMING)

    def apply_cds(self) -> None:
        self.link.command(A.APPLYCDS)

    def apply_system(self) -> None:
        self.link.command(A.APPLYSYSTEM)

    def load_params(self) -> None:
        self.link.command(A.LOADPARAMS)

    def apply_module(self, module: int) -> None:
        self.link.command(A.apply_mod_command(module))

    def apply_dio(self, module: int) -> None:
        self.link.command(A.apply_dio_command(module))

    # -- parameters, power, buffers ------------------------------------------
    def set_param_fast(self, name: str, value: str) -> None:
        """FASTPREPPARAM then FASTLOADPARAM: the timing core sees it at once."""
        self.link.command(A.param_command("FASTPREPPARAM", name, value))
        self.link.command(A.param_command("FASTLOADPARAM", name, value))

    def load_param(self, name: str, value: str) -> None:
        self.link.command(A.param_command("LOADPARAM", name, value))

    def power(self, on: bool) -> None:
        self.link.command(A.POWERON if on else A.POWEROFF)

    def lock_buffer(self, buffer: int) -> None:
        """LOCKn (n = 1..3) holds a frame buffer for reading; 0 releases it."""
        self.link.command(A.lock_command(buffer))

    def fetch(self, address: int, blocks: int, sink=None):
        return self.link.fetch(address, blocks, sink=sink)

"""What the server does with each request, without sockets.

A :class:`Session` holds one connection's state (last sequence number, byte
order, a ``write`` waiting for its data) and turns each parsed event into an
:class:`Outcome`: the bytes to send, how many bytes of ``write`` data to
receive next, and whether to close the connection or shut the server down.
The device is shared by all connections (:class:`SharedDevice`: the device,
its lock and the server's identity) and called under one lock, one command
at a time; a command that cannot get the lock in time is answered ``busy``.
Log lines caused by what a client sends (bad input, repeated sequence
numbers, error replies) go through the server's
:class:`~common.ratelimit.LogLimiter`, keyed per client host.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from common.badinput import quote
from common.log import TRACE
from common.ratelimit import LogLimiter

from . import protocol as P
from .device import DataBlock, Device, DeviceError

log = logging.getLogger(__name__)

#: how long a command waits for another connection's command before ``busy``
LOCK_WAIT = 2.0


@dataclass
class SharedDevice:
    """The device every connection of one server shares, its lock and the server's identity."""

    device: Device
    name: str
    host: str
    pid: int
    quit_on_goodbye: bool = False
    byte_order: str = "<"
    lock: threading.Lock = field(default_factory=threading.Lock)
    lock_wait: float = LOCK_WAIT
    exited: bool = False
    limiter: LogLimiter = field(default_factory=lambda: LogLimiter(log))

    def device_exit(self) -> None:
        """Call the device's exit function once, whatever stops the server."""
        with self.lock:
            if self.exited:
                return
            self.exited = True
            try:
                self.device.exit()
            except Exception:  # noqa: BLE001 - a failing exit must not stop the shutdown
                log.exception("device exit failed")


@dataclass
class Outcome:
    out: list = field(default_factory=list)  # bytes or memoryview, sent in order
    receive: memoryview | None = None  # write data to receive into this buffer
    close: bool = False
    shutdown: bool = False


@dataclass
class _PendingWrite:
    addr: int
    block: DataBlock
    buffer: np.ndarray  # wire dtype, flat
    complete: bool = False


class Busy(Exception):
    pass


class Session:
    """One connection's state; :meth:`handle` turns an event into an :class:`Outcome`."""

    def __init__(self, shared: SharedDevice, peer: str = "client") -> None:
        self.shared = shared
        self.peer = peer
        self.host = peer.rsplit(":", 1)[0]
        self.last_sn: int | None = None
        self.order = shared.byte_order
        self.pending: _PendingWrite | None = None
        #: why the last write was dropped, for an ``xfer_done`` that comes next
        self.dropped: str | None = None

    # -- entry points ------------------------------------------------------
    def handle(self, ev: P.Event) -> Outcome:
        if isinstance(ev, P.Garbage):
            self._note(logging.WARNING, "bad input", "ignored %s: %s", ev.reason, quote(ev.line))
            return Outcome()
        if isinstance(ev, P.Overlong):
            self._note(logging.WARNING, "bad input", "discarded a line of %d+ bytes", ev.size)
            return Outcome()
        if ev.sn == self.last_sn:
            self._note(logging.INFO, "repeated", "ignored repeated sequence number %d", ev.sn)
            return Outcome()
        self.last_sn = ev.sn
        dropped, self.dropped = self.dropped, None
        if isinstance(ev, P.BadRequest):
            self._note(logging.INFO, "error reply", "bad request %d: %s", ev.sn, ev.message)
            return self._error(ev.sn, ev.message)
        log.debug("%s: request %d %s %s a=%d", self.peer, ev.sn, ev.cmd, " ".join(ev.args), ev.addr)
        if dropped and ev.cmd == "xfer_done":
            log.info("%s: xfer_done %d after a dropped write", self.peer, ev.sn)
            return self._error(ev.sn, dropped)
        try:
            outcome = self._dispatch(ev)
        except (DeviceError, P.ProtocolError) as exc:
            self._note(logging.INFO, "error reply", "%s failed: %s", ev.cmd, exc)
            return self._error(ev.sn, str(exc) or ev.cmd + " failed")
        except Busy:
            self._note(logging.INFO, "error reply", "%s refused: busy", ev.cmd)
            return self._error(ev.sn, "busy")
        except Exception as exc:  # noqa: BLE001 - a device bug becomes an error reply
            log.exception("%s: %s raised", self.peer, ev.cmd)
            return self._error(ev.sn, f"{ev.cmd}: internal error: {exc}")
        if log.isEnabledFor(logging.DEBUG) and outcome.out:
            log.debug("%s: reply %r", self.peer, bytes(outcome.out[0][:120]))
        return outcome

    def write_finished(self, received: int, tail: bytes) -> Outcome:
        """The server received ``received`` bytes of the pending write's data.

        All of them: the data wait for ``xfer_done``.  Fewer (timeout or
        EOF): the write is dropped; if the bytes that did arrive end with an
        ``xfer_done`` request, that request gets the error reply it is due.
        """
        pend = self.pending
        if pend is None:
            return Outcome()
        want = pend.buffer.nbytes
        if received >= want:
            pend.complete = True
            return Outcome()
        self.pending = None
        self._note(
            logging.WARNING,
            "short write",
            "write of %d points dropped: %d of %d data bytes arrived",
            pend.block.npts,
            received,
            want,
        )
        why = f"short write: {received} of {want} data bytes arrived"
        sn = P.xfer_done_in_tail(tail)
        if sn is not None and sn != self.last_sn:
            self.last_sn = sn
            return self._error(sn, why)
        self.dropped = why  # the xfer_done may still come, after the time limit
        return Outcome()

    # -- helpers --------------------------------------------------------------
    def _note(self, level: int, kind: str, msg: str, *args) -> None:
        """A log line caused by the client, at most a few per host and minute."""
        self.shared.limiter.log(
            f"{self.shared.name}: {kind} from {self.host}", level, "%s: " + msg, self.peer, *args
        )

    @staticmethod
    def _reply(sn: int, text: str = "") -> Outcome:
        return Outcome([P.format_reply(sn, text)])

    @staticmethod
    def _error(sn: int, text: str) -> Outcome:
        return Outcome([P.format_reply(sn, text, ok=False)])

    def _locked(self):
        shared = self.shared

        class _Ctx:
            def __enter__(self_inner):
                if not shared.lock.acquire(timeout=shared.lock_wait):
                    raise Busy()
                if shared.exited:
                    shared.lock.release()
                    raise DeviceError("server is exiting")

            def __exit__(self_inner, *exc):
                shared.lock.release()
                return False

        return _Ctx()

    @staticmethod
    def _nargs(req: P.Request, lo: int, hi: int, usage: str) -> None:
        if not lo <= len(req.args) <= hi:
            raise P.ProtocolError(f"usage: {usage}")

    # -- commands -------------------------------------------------------------
    def _dispatch(self, req: P.Request) -> Outcome:
        handler = getattr(self, "_cmd_" + req.cmd, None) if req.cmd in P.BUILTIN_COMMANDS else None
        if handler is None:
            with self._locked():
                text = self.shared.device.cmd(req.addr, req.cmd, list(req.args))
            return self._reply(req.sn, "" if text is None else str(text))
        return handler(req)

    def _cmd_hello(self, req: P.Request) -> Outcome:
        self._nargs(req, 0, 1, "hello SERVER_NAME")
        if req.args and req.args[0] != self.shared.name:
            raise DeviceError(f"this is {self.shared.name}, not {req.args[0]}")
        with self._locked():
            desc = self.shared.device.description()
        log.info("%s: hello %s", self.peer, " ".join(req.args))
        return self._reply(req.sn, P.hello_text(self.shared.host, self.shared.pid, desc))

    def _cmd_goodbye(self, req: P.Request) -> Outcome:
        how = req.args[0] if req.args else "0"
        quit_ = how == "1" and self.shared.quit_on_goodbye
        log.info("%s: goodbye %s%s", self.peer, how, " (-Q: exiting)" if quit_ else "")
        return Outcome(close=True, shutdown=quit_)

    def _cmd_config(self, req: P.Request) -> Outcome:
        with self._locked():
            dev = self.shared.device
            dev.config(" ".join(req.args))
            dev.check_type()
            text = dev.config_reply().text()
        log.info("%s: config %s -> %s", self.peer, " ".join(req.args), text)
        return self._reply(req.sn, text)

    def _cmd_exit(self, req: P.Request) -> Outcome:
        log.info("%s: exit requested", self.peer)
        self.shared.device_exit()
        out = self._reply(req.sn)
        out.close = out.shutdown = True
        return out

    def _cmd_clear(self, req: P.Request) -> Outcome:
        self._nargs(req, 0, 0, "clear")
        with self._locked():
            self.shared.device.clear(req.addr)
        return self._reply(req.sn)

    def _cmd_run(self, req: P.Request) -> Outcome:
        self._nargs(req, 1, 2, "run PRESET MODE")
        try:
            preset = float(req.args[0])
            mode = int(req.args[1]) if len(req.args) > 1 else 4
        except ValueError:
            raise P.ProtocolError("usage: run PRESET MODE (a number and a whole number)") from None
        if not np.isfinite(preset) or preset < 0:
            raise P.ProtocolError(f"preset must be a number >= 0, not {req.args[0]}")
        with self._locked():
            self.shared.device.run(req.addr, mode, preset)
        return self._reply(req.sn)

    def _cmd_halt(self, req: P.Request) -> Outcome:
        self._nargs(req, 0, 1, "halt [1|0]")
        try:
            mode = int(req.args[0]) if req.args else 0
        except ValueError:
            raise P.ProtocolError("usage: halt [1|0]") from None
        with self._locked():
            self.shared.device.stop(req.addr, mode)
        return self._reply(req.sn)

    def _cmd_get_status(self, req: P.Request) -> Outcome:
        self._nargs(req, 0, 0, "get_status")
        with self._locked():
            status = self.shared.device.poll(req.addr)
        return self._reply(req.sn, str(int(status)))

    def _cmd_get(self, req: P.Request) -> Outcome:
        if not req.args:
            raise P.ProtocolError("usage: get [a=ADDR] PAR")
        if req.args[0] == "byte_order" and len(req.args) == 1:
            return self._reply(req.sn, "little" if self.order == "<" else "big")
        with self._locked():
            text = self.shared.device.pars(req.addr, 0, req.args[0], list(req.args[1:]))
        return self._reply(req.sn, "" if text is None else str(text))

    def _cmd_set(self, req: P.Request) -> Outcome:
        if len(req.args) < 2:
            raise P.ProtocolError("usage: set [a=ADDR] PAR VALUE")
        if req.args[0] == "byte_order":
            self._nargs(req, 2, 2, "set byte_order little|big")
            self.order = P.byte_order_code(req.args[1])
            return self._reply(req.sn, req.args[1].lower())
        with self._locked():
            text = self.shared.device.pars(req.addr, 1, req.args[0], list(req.args[1:]))
        return self._reply(req.sn, "" if text is None else str(text))

    def _cmd_read(self, req: P.Request) -> Outcome:
        dev = self.shared.device
        with self._locked():
            region = P.parse_region(req.args, tuple(dev.shape))
            block = DataBlock(region, dev.type_name)
            dev.send_data(req.addr, block)
            if block.data is None or np.size(block.data) != region.npts:
                raise DeviceError(
                    f"device gave {0 if block.data is None else np.size(block.data)} "
                    f"points for a region of {region.npts}"
                )
            # an MCA read reply names no type: the data travel in the native one
            type_name = block.type_name if dev.ndim == 2 else dev.type_name
            wire = P.to_wire(block.data, type_name, self.order)
        text = P.read_reply_text(region.npts, type_name, dev.ndim)
        log.debug("%s: read %s: %d bytes follow", self.peer, region.args(), wire.nbytes)
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "%s: data begin %s", self.peer, bytes(wire[:32]).hex(" "))
        return Outcome([P.format_reply(req.sn, text), wire])

    def _cmd_write(self, req: P.Request) -> Outcome:
        dev = self.shared.device
        if not dev.writable:
            raise DeviceError("this device does not accept data")
        with self._locked():
            region = P.parse_region(req.args, tuple(dev.shape))
            type_name = dev.type_name
        block = DataBlock(region, type_name)
        buf = np.empty(region.npts, dtype=P.dtype_for(type_name, self.order))
        self.pending = _PendingWrite(req.addr, block, buf)
        out = self._reply(req.sn, P.write_reply_text(region.npts))
        out.receive = memoryview(buf).cast("B")
        return out

    def _cmd_xfer_done(self, req: P.Request) -> Outcome:
        pend, self.pending = self.pending, None
        if pend is None or not pend.complete:
            return self._reply(req.sn)
        block = pend.block
        block.data = P.from_wire(pend.buffer, block.type_name, self.order).reshape(
            block.region.shape
        )
        with self._locked():
            self.shared.device.receive_data(pend.addr, block)
        log.debug("%s: write %s stored", self.peer, block.region.args())
        if log.isEnabledFor(TRACE):
            log.log(
                TRACE,
                "%s: data began %s",
                self.peer,
                bytes(memoryview(pend.buffer).cast("B")[:32]).hex(" "),
            )
        return self._reply(req.sn)

"""spec server mode: the socket layer, properties, events and the command thread.

One thread per client reads packets (``protocol.Decoder``), answers HELLO,
CHAN_READ and REGISTER at once from existing data, and puts commands on the
single command queue.  A writer thread per client drains that client's
bounded output queue, so a slow client never holds up the motors, the
command thread or the other clients; a client whose queue overflows is
disconnected with a log line.  Everything sent to a client uses the byte
order of its first packet and ``min(its version, 4)``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from common.server import ThreadedTCPServer

from . import protocol as P
from . import wire
from .interp import Assoc, DataArray, Interp, SpecError, format_value, is_numeric, to_num
from .motors import MOTOR_PARAMS, Instrument, InstrumentConfig
from .protocol import Cmd, Packet, Type
from .protocol import ErrorValue as WireError

log = logging.getLogger("specsrv")
dlog = logging.getLogger("specsrv.debug")

MAX_PENDING_PER_CLIENT = 256
#: commands in the queue from all clients together (also those of clients gone)
MAX_QUEUE = 4096
#: command text one client may have waiting in the queue (beyond its first command)
MAX_PENDING_BYTES_PER_CLIENT = 16 << 20
MAX_REGISTRATIONS_PER_CLIENT = 10000
MAX_OUT_PACKETS = 20000
MAX_OUT_BYTES = 256 << 20
SMALL = 1 << 16  # data sections up to this size are joined to their header

MOTOR_READ_ONLY_EVENTS = (
    "move_done",
    "high_lim_hit",
    "low_lim_hit",
    "emergency_stop",
    "motor_fault",
    "unusable",
)
MOTOR_VALUE_PROPS = (
    "position",
    "dial_position",
    "offset",
    "step_size",
    "sign",
    "high_limit",
    "low_limit",
    *MOTOR_READ_ONLY_EVENTS,
    *MOTOR_PARAMS,
)
MOTOR_SEND_ONLY = ("start_one", "limits", "search")
MOTOR_ALL = ("prestart_all", "start_all", "abort_all")


class PropError(Exception):
    """A property that does not exist or cannot be used this way."""


@dataclass
class Job:
    client: ClientHandler | None
    sn: int
    text: str
    reply: bool
    cancelled: bool = False


def _num(value) -> float | int:
    """Numbers for the wire: integral values without a decimal point."""
    return int(value) if float(value).is_integer() and abs(value) < 1e15 else float(value)


def wire_value(v):
    """Interpreter value -> value for protocol.encode_value."""
    if isinstance(v, DataArray):
        return v.share()  # sent without a copy; the interpreter copies on write
    if isinstance(v, Assoc):
        return {k: (format_value(x) if not isinstance(x, str) else x) for k, x in v.items()}
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float | int):
        return _num(v)
    return v


def parse_var_prop(rest: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME[k]`` or ``NAME[k1][k2]`` -> (name, key or None)."""
    if "[" not in rest:
        return rest, None
    name, _, tail = rest.partition("[")
    if not tail.endswith("]"):
        raise PropError(f"bad array element in property var/{rest}")
    keys = tail[:-1].split("][")
    return name, P.ASSOC_SEP.join(k.strip("\"'") for k in keys)


class SpecServer:
    """State shared by all clients: interpreter, hardware, registrations, queue."""

    def __init__(
        self,
        name: str,
        cfg: InstrumentConfig,
        *,
        mode: int = 1,
        simulate: bool = False,
        debug: int = 0,
        max_data: int = P.DEFAULT_MAX_DATA,
        update: float = 0.05,
    ) -> None:
        self.name = name
        self.mode = mode
        self.simulate = simulate
        self.debug = debug
        self.max_data = max_data
        self.port = 0
        self.hw = Instrument(cfg, self.emit, update=update, mode=mode)
        self.hw.on_limit_abort = self._limit_abort
        self.interp = Interp(self.hw, name=name)
        self.interp.globals["DEBUG"] = float(debug)
        self.interp.on_var = self._on_var
        self.interp.on_output = self._on_output
        self.reg_lock = threading.Lock()
        self.registry: dict[str, set[ClientHandler]] = collections.defaultdict(set)
        self.clients: set[ClientHandler] = set()
        self.queue: collections.deque[Job] = collections.deque()
        self.queue_cv = threading.Condition()
        self.current: Job | None = None
        self.busy = False
        self.last_error = "No error"
        self._stop = threading.Event()
        self._cmd_thread: threading.Thread | None = None
        self.tcp: ThreadedTCPServer | None = None

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        self.interp.globals["IS_SERVER"] = float(self.port)
        self.hw.start()
        self._cmd_thread = threading.Thread(target=self._command_loop, name="command", daemon=True)
        self._cmd_thread.start()

    def stop(self) -> None:
        self.emit("status/quit", 1)
        self._stop.set()
        self.interp.abort()
        with self.queue_cv:
            self.queue_cv.notify_all()
        if self._cmd_thread is not None:
            self._cmd_thread.join(2)
        self.hw.stop()
        for c in list(self.clients):
            c.flush_and_close(0.5)

    # -- events -------------------------------------------------------------------
    def emit(self, prop: str, value, flags: int = 0) -> None:
        """Send an SV_EVENT to every client registered for ``prop``."""
        targets = self.registry.get(prop)
        if not targets:
            return
        with self.reg_lock:
            targets = list(targets)
        cache: dict[tuple[str, int], bytes] = {}
        now = time.time()
        for c in targets:
            key = (c.order, c.vers)
            data = cache.get(key)
            if data is None:
                pkt = P.make_packet(
                    Cmd.EVENT, wire_value(value), name=prop, flags=flags, order=c.order
                )
                pkt.sec, pkt.usec = int(now), int((now % 1) * 1e6)
                data = cache[key] = c.encode(pkt)
            c.send_bytes(data, pkt_hint=(prop, value))

    def _on_var(self, name: str, key: str | None, deleted: bool) -> None:
        if name == "DEBUG":
            try:
                self.debug = int(to_num(self.interp.globals.get("DEBUG", 0)))
            except SpecError:
                self.debug = 0
        base = f"var/{name}"
        flags = P.SV_DELETED if deleted else 0
        with self.reg_lock:
            watched = [p for p in self.registry if p == base or p.startswith(base + "[")]
        if not watched:
            return
        # element registrations by the key they name (``var/x[1]``, ``var/x["1"]``)
        keyed = {p: parse_var_prop(p[4:])[1] for p in watched if p != base}
        with self.interp.lock:
            value = self.interp.globals.get(name)
            if key is None:
                whole = wire_value(value) if value is not None else ""
                elements = {
                    p: wire_value(value.get(k, ""))
                    for p, k in keyed.items()
                    if isinstance(value, Assoc)
                }
            else:
                elem = value.get(key, "") if isinstance(value, Assoc) else ""
                whole = {key: wire_value(elem)}
                elements = {p: wire_value(elem) for p, k in keyed.items() if k == key}
            if isinstance(whole, np.ndarray):
                return  # data arrays cannot be watched
            # still under the lock: see event_lock()
            if base in watched:
                self.emit(base, whole, flags)
            for p, v in elements.items():
                self.emit(p, v, flags)

    def event_lock(self, prop: str):
        """The lock held while events of ``prop`` are produced (or a no-op)."""
        if prop.startswith(("motor/", "scaler/")):
            return self.hw.lock
        if prop.startswith("var/"):
            return self.interp.lock
        return contextlib.nullcontext()

    def _on_output(self, file: str, text: str) -> None:
        self.emit(f"output/{file}", text)

    def _limit_abort(self) -> None:
        if self.busy:
            self.interp.abort("Motor hit a limit switch.")

    def set_ready(self, ready: bool) -> None:
        self.emit("status/ready", 1 if ready else 0)

    # -- properties ----------------------------------------------------------------
    def read_property(self, prop: str):
        """Current value of a property, or PropError."""
        parts = prop.split("/", 2)
        head = parts[0]
        if prop == "error":
            return self.last_error
        if head == "status" and len(parts) == 2:
            what = parts[1]
            if what == "ready":
                return 0 if self.busy or self.queue else 1
            if what == "shell":
                return 0
            if what == "simulate":
                return 1 if self.simulate else 0
            if what == "quit":
                return 0
        elif head == "var" and len(parts) >= 2:
            name, key = parse_var_prop(prop[4:])
            with self.interp.lock:
                v = self.interp.lookup(name)
                if v is None:
                    raise PropError(f"Variable {name} does not exist.")
                if key is not None:
                    if isinstance(v, DataArray):
                        from .interp import get_array_element

                        try:
                            idx = [int(to_num(k)) for k in key.split(P.ASSOC_SEP)]
                            return wire_value(get_array_element(v, idx))
                        except SpecError as exc:
                            raise PropError(str(exc)) from None
                    if not isinstance(v, Assoc) or key not in v:
                        raise PropError(f"Element {name}[{key}] does not exist.")
                    return wire_value(v[key])
                if isinstance(v, DataArray):
                    return wire_value(v)
                if isinstance(v, Assoc):
                    return wire_value(Assoc(v))
                return wire_value(v)
        elif head == "scaler" and len(parts) == 3:
            mne, what = parts[1], parts[2]
            if mne == ".all." and what == "count":
                return 1 if self.hw.counting else 0
            c = self.hw.cnt_by_mne.get(mne)
            if c is not None and what == "value":
                return _num(c.value)
        elif head == "motor" and len(parts) == 3:
            return self._read_motor(parts[1], parts[2])
        raise PropError(f"Unrecognizable or unreadable property {prop!r}.")

    def _read_motor(self, mne: str, what: str):
        m = self.hw.by_mne.get(mne)
        if m is None:
            raise PropError(f"No motor {mne!r} on this server.")
        with self.hw.lock:
            table = {
                "position": m.user,
                "dial_position": m.dial,
                "offset": m.offset,
                "step_size": m.steps,
                "sign": m.sign,
                "move_done": 1 if m.moving else 0,
                "high_lim_hit": m.high_hit,
                "low_lim_hit": m.low_hit,
                "emergency_stop": m.emergency_stop,
                "motor_fault": m.motor_fault,
                "high_limit": m.high,
                "low_limit": m.low,
                "unusable": 1 if m.disabled else 0,
            }
            if what in table:
                return _num(table[what])
            if what in MOTOR_PARAMS:
                return _num(m.params.get(what, 0.0))
        raise PropError(f"Motor property {what!r} cannot be read.")

    def registrable(self, prop: str) -> tuple[bool, bool]:
        """(valid, has an initial value) for REGISTER."""
        parts = prop.split("/", 2)
        head = parts[0]
        if prop == "error":
            return True, True
        if head == "output" and len(prop) > len("output/"):
            return True, False
        if head == "motor" and len(parts) == 3:
            if parts[1] not in self.hw.by_mne:
                return False, False
            if parts[2] == "sync_check":
                return True, False
            return parts[2] in MOTOR_VALUE_PROPS, True
        if head == "var" and len(parts) >= 2:
            try:
                name, _ = parse_var_prop(prop[4:])
            except PropError:
                return False, False
            v = self.interp.lookup(name)
            if isinstance(v, DataArray):
                return False, False
            return True, True
        try:
            self.read_property(prop)
            return True, True
        except PropError:
            return False, False

    def send_property(self, client: ClientHandler, pkt: Packet) -> None:
        """SV_CHAN_SEND; raise PropError (answered with SV_ERROR) when refused."""
        prop = pkt.name
        parts = prop.split("/", 2)
        head = parts[0]
        if head == "var" and len(parts) >= 2:
            self._send_var(prop[4:], pkt)
            return
        value = self._decode(pkt)
        text = value if isinstance(value, str) else format_value(value)
        if prop == "scaler/.all./count":
            if text.strip() and not is_numeric(text):
                raise PropError(f"count needs a number: {text[:40]!r}")
            if text.strip() and to_num(text) != 0:
                self.push(client, f"count_em {text.strip()}\n")
            else:
                self.interp.abort()
            return
        if head == "motor" and len(parts) == 3:
            self._send_motor(client, parts[1], parts[2], text.strip())
            return
        raise PropError(f"Property {prop!r} cannot be set.")

    def _decode(self, pkt: Packet):
        try:
            value = P.decode_value(pkt)
        except P.ProtocolError as exc:
            raise PropError(str(exc)) from None
        if isinstance(value, WireError):
            raise PropError("SV_ERROR data cannot be sent to the server")
        return value

    def _send_var(self, rest: str, pkt: Packet) -> None:
        name, key = parse_var_prop(rest)
        if (
            not name
            or not (name[0].isalpha() or name[0] == "_")
            or not name.replace("_", "a").isalnum()
        ):
            raise PropError(f"Bad variable name {name!r}.")
        value = self._decode(pkt)
        try:
            if key is not None:
                if isinstance(value, dict | np.ndarray):
                    raise PropError("An array element takes a single value.")
                self.interp.set_element(name, key, _as_number(value), must_exist=True)
            elif isinstance(value, dict):
                self.interp.set_global(name, {k: _as_number(v) for k, v in value.items()})
            elif isinstance(value, np.ndarray):
                if value.dtype.kind == "U":
                    width = max([len(s.encode()) for s in value] + [1])
                    value = value.astype(f"S{width}")
                self.interp.set_global(name, DataArray(value))
            else:
                self.interp.set_global(name, _as_number(value))
        except SpecError as exc:
            raise PropError(str(exc)) from None

    def _send_motor(self, client: ClientHandler, mne: str, what: str, text: str) -> None:
        if mne == "..":
            if what == "prestart_all":
                client.prestart = "{getangles;"
            elif what == "start_all":
                if client.prestart is not None:
                    buf, client.prestart = client.prestart, None
                    self.push(client, buf + "move_em;}\n")
            elif what == "abort_all":
                self.interp.abort()
            else:
                raise PropError(f"Property motor/../{what} cannot be set.")
            return
        m = self.hw.by_mne.get(mne)
        if m is None:
            raise PropError(f"No motor {mne!r} on this server.")
        if what == "start_one":
            _number(text)
            if client.prestart is not None:
                if len(client.prestart) > 65536:
                    raise PropError("too many start_one packets after prestart_all")
                client.prestart += f"A[{mne}]={text};"
            else:
                self.push(client, f"{{get_angles;A[{mne}]={text};move_em;}}\n")
        elif what == "position":
            self.push(client, f"set {mne} {_number(text)}\n")
        elif what == "dial_position":
            if m.quantise(to_num(_number(text))) != m.dial:
                self.push(client, f"set_dial {mne} {text}\n")
        elif what == "offset":
            off = float(_number(text))
            if off != m.offset:
                user = P.format_number(m.sign * m.dial + off)
                self.push(client, f"set {mne} {user}\n")
        elif what == "high_limit":
            self.push(client, f"set_lm  {mne} {_number(text)} user({mne},get_lim({mne},-1))\n")
        elif what == "low_limit":
            self.push(client, f"set_lm {mne} {_number(text)} user({mne},get_lim({mne},+1))\n")
        elif what == "limits":
            words = text.replace(",", " ").split()
            if len(words) != 2:
                raise PropError("limits needs two values: low high")
            self.push(client, f"set_lm {mne} {_number(words[0])} {_number(words[1])}\n")
        elif what == "search":
            words = text.replace(",", " ").split()
            if len(words) not in (1, 2):
                raise PropError("search needs: how [home_pos]")
            how = words[0].strip("\"'")
            if how not in ("home", "home+", "home-", "lim+", "lim-"):
                raise PropError(f"bad search type {how!r}")
            extra = f", {_number(words[1])}" if len(words) == 2 else ""
            self.push(client, f'chg_dial({mne}, "{how}"{extra})\n')
        elif what == "sync_check":
            with self.hw.changed:
                self.hw.sync_answer = 1 if to_num(text) else 0
                self.hw.changed.notify_all()
        elif what in MOTOR_PARAMS:
            self.push(client, f'motor_par({mne}, "{what}", {_number(text)})\n')
        else:
            raise PropError(f"Motor property {what!r} cannot be set.")

    # -- command queue ------------------------------------------------------------
    def push(self, client: ClientHandler | None, text: str, sn: int = 0, reply: bool = False):
        with self.queue_cv:
            if len(self.queue) >= MAX_QUEUE:
                raise PropError("The command queue is full.")
            if client is not None:
                mine = [j for j in self.queue if j.client is client]
                waiting = sum(len(j.text) for j in mine)
                if len(mine) >= MAX_PENDING_PER_CLIENT or (
                    mine and waiting + len(text) > MAX_PENDING_BYTES_PER_CLIENT
                ):
                    raise PropError("Too many commands waiting in the queue for this client.")
            self.queue.append(Job(client, sn, text, reply))
            self.queue_cv.notify()

    def abort_from(self, client: ClientHandler) -> None:
        """SV_ABORT: ^C in the command thread, and drop the client's pending commands."""
        with self.queue_cv:
            kept = [j for j in self.queue if j.client is not client]
            dropped = len(self.queue) - len(kept)
            self.queue.clear()
            self.queue.extend(kept)
            cur = self.current
            if cur is not None and cur.client is client:
                cur.cancelled = True
        if dropped:
            log.info("%s: abort removed %d pending command(s)", client.peer, dropped)
        self.interp.abort()

    def forget(self, client: ClientHandler) -> None:
        """A client has gone: its queued commands still run (a remote_cmd or
        start_one followed by SV_CLOSE is not lost), without replies."""
        with self.queue_cv:
            for j in self.queue:
                if j.client is client:
                    j.client = None
            if self.current is not None and self.current.client is client:
                self.current.cancelled = True
        with self.reg_lock:
            for prop in [p for p, s in self.registry.items() if client in s]:
                self.registry[prop].discard(client)
                if not self.registry[prop]:
                    del self.registry[prop]
            self.clients.discard(client)

    def next_job(self, timeout: float = 0.5) -> Job | None:
        """Take the next command off the queue (None after ``timeout`` or stop).

        A ^C that came while nothing ran is forgotten here, under the queue
        lock: an SV_ABORT (or abort_all) that arrives from now on, even before
        the interpreter starts on the job, interrupts this job.
        """
        with self.queue_cv:
            if not self.queue and not self._stop.is_set():
                self.queue_cv.wait(timeout)
            if self._stop.is_set() or not self.queue:
                return None
            job = self.queue.popleft()
            self.current = job
            self.busy = True
            self.interp.clear_abort()
            return job

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            job = self.next_job()
            if job is None:
                continue
            self.set_ready(False)
            try:
                self._run_job(job)
            finally:
                with self.queue_cv:
                    self.current = None
                    self.busy = False
                    idle = not self.queue
                if idle:
                    self.set_ready(True)

    def _run_job(self, job: Job) -> None:
        log.debug("command: %r", job.text[:200])
        try:
            value, output = self.interp.run(job.text, clear_abort=False)
            result = wire_value(value) if value is not None else output
        except SpecError as exc:
            msg = str(exc)
            if exc.err != 3:
                self.interp.write(f"{msg}\n")
            self.last_error = msg
            result = WireError(msg, exc.err)
        except Exception as exc:  # noqa: BLE001 - an interpreter bug must not kill the thread
            log.exception("command %r failed", job.text[:200])
            result = WireError(f"internal error: {exc}", 1)
        if job.reply and not job.cancelled and job.client is not None:
            job.client.reply(job.sn, result, name="")


def _as_number(v):
    """Client text that is a plain number is stored as a number."""
    if isinstance(v, str) and is_numeric(v):
        f = float(v)
        if P.format_number(_num(f) if f.is_integer() else f) == v.strip():
            return f
    return v


def _number(text: str) -> str:
    """Check that a motor value is a number (no command injection)."""
    if not is_numeric(text):
        raise PropError(f"not a number: {text[:40]!r}")
    return text.strip()


# -- per-client I/O -----------------------------------------------------------------


class ClientHandler:
    """One connected client (created by the socketserver handler)."""

    def __init__(self, server: SpecServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.order = P.LITTLE
        self.vers = P.SV_VERSION
        self.prestart: str | None = None
        self.registrations = 0
        self.out: collections.deque[bytes] = collections.deque()
        self.out_bytes = 0
        self.writing = False
        self.out_cv = threading.Condition()
        self.closed = False
        self.pktlog = P.PacketLog("s")
        self.writer = threading.Thread(target=self._write_loop, name=f"writer-{peer}", daemon=True)

    # -- output --------------------------------------------------------------------
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
        """Queue one packet's bytes (``more``: its large data section, not copied)."""
        dbg = self.server.debug
        if dbg:
            self._debug_write(dbg, data, pkt, pkt_hint, more)
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

    def reply(self, sn: int, value, name: str = "") -> None:
        # data arrays in values are shared copy-on-write: they go out as views
        pkt = P.make_packet(Cmd.REPLY, value, sn=sn, name=name, order=self.order, copy=False)
        self.send_packet(pkt)

    def error_reply(self, sn: int, message: str, name: str = "", err: int = 1) -> None:
        self.reply(sn, WireError(message, err), name=name)

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
        with self.out_cv:
            self._close_locked()

    # -- input ---------------------------------------------------------------------
    def run(self) -> None:
        srv = self.server
        with srv.reg_lock:
            srv.clients.add(self)
        self.writer.start()
        decoder = P.Decoder(max_data=srv.max_data)
        first = True
        try:
            while not self.closed:
                try:
                    items = wire.read_items(self.sock, decoder)
                except OSError:
                    break
                if items is None:
                    if decoder.pending() or decoder.data_remaining():
                        log.info("%s: connection closed inside a packet", self.peer)
                    break
                for item in items:
                    if first and decoder.order is not None:
                        self.order = decoder.order
                        self.vers = P.reply_version(decoder.version)
                        first = False
                    if isinstance(item, P.ProtocolError):
                        if not self._protocol_error(item):
                            return
                        continue
                    if not self.handle_packet(item):
                        return
        finally:
            srv.forget(self)
            with self.out_cv:
                self._close_locked()
            self.writer.join(1)

    def _protocol_error(self, exc: P.ProtocolError) -> bool:
        pkt = exc.packet
        if exc.fatal or pkt is None:
            log.warning("%s: protocol error, closing the connection: %s", self.peer, exc)
            return False
        log.warning("%s: bad packet (%s, sn %d): %s", self.peer, pkt.cmd_name, pkt.sn, exc)
        if P.error_reply_due(pkt):
            self.error_reply(pkt.sn, str(exc), name=pkt.name, err=2)
        return True

    def _debug_read(self, pkt: Packet) -> None:
        dbg = self.server.debug
        if dbg & P.DEBUG_SOCKET:
            for line in P.socket_lines("get", self.peer, pkt.raw_header, dbg, len(pkt.raw_header)):
                dlog.info("%s", line)
            if pkt.data:
                for line in P.socket_lines("get", self.peer, pkt.data, dbg, len(pkt.data)):
                    dlog.info("%s", line)
        if dbg & P.DEBUG_PACKETS:
            dlog.info("%s", self.pktlog.line("R", pkt, time.monotonic()))

    def handle_packet(self, pkt: Packet) -> bool:
        """Act on one packet; False closes the connection."""
        srv = self.server
        if srv.debug:
            self._debug_read(pkt)
        cmd = pkt.cmd
        if cmd == Cmd.HELLO:
            self.send_packet(
                P.make_packet(Cmd.HELLO_REPLY, srv.name, sn=pkt.sn, name=srv.name, order=self.order)
            )
        elif cmd == Cmd.CHAN_READ:
            try:
                value = srv.read_property(pkt.name)
            except PropError as exc:
                self.error_reply(pkt.sn, str(exc), name=pkt.name)
            else:
                self.reply(pkt.sn, value, name=pkt.name)
        elif cmd == Cmd.CHAN_SEND:
            try:
                srv.send_property(self, pkt)
            except PropError as exc:
                log.info("%s: CHAN_SEND %s refused: %s", self.peer, pkt.name, exc)
                self.error_reply(pkt.sn, str(exc), name=pkt.name)
        elif cmd == Cmd.REGISTER:
            self._register(pkt.name)
        elif cmd == Cmd.UNREGISTER:
            with srv.reg_lock:
                s = srv.registry.get(pkt.name)
                if s is not None and self in s:
                    self.registrations -= 1
                    s.discard(self)
                    if not s:
                        del srv.registry[pkt.name]
        elif cmd in (Cmd.CMD, Cmd.CMD_WITH_RETURN, Cmd.FUNC, Cmd.FUNC_WITH_RETURN):
            text = self._command_text(pkt)
            reply = cmd in (Cmd.CMD_WITH_RETURN, Cmd.FUNC_WITH_RETURN)
            if text is None:
                if reply:
                    self.error_reply(pkt.sn, "command data must be a string", err=2)
                return True
            try:
                srv.push(self, text, sn=pkt.sn, reply=reply)
            except PropError as exc:
                if reply:
                    self.error_reply(pkt.sn, str(exc))
        elif cmd == Cmd.ABORT:
            srv.abort_from(self)
        elif cmd == Cmd.CLOSE:
            return False
        else:
            # RETURN, and server-to-client codes sent by a confused client
            log.info("%s: ignoring %s from a client", self.peer, pkt.cmd_name)
            if P.error_reply_due(pkt):
                self.error_reply(pkt.sn, f"{pkt.cmd_name} is not a client request", err=2)
        return True

    def _command_text(self, pkt: Packet) -> str | None:
        if pkt.type not in (Type.STRING, Type.DOUBLE) and pkt.data:
            return None
        if pkt.cmd in (Cmd.FUNC, Cmd.FUNC_WITH_RETURN):
            interp = self.server.interp

            def is_function(name: str) -> bool:
                return name in interp.functions or interp.macros.get(name, (None,))[0] is not None

            return P.func_command(pkt.data, is_function)
        return pkt.text()

    def _register(self, prop: str) -> None:
        srv = self.server
        valid, has_value = srv.registrable(prop)
        if not valid:
            msg = f"Unrecognizable or unavailable property {prop!r}."
            srv.last_error = msg
            log.info("%s: REGISTER %s refused", self.peer, prop)
            if self in srv.registry.get("error", ()):
                ev = P.make_packet(Cmd.EVENT, msg, name="error", order=self.order)
                self.send_packet(ev)
            return
        with srv.reg_lock:
            if self.registrations >= MAX_REGISTRATIONS_PER_CLIENT and self not in srv.registry.get(
                prop, ()
            ):
                log.warning("%s: more than %d registrations refused", self.peer, self.registrations)
                return
            if self not in srv.registry[prop]:
                self.registrations += 1
            srv.registry[prop].add(self)
        if not has_value:
            return
        if prop == "error":
            value = "No error"
            self.send_packet(P.make_packet(Cmd.EVENT, value, name=prop, order=self.order))
            return
        # Read and queue the initial event under the lock its events are sent
        # under, so an event of a change that happens meanwhile (a move that
        # starts) cannot come before an initial event with the older value.
        with srv.event_lock(prop):
            try:
                value = srv.read_property(prop)
            except PropError as exc:
                # var/NAME that does not exist yet: registered, events start
                # when it is created; tell an error-watcher why nothing came.
                if self in srv.registry.get("error", ()):
                    self.send_packet(
                        P.make_packet(Cmd.EVENT, str(exc), name="error", order=self.order)
                    )
                return
            self.send_packet(P.make_packet(Cmd.EVENT, value, name=prop, order=self.order))


class _Handler:
    """socketserver glue: a ClientHandler per accepted connection."""

    def __init__(self, request, client_address, server) -> None:
        peer = f"{client_address[0]}:{client_address[1]}"
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        log.debug("connection from %s", peer)
        try:
            ClientHandler(server.spec, request, peer).run()
        finally:
            log.debug("%s disconnected", peer)


def bind_first_free(host: str, ports: list[int], spec: SpecServer, allow=None) -> ThreadedTCPServer:
    """Listen on the first port of ``ports`` that is free."""
    last: OSError | None = None
    for port in ports:
        try:
            tcp = ThreadedTCPServer((host, port), _Handler, name="specsrv", allow=allow)
        except OSError as exc:
            last = exc
            continue
        tcp.spec = spec
        spec.tcp = tcp
        spec.port = tcp.server_address[1]
        return tcp
    if last is None:
        raise OSError("no port to try")
    if len(ports) > 1:
        raise OSError(last.errno, f"no free port in {ports[0]}-{ports[-1]}")
    raise last

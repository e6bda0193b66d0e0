"""The engine of spec server mode: everything but the sockets.

:class:`SpecEngine` holds what all clients share: the interpreter, the
instrument model, the registrations and the single command queue with the
thread that runs it.  It answers each well-formed packet (:meth:`handle`),
using the property model of :mod:`specsrv.properties`, and sends through
the :class:`Peer` interface that the socket layer (:mod:`specsrv.server`)
implements per connection.  No socket is touched here.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.ratelimit import LogLimiter

from . import protocol as P
from .gateway import Gateway
from .interp import (
    Assoc,
    DataArray,
    Interp,
    Limits,
    SpecError,
    format_value,
    get_array_element,
    is_numeric,
    to_num,
)
from .motors import Instrument, InstrumentConfig
from .properties import (
    STATUS_PROPS,
    PropError,
    motor_registrable,
    motor_send_text,
    number_text,
    parse_var_prop,
    read_motor,
    read_scaler,
    wire_number,
)
from .protocol import Cmd, ErrorValue, Packet, Type
from .record import PacketRecorder
from .state import StateFile

log = logging.getLogger("specsrv")
#: repeated refusals of one peer's requests are logged a few times, then counted
limited = LogLimiter(log)

MAX_PENDING_PER_CLIENT = 256
#: commands in the queue from all clients together (also those of clients gone)
MAX_QUEUE = 4096
#: command text one client may have waiting in the queue (beyond its first command)
MAX_PENDING_BYTES_PER_CLIENT = 16 << 20
MAX_REGISTRATIONS_PER_CLIENT = 10000
#: characters of a command echoed on output/tty
MAX_ECHO = 4096
#: bytes of one -C start-up command file
MAX_STARTUP_FILE = 4 << 20


class Peer(Protocol):
    """What the engine needs of a connected client (see server.ClientConnection)."""

    peer: str
    order: str
    vers: int
    prestart: str | None
    registrations: int

    def encode(self, pkt: Packet) -> bytes: ...
    def send_bytes(self, data: bytes, pkt: Packet | None = None, pkt_hint=None, more=None): ...
    def send_packet(self, pkt: Packet) -> None: ...
    def reply(self, sn: int, value, name: str = "") -> None: ...
    def error_reply(self, sn: int, message: str, name: str = "", err: int = 1) -> None: ...
    def flush_and_close(self, timeout: float) -> None: ...


@dataclass
class Job:
    client: Peer | None
    sn: int
    text: str
    reply: bool
    cancelled: bool = False
    #: a command packet from a client: echoed on output/tty with the prompt
    echo: bool = False


def _host(client: Peer) -> str:
    return client.peer.rpartition(":")[0]


def wire_value(v):
    """Interpreter value -> value for protocol.encode_value."""
    if isinstance(v, DataArray):
        return v.share()  # sent without a copy; the interpreter copies on write
    if isinstance(v, Assoc):
        return {k: (format_value(x) if not isinstance(x, str) else x) for k, x in v.items()}
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float | int):
        return wire_number(v)
    return v


class SpecEngine:
    """State shared by all clients: interpreter, instrument, registrations, queue."""

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
        deleted_flag: int = P.SV_DELETED,
        limits: Limits | None = None,
        state: StateFile | None = None,
        fresh: bool = False,
        data_dir: str | None = None,
        recorder: PacketRecorder | None = None,
    ) -> None:
        self.name = name
        self.deleted_flag = deleted_flag
        self.mode = mode
        self.simulate = simulate
        self.debug = debug
        self.max_data = max_data
        self.port = 0
        self.hw = Instrument(cfg, self.emit, update=update, mode=mode)
        self.hw.on_limit_abort = self._limit_abort
        self.recorder = recorder
        self.gateway = (
            Gateway(self.hw, recorder)
            if any(ch.cfg.remote for ch in [*self.hw.motors, *self.hw.counters])
            else None
        )
        self.state = state
        if state is not None and not fresh:
            state.load(self.hw)  # before the interpreter copies positions into A[]
        self.interp = Interp(self.hw, name=name, limits=limits, data_dir=data_dir)
        self.interp.globals["DEBUG"] = float(debug)
        self.interp.on_var = self._on_var
        self.interp.on_output = self._on_output
        self.reg_lock = threading.Lock()
        self.registry: dict[str, set[Peer]] = collections.defaultdict(set)
        self.clients: set[Peer] = set()
        self.queue: collections.deque[Job] = collections.deque()
        self.queue_cv = threading.Condition()
        self.current: Job | None = None
        self.busy = False
        self.last_error = "No error"
        #: number of the next command at the (virtual) interactive prompt
        self.cmdno = 1
        self._stop = threading.Event()
        self._cmd_thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        self.interp.globals["IS_SERVER"] = float(self.port)
        if self.gateway is not None:
            self.gateway.start()
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
        if self.gateway is not None:
            self.gateway.stop()
        if self.state is not None:
            self.state.save(self.hw)
        if self.recorder is not None:
            self.recorder.close()
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
        flags = self.deleted_flag if deleted else 0
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
        if head == "status" and len(parts) == 2 and parts[1] in STATUS_PROPS:
            return STATUS_PROPS[parts[1]](self)
        if head == "var" and len(parts) >= 2:
            return self._read_var(prop[4:])
        if head == "scaler" and len(parts) == 3:
            return read_scaler(self.hw, parts[1], parts[2])
        if head == "motor" and len(parts) == 3:
            m = self.hw.by_mne.get(parts[1])
            if m is None:
                raise PropError(f"No motor {parts[1]!r} on this server.")
            with self.hw.lock:
                return read_motor(m, parts[2])
        raise PropError(f"Unrecognizable or unreadable property {prop!r}.")

    def _read_var(self, rest: str):
        name, key = parse_var_prop(rest)
        with self.interp.lock:
            v = self.interp.lookup(name)
            if v is None:
                raise PropError(f"Variable {name} does not exist.")
            if key is not None:
                if isinstance(v, DataArray):
                    try:
                        idx = [int(to_num(k)) for k in key.split(P.ASSOC_SEP)]
                        return wire_value(get_array_element(v, idx))
                    except SpecError as exc:
                        raise PropError(str(exc)) from None
                if not isinstance(v, Assoc) or key not in v:
                    raise PropError(f"Element {name}[{key}] does not exist.")
                return wire_value(v[key])
            if isinstance(v, Assoc):
                return wire_value(Assoc(v))
            return wire_value(v)

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
            return motor_registrable(parts[2])
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

    def send_property(self, client: Peer, pkt: Packet) -> None:
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
        value = P.decode_value(pkt)
        if isinstance(value, P.BadValue):
            raise PropError(value.reason)
        if isinstance(value, ErrorValue):
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

    def _send_motor(self, client: Peer, mne: str, what: str, text: str) -> None:
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
            number_text(text)
            if client.prestart is not None:
                if len(client.prestart) > 65536:
                    raise PropError("too many start_one packets after prestart_all")
                client.prestart += f"A[{mne}]={text};"
            else:
                self.push(client, f"{{get_angles;A[{mne}]={text};move_em;}}\n")
        elif what == "sync_check":
            with self.hw.changed:
                self.hw.sync_answer = 1 if to_num(text) else 0
                self.hw.changed.notify_all()
        else:
            cmd = motor_send_text(m, what, text)
            if cmd is not None:
                self.push(client, cmd)

    # -- requests -------------------------------------------------------------------
    def handle(self, client: Peer, pkt: Packet) -> bool:
        """Act on one well-formed packet from ``client``; False closes the connection."""
        cmd = pkt.cmd
        if cmd == Cmd.HELLO:
            client.send_packet(
                P.make_packet(
                    Cmd.HELLO_REPLY, self.name, sn=pkt.sn, name=self.name, order=client.order
                )
            )
        elif cmd == Cmd.CHAN_READ:
            try:
                value = self.read_property(pkt.name)
            except PropError as exc:
                client.error_reply(pkt.sn, str(exc), name=pkt.name)
            else:
                client.reply(pkt.sn, value, name=pkt.name)
        elif cmd == Cmd.CHAN_SEND:
            try:
                self.send_property(client, pkt)
            except PropError as exc:
                limited.log(
                    f"CHAN_SEND refused from {_host(client)}",
                    logging.INFO,
                    "%s: CHAN_SEND %s refused: %s",
                    client.peer,
                    pkt.name,
                    exc,
                )
                client.error_reply(pkt.sn, str(exc), name=pkt.name)
        elif cmd == Cmd.REGISTER:
            self.register(client, pkt.name)
        elif cmd == Cmd.UNREGISTER:
            self.unregister(client, pkt.name)
        elif cmd in (Cmd.CMD, Cmd.CMD_WITH_RETURN, Cmd.FUNC, Cmd.FUNC_WITH_RETURN):
            text = self.command_text(pkt)
            reply = cmd in (Cmd.CMD_WITH_RETURN, Cmd.FUNC_WITH_RETURN)
            if text is None:
                if reply:
                    client.error_reply(pkt.sn, "command data must be text, not an array", err=2)
                return True
            try:
                self.push(client, text, sn=pkt.sn, reply=reply, echo=True)
            except PropError as exc:
                if reply:
                    client.error_reply(pkt.sn, str(exc))
        elif cmd == Cmd.ABORT:
            self.abort_from(client)
        elif cmd == Cmd.CLOSE:
            return False
        else:
            # RETURN, and server-to-client codes sent by a confused client
            limited.log(
                f"odd request from {_host(client)}",
                logging.INFO,
                "%s: ignoring %s from a client",
                client.peer,
                pkt.cmd_name,
            )
            if P.error_reply_due(pkt):
                client.error_reply(pkt.sn, f"{pkt.cmd_name} is not a client request", err=2)
        return True

    def command_text(self, pkt: Packet) -> str | None:
        """The command text of a CMD/FUNC packet, or None when it carries none."""
        if pkt.type in P.ARRAY_DTYPES or pkt.type == Type.ARR_STRING:
            return None  # any other type (0 too, as some clients send) carries text
        if pkt.cmd in (Cmd.FUNC, Cmd.FUNC_WITH_RETURN):
            interp = self.interp

            def is_function(name: str) -> bool:
                return name in interp.functions or interp.macros.get(name, (None,))[0] is not None

            return P.func_command(pkt.data, is_function)
        return pkt.text()

    def unregister(self, client: Peer, prop: str) -> None:
        with self.reg_lock:
            s = self.registry.get(prop)
            if s is not None and client in s:
                client.registrations -= 1
                s.discard(client)
                if not s:
                    del self.registry[prop]

    def register(self, client: Peer, prop: str) -> None:
        valid, has_value = self.registrable(prop)
        if not valid:
            msg = f"Unrecognizable or unavailable property {prop!r}."
            self.last_error = msg
            limited.log(
                f"REGISTER refused from {_host(client)}",
                logging.INFO,
                "%s: REGISTER %s refused",
                client.peer,
                prop,
            )
            if client in self.registry.get("error", ()):
                client.send_packet(P.make_packet(Cmd.EVENT, msg, name="error", order=client.order))
            return
        with self.reg_lock:
            if client.registrations >= MAX_REGISTRATIONS_PER_CLIENT and client not in (
                self.registry.get(prop, ())
            ):
                limited.log(
                    f"registrations refused from {_host(client)}",
                    logging.WARNING,
                    "%s: more than %d registrations refused",
                    client.peer,
                    client.registrations,
                )
                return
            if client not in self.registry[prop]:
                client.registrations += 1
            self.registry[prop].add(client)
        if not has_value:
            return
        if prop == "error":
            # Real spec sends no initial event when there is no error (the
            # seed's text says "No error" is sent: see specsrv(1)).
            return
        # Read and queue the initial event under the lock its events are sent
        # under, so an event of a change that happens meanwhile (a move that
        # starts) cannot come before an initial event with the older value.
        with self.event_lock(prop):
            try:
                value = self.read_property(prop)
            except PropError as exc:
                # var/NAME that does not exist yet: registered, events start
                # when it is created; tell an error-watcher why nothing came.
                if client in self.registry.get("error", ()):
                    client.send_packet(
                        P.make_packet(Cmd.EVENT, str(exc), name="error", order=client.order)
                    )
                return
            client.send_packet(P.make_packet(Cmd.EVENT, value, name=prop, order=client.order))

    # -- command queue ------------------------------------------------------------
    def push(
        self,
        client: Peer | None,
        text: str,
        sn: int = 0,
        reply: bool = False,
        echo: bool = False,
    ):
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
            self.queue.append(Job(client, sn, text, reply, echo=echo))
            self.queue_cv.notify()

    def abort_from(self, client: Peer) -> None:
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

    def forget(self, client: Peer) -> None:
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

    def run_startup_file(self, path: str) -> bool:
        """Run a ``-C`` command file before clients are served; False on error."""
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read(MAX_STARTUP_FILE + 1)
        except OSError as exc:
            log.error("start-up file %s cannot be read: %s", path, exc.strerror)
            return False
        if len(text) > MAX_STARTUP_FILE:
            log.error("start-up file %s is larger than %d bytes", path, MAX_STARTUP_FILE)
            return False
        try:
            self.interp.run(text)
        except SpecError as exc:
            log.error("start-up file %s: %s", path, exc)
            return False
        log.info("start-up file %s read", path)
        if self.state is not None:
            self.state.save(self.hw)
        return True

    def prompt(self) -> str:
        """spec's main prompt, ``<n>.<NAME>> ``."""
        return f"{self.cmdno}.{self.name.upper()}> "

    def _run_job(self, job: Job) -> None:
        log.debug("command: %r", job.text[:200])
        if job.echo:
            # the console transcript: the prompt went out when the previous
            # command ended; now the command as if typed, then its output
            self.emit("output/tty", job.text.rstrip("\n")[:MAX_ECHO] + "\n")
        try:
            value, output = self.interp.run(job.text, clear_abort=False)
            result = wire_value(value) if value is not None else output
        except SpecError as exc:
            msg = str(exc)
            if exc.err != 3:
                self.interp.write(f"{msg}\n")
            self.last_error = msg
            result = ErrorValue(msg, exc.err)
        except Exception as exc:  # noqa: BLE001 - an interpreter bug must not kill the thread
            log.exception("command %r failed", job.text[:200])
            result = ErrorValue(f"internal error: {exc}", 1)
        if job.reply and not job.cancelled and job.client is not None:
            job.client.reply(job.sn, result, name="")
        if self.state is not None:
            self.state.save(self.hw)
        if job.echo:
            # the next prompt says the command has finished (after its reply)
            self.cmdno += 1
            self.emit("output/tty", "\n" + self.prompt())


def _as_number(v):
    """Client text that is a plain number is stored as a number."""
    if isinstance(v, str) and is_numeric(v):
        f = float(v)
        if P.format_number(wire_number(f) if f.is_integer() else f) == v.strip():
            return f
    return v

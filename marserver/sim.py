"""marsim: a mar345 / mardtb hardware simulator on 127.0.0.1.

It serves the four hardware ports (base .. base+3: COMMAND, STATUS, DATA,
MESSAGE) and behaves as the controller does where marserver can see it:

* one client per port: a new connection closes the previous one;
* STATUS records at ``--rate`` per second with a strictly rising counter
  (kept across reconnects), motor positions that move towards the targets
  set by MOVE, task words that go started/active -> done, the shutter bit;
  marsim's send time (CLOCK_MONOTONIC ns) in two unused status words;
* MESSAGE records: ``SETPARAM`` answers to SET READ, task start and end;
* DATA blocks with a rising block number after SCAN (mar345), ion-chamber
  samples on the dtb; ``--blast`` sends DATA as fast as a client reads;
* big-endian on the wire; ``-s``/``--swap`` sends and reads swapped records.
"""

from __future__ import annotations

import argparse
import copy
import logging
import socket
import socketserver
import struct
import sys
import threading
import time

from common import cli, options, runtime
from common.ratelimit import LogLimiter
from common.server import ThreadedTCPServer

from . import protocol as P
from .cli import RUNTIME_FLAGS, add_hardware_args
from .relay import set_send_timeout

log = logging.getLogger("marsim")

SEND_TIMEOUT = 2.0
MOTOR_SPEED = 4000  # steps per second
TASK_TIME = {  # simulated duration of tasks, seconds
    P.Cmd.CHANGE: 0.5,
    P.Cmd.ERASE: 0.5,
    P.Cmd.SHUTTER: 0.05,
    P.Cmd.LOCK: 0.1,
    P.Cmd.XFER: 0.1,
    P.Cmd.ION_CHAMBER: 0.05,
}
# a smooth spiral-ish pixel pattern; each block shows it rotated
_PATTERN = struct.pack(">8192H", *(((i * 7) ^ (i >> 5)) & 0x3FFF for i in range(8192)))
PARAMS = {80: 0, 95: 44, 97: 3020, 278: 240, 279: int.from_bytes(b"SV21", "big")}


class _PortHandler(socketserver.BaseRequestHandler):
    """The newest connection owns the port; the previous one is closed."""

    server: SimPort

    def handle(self) -> None:
        sim = self.server.sim
        port = self.server.hw_port
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_send_timeout(self.request, SEND_TIMEOUT)
        sim.attach(port, self.request, peer)
        try:
            if port is P.Port.COMM:
                sim.read_commands(self.request, peer)
            else:
                while self.request.recv(4096):
                    pass
        except OSError:
            pass
        finally:
            sim.detach(port, self.request, peer)


class SimPort(ThreadedTCPServer):
    def __init__(self, address, port: P.Port, sim: MarSim) -> None:
        self.hw_port = port
        self.sim = sim
        super().__init__(address, _PortHandler, name=f"sim {port.label} {address[1]}")


class MarSim(runtime.Service):
    name = "marsim"

    def __init__(
        self,
        hw: P.RecordLayout,
        host: str = "127.0.0.1",
        base: int | None = None,
        *,
        swap: bool = False,
        rate: float = 10.0,
        scan_blocks: int = 32,
        scan_rate: float = 500.0,
        blast: bool = False,
        options: options.LiveOptions | None = None,
    ) -> None:
        self.hw = hw
        self.host = host
        self.base = hw.base if base is None else base
        self.swap = swap
        self.rate = rate
        self.scan_blocks = scan_blocks
        self.scan_rate = scan_rate
        self.blast = blast
        self.servers: list[SimPort] = []
        self._clients: dict[P.Port, tuple[socket.socket, str] | None] = dict.fromkeys(P.ALL_PORTS)
        self._send_locks = {p: threading.Lock() for p in P.ALL_PORTS}
        self._lock = threading.Lock()  # simulated hardware state
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counter = 0
        self.status = P.new_status(hw)
        self.targets = [0] * 7
        self.actual = [0] * 7
        self.tasks: dict[int, float] = {}  # command code -> end time
        self.scanning = 0  # blocks left to send
        self.block = 0
        self.params = dict(PARAMS)
        self.connections = 0
        self.commands = 0
        self.limiter = LogLimiter(log)
        self.options = options
        if options is not None:
            options.live.update(
                rate=lambda v: setattr(self, "rate", float(v)),
                scan_blocks=lambda v: setattr(self, "scan_blocks", int(v)),
                scan_rate=lambda v: setattr(self, "scan_rate", float(v)),
            )
        if hw is P.MAR345:
            self.status.set(P.W_HW_STATUS1, P.HW1_SHUTTER_CLOSED)
            self.status.set(P.W_SCANMODE, 1)

    # -- runtime.Service ---------------------------------------------------
    def bind(self) -> list:
        for port in P.ALL_PORTS:
            self.servers.append(
                SimPort((self.host, self.hw.port_number(port, self.base)), port, self)
            )
        return self.servers

    def start(self) -> None:
        for srv in self.servers:
            srv.start()
        targets = [self._tick_loop, self._data_loop]
        for target in targets:
            t = threading.Thread(target=target, name=target.__name__.strip("_"), daemon=True)
            t.start()
            self._threads.append(t)
        log.info(
            "simulating %s hardware on %s ports %d-%d (%g status records/s%s%s)",
            self.hw.name,
            self.host,
            self.base,
            self.base + 3,
            self.rate,
            ", swapped" if self.swap else "",
            ", DATA blast" if self.blast else "",
        )

    def reload(self) -> str | None:
        return self.options.reload() if self.options is not None else None

    def on_tick(self) -> None:
        self.limiter.flush()

    def stop(self) -> int:
        self._stop.set()
        left = 0
        for srv in self.servers:
            left += srv.stop()
        for t in self._threads:
            t.join(2.0)
            left += t.is_alive()
        return left

    # -- connections -------------------------------------------------------
    def attach(self, port: P.Port, sock: socket.socket, peer: str) -> None:
        with self._lock:
            old = self._clients[port]
            self._clients[port] = (sock, peer)
            self.connections += 1
        if old is not None:
            log.info("%s: new client %s; closing the previous one %s", port.label, peer, old[1])
            try:
                old[0].shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            log.info("%s: client %s connected", port.label, peer)

    def detach(self, port: P.Port, sock: socket.socket, peer: str) -> None:
        with self._lock:
            cur = self._clients[port]
            if cur is not None and cur[0] is sock:
                self._clients[port] = None
                log.info("%s: client %s gone", port.label, peer)

    def send(self, port: P.Port, record: bytes) -> bool:
        """Send whole records to the port's client (if any); drop it on failure."""
        cur = self._clients[port]
        if cur is None:
            return False
        if self.swap:
            record = P.swap_records(self.hw, port, record)
        with self._send_locks[port]:
            try:
                cur[0].sendall(record)
                return True
            except OSError as exc:
                log.info("%s: client %s dropped (%s)", port.label, cur[1], exc)
                try:
                    cur[0].shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return False

    def message(self, text: str) -> None:
        log.debug("MESSAGE: %s", text)
        self.send(P.Port.MESS, P.encode_message(text))

    # -- commands ----------------------------------------------------------
    def read_commands(self, sock: socket.socket, peer: str) -> None:
        size = self.hw.record_size(P.Port.COMM)
        framer = P.RecordFramer(size)
        host = peer.rsplit(":", 1)[0]
        while True:
            data = sock.recv(65536)
            if not data:
                return
            framer.feed(data)
            ev = framer.next_event()
            if ev is None:
                continue
            for rec in P.split_records(ev.data, size):
                if self.swap:
                    rec = P.swap_records(self.hw, P.Port.COMM, rec)
                self.commands += 1
                why = P.command_error(self.hw, rec)
                if why is not None:
                    # answered as the controller does, but logged rate-limited
                    self.limiter.log(
                        f"bad command from {host}",
                        logging.WARNING,
                        "COMMAND from %s: %s",
                        peer,
                        why,
                    )
                c = P.decode_command(self.hw, rec)
                try:
                    self.execute(c, quiet=why is not None)
                except Exception as exc:  # noqa: BLE001 - a bad command must not kill the simulator
                    self.limiter.log(
                        f"failed command from {host}",
                        logging.ERROR,
                        "command %s failed: %r",
                        rec[:12].hex(),
                        exc,
                    )

    def execute(self, c: P.Command, quiet: bool = False) -> None:
        if not quiet:
            log.info("COMMAND: %s", P.describe_command(self.hw, c))
        if self.hw is not P.MAR345:
            self._execute_dtb(c)
            return
        now = time.monotonic()
        cmd = c.cmd
        with self._lock:
            if cmd == P.Cmd.MOVE and 1 <= c.mode <= 6:
                kind, steps = c.params[0], c.params[1]
                if kind == P.MoveKind.REL:
                    self.targets[c.mode] += steps
                elif kind == P.MoveKind.ABS:
                    self.targets[c.mode] = steps
                elif kind in (P.MoveKind.STOP_NOW, P.MoveKind.STOP_SMOOTH):
                    self.targets[c.mode] = self.actual[c.mode]
                elif kind == P.MoveKind.DEFINE:
                    self.targets[c.mode] = self.actual[c.mode] = steps
                else:  # INIT_NEAR / INIT_FAR: drive to the reference
                    self.targets[c.mode] = 0
                self._task_started(cmd)
                msg = f"MESS MOVE {P.Axis(c.mode).name} to {self.targets[c.mode]} started"
            elif cmd == P.Cmd.SET:
                param, value = c.params[0], c.params[1]
                if c.mode == 1:
                    self.params[param] = value
                    msg = f"MESS SET param {param} = {value}"
                else:
                    msg = P.setparam_message(param, self.params.get(param, 0))
            elif cmd == P.Cmd.SCAN:
                self.scanning = self.scan_blocks
                self.block = 0
                self.status.set(P.W_VALID_DATA, 0)
                self._task_started(cmd)
                msg = f"MESS SCAN_DATA    Started: {self.scan_blocks} blocks"
            elif cmd == P.Cmd.SHUTTER:
                hw1 = self.status.word(P.W_HW_STATUS1)
                if c.mode == 1:
                    hw1 &= ~P.HW1_SHUTTER_CLOSED
                else:
                    hw1 |= P.HW1_SHUTTER_CLOSED
                self.status.set(P.W_HW_STATUS1, hw1)
                self._task_started(cmd, now + TASK_TIME[P.Cmd.SHUTTER])
                msg = f"MESS SHUTTER {'OPEN' if c.mode == 1 else 'CLOSE'}"
            elif cmd == P.Cmd.COLLECT:
                seconds = min(max(c.params[1], 0) / 1000.0, 10.0)
                self._task_started(cmd, now + seconds)
                msg = f"MESS EXPOSURE  Started ({seconds:g} s)"
            elif cmd == P.Cmd.CHANGE:
                self.status.set(P.W_SCANMODE, c.mode)
                self._task_started(cmd, now + TASK_TIME[P.Cmd.CHANGE])
                msg = f"MESS MODE_CHANGE  Started: mode {c.mode}"
            elif cmd == P.Cmd.ABORT:
                if 0 <= c.mode < P.MAX_CMD and c.mode in self.tasks:
                    self.tasks[c.mode] = now
                if c.mode == P.Cmd.SCAN:
                    self.scanning = 0
                msg = f"MESS ABORT task {c.mode}"
            elif cmd == P.Cmd.SHELL:
                msg = f"MESS SHELL {c.text.decode('latin-1').strip()}"
            elif 0 <= cmd < P.MAX_CMD:
                self._task_started(cmd, now + TASK_TIME.get(cmd, 0.1))
                msg = f"MESS {P.Cmd(cmd).name} started"
            else:
                msg = f"MESS unknown command {cmd}"
        self.message(msg)

    def _execute_dtb(self, c: P.Command) -> None:
        with self._lock:
            if c.cmd == P.Cmd.SCAN:
                self.scanning = self.scan_blocks
                self.block = 0
        self.message(f"MESS command {c.cmd} mode {c.mode} received")

    def _task_started(self, cmd: int, until: float | None = None) -> None:
        """Caller holds the lock.  ``until`` None: done when its motion/scan is."""
        self.tasks[cmd] = until if until is not None else float("inf")
        self.status.set(P.W_TASK + cmd, P.TASK_STARTED | P.TASK_ACTIVE)

    # -- periodic work -----------------------------------------------------
    def _tick_loop(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            period = 1.0 / self.rate  # --rate is live (SIGHUP)
            step = max(1, int(MOTOR_SPEED * period))
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                if self._stop.wait(delay):
                    return
            else:
                nxt = time.monotonic()
            ended = self._advance(step)
            for text in ended:
                self.message(text)
            self.send(P.Port.STAT, self._status_record())

    def _advance(self, step: int) -> list[str]:
        ended = []
        now = time.monotonic()
        with self._lock:
            if self.hw is P.MAR345:
                moving = False
                for axis in range(1, 7):
                    a, t = self.actual[axis], self.targets[axis]
                    if a != t:
                        self.actual[axis] = a + max(-step, min(step, t - a))
                        moving = True
                    wa, wt, ws = P.stepper_words(axis)
                    self.status.set(wa, self.actual[axis])
                    self.status.set(wt, self.targets[axis])
                    self.status.set(ws, int(self.actual[axis] != self.targets[axis]))
                if P.Cmd.MOVE in self.tasks and not moving:
                    self.tasks[P.Cmd.MOVE] = now
                if P.Cmd.SCAN in self.tasks and self.scanning == 0:
                    self.tasks[P.Cmd.SCAN] = now
            for cmd, until in list(self.tasks.items()):
                if until <= now:
                    del self.tasks[cmd]
                    if self.hw is P.MAR345:
                        self.status.set(P.W_TASK + cmd, P.TASK_DONE)
                        ended.append(P.task_end_message(cmd))
        return ended

    def _status_record(self) -> bytes:
        with self._lock:
            self.counter += 1
            st = self.status
            st.set(self.hw.counter_word, self.counter)
            P.set_send_time(self.hw, st, time.monotonic_ns())
            return P.encode_status(self.hw, st)

    def _data_record(self, n: int) -> bytes:
        if self.hw is P.MAR345:
            k = 2 * ((n * 37) % P.DATA_PIXELS)
            return P.encode_data_block(n, _PATTERN[k:] + _PATTERN[:k])
        return P.encode_dtb_sample(n, 1000 + n % 97, -n, 2000 - n % 89)

    def _data_loop(self) -> None:
        if self.blast:
            self._blast_loop()
            return
        while not self._stop.wait(1.0 / self.scan_rate):
            with self._lock:
                if not self.scanning:
                    continue
                self.scanning -= 1
                self.block += 1
                n = self.block
                if self.hw is P.MAR345:
                    self.status.set(P.W_VALID_DATA, n * P.DATA_PIXELS)
            self.send(P.Port.DATA, self._data_record(n))

    def _blast_loop(self) -> None:
        """DATA as fast as the client reads it (benchmarks)."""
        size = self.hw.record_size(P.Port.DATA)
        per = max(1, (1 << 20) // size)
        template = bytearray(b"".join(self._data_record(i) for i in range(per)))
        block = 0
        while not self._stop.is_set():
            if self._clients[P.Port.DATA] is None:
                self._stop.wait(0.02)
                continue
            if self.hw is P.MAR345:
                for i in range(per):
                    P.set_data_block_number(template, i * size, block + i)
            block += per
            if not self.send(P.Port.DATA, bytes(template)):
                self._stop.wait(0.02)


def build_parser() -> argparse.ArgumentParser:
    p = cli.make_parser(
        "marsim",
        "Simulate mar345 or mardtb hardware on four TCP ports (COMMAND, STATUS, DATA, MESSAGE).",
        config_option=("--config",),
        default_config_files=[options.default_config_file("marsim")],
    )
    add_hardware_args(
        p,
        "mar345",
        dtb_help="simulate a desktop beamline, ports 4451-4454",
        mar_help="simulate a mar345 scanner, ports 4441-4444 (default)",
    )
    p.add_argument(
        "-p", "--port", type=cli.port_number, help="first (COMMAND) port; default 4441 or 4451"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "-s", "--swap", action="store_true", help="swap bytes of commands, status and data"
    )
    p.add_argument(
        "-r", "--rate", type=cli.positive_float, default=10.0, help="STATUS records per second (10)"
    )
    p.add_argument(
        "--scan-blocks",
        metavar="N",
        type=cli.non_negative_int,
        default=32,
        help="DATA records sent for one SCAN command (32)",
    )
    p.add_argument(
        "--scan-rate",
        metavar="N",
        type=cli.positive_float,
        default=500.0,
        help="DATA records per second during a scan (500)",
    )
    p.add_argument(
        "--blast", action="store_true", help="send DATA records continuously, as fast as possible"
    )
    cli.add_runtime_args(
        p,
        RUNTIME_FLAGS,
        default_logfile="/tmp/marsim.log",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = cli.parse_or_exit(parser, argv)
    live = options.LiveOptions(parser, argv, copy.copy(args))
    if args.lockfile is None and (args.daemon or args.kill):
        # a daemon needs a lock file that --kill can find without being told
        port = args.port or P.HARDWARE[args.hardware].base
        args.lockfile = f"/tmp/marsim-{port}.lock"
    sim = MarSim(
        P.HARDWARE[args.hardware],
        args.host,
        args.port,
        swap=args.swap,
        rate=args.rate,
        scan_blocks=args.scan_blocks,
        scan_rate=args.scan_rate,
        blast=args.blast,
        options=live,
    )
    return runtime.run(sim, runtime.options_from_args(args))


if __name__ == "__main__":
    sys.exit(main())

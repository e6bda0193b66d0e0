"""archonsim + camerad as real processes on loopback, for tests, demo and benchmark.

:class:`Rig` writes a configuration (the demo one with free ports and a
private directory), starts ``archonsim`` and ``camerad`` through
:mod:`tests.support.procs`, and offers a blocking-port connection, one-shot
non-blocking commands (through ``sendsockcmd``'s function), a multicast
listener on 127.0.0.1 and a direct Archon connection to the simulator.
"""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import struct
import threading
import time
from pathlib import Path

from archonsrv import config as C
from archonsrv.controller import ArchonClient
from common.sendsockcmd import send_command
from tests.support import procs


class AsyncListener:
    """Joins ASYNCGROUP on 127.0.0.1 and queues every datagram (bounded)."""

    def __init__(self, group: str, port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((group, port))
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        s.settimeout(0.2)
        self.sock = s
        self.q: queue.Queue[str] = queue.Queue(maxsize=100000)
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="async-listener", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(queue.Full):
                self.q.put_nowait(data.decode("ascii", "replace"))

    def drain(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.q.get_nowait())
            except queue.Empty:
                return self.seen

    def wait_for(self, prefix: str, timeout: float = 10.0) -> str | None:
        """First message (seen or new) starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.drain():
                if m.startswith(prefix):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.seen.append(self.q.get(timeout=min(0.1, left)))
            except queue.Empty:
                pass

    def clear(self) -> None:
        self.drain()
        self.seen.clear()

    def close(self) -> None:
        self._stop.set()
        self._t.join(1.0)
        self.sock.close()


class Rig:
    def __init__(
        self,
        workdir: str | Path,
        readout_ms: int = 300,
        camerad_args: tuple[str, ...] = (),
        sim_args: tuple[str, ...] = (),
        camerad_kw: dict | None = None,
        sim_readout_ms: int | None = None,
        **overrides: object,
    ) -> None:
        self.dir = Path(workdir)
        self.imdir = self.dir / "images"
        self.logdir = self.dir / "logs"
        self.imdir.mkdir(parents=True, exist_ok=True)
        self.sim_port = procs.free_port()
        base = procs.free_port_block(2)
        self.nbport, self.blkport = base, base + 1
        self.asyncport = procs.free_port(socket.SOCK_DGRAM)
        self.group = f"239.255.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.cfgfile = self.dir / "camerad.cfg"
        self.settings: dict[str, object] = {
            "ARCHON_IP": "127.0.0.1",
            "ARCHON_PORT": self.sim_port,
            "EMULATOR_PORT": self.sim_port,
            "DEFAULT_FIRMWARE": C.DEMO_ACF,
            "READOUT_TIME": readout_ms,
            "IMDIR": self.imdir,
            "LOGPATH": self.logdir,
            "BLKPORT": self.blkport,
            "NBPORT": self.nbport,
            "ASYNCPORT": self.asyncport,
            "ASYNCGROUP": self.group,
            "ASYNCIF": "127.0.0.1",
            "BINDADDR": "127.0.0.1",
        }
        self.settings.update(overrides)
        self.write_config()
        self.camerad_args = camerad_args
        # the simulated readout takes half of READOUT_TIME (not 90 %) unless told,
        # so that a loaded test machine does not hit camerad's +10 % timeout
        if sim_readout_ms is None:
            sim_readout_ms = readout_ms // 2
        self.sim_args = ("--readout-time", str(sim_readout_ms), *sim_args)
        self.camerad_kw = camerad_kw or {}
        self.sim = None
        self.cam = None
        self.listener: AsyncListener | None = None
        self._blk: socket.socket | None = None
        self._blkbuf = b""

    def write_config(self, **changes: object) -> None:
        self.settings.update(changes)
        text = C.render(C.DEMO_CFG.read_text(), **self.settings)
        self.cfgfile.write_text(text)

    # -- processes ---------------------------------------------------------
    def start(self, listen: bool = True) -> Rig:
        if listen:
            self.listener = AsyncListener(self.group, self.asyncport)
        self.sim_log = open(self.dir / "archonsim.stderr", "wb")
        self.cam_log = open(self.dir / "camerad.stderr", "wb")
        self.sim = procs.start(
            "archonsrv.sim", str(self.cfgfile), *self.sim_args, stderr=self.sim_log
        )
        procs.wait_port(self.sim_port, proc=self.sim)
        self.cam = procs.start(
            "archonsrv.cli",
            str(self.cfgfile),
            *self.camerad_args,
            stderr=self.cam_log,
            **self.camerad_kw,
        )
        procs.wait_port(self.nbport, proc=self.cam)
        return self

    def close_blk(self) -> None:
        """Close the blocking-port connection (another client may then connect)."""
        if self._blk is not None:
            with contextlib.suppress(OSError):
                self._blk.close()
            self._blk = None
            self._blkbuf = b""

    def stop(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        self.close_blk()
        if self.cam is not None:
            out["camerad"] = procs.stop(self.cam)
        if self.sim is not None:
            out["archonsim"] = procs.stop(self.sim)
        if self.listener is not None:
            self.listener.close()
        for f in (getattr(self, "sim_log", None), getattr(self, "cam_log", None)):
            if f is not None:
                f.close()
        return out

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------
    def blk(self, command: str | bytes, timeout: float = 30.0) -> str:
        """Send one line on the blocking port (one connection kept open)."""
        if self._blk is None:
            self._blk = socket.create_connection(("127.0.0.1", self.blkport), timeout=timeout)
        data = command if isinstance(command, bytes) else command.encode() + b"\n"
        self._blk.settimeout(timeout)
        self._blk.sendall(data)
        while b"\n" not in self._blkbuf:
            chunk = self._blk.recv(65536)
            if not chunk:
                self._blk.close()
                self._blk = None
                raise ConnectionError("camerad closed the blocking port")
            self._blkbuf += chunk
        line, _, self._blkbuf = self._blkbuf.partition(b"\n")
        return line.decode("ascii", "replace")

    def nb(self, command: str, timeout_ms: int = 30000) -> str:
        status, reply, message = send_command("127.0.0.1", self.nbport, command, timeout_ms)
        if status != 0:
            raise ConnectionError(message or f"sendsockcmd status {status}")
        return reply.decode("ascii", "replace").strip()

    def archon(self) -> ArchonClient:
        """A direct connection to the simulator (SIMFAULT and friends)."""
        a = ArchonClient(timeout=3.0)
        a.connect("127.0.0.1", self.sim_port)
        return a

    def fits_files(self) -> list[Path]:
        return sorted(p for p in self.imdir.rglob("*.fits"))

    def all_files(self) -> list[Path]:
        return sorted(p for p in self.imdir.rglob("*") if p.is_file())

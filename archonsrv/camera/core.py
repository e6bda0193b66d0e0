"""The Camera: camerad's state and the one entry point :meth:`Camera.execute`.

:meth:`Camera.execute` takes one command line and returns the reply line
(``value DONE``, ``ERROR`` or ``ERROR text``) or None for ``exit``.  It is
called from any number of client threads at once; controller access is
serialised by the controller lock, one exposure runs at a time, and
settings changes are atomic.  The commands themselves live in the modules
of this package, registered in :mod:`.table` with their preconditions.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

from common import runtime
from common.ratelimit import LogLimiter

from .. import acf as ACF
from .. import archon as A
from .. import protocol as P
from ..config import CameraConfig
from ..controller import ArchonError, Controller
from . import fitsio
from .table import ARC_ONLY, COMMANDS, HXRG_ONLY, IDLE, LOADED, OPEN

log = logging.getLogger("camerad")

BUILD = time.strftime("%b %d %Y %H:%M:%S", time.gmtime(os.path.getmtime(__file__)))


class CommandError(Exception):
    """A command failed; ``value`` is printed before ERROR (set/get commands)."""

    def __init__(self, message: str, value: str = "") -> None:
        super().__init__(message)
        self.value = value


class Aborted(CommandError):
    pass


def int_arg(text: str, what: str, lo: int, hi: int) -> int:
    try:
        return P.bounded_int(text, what, lo, hi)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def float_arg(text: str, what: str, lo: float, hi: float) -> float:
    try:
        v = float(text)
    except ValueError:
        raise CommandError(f"{what} must be a number, got {text[:40]!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise CommandError(f"{what} must be in {lo:g}..{hi:g}, got {text[:40]}")
    return v


def num_text(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if "." in f"{v:.3f}" else str(v)


class Camera:
    def __init__(
        self,
        cfg: CameraConfig,
        notify: Callable[[str, str], None],
        controller: Controller | None = None,
    ) -> None:
        self.notify = notify
        self.ctl = controller if controller is not None else Controller()
        self.lock = threading.RLock()
        self.expose_lock = threading.Lock()
        self.abort_event = threading.Event()
        self.trig_stop = threading.Event()
        self.trig_thread: threading.Thread | None = None
        self.limiter = LogLimiter(log)
        # controller state
        self.acf: ACF.Acf | None = None
        self.acf_path = ""
        self.cfgmem: list[tuple[str, str]] = []
        self.loaded = False
        self.mode: str | None = None
        self.geometry: ACF.Geometry | None = None
        self.system: dict[str, str] = {}
        self.modules: dict[int, str] = {}
        self.exptime: int | None = None
        self.longexposure: bool | None = None
        self.shutter_forced: str | None = None
        self._shutter_written: str | None = None
        self.userkeys: dict[str, P.UserKey] = {}
        self.last_error = ""
        self.exposing = False
        self.held_frame: tuple | None = None  # readframe's frame, for writeframe
        self.apply_config(cfg)

    # -- configuration -----------------------------------------------------
    def apply_config(self, cfg: CameraConfig) -> None:
        """Reset every command-overridable setting to the file's values."""
        with self.lock:
            self.cfg = cfg
            self.imdir = cfg.imdir
            self.autodir = cfg.autodir
            self.basename = cfg.basename
            self.fitsnaming = "time"
            self.imnum = getattr(self, "imnum", 0)
            self.cubeamps = cfg.amps_as_cube
            self.datacube = cfg.amps_as_cube
            self.hdrshift = cfg.hdr_shift
            self.longerror = cfg.longerror
            self.writekeys = "before"
            self.preexposures = 0
            self.shutter_enabled = True

    # -- entry point -------------------------------------------------------
    def execute(self, line: str) -> str | None:
        cmd, args = P.split_command(line)
        if not cmd:
            return ""
        name = cmd.lower()
        if name == "exit":
            log.info("exit command received")
            runtime.request_shutdown()
            return None
        try:
            value = self.dispatch(name, args)
        except CommandError as exc:
            return self.fail(line, str(exc), exc.value)
        except (ArchonError, fitsio.FitsWriteError) as exc:
            return self.fail(line, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must answer ERROR, not kill the thread
            log.exception("internal error in %r", line[:80])
            return self.fail(line, f"internal error: {type(exc).__name__}: {exc}")
        return P.format_done(value)

    def fail(self, line: str, message: str, value: str = "") -> str:
        self.last_error = message
        word = line.split(" ", 1)[0][:20]
        self.limiter.log(f"error reply to {word}", logging.ERROR, "%s: %s", line[:80], message)
        self.notify("ERROR", f" {message}")
        return P.format_error(message, self.longerror, value)

    def dispatch(self, name: str, args: str) -> str:
        if name in ARC_ONLY:
            raise CommandError(f"{name} is an ARC controller command; not available on an Archon")
        if name in HXRG_ONLY:
            raise CommandError(f"{name} is for HxRG detectors; not available in this server")
        entry = COMMANDS.get(name)
        if entry is None:
            raise CommandError(f"unrecognized command {name[:40]!r} (use native CMD for Archon)")
        for need in entry.preconditions(args):
            if need == OPEN:
                self.need_open()
            elif need == LOADED:
                self.need_loaded()
            elif need == IDLE:
                self.need_idle(entry.busy_what or name)
        return entry.handler(self, args) or ""

    # -- preconditions -----------------------------------------------------
    def need_open(self) -> None:
        if not self.ctl.wanted:
            raise CommandError("not connected to the Archon (use open)")

    def need_loaded(self) -> None:
        self.need_open()
        if not self.loaded or self.acf is None:
            raise CommandError("no firmware loaded (use load)")

    def need_idle(self, what: str) -> None:
        if self.expose_lock.locked():
            raise CommandError(f"cannot change {what} during an exposure")

    # -- configuration memory helpers --------------------------------------
    def values(self) -> dict[str, str]:
        return dict(self.cfgmem)

    def line_of(self, key: str) -> int | None:
        for i, (k, _) in enumerate(self.cfgmem):
            if k == key:
                return i
        return None

    def param_line(self, name: str) -> int | None:
        for i, (k, v) in enumerate(self.cfgmem):
            entry = A.param_entry(k, v)
            if entry is not None and entry[0] == name:
                return i
        return None

    def write_key(self, key: str, value: str, apply: Callable[[], None] | None = None) -> None:
        """WCONFIG a config-memory key (appending a line if new), then apply."""
        with self.ctl.lock:
            line = self.line_of(key)
            if line is None:
                line = len(self.cfgmem)
                self.cfgmem.append((key, value))
            elif self.cfgmem[line][1] == value:
                if apply:
                    apply()
                return
            self.ctl.write_config(line, key, value)
            self.cfgmem[line] = (key, value)
            if apply:
                apply()

    def bool_setting(self, attr: str, args: str, tag: str | None = None) -> str:
        if args:
            v = P.parse_bool_word(args)
            if v is None:
                raise CommandError(
                    f"expected true or false, got {args[:40]!r}",
                    value="true" if getattr(self, attr) else "false",
                )
            setattr(self, attr, v)
            if tag:
                self.notify("NOTICE", f"{tag}={'true' if v else 'false'}")
        return "true" if getattr(self, attr) else "false"

    def setp(self, name: str, value: str) -> None:
        self.ctl.set_param_fast(name, value)

    def getp(self, name: str) -> str:
        line = self.param_line(name)
        if line is None:
            raise CommandError(f"parameter {name!r} not in the loaded ACF")
        reply = self.ctl.read_config(line)
        entry = A.parse_param_reply(reply)
        if entry is None or entry[0] != name:
            raise CommandError(f"unexpected RCONFIG reply for {name}")
        return entry[1]

    def drain_fetchlog(self) -> None:
        for _ in range(100):
            try:
                entry = self.ctl.fetchlog()
            except ArchonError:
                return
            if entry is None:
                return
            log.info("Archon log: %s", entry)

    def unit(self) -> str:
        return "sec" if self.longexposure else "msec"

    def mode_arch(self) -> dict[str, str]:
        """ARCH: keys of the selected mode over those of MODE_DEFAULT."""
        arch = dict(self.acf.modes["DEFAULT"].arch)
        arch.update(self.acf.modes[self.mode].arch)
        return arch

    # -- shutdown ------------------------------------------------------------
    def stop_trigger(self) -> None:
        self.trig_stop.set()
        t = self.trig_thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)
        self.trig_thread = None

    def shutdown(self) -> None:
        self.abort_event.set()
        self.ctl.abort()  # wakes a thread waiting for the controller
        self.stop_trigger()
        if self.ctl.lock.acquire(timeout=2.0):
            try:
                self.ctl.close()
            finally:
                self.ctl.lock.release()

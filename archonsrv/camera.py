"""The camera engine of camerad: every command, the exposure sequence, FITS output.

:meth:`Camera.execute` takes one command line and returns the reply line
(``value DONE``, ``ERROR`` or ``ERROR text``) or None for ``exit``.  It is
called from any number of client threads at once; controller access is
serialised by the :class:`~archonsrv.controller.ArchonClient` lock, one
exposure runs at a time, and settings changes are atomic.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import runtime
from common.config import ConfigError, read_bounded

from . import fitsio
from . import protocol as P
from .config import CameraConfig
from .controller import ArchonClient, ArchonError

log = logging.getLogger("camerad")

BUILD = time.strftime("%b %d %Y %H:%M:%S", time.gmtime(os.path.getmtime(__file__)))
MAX_ACF_BYTES = 16 << 20
MAX_EXPTIME = 0xFFFFF
MAX_NSEQ = 10000
FETCH_CAP_BYTES = 1_500_000_000
POLL = 0.002

ARC_ONLY = {"useframes", "readout", "amplifier"}
FRAME_BUFFER_BYTES = {2: 0x30000000, 3: 0x20000000}  # per buffer, by active buffer count
HXRG_ONLY = {"hsetup", "hexpose", "hroi", "hwindow", "video"}
POWER_NAMES = {
    0: "unknown",
    1: "not_configured",
    2: "OFF",
    3: "intermediate",
    4: "ON",
    5: "standby",
}
LV_TYPES = {"LVBias", "LVXBias"}
HV_TYPES = {"HVBias", "HVXBias"}
HEATER_TYPES = {"Heater", "HeaterX"}


class CommandError(Exception):
    """A command failed; ``value`` is printed before ERROR (set/get commands)."""

    def __init__(self, message: str, value: str = "") -> None:
        super().__init__(message)
        self.value = value


class Aborted(CommandError):
    pass


def _int_arg(text: str, what: str, lo: int, hi: int) -> int:
    try:
        return P.bounded_int(text, what, lo, hi)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _float_arg(text: str, what: str, lo: float, hi: float) -> float:
    try:
        v = float(text)
    except ValueError:
        raise CommandError(f"{what} must be a number, got {text[:40]!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise CommandError(f"{what} must be in {lo:g}..{hi:g}, got {text[:40]}")
    return v


def _num_text(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if "." in f"{v:.3f}" else str(v)


class Camera:
    def __init__(self, cfg: CameraConfig, notify: Callable[[str, str], None]) -> None:
        self.notify = notify
        self.archon = ArchonClient()
        self.lock = threading.RLock()
        self.expose_lock = threading.Lock()
        self.abort_event = threading.Event()
        self.trig_stop = threading.Event()
        self.trig_thread: threading.Thread | None = None
        # controller state
        self.acf: P.Acf | None = None
        self.acf_path = ""
        self.cfgmem: list[tuple[str, str]] = []
        self.loaded = False
        self.mode: str | None = None
        self.geometry: P.Geometry | None = None
        self.system: dict[str, str] = {}
        self.modules: dict[int, str] = {}
        self.exptime: int | None = None
        self.longexposure: bool | None = None
        self.shutter_forced: str | None = None
        self._shutter_written: str | None = None
        self.userkeys: dict[str, P.UserKey] = {}
        self.last_error = ""
        self.exposing = False
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
            value = self._dispatch(name, args)
        except CommandError as exc:
            return self._fail(line, str(exc), exc.value)
        except ArchonError as exc:
            return self._fail(line, str(exc))
        except fitsio.FitsWriteError as exc:
            return self._fail(line, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must answer ERROR, not kill the thread
            log.exception("internal error in %r", line[:80])
            return self._fail(line, f"internal error: {type(exc).__name__}: {exc}")
        return P.format_done(value)

    def _fail(self, line: str, message: str, value: str = "") -> str:
        self.last_error = message
        log.error("%s: %s", line[:80], message)
        self.notify("ERROR", f" {message}")
        return P.format_error(message, self.longerror, value)

    def _dispatch(self, name: str, args: str) -> str:
        if name in ARC_ONLY:
            raise CommandError(f"{name} is an ARC controller command; not available on an Archon")
        if name in HXRG_ONLY:
            raise CommandError(f"{name} is for HxRG detectors; not available in this server")
        fn = getattr(self, f"cmd_{name}", None)
        if fn is None or name.startswith("_"):
            raise CommandError(f"unrecognized command {name[:40]!r} (use native CMD for Archon)")
        return fn(args) or ""

    # -- helpers -----------------------------------------------------------
    def _need_open(self) -> None:
        if not self.archon.wanted:
            raise CommandError("not connected to the Archon (use open)")

    def _need_loaded(self) -> None:
        self._need_open()
        if not self.loaded or self.acf is None:
            raise CommandError("no firmware loaded (use load)")

    def _not_exposing(self, what: str) -> None:
        if self.expose_lock.locked():
            raise CommandError(f"cannot change {what} during an exposure")

    def _values(self) -> dict[str, str]:
        return dict(self.cfgmem)

    def _line_of(self, key: str) -> int | None:
        for i, (k, _) in enumerate(self.cfgmem):
            if k == key:
                return i
        return None

    def _param_line(self, name: str) -> int | None:
        for i, (k, v) in enumerate(self.cfgmem):
            entry = P.param_entry(k, v)
            if entry is not None and entry[0] == name:
                return i
        return None

    def _write_key(self, key: str, value: str, apply: str | None = None) -> None:
        """WCONFIG a config-memory key (appending a line if new), then APPLY."""
        with self.archon.lock:
            line = self._line_of(key)
            if line is None:
                line = len(self.cfgmem)
                self.cfgmem.append((key, value))
            elif self.cfgmem[line][1] == value:
                if apply:
                    self.archon.command(apply)
                return
            self.archon.command(P.wconfig_command(line, key, value))
            self.cfgmem[line] = (key, value)
            if apply:
                self.archon.command(apply)

    def _bool_setting(self, attr: str, args: str, tag: str | None = None) -> str:
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

    def _setp(self, name: str, value: str) -> None:
        self.archon.command(f"FASTPREPPARAM {name} {value}")
        self.archon.command(f"FASTLOADPARAM {name} {value}")

    def _getp(self, name: str) -> str:
        line = self._param_line(name)
        if line is None:
            raise CommandError(f"parameter {name!r} not in the loaded ACF")
        reply = self.archon.command(P.rconfig_command(line))
        entry = P.parse_param_reply(reply)
        if entry is None or entry[0] != name:
            raise CommandError(f"unexpected RCONFIG reply for {name}: {reply[:60]!r}")
        return entry[1]

    def _drain_fetchlog(self) -> None:
        for _ in range(100):
            try:
                entry = self.archon.command("FETCHLOG")
            except ArchonError:
                return
            if entry.strip() in ("(null)", ""):
                return
            log.info("Archon log: %s", entry)

    # -- connection and firmware -------------------------------------------
    def cmd_open(self, args: str) -> str:
        if self.archon.is_open:
            return ""
        if not self.cfg.archon_ip:
            raise CommandError("ARCHON_IP is not configured")
        self.archon.connect(self.cfg.archon_ip, self.cfg.archon_port)
        try:
            self.system = P.parse_kv(self.archon.command("SYSTEM"))
        except (ArchonError, P.ProtocolError) as exc:
            self.archon.close()
            raise CommandError(f"SYSTEM query failed: {exc}") from None
        self.modules = P.module_types(self.system)
        for slot, kind in self.modules.items():
            if kind.startswith("AD") and not 5 <= slot <= 8:
                log.warning("AD module in slot %d (expected slots 5-8)", slot)
        log.info(
            "Archon backplane %s, modules: %s",
            self.system.get("BACKPLANE_VERSION", "?"),
            ", ".join(f"{s}:{k}" for s, k in sorted(self.modules.items())) or "none",
        )
        self._drain_fetchlog()
        return ""

    def cmd_close(self, args: str) -> str:
        self.archon.close()
        return ""

    def cmd_isopen(self, args: str) -> str:
        return "true" if self.archon.is_open else "false"

    def cmd_load(self, args: str) -> str:
        return self._load(args, timing=False)

    def cmd_loadtiming(self, args: str) -> str:
        return self._load(args, timing=True)

    def _load(self, args: str, timing: bool) -> str:
        self._need_open()
        path = args.strip() or self.cfg.default_firmware
        if not path:
            raise CommandError("no ACF file given and DEFAULT_FIRMWARE not configured")
        if self.expose_lock.locked():
            raise CommandError("cannot load firmware during an exposure")
        try:
            data = read_bounded(path, MAX_ACF_BYTES, "ACF")
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        try:
            acf = P.parse_acf(data.decode("latin-1"), path)
        except P.AcfError as exc:
            raise CommandError(str(exc)) from None
        with self.archon.lock:
            self.loaded = False
            try:
                self.archon.command("POLLOFF")
                self.archon.command("CLEARCONFIG")
                for i, (k, v) in enumerate(acf.lines):
                    self.archon.command(P.wconfig_command(i, k, v))
                self.archon.command("POLLON")
                self.archon.command("LOADTIMING" if timing else "APPLYALL")
            except ArchonError:
                self._drain_fetchlog()
                raise
            self.acf = acf
            self.acf_path = str(Path(path).resolve())
            self.cfgmem = list(acf.lines)
            self.loaded = True
            self.exptime = None
            self.longexposure = None
            self.mode = None
            self.geometry = None
            self.shutter_forced = None
            self._shutter_written = None
        log.info("loaded %s (%d lines)%s", path, len(acf.lines), " timing only" if timing else "")
        self._set_mode("DEFAULT")
        return ""

    def cmd_isloaded(self, args: str) -> str:
        return "true" if self.loaded else "false"

    def cmd_mode(self, args: str) -> str:
        if not args:
            if self.mode is None:
                raise CommandError("no mode selected")
            return self.mode
        self._need_loaded()
        self._not_exposing("the mode")
        self._set_mode(args.strip().upper())
        return self.mode or ""

    def _set_mode(self, name: str) -> None:
        acf = self.acf
        if acf is None:
            raise CommandError("no firmware loaded")
        if name == "RAW":
            if self._values().get("RAWENABLE", "0") != "1":
                raise CommandError("mode RAW needs RAWENABLE=1 in the ACF")
            try:
                geom = P.compute_geometry(self._values(), acf.modes["DEFAULT"].arch, raw=True)
            except P.AcfError as exc:
                raise CommandError(str(exc)) from None
            self.mode, self.geometry = "RAW", geom
            return
        if name not in acf.modes:
            raise CommandError(f"mode {name} not defined in the ACF ({', '.join(acf.modes)})")
        mode = acf.modes[name]
        target = list(acf.lines)
        index = acf.index()
        params = acf.params()
        for k, v in mode.acf.items():
            if k in params:
                line = params[k]
                target[line] = (target[line][0], f"{k}={v}")
            else:
                target[index[k]] = (k, v)
        arch = dict(acf.modes["DEFAULT"].arch)
        arch.update(mode.arch)
        try:
            geom = P.compute_geometry(dict(target), arch)
        except P.AcfError as exc:
            raise CommandError(f"mode {name}: {exc}") from None
        if geom.image_bytes > FETCH_CAP_BYTES // geom.activebufs:
            raise CommandError(f"mode {name}: image of {geom.image_bytes} bytes too large")
        changed_cfg = changed_param = False
        with self.archon.lock:
            for i, (k, v) in enumerate(target):
                if i < len(self.cfgmem) and self.cfgmem[i] == (k, v):
                    continue
                self.archon.command(P.wconfig_command(i, k, v))
                self.cfgmem[i] = (k, v)
                if P.is_param_key(k):
                    changed_param = True
                else:
                    changed_cfg = True
            if changed_param:
                self.archon.command("LOADPARAMS")
            if changed_cfg:
                self.archon.command("APPLYCDS")
            self.mode, self.geometry = name, geom
        log.info(
            "mode %s: %d x %d, %d-bit, %d amplifier(s)",
            name,
            geom.width,
            geom.height,
            geom.bitpix,
            len(geom.amp_sections),
        )

    def cmd_geometry(self, args: str) -> str:
        """Archon: set the image size by rewriting PIXELCOUNT and LINECOUNT."""
        parts = args.split()
        if parts:
            if len(parts) != 2:
                raise CommandError("usage: geometry [cols rows]")
            self._need_loaded()
            self._not_exposing("the geometry")
            if self.geometry is None or self.mode in (None, "RAW"):
                raise CommandError("geometry needs an image mode selected")
            g = self.geometry
            cols = _int_arg(parts[0], "cols", 1, 1 << 20)
            rows = _int_arg(parts[1], "rows", 1, 1 << 20)
            per_x = g.hori_amps * g.num_detect
            if cols % per_x or rows % g.vert_amps:
                raise CommandError(
                    f"cols must be a multiple of {per_x} and rows of {g.vert_amps} "
                    f"(amplifiers of mode {self.mode})"
                )
            if cols * rows * g.bytes_per_pixel > FRAME_BUFFER_BYTES[g.activebufs]:
                raise CommandError(f"{cols} x {rows} does not fit in an Archon frame buffer")
            old = (self._values()["PIXELCOUNT"], self._values()["LINECOUNT"])
            self._write_key("PIXELCOUNT", str(cols // per_x))
            self._write_key("LINECOUNT", str(rows // g.vert_amps), "APPLYCDS")
            arch = dict(self.acf.modes["DEFAULT"].arch)
            arch.update(self.acf.modes[self.mode].arch)
            try:
                self.geometry = P.compute_geometry(self._values(), arch)
            except P.AcfError as exc:
                self._write_key("PIXELCOUNT", old[0])
                self._write_key("LINECOUNT", old[1], "APPLYCDS")
                raise CommandError(str(exc)) from None
        if self.geometry is None:
            raise CommandError("no mode selected")
        return f"{self.geometry.width} {self.geometry.height}"

    def cmd_buffer(self, args: str) -> str:
        """Archon: bytes an image of the given size needs (frame buffers are fixed)."""
        parts = args.split()
        bpp = self.geometry.bytes_per_pixel if self.geometry else 2
        bufs = self.geometry.activebufs if self.geometry else 3
        if not parts:
            if self.geometry is None:
                raise CommandError("no mode selected")
            return str(self.geometry.image_bytes)
        if len(parts) == 2:
            size = _int_arg(parts[0], "cols", 1, 1 << 20) * _int_arg(parts[1], "rows", 1, 1 << 20)
            size *= bpp
        elif len(parts) == 1:
            size = _int_arg(parts[0], "size", 1, 1 << 40)
        else:
            raise CommandError("usage: buffer [cols rows | bytes]")
        if size > FRAME_BUFFER_BYTES[bufs]:
            raise CommandError(f"{size} bytes exceed an Archon frame buffer")
        return str(size)

    # -- simple settings ---------------------------------------------------
    def cmd_echo(self, args: str) -> str:
        return args

    def cmd_interface(self, args: str) -> str:
        return "STA-Archon"

    def cmd_config(self, args: str) -> str:
        self.notify("CONFIG", self.cfg.source)
        return self.cfg.source

    def cmd_longerror(self, args: str) -> str:
        return self._bool_setting("longerror", args, "longerror")

    def cmd_cubeamps(self, args: str) -> str:
        with self.lock:
            v = self._bool_setting("cubeamps", args, "cubeamps")
            if args:
                self.datacube = self.cubeamps
                self.notify("NOTICE", f"override datacube {v}")
        return v

    def cmd_datacube(self, args: str) -> str:
        return self._bool_setting("datacube", args, "datacube")

    def cmd_autodir(self, args: str) -> str:
        if args:
            v = P.parse_bool_word(args)
            if v is None:
                raise CommandError(f"expected yes or no, got {args[:40]!r}")
            self.autodir = v
        return "yes" if self.autodir else "no"

    def cmd_basename(self, args: str) -> str:
        if args:
            if not P.valid_basename(args) or len(args) > 200:
                raise CommandError(f"invalid base name {args[:40]!r}", value=self.basename)
            self.basename = args
        return self.basename

    def cmd_fitsnaming(self, args: str) -> str:
        if args:
            v = args.strip().lower()
            if v not in ("time", "number"):
                raise CommandError(f"expected time or number, got {args[:40]!r}")
            self.fitsnaming = v
        return self.fitsnaming

    def cmd_imnum(self, args: str) -> str:
        if args:
            self.imnum = _int_arg(args, "image number", 0, 2**31 - 1)
        return str(self.imnum)

    def cmd_hdrshift(self, args: str) -> str:
        if args:
            self.hdrshift = _int_arg(args, "hdrshift", 0, 31)
        return str(self.hdrshift)

    def cmd_writekeys(self, args: str) -> str:
        if args:
            v = args.strip().lower()
            if v not in ("before", "after"):
                raise CommandError(f"expected before or after, got {args[:40]!r}")
            self.writekeys = v
        return self.writekeys

    def cmd_preexposures(self, args: str) -> str:
        if args:
            self.preexposures = _int_arg(args, "preexposures", 0, 1000)
        return str(self.preexposures)

    def cmd_imdir(self, args: str) -> str:
        if not args:
            return self.imdir
        path = Path(self.cfg.resolve(args.strip()))
        try:
            path.mkdir(parents=True, exist_ok=True, mode=self.cfg.dirmode)
            fd, probe = tempfile.mkstemp(prefix=".camerad-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise CommandError(
                f"image directory {args[:200]} not usable: {exc.strerror or exc}", value=self.imdir
            ) from None
        self.imdir = str(path)
        return self.imdir

    def cmd_key(self, args: str) -> str:
        if args.strip().lower() == "list":
            for k, v, c in self._system_cards(None, None):
                log.info("system key %-8s = %r / %s", k, v, c)
            for uk in self.userkeys.values():
                log.info("user key   %-8s = %r / %s", uk.keyword, uk.value, uk.comment)
            return ""
        try:
            uk = P.parse_user_key(args)
        except ValueError as exc:
            raise CommandError(f"key: {exc}") from None
        with self.lock:
            if uk.value is None:
                self.userkeys.pop(uk.keyword, None)
            else:
                if len(self.userkeys) >= 500 and uk.keyword not in self.userkeys:
                    raise CommandError("key: too many user keywords (500)")
                self.userkeys[uk.keyword] = uk
        return ""

    # -- parameters --------------------------------------------------------
    def cmd_getp(self, args: str) -> str:
        self._need_loaded()
        if len(args.split()) != 1:
            raise CommandError("usage: getp <parameter>")
        return self._getp(args.split()[0])

    def cmd_setp(self, args: str) -> str:
        self._need_loaded()
        parts = args.split()
        if len(parts) != 2:
            raise CommandError("usage: setp <parameter> <value>")
        name, value = parts
        if self._param_line(name) is None:
            raise CommandError(f"parameter {name!r} not in the loaded ACF")
        _int_arg(value, f"value of {name}", -(2**31), 2**32 - 1)
        self._setp(name, value)
        return value

    def cmd_writep(self, args: str) -> str:
        self._need_loaded()
        parts = args.split()
        if len(parts) != 2:
            raise CommandError("usage: writep <parameter> <value>")
        name, value = parts
        line = self._param_line(name)
        if line is None:
            raise CommandError(f"parameter {name!r} not in the loaded ACF")
        _int_arg(value, f"value of {name}", -(2**31), 2**32 - 1)
        key = self.cfgmem[line][0]
        with self.archon.lock:
            self.archon.command(P.wconfig_command(line, key, f"{name}={value}"))
            self.cfgmem[line] = (key, f"{name}={value}")
            self.archon.command(f"LOADPARAM {name} {value}")
        return value

    def cmd_exptime(self, args: str) -> str:
        current = "" if self.exptime is None else str(self.exptime)
        if not args:
            if self.exptime is None:
                self._need_loaded()
                self.exptime = _int_arg(self._getp("exptime"), "exptime", 0, MAX_EXPTIME)
            return str(self.exptime)
        if not re.match(r"^\d+$", args.strip()):
            raise CommandError(
                f"exptime must be a whole number of {self._unit()}, got {args[:40]!r}",
                value=current,
            )
        v = _int_arg(args.strip(), "exptime", 0, MAX_EXPTIME)
        self._need_loaded()
        if self._param_line("exptime") is None:
            raise CommandError("the ACF has no parameter named exptime", value=current)
        self._setp("exptime", str(v))
        self.exptime = v
        return str(v)

    def _unit(self) -> str:
        return "sec" if self.longexposure else "msec"

    def cmd_longexposure(self, args: str) -> str:
        if args:
            v = P.parse_bool_word(args)
            if v is None:
                raise CommandError(f"expected true or false, got {args[:40]!r}")
            self._need_loaded()
            if self._param_line("longexposure") is None:
                raise CommandError("the ACF has no parameter named longexposure")
            self._setp("longexposure", "1" if v else "0")
            self.longexposure = v
        elif self.longexposure is None and self.loaded and self._param_line("longexposure"):
            self.longexposure = self._getp("longexposure") not in ("0", "")
        return "true" if self.longexposure else "false"

    # -- native and status ---------------------------------------------------
    def cmd_native(self, args: str) -> str:
        self._need_open()
        cmd = args.strip()
        if not cmd:
            raise CommandError("usage: native <ARCHON COMMAND>")
        if cmd.upper().startswith("FETCH"):
            raise CommandError("native FETCH is not allowed (binary reply); use expose")
        reply = self.archon.command(cmd)
        for line in P.native_async_lines(cmd, reply):
            tag, _, msg = line.partition(":")
            self.notify(tag, msg)
        return reply

    def cmd_framestatus(self, args: str) -> str:
        self._need_open()
        fs = P.parse_frame(self.archon.command("FRAME"))
        log.info("frame status: TIMER=%X RBUF=%d WBUF=%d", fs.timer, fs.rbuf, fs.wbuf)
        log.info("buf complete frame  width height lines pixels sample base")
        for b in fs.buffers:
            log.info(
                "%3d %8d %5d %6d %6d %5d %6d %6d 0x%08X",
                b.index,
                b.complete,
                b.frame,
                b.width,
                b.height,
                b.lines,
                b.pixels,
                b.sample,
                b.base,
            )
        return ""

    cmd_printstatus = cmd_framestatus

    def cmd_power(self, args: str) -> str:
        self._need_open()
        a = args.strip().lower()
        if a in ("on", "off"):
            if a == "on":
                self._need_loaded()
            self.archon.command("POWERON" if a == "on" else "POWEROFF")
        elif a:
            raise CommandError(f"expected on or off, got {args[:40]!r}")
        status = P.parse_kv(self.archon.command("STATUS"))
        try:
            code = int(status.get("POWER", "0"))
        except ValueError:
            code = 0
        return POWER_NAMES.get(code, "unknown")

    def cmd_systemfile(self, args: str) -> str:
        self._need_open()
        if not args:
            raise CommandError("usage: systemfile <filename>")
        text = self.archon.command("SYSTEM")
        kv = P.parse_kv(text)
        body = "[SYSTEM]\n" + "".join(f"{k}={v}\n" for k, v in kv.items())
        try:
            tmp = f"{args}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write(body)
            os.replace(tmp, args)
        except OSError as exc:
            raise CommandError(f"cannot write {args[:200]}: {exc.strerror}") from None
        return ""

    # -- module commands -----------------------------------------------------
    def _module(self, text: str, kinds: set[str], what: str) -> int:
        m = _int_arg(text, "module", 1, 12)
        kind = self.modules.get(m, "none")
        if kind not in kinds:
            raise CommandError(f"module {m} is {kind}, not a {what} module")
        return m

    def cmd_bias(self, args: str) -> str:
        self._need_loaded()
        parts = args.split()
        if len(parts) not in (2, 3):
            raise CommandError("usage: bias <module> <channel> [volts]")
        m = self._module(parts[0], LV_TYPES | HV_TYPES, "bias")
        ch = _int_arg(parts[1], "channel", 1, 30)
        lv = self.modules[m] in LV_TYPES
        hc = ch > 24
        key = f"MOD{m}/{'LV' if lv else 'HV'}{'HC' if hc else 'LC'}_V{ch - 24 if hc else ch}"
        if len(parts) == 2:
            val = self._values().get(key)
            if val is None:
                raise CommandError(f"{key} not in the loaded ACF")
            return val
        lo, hi = (0.0 if hc else -14.0, 14.0) if lv else (0.0, 31.0)
        volts = _float_arg(parts[2], f"{key} volts", lo, hi)
        text = _num_text(volts)
        self._write_key(key, text, f"APPLYMOD{m - 1:02X}")
        return text

    def cmd_heater(self, args: str) -> str:
        self._need_loaded()
        parts = args.split()
        if len(parts) < 2:
            raise CommandError("usage: heater <module> <A|B> [on|off target | PID | RAMP | ...]")
        m = self._module(parts[0], HEATER_TYPES, "heater")
        ab = parts[1].upper()
        if ab not in ("A", "B"):
            raise CommandError(f"heater must be A or B, got {parts[1][:10]!r}")
        pre = f"MOD{m}/HEATER{ab}"
        apply = f"APPLYMOD{m - 1:02X}"
        vals = self._values()
        rest = parts[2:]
        sub = rest[0].upper() if rest else ""

        def get(k: str, default: str = "0") -> str:
            return vals.get(pre + k, default)

        if not rest:
            return f"{'ON' if get('ENABLE') == '1' else 'OFF'} {get('TARGET')}"
        if sub in ("ON", "OFF"):
            if len(rest) not in (1, 2):
                raise CommandError("usage: heater <module> <A|B> <on|off> [target]")
            target = get("TARGET")
            if len(rest) == 2:
                target = _num_text(_float_arg(rest[1], "target", -150.0, 50.0))
            self._write_key(pre + "TARGET", target)
            self._write_key(pre + "ENABLE", "1" if sub == "ON" else "0", apply)
            return f"{sub} {target}"
        if sub == "PID":
            if len(rest) == 1:
                return f"{get('P')} {get('I')} {get('D')}"
            if len(rest) != 4:
                raise CommandError("usage: heater <module> <A|B> PID [p i d]")
            pid = [_num_text(_float_arg(x, "PID term", 0.0, 10000.0)) for x in rest[1:]]
            for k, v in zip(("P", "I", "D"), pid, strict=True):
                self._write_key(pre + k, v)
            self.archon.command(apply)
            return " ".join(pid)
        if sub == "RAMP":
            if len(rest) == 1:
                on = get("RAMP") == "1"
                return f"{'ON' if on else 'OFF'} {get('RAMPRATE')}"
            state = rest[1].upper()
            if state not in ("ON", "OFF") or len(rest) > 3:
                raise CommandError("usage: heater <module> <A|B> RAMP [on|off [ramprate]]")
            rate = get("RAMPRATE")
            if state == "OFF":
                rate = "0"
            elif len(rest) == 3:
                rate = str(_int_arg(rest[2], "ramp rate", 1, 32767))
            self._write_key(pre + "RAMPRATE", rate)
            self._write_key(pre + "RAMP", "1" if state == "ON" else "0", apply)
            return f"{state} {rate}"
        if sub == "ILIM":
            if len(rest) == 1:
                return get("IL")
            v = str(_int_arg(rest[1], "ILIM", 0, 10000))
            self._write_key(pre + "IL", v, apply)
            return v
        if sub == "INPUT":
            names = "ABC"
            if len(rest) == 1:
                idx = get("SENSOR")
                return names[int(idx)] if idx in ("0", "1", "2") else idx
            s = rest[1].upper()
            if s not in ("A", "B", "C"):
                raise CommandError(f"input must be A, B or C, got {rest[1][:10]!r}")
            self._write_key(pre + "SENSOR", str(names.index(s)), apply)
            return s
        raise CommandError(f"unknown heater subcommand {rest[0][:20]!r}")

    def cmd_sensor(self, args: str) -> str:
        self._need_loaded()
        parts = args.split()
        if len(parts) < 2 or len(parts) > 4:
            raise CommandError("usage: sensor <module> <A|B|C> [current | AVG [N]]")
        m = self._module(parts[0], HEATER_TYPES, "heater")
        s = parts[1].upper()
        if s not in ("A", "B", "C"):
            raise CommandError(f"sensor must be A, B or C, got {parts[1][:10]!r}")
        apply = f"APPLYMOD{m - 1:02X}"
        vals = self._values()
        if len(parts) >= 3 and parts[2].upper() == "AVG":
            key = f"MOD{m}/SENSOR{s}AVG"
            if len(parts) == 3:
                return str(1 << int(vals.get(key, "0") or 0))
            n = _int_arg(parts[3], "averaging", 1, 256)
            if n & (n - 1):
                raise CommandError(f"averaging must be a power of 2 up to 256, got {n}")
            self._write_key(key, str(n.bit_length() - 1), apply)
            return str(n)
        key = f"MOD{m}/SENSOR{s}CURRENT"
        if len(parts) == 2:
            return vals.get(key, "0")
        if len(parts) != 3:
            raise CommandError("usage: sensor <module> <A|B|C> [current]")
        v = str(_int_arg(parts[2], "sensor current (nA)", 0, 1_600_000))
        self._write_key(key, v, apply)
        return v

    def cmd_cds(self, args: str) -> str:
        self._need_loaded()
        parts = args.split()
        if len(parts) not in (1, 2):
            raise CommandError("usage: cds <key> [value]")
        key = parts[0].upper()
        vals = self._values()
        if key not in vals:
            raise CommandError(f"{key} not in the loaded ACF")
        if len(parts) == 1:
            return vals[key]
        if key.startswith("PARAMETER") or "/" in key:
            raise CommandError(f"{key} is not a CDS key")
        self._not_exposing(key)
        old = vals[key]
        self._write_key(key, parts[1], "APPLYCDS")
        if key in P.GEOMETRY_KEYS and self.mode and self.mode != "RAW":
            arch = dict(self.acf.modes["DEFAULT"].arch)
            arch.update(self.acf.modes[self.mode].arch)
            try:
                self.geometry = P.compute_geometry(self._values(), arch)
            except P.AcfError as exc:
                self._write_key(key, old, "APPLYCDS")
                raise CommandError(f"cds {key}: {exc}") from None
        return parts[1]

    def cmd_inreg(self, args: str) -> str:
        self._need_loaded()
        parts = args.split()
        if len(parts) != 3:
            raise CommandError("usage: inreg <module> <reg> <value>")
        m = _int_arg(parts[0], "module", 1, 12)
        reg = _int_arg(parts[1], "register", 0, 15)
        val = _int_arg(parts[2], "value", 0, 65535)
        key = f"MOD{m}/VCPU_INREG{reg}"
        if self.modules.get(m) != "LVDS" and key not in self._values():
            raise CommandError(f"module {m} ({self.modules.get(m, 'none')}) has no VCPU")
        self._write_key(key, str(val), f"APPLYDIO{m - 1:02X}")
        return ""

    # -- shutter and triggers ------------------------------------------------
    def cmd_shutter(self, args: str) -> str:
        a = args.strip().lower()
        if a in ("enable", "disable"):
            if not self.cfg.shutenable_param:
                raise CommandError("SHUTENABLE_PARAM is not configured")
            self._need_loaded()
            value = self.cfg.shutenable_enable if a == "enable" else self.cfg.shutenable_disable
            self._setp(self.cfg.shutenable_param, value)
            self._shutter_written = value
            self.shutter_enabled = a == "enable"
        elif a in ("open", "close"):
            self._need_loaded()
            self._write_key("TRIGOUTFORCE", "1")
            self._write_key("TRIGOUTLEVEL", "1" if a == "open" else "0", "APPLYSYSTEM")
            self.shutter_forced = "OPEN" if a == "open" else "CLOSED"
        elif a == "reset":
            self._need_loaded()
            self._write_key("TRIGOUTFORCE", "0", "APPLYSYSTEM")
            self.shutter_forced = None
        elif a:
            raise CommandError(f"expected enable, disable, open, close or reset, got {a[:20]!r}")
        elif not self.cfg.shutenable_param and self.shutter_forced is None:
            raise CommandError("SHUTENABLE_PARAM is not configured")
        if self.shutter_forced:
            return self.shutter_forced
        return "enabled" if self.shutter_enabled else "disabled"

    def cmd_trigin(self, args: str) -> str:
        parts = args.split()
        if not parts or len(parts) > 2:
            raise CommandError("usage: trigin <expose [N]|untimed|readout|disable>")
        form = parts[0].lower()
        c = self.cfg
        if form not in ("expose", "untimed", "readout", "disable"):
            raise CommandError(f"unknown trigin form {parts[0][:20]!r}")
        if len(parts) == 2 and form != "expose":
            raise CommandError(f"trigin {form} takes no argument")
        self._need_loaded()
        if self.mode is None:
            raise CommandError("no mode selected")
        need = {
            "expose": ("TRIGIN_EXPOSE_PARAM", c.trigin_expose_param),
            "untimed": ("TRIGIN_UNTIMED_PARAM", c.trigin_untimed_param),
            "readout": ("TRIGIN_READOUT_PARAM", c.trigin_readout_param),
        }
        if form in need and not need[form][1]:
            raise CommandError(f"{need[form][0]} not defined")
        n = _int_arg(parts[1], "trigger count", 1, MAX_NSEQ) if len(parts) == 2 else 1
        if form == "disable":
            self._stop_trigger()
        elif self.trig_thread is not None and self.trig_thread.is_alive():
            raise CommandError("a triggered exposure is already armed (trigin disable first)")
        expose_v = str(n) if form == "expose" else "0"
        untimed_v = c.trigin_untimed_enable if form == "untimed" else c.trigin_untimed_disable
        readout_v = c.trigin_readout_enable if form == "readout" else c.trigin_readout_disable
        for name, value in (
            (c.trigin_expose_param, expose_v),
            (c.trigin_untimed_param, untimed_v),
            (c.trigin_readout_param, readout_v),
        ):
            if name:
                self._setp(name, value)
        if form in ("expose", "readout"):
            if not self.expose_lock.acquire(blocking=False):
                raise CommandError("an exposure is in progress")
            self.trig_stop.clear()
            self.trig_thread = threading.Thread(
                target=self._trigger_worker, args=(n, form), name="camerad-trigin", daemon=True
            )
            self.trig_thread.start()
        return ""

    def _stop_trigger(self) -> None:
        self.trig_stop.set()
        t = self.trig_thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)
        self.trig_thread = None

    def _trigger_worker(self, n: int, form: str) -> None:
        try:
            self._sequence(n, pre=0, timed=False, wait_forever=True)
        except CommandError as exc:
            self._fail(f"trigin {form}", str(exc))
        except (ArchonError, fitsio.FitsWriteError) as exc:
            self._fail(f"trigin {form}", str(exc))
        except Exception as exc:  # noqa: BLE001 - background thread must report, not die
            log.exception("triggered exposure failed")
            self._fail(f"trigin {form}", f"internal error: {exc}")
        finally:
            self.expose_lock.release()

    # -- exposures -----------------------------------------------------------
    def cmd_abort(self, args: str) -> str:
        self.abort_event.set()
        self.trig_stop.set()
        return ""

    def cmd_expose(self, args: str) -> str:
        n = _int_arg(args.strip(), "number of exposures", 1, MAX_NSEQ) if args.strip() else 1
        if not self.expose_lock.acquire(blocking=False):
            raise CommandError("an exposure is already in progress")
        try:
            self._sequence(n, pre=self.preexposures, timed=True, wait_forever=False)
        finally:
            self.expose_lock.release()
        return ""

    def _check_ready(self) -> P.Geometry:
        self._need_loaded()
        if self.mode is None or self.geometry is None:
            raise CommandError("no mode selected")
        if not self.cfg.expose_param:
            raise CommandError("EXPOSE_PARAM is not configured")
        if self.cfg.readout_time <= 0:
            raise CommandError("READOUT_TIME is not configured")
        return self.geometry

    def _sequence(self, n: int, pre: int, timed: bool, wait_forever: bool, write: bool = True):
        geom = self._check_ready()
        self.abort_event.clear()
        if self.exptime is None:
            self.notify("NOTICE", "exptime has not been set--will read from Archon")
            self.exptime = _int_arg(self._getp("exptime"), "exptime", 0, 2**32)
        if self.longexposure is None:
            self.longexposure = self._param_line("longexposure") is not None and self._getp(
                "longexposure"
            ) not in ("0", "")
        if timed and self.cfg.shutenable_param and self.mode != "RAW":
            value = (
                self.cfg.shutenable_enable if self.shutter_enabled else self.cfg.shutenable_disable
            )
            if self._shutter_written != value:  # written once per load and on change
                self._setp(self.cfg.shutenable_param, value)
                self._shutter_written = value
        fs = P.parse_frame(self.archon.command("FRAME"))
        newest = fs.newest()
        last = newest.frame if newest else 0
        nseq = n + pre
        cube = None
        frames_done = 0
        self.exposing = True
        try:
            if timed and self.mode != "RAW":
                self._setp(self.cfg.expose_param, str(nseq))
            for i in range(nseq):
                start = time.time()
                keys = self._user_cards()
                if timed and self.mode != "RAW":
                    t0 = P.parse_kv(self.archon.command("TIMER")).get("TIMER", "0")
                    self._wait_exposure(start, int(t0, 16))
                if self.writekeys == "after":
                    keys = self._user_cards()
                if self.mode == "RAW" and timed:
                    buf = P.parse_frame(self.archon.command("FRAME")).newest()
                    if buf is None:
                        raise CommandError("no frame in the Archon buffers to read RAW data from")
                else:
                    buf = self._wait_readout(last, wait_forever)
                    last = buf.frame
                if i < pre:
                    log.info("pre-exposure %d of %d done (frame %d)", i + 1, pre, buf.frame)
                    continue
                k = i - pre + 1
                single = not self.cubeamps and not (self.datacube and n > 1)
                if write and single:
                    self._write_streamed(start, geom, keys, buf)
                    frames_done += 1
                    continue
                image = self._read_frame(buf, geom)
                if not write:
                    continue
                if self.datacube and not self.cubeamps and n > 1:
                    if cube is None:
                        cube = self._open_file(start, geom, keys, buf, write_primary=True)
                    try:
                        cube[0].extension(
                            fitsio.pixels(image, geom.bitpix, self.hdrshift),
                            [
                                ("EXTNAME", str(k), "exposure number"),
                                ("FRAMENUM", buf.frame, "Archon frame number"),
                                ("DATE-OBS", self._stamp(start), "exposure start"),
                                *keys,
                            ],
                        )
                    except fitsio.FitsWriteError:
                        self.notify("DATACUBE", f"{k} ERROR")
                        cube = None
                        raise
                    self.notify("DATACUBE", f"{k} COMPLETE")
                else:
                    self._write_single(start, geom, keys, buf, image)
                frames_done += 1
            if cube is not None:
                path = cube[0].commit()
                self._file_done(path)
                cube = None
        except BaseException:
            if cube is not None:
                cube[0].discard()
                self.notify("FILE", f"{cube[0].directory / cube[0].name} ERROR")
            if timed and self.mode != "RAW":
                self._stop_sequence()
            raise
        finally:
            self.exposing = False
        return frames_done

    def _stop_sequence(self) -> None:
        try:
            if self.archon.is_open:
                self._setp(self.cfg.expose_param, "0")
        except ArchonError as exc:
            log.warning("could not stop the exposure sequence: %s", exc)

    def _check_abort(self) -> None:
        if self.abort_event.is_set():
            raise Aborted("exposure aborted")

    def _wait_exposure(self, start: float, t0_ticks: int) -> None:
        exptime = self.exptime or 0
        if exptime <= 0:
            return
        factor = 1.0 if self.longexposure else 1000.0
        total = exptime / factor
        end = start + total
        last_note = 0.0
        while True:
            self._check_abort()
            now = time.time()
            left = end - now
            if left <= total * 0.1:
                break
            if now - last_note >= 0.1:
                self.notify("EXPOSURE", str(max(0, int(left * factor))))
                last_note = now
            self.abort_event.wait(min(0.1, left - total * 0.1))
        need_ticks = int(exptime * 1e8 / factor)
        guard = time.monotonic() + total + 2.0
        while True:
            self._check_abort()
            ticks = int(P.parse_kv(self.archon.command("TIMER")).get("TIMER", "0"), 16)
            if ticks - t0_ticks >= need_ticks:
                break
            if time.monotonic() > guard:
                log.warning("Archon TIMER did not reach the exposure time; going on")
                break
            time.sleep(0.001)
        self.notify("EXPOSURE", "0")

    def _wait_readout(self, last: int, wait_forever: bool) -> P.BufferStatus:
        timeout = self.cfg.readout_time * 1.1 / 1000.0
        deadline = time.monotonic() + timeout
        lastlines = -1
        busy = 0
        while True:
            self._check_abort()
            if wait_forever and self.trig_stop.is_set():
                raise Aborted("triggered exposure disabled")
            try:
                fs = P.parse_frame(self.archon.command("FRAME"))
            except P.ProtocolError as exc:
                busy += 1
                if busy > 300:
                    raise CommandError(f"FRAME replies unusable: {exc}") from None
                time.sleep(POLL)
                continue
            buf = fs.find_frame(last + 1)
            if buf is None:
                newest = fs.newest()
                if newest is not None and newest.frame > last:
                    buf = newest
            if buf is not None:
                return buf
            wb = fs.writing()
            if wb is not None and wb.lines != lastlines:
                lastlines = wb.lines
                self.notify("LINECOUNT", str(wb.lines))
            if not wait_forever and time.monotonic() > deadline:
                raise CommandError(
                    f"readout timeout: no new frame within {timeout * 1000:.0f} ms "
                    f"(READOUT_TIME {self.cfg.readout_time} + 10 %)"
                )
            (self.trig_stop if wait_forever else self.abort_event).wait(POLL)

    def _read_frame(self, buf: P.BufferStatus, geom: P.Geometry, sink=None) -> np.ndarray | None:
        if buf.width and buf.height and not geom.raw:
            if buf.width * buf.height != geom.width * geom.height:
                self.notify(
                    "NOTICE",
                    f"Archon frame {buf.width}x{buf.height} differs from ACF geometry "
                    f"{geom.width}x{geom.height}",
                )
        addr = buf.base + (buf.rawoffset if geom.raw else 0)
        with self.archon.lock:
            self.archon.command(f"LOCK{buf.index}")
            try:
                t0 = time.monotonic()
                data = self.archon.fetch(addr, geom.blocks, sink=sink)
                log.debug(
                    "fetched frame %d: %d blocks in %.3f s",
                    buf.frame,
                    geom.blocks,
                    time.monotonic() - t0,
                )
            finally:
                if self.archon.is_open:
                    try:
                        self.archon.command("LOCK0")
                    except ArchonError as exc:
                        log.warning("LOCK0 failed: %s", exc)
        if data is None:
            return None
        dtype = "<u2" if geom.bytes_per_pixel == 2 else "<u4"
        return data[: geom.image_bytes].view(dtype).reshape(geom.height, geom.width)

    # -- FITS ------------------------------------------------------------------
    def _localtime(self, t: float) -> time.struct_time:
        return time.localtime(t) if self.cfg.tm_zone == "local" else time.gmtime(t)

    def _stamp(self, t: float) -> str:
        st = self._localtime(t)
        return time.strftime("%Y-%m-%dT%H:%M:%S", st) + f".{int(t * 1000) % 1000:03d}"

    def _dir_for(self, start: float) -> Path:
        base = Path(self.imdir)
        if not self.autodir:
            return base
        return base / time.strftime("%Y%m%d", self._localtime(start))

    def _target_dir(self, start: float) -> Path:
        d = self._dir_for(start)
        if not self.autodir:
            return d
        try:
            d.mkdir(mode=self.cfg.dirmode, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"cannot create image directory {d}: {exc.strerror}") from None
        return d

    def _system_cards(self, buf: P.BufferStatus | None, start: float | None) -> list:
        geom = self.geometry
        unit = self._unit()
        cards: list[fitsio.Card] = [
            ("CAMD_VER", BUILD, "camerad build date"),
            (
                "EXPTIME",
                self.exptime if self.exptime is not None else 0,
                f"exposure time in {unit}",
            ),
            ("TM_ZONE", "local" if self.cfg.tm_zone == "local" else "GMT", "time zone"),
            ("SHUTTEN", bool(self.shutter_enabled), "shutter enabled"),
        ]
        if start is not None:
            cards.append(("DATE-OBS", self._stamp(start), "exposure start"))
        if self.shutter_forced:
            cards.append(("SHUTFORC", 1, f"shutter forced {self.shutter_forced.lower()}"))
        cards.append(("MODE", self.mode or "", "camera mode"))
        cards.append(("FIRMWARE", self.acf_path[-68:], "ACF file"))
        if geom is not None and geom.bitpix == 32:
            cards.append(("HDRSHIFT", self.hdrshift, "HDR right shift (bits)"))
        if buf is not None:
            cards.append(("FRAMENUM", buf.frame, "Archon frame number"))
        cards.append(("IMNUM", self.imnum, "image number"))
        for ch, (gain, offset) in sorted(P.tap_gains(self._values()).items()):
            if ch > 99:
                continue
            try:
                g: object = float(gain)
            except ValueError:
                g = gain
            try:
                o: object = int(offset)
            except ValueError:
                o = offset
            cards.append((f"GAIN{ch:02d}", g, f"gain of AD channel {ch}"))
            cards.append((f"OFFSET{ch:02d}", o, f"offset of AD channel {ch}"))
        return cards

    def _user_cards(self) -> list:
        cards: list[fitsio.Card] = []
        if self.acf is not None and self.mode in (self.acf.modes if self.acf else {}):
            for k, (v, c) in self.acf.modes[self.mode].fits.items():
                try:
                    cards.append((k, P.parse_user_key(f"{k}={v}").value, c))
                except ValueError:
                    continue
        with self.lock:
            cards.extend((uk.keyword, uk.value, uk.comment) for uk in self.userkeys.values())
        return cards

    def _cards(self, name: str, buf, start: float, keys: list) -> list:
        merged: dict[str, fitsio.Card] = {}
        for card in [("FILENAME", name, "file name"), *self._system_cards(buf, start), *keys]:
            merged[card[0]] = card  # a user key overrides a system key of the same name
        return list(merged.values())

    def _name_for(self, start: float) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S", self._localtime(start))
        return P.fits_basename(self.basename, self.fitsnaming, self.imnum, stamp)

    def _open_file(self, start, geom, keys, buf, write_primary: bool):
        directory = self._target_dir(start)
        name = fitsio.unique_name(directory, self._name_for(start)).name
        f = fitsio.AtomicFits(directory, name)
        if write_primary:
            try:
                f.primary(None, self._cards(name, buf, start, keys))
            except BaseException:
                f.discard()
                raise
        return f, name

    def _write_streamed(self, start, geom, keys, buf) -> None:
        """Fetch a frame straight into its FITS file, block by block."""
        f, name = self._open_file(start, geom, keys, buf, write_primary=False)
        try:
            img = f.stream_image(
                geom.width,
                geom.height,
                geom.bitpix,
                self.hdrshift,
                self._cards(name, buf, start, keys),
            )
            try:
                self._read_frame(buf, geom, sink=img.feed)
            except BaseException:
                img.abort()
                raise
            path = img.finish()
        except BaseException:
            f.discard()
            self.notify("FILE", f"{f.directory / name} ERROR")
            raise
        self._file_done(path)

    def _write_single(self, start, geom, keys, buf, image) -> None:
        f, name = self._open_file(start, geom, keys, buf, write_primary=False)
        try:
            pix = fitsio.pixels(image, geom.bitpix, self.hdrshift)
            if self.cubeamps:
                f.primary(None, self._cards(name, buf, start, keys))
                for d in range(geom.num_detect):
                    for j, (x1, x2, y1, y2) in enumerate(geom.amp_sections):
                        xo = d * geom.cols
                        sub = pix[y1 - 1 : y2, xo + x1 - 1 : xo + x2]
                        extno = d * len(geom.amp_sections) + j + 1
                        f.extension(
                            np.ascontiguousarray(sub),
                            [
                                ("EXTNAME", str(extno), "amplifier number"),
                                ("AMPSEC", f"[{x1}:{x2},{y1}:{y2}]", "amplifier section"),
                            ],
                        )
            else:
                f.primary(pix, self._cards(name, buf, start, keys))
            path = f.commit()
        except BaseException:
            f.discard()
            self.notify("FILE", f"{f.directory / name} ERROR")
            raise
        self._file_done(path)

    def _file_done(self, path: Path) -> None:
        self.imnum += 1
        log.info("wrote %s", path)
        self.notify("FILE", f"{path} COMPLETE")

    # -- test commands -------------------------------------------------------
    def cmd_test(self, args: str) -> str:
        parts = args.split()
        if not parts:
            raise CommandError("usage: test <testname> [args]")
        t = parts[0].lower()
        if t == "fitsname":
            now = time.time()
            return str(self._dir_for(now) / self._name_for(now))
        if t == "builddate":
            return BUILD
        if t == "async":
            msg = " ".join(parts[1:]) or "test"
            self.notify("TEST", msg)
            return ""
        if t == "modules":
            return " ".join(f"{s}:{k}" for s, k in sorted(self.modules.items()))
        if t == "busy":
            return "true" if self.expose_lock.locked() else "false"
        if t in ("amplist", "ampinfo"):
            if self.geometry is None:
                raise CommandError("no mode selected")
            return " ".join(f"[{a}:{b},{c}:{d}]" for a, b, c, d in self.geometry.amp_sections)
        if t == "parammap":
            for i, (k, v) in enumerate(self.cfgmem):
                if P.is_param_key(k):
                    log.info("param line %04X %s", i, v)
            return ""
        if t == "configmap":
            for i, (k, v) in enumerate(self.cfgmem):
                log.info("config line %04X %s=%s", i, k, v)
            return ""
        if t == "bw":
            nseq = _int_arg(parts[1], "nseq", 1, MAX_NSEQ) if len(parts) > 1 else 1
            if not self.expose_lock.acquire(blocking=False):
                raise CommandError("an exposure is already in progress")
            try:
                t0 = time.monotonic()
                self._sequence(nseq, pre=0, timed=True, wait_forever=False, write=False)
                dt = time.monotonic() - t0
            finally:
                self.expose_lock.release()
            mb = nseq * self.geometry.image_bytes / 1e6
            return f"{mb / dt:.1f} MB/s"
        raise CommandError(f"unknown test {t[:20]!r}")

    def shutdown(self) -> None:
        self.abort_event.set()
        self.archon.abort()  # wakes a thread waiting for the controller
        self._stop_trigger()
        if self.archon.lock.acquire(timeout=2.0):
            try:
                self.archon.close()
            finally:
                self.archon.lock.release()

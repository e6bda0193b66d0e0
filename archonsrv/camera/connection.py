"""Commands of the controller connection, firmware, modes and geometry."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from common.config import ConfigError, read_bounded

from .. import acf as ACF
from .. import archon as A
from .. import protocol as P
from ..controller import ArchonError
from .core import Camera, CommandError, int_arg
from .table import IDLE, LOADED, OPEN, command

log = logging.getLogger("camerad")

MAX_ACF_BYTES = 16 << 20
FETCH_CAP_BYTES = 1_500_000_000
FRAME_BUFFER_BYTES = {2: 0x30000000, 3: 0x20000000}  # per buffer, by active buffer count


@command("open")
def open_(cam: Camera, args: str) -> str:
    if cam.ctl.is_open:
        return ""
    if not cam.cfg.archon_ip:
        raise CommandError("ARCHON_IP is not configured")
    cam.ctl.connect(cam.cfg.archon_ip, cam.cfg.archon_port)
    try:
        cam.system = cam.ctl.system()
    except (ArchonError, A.ProtocolError) as exc:
        cam.ctl.close()
        raise CommandError(f"SYSTEM query failed: {exc}") from None
    cam.modules = A.module_types(cam.system)
    for slot, kind in cam.modules.items():
        if kind.startswith("AD") and not 5 <= slot <= 8:
            log.warning("AD module in slot %d (expected slots 5-8)", slot)
    log.info(
        "Archon backplane %s, modules: %s",
        cam.system.get("BACKPLANE_VERSION", "?"),
        ", ".join(f"{s}:{k}" for s, k in sorted(cam.modules.items())) or "none",
    )
    cam.drain_fetchlog()
    return ""


@command("close")
def close(cam: Camera, args: str) -> str:
    cam.ctl.close()
    return ""


@command("isopen")
def isopen(cam: Camera, args: str) -> str:
    return "true" if cam.ctl.is_open else "false"


def confined_path(cam: Camera, name: str, what: str) -> str:
    """``name`` (relative to the configuration file), resolved, if it lies in FIRMWARE_DIRS.

    The check is on the resolved path (symbolic links and ``..`` followed),
    so no spelling reaches outside; the error names the path the client
    gave, never anything read from a file.
    """
    path = Path(cam.cfg.resolve(name))
    try:
        real = path.resolve()
    except (OSError, RuntimeError):
        real = None
    if real is not None:
        for d in cam.cfg.firmware_dirs():
            if real.is_relative_to(d):
                return str(real)  # the checked path itself, not a name a link may move
    cam.limiter.log(
        f"{what} outside FIRMWARE_DIRS", logging.WARNING, "refused %s %s", what, name[:200]
    )
    raise CommandError(f"{what} {name[:200]} is not in a directory allowed by FIRMWARE_DIRS")


@command("load", needs=(OPEN,))
def load(cam: Camera, args: str) -> str:
    return _load(cam, args, timing=False)


@command("loadtiming", needs=(OPEN,))
def loadtiming(cam: Camera, args: str) -> str:
    return _load(cam, args, timing=True)


def _load(cam: Camera, args: str, timing: bool) -> str:
    path = args.strip() or cam.cfg.default_firmware
    if not path:
        raise CommandError("no ACF file given and DEFAULT_FIRMWARE not configured")
    if cam.expose_lock.locked():
        raise CommandError("cannot load firmware during an exposure")
    path = confined_path(cam, path, "ACF file")
    try:
        data = read_bounded(path, MAX_ACF_BYTES, "ACF")
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    try:
        acf = ACF.parse_acf(data.decode("latin-1"), path)
    except ACF.AcfError as exc:
        raise CommandError(str(exc)) from None
    with cam.ctl.lock:
        cam.loaded = False
        try:
            cam.ctl.poll(False)
            cam.ctl.clear_config()
            for i, (k, v) in enumerate(acf.lines):
                cam.ctl.write_config(i, k, v)
            cam.ctl.poll(True)
            if timing:
                cam.ctl.load_timing()
            else:
                cam.ctl.apply_all()
        except ArchonError:
            cam.drain_fetchlog()
            raise
        cam.acf = acf
        cam.acf_path = str(Path(path).resolve())
        cam.cfgmem = list(acf.lines)
        cam.loaded = True
        cam.exptime = None
        cam.longexposure = None
        cam.mode = None
        cam.geometry = None
        cam.shutter_forced = None
        cam._shutter_written = None
    log.info("loaded %s (%d lines)%s", path, len(acf.lines), " timing only" if timing else "")
    set_mode(cam, "DEFAULT")
    return ""


@command("isloaded")
def isloaded(cam: Camera, args: str) -> str:
    return "true" if cam.loaded else "false"


@command("mode", set_needs=(LOADED, IDLE), busy_what="the mode")
def mode(cam: Camera, args: str) -> str:
    if not args:
        if cam.mode is None:
            raise CommandError("no mode selected")
        return cam.mode
    set_mode(cam, args.strip().upper())
    return cam.mode or ""


def set_mode(cam: Camera, name: str) -> None:
    acf = cam.acf
    if acf is None:
        raise CommandError("no firmware loaded")
    if name == "RAW":
        if cam.values().get("RAWENABLE", "0") != "1":
            raise CommandError("mode RAW needs RAWENABLE=1 in the ACF")
        try:
            geom = ACF.compute_geometry(cam.values(), acf.modes["DEFAULT"].arch, raw=True)
        except ACF.AcfError as exc:
            raise CommandError(str(exc)) from None
        cam.mode, cam.geometry = "RAW", geom
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
        geom = ACF.compute_geometry(dict(target), arch)
    except ACF.AcfError as exc:
        raise CommandError(f"mode {name}: {exc}") from None
    if geom.image_bytes > FETCH_CAP_BYTES // geom.activebufs:
        raise CommandError(f"mode {name}: image of {geom.image_bytes} bytes too large")
    changed_cfg = changed_param = False
    with cam.ctl.lock:
        for i, (k, v) in enumerate(target):
            if i < len(cam.cfgmem) and cam.cfgmem[i] == (k, v):
                continue
            cam.ctl.write_config(i, k, v)
            cam.cfgmem[i] = (k, v)
            if A.is_param_key(k):
                changed_param = True
            else:
                changed_cfg = True
        if changed_param:
            cam.ctl.load_params()
        if changed_cfg:
            cam.ctl.apply_cds()
        cam.mode, cam.geometry = name, geom
    log.info(
        "mode %s: %d x %d, %d-bit, %d amplifier(s)",
        name,
        geom.width,
        geom.height,
        geom.bitpix,
        len(geom.amp_sections),
    )


@command("geometry", set_needs=(LOADED, IDLE), busy_what="the geometry")
def geometry(cam: Camera, args: str) -> str:
    """Archon: set the image size by rewriting PIXELCOUNT and LINECOUNT."""
    parts = args.split()
    if parts:
        if len(parts) != 2:
            raise CommandError("usage: geometry [cols rows]")
        if cam.geometry is None or cam.mode in (None, "RAW"):
            raise CommandError("geometry needs an image mode selected")
        g = cam.geometry
        cols = int_arg(parts[0], "cols", 1, 1 << 20)
        rows = int_arg(parts[1], "rows", 1, 1 << 20)
        per_x = g.hori_amps * g.num_detect
        if cols % per_x or rows % g.vert_amps:
            raise CommandError(
                f"cols must be a multiple of {per_x} and rows of {g.vert_amps} "
                f"(amplifiers of mode {cam.mode})"
            )
        if cols * rows * g.bytes_per_pixel > FRAME_BUFFER_BYTES[g.activebufs]:
            raise CommandError(f"{cols} x {rows} does not fit in an Archon frame buffer")
        old = (cam.values()["PIXELCOUNT"], cam.values()["LINECOUNT"])
        cam.write_key("PIXELCOUNT", str(cols // per_x))
        cam.write_key("LINECOUNT", str(rows // g.vert_amps), cam.ctl.apply_cds)
        try:
            cam.geometry = ACF.compute_geometry(cam.values(), cam.mode_arch())
        except ACF.AcfError as exc:
            cam.write_key("PIXELCOUNT", old[0])
            cam.write_key("LINECOUNT", old[1], cam.ctl.apply_cds)
            raise CommandError(str(exc)) from None
    if cam.geometry is None:
        raise CommandError("no mode selected")
    return f"{cam.geometry.width} {cam.geometry.height}"


@command("buffer")
def buffer(cam: Camera, args: str) -> str:
    """Archon: bytes an image of the given size needs (frame buffers are fixed)."""
    parts = args.split()
    bpp = cam.geometry.bytes_per_pixel if cam.geometry else 2
    bufs = cam.geometry.activebufs if cam.geometry else 3
    if not parts:
        if cam.geometry is None:
            raise CommandError("no mode selected")
        return str(cam.geometry.image_bytes)
    if len(parts) == 2:
        size = int_arg(parts[0], "cols", 1, 1 << 20) * int_arg(parts[1], "rows", 1, 1 << 20)
        size *= bpp
    elif len(parts) == 1:
        size = int_arg(parts[0], "size", 1, 1 << 40)
    else:
        raise CommandError("usage: buffer [cols rows | bytes]")
    if size > FRAME_BUFFER_BYTES[bufs]:
        raise CommandError(f"{size} bytes exceed an Archon frame buffer")
    return str(size)


@command("native", needs=(OPEN,))
def native(cam: Camera, args: str) -> str:
    cmd = args.strip()
    if not cmd:
        raise CommandError("usage: native <ARCHON COMMAND>")
    if A.has_binary_reply(cmd):
        raise CommandError("native FETCH is not allowed (binary reply); use expose")
    reply = cam.ctl.native(cmd)
    for line in P.native_async_lines(cmd, reply):
        tag, _, msg = line.partition(":")
        cam.notify(tag, msg)
    return reply


@command("framestatus", "printstatus", needs=(OPEN,))
def framestatus(cam: Camera, args: str) -> str:
    fs = cam.ctl.frame()
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


@command("power", needs=(OPEN,))
def power(cam: Camera, args: str) -> str:
    a = args.strip().lower()
    if a in ("on", "off"):
        if a == "on":
            cam.need_loaded()
        cam.ctl.power(a == "on")
    elif a:
        raise CommandError(f"expected on or off, got {args[:40]!r}")
    status = cam.ctl.status()
    try:
        code = int(status.get("POWER", "0"))
    except ValueError:
        code = 0
    return A.POWER_NAMES.get(code, "unknown")


@command("systemfile", needs=(OPEN,))
def systemfile(cam: Camera, args: str) -> str:
    if not args:
        raise CommandError("usage: systemfile <filename>")
    target = confined_path(cam, args, "system file")
    kv = cam.ctl.system()
    body = "[SYSTEM]\n" + "".join(f"{k}={v}\n" for k, v in kv.items())
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        # a new file, never through a link planted under the temporary name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "w", encoding="ascii") as fh:
            fh.write(body)
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CommandError(f"cannot write {args[:200]}: {exc.strerror}") from None
    return ""

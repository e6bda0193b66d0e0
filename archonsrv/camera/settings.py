"""Server settings, FITS keywords and Archon parameters."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .. import protocol as P
from . import headers
from .core import Camera, CommandError, int_arg
from .table import LOADED, command

log = logging.getLogger("camerad")

MAX_EXPTIME = 0xFFFFF
MAX_USER_KEYS = 500


@command("echo")
def echo(cam: Camera, args: str) -> str:
    return args


@command("interface")
def interface(cam: Camera, args: str) -> str:
    return "STA-Archon"


@command("config")
def config(cam: Camera, args: str) -> str:
    cam.notify("CONFIG", cam.cfg.source)
    return cam.cfg.source


@command("longerror")
def longerror(cam: Camera, args: str) -> str:
    return cam.bool_setting("longerror", args, "longerror")


@command("cubeamps")
def cubeamps(cam: Camera, args: str) -> str:
    with cam.lock:
        v = cam.bool_setting("cubeamps", args, "cubeamps")
        if args:
            cam.datacube = cam.cubeamps
            cam.notify("NOTICE", f"override datacube {v}")
    return v


@command("datacube")
def datacube(cam: Camera, args: str) -> str:
    return cam.bool_setting("datacube", args, "datacube")


@command("autodir")
def autodir(cam: Camera, args: str) -> str:
    if args:
        v = P.parse_bool_word(args)
        if v is None:
            raise CommandError(f"expected yes or no, got {args[:40]!r}")
        cam.autodir = v
    return "yes" if cam.autodir else "no"


@command("basename")
def basename(cam: Camera, args: str) -> str:
    if args:
        if not P.valid_basename(args) or len(args) > 200:
            raise CommandError(f"invalid base name {args[:40]!r}", value=cam.basename)
        cam.basename = args
    return cam.basename


def choice_setting(cam: Camera, attr: str, args: str, choices: tuple[str, str]) -> str:
    if args:
        v = args.strip().lower()
        if v not in choices:
            raise CommandError(f"expected {choices[0]} or {choices[1]}, got {args[:40]!r}")
        setattr(cam, attr, v)
    return getattr(cam, attr)


def int_setting(cam: Camera, attr: str, args: str, what: str, lo: int, hi: int) -> str:
    """Set the whole-number setting ``attr`` (``lo``..``hi``) if given; reply its value."""
    if args:
        setattr(cam, attr, int_arg(args, what, lo, hi))
    return str(getattr(cam, attr))


@command("fitsnaming")
def fitsnaming(cam: Camera, args: str) -> str:
    return choice_setting(cam, "fitsnaming", args, ("time", "number"))


@command("imnum")
def imnum(cam: Camera, args: str) -> str:
    return int_setting(cam, "imnum", args, "image number", 0, 2**31 - 1)


@command("hdrshift")
def hdrshift(cam: Camera, args: str) -> str:
    return int_setting(cam, "hdrshift", args, "hdrshift", 0, 31)


@command("writekeys")
def writekeys(cam: Camera, args: str) -> str:
    return choice_setting(cam, "writekeys", args, ("before", "after"))


@command("preexposures")
def preexposures(cam: Camera, args: str) -> str:
    return int_setting(cam, "preexposures", args, "preexposures", 0, 1000)


@command("imdir")
def imdir(cam: Camera, args: str) -> str:
    if not args:
        return cam.imdir
    path = Path(cam.cfg.resolve(args.strip()))
    try:
        path.mkdir(parents=True, exist_ok=True, mode=cam.cfg.dirmode)
        headers.probe_writable(path)
    except OSError as exc:
        raise CommandError(
            f"image directory {args[:200]} not usable: {exc.strerror or exc}", value=cam.imdir
        ) from None
    cam.imdir = str(path)
    return cam.imdir


@command("key")
def key(cam: Camera, args: str) -> str:
    if args.strip().lower() == "list":
        for k, v, c in headers.system_cards(cam, None, None):
            log.info("system key %-8s = %r / %s", k, v, c)
        for uk in cam.userkeys.values():
            log.info("user key   %-8s = %r / %s", uk.keyword, uk.value, uk.comment)
        return ""
    try:
        uk = P.parse_user_key(args)
    except ValueError as exc:
        raise CommandError(f"key: {exc}") from None
    with cam.lock:
        if uk.value is None:
            cam.userkeys.pop(uk.keyword, None)
        else:
            if len(cam.userkeys) >= MAX_USER_KEYS and uk.keyword not in cam.userkeys:
                raise CommandError(f"key: too many user keywords ({MAX_USER_KEYS})")
            cam.userkeys[uk.keyword] = uk
    return ""


# -- parameters ----------------------------------------------------------------


def _name_value(cam: Camera, args: str, usage: str) -> tuple[str, str]:
    parts = args.split()
    if len(parts) != 2:
        raise CommandError(usage)
    name, value = parts
    if cam.param_line(name) is None:
        raise CommandError(f"parameter {name!r} not in the loaded ACF")
    int_arg(value, f"value of {name}", -(2**31), 2**32 - 1)
    return name, value


@command("getp", needs=(LOADED,))
def getp(cam: Camera, args: str) -> str:
    if len(args.split()) != 1:
        raise CommandError("usage: getp <parameter>")
    return cam.getp(args.split()[0])


@command("setp", needs=(LOADED,))
def setp(cam: Camera, args: str) -> str:
    name, value = _name_value(cam, args, "usage: setp <parameter> <value>")
    cam.setp(name, value)
    return value


@command("writep", needs=(LOADED,))
def writep(cam: Camera, args: str) -> str:
    name, value = _name_value(cam, args, "usage: writep <parameter> <value>")
    line = cam.param_line(name)
    key = cam.cfgmem[line][0]
    with cam.ctl.lock:
        cam.ctl.write_config(line, key, f"{name}={value}")
        cam.cfgmem[line] = (key, f"{name}={value}")
        cam.ctl.load_param(name, value)
    return value


@command("exptime")
def exptime(cam: Camera, args: str) -> str:
    current = "" if cam.exptime is None else str(cam.exptime)
    if not args:
        if cam.exptime is None:
            cam.need_loaded()
            cam.exptime = int_arg(cam.getp("exptime"), "exptime", 0, MAX_EXPTIME)
        return str(cam.exptime)
    if not re.match(r"^\d+$", args.strip()):
        raise CommandError(
            f"exptime must be a whole number of {cam.unit()}, got {args[:40]!r}",
            value=current,
        )
    v = int_arg(args.strip(), "exptime", 0, MAX_EXPTIME)
    cam.need_loaded()
    if cam.param_line("exptime") is None:
        raise CommandError("the ACF has no parameter named exptime", value=current)
    cam.setp("exptime", str(v))
    cam.exptime = v
    return str(v)


@command("longexposure")
def longexposure(cam: Camera, args: str) -> str:
    if args:
        v = P.parse_bool_word(args)
        if v is None:
            raise CommandError(f"expected true or false, got {args[:40]!r}")
        cam.need_loaded()
        if cam.param_line("longexposure") is None:
            raise CommandError("the ACF has no parameter named longexposure")
        cam.setp("longexposure", "1" if v else "0")
        cam.longexposure = v
    elif cam.longexposure is None and cam.loaded and cam.param_line("longexposure"):
        cam.longexposure = cam.getp("longexposure") not in ("0", "")
    return "true" if cam.longexposure else "false"

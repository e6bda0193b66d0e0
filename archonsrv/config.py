"""camerad configuration: the keys of camerad.cfg(5), their defaults and checks.

The file syntax (``KEY=VALUE # comment``, ``KEY=(IDX VALUE)``) is read by
:func:`common.config.read_keyvalue`; this module turns the parsed keys into
a :class:`CameraConfig` with every default filled in, so that a reload
starts from a clean slate and nothing of an older file survives.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from archonsrv.protocol import bounded_int
from common.config import ConfigError, KeyValueConfig, parse_bool, parse_keyvalue, read_keyvalue

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
DEMO_CFG = DATA / "demo.cfg"
DEMO_ACF = DATA / "demo.acf"

# lines shorter than this (comment and blanks removed) are skipped with a log
# line, as the original skipped lines shorter than 3 characters; any longer
# line without "=" is an error naming the line (see camerad.cfg(5))
CONFIG_MIN_LINE = 3

# keys accepted without being used by camerad (archonsim's keys, C++ leftovers)
IGNORED_KEYS = {
    "EMULATOR_PORT",
    "EMULATOR_SYSTEM",
    "EMULATOR_SEED",
    "EMULATOR_EXPTIME_PARAM",
    "EMULATOR_EXPTIME_UNIT",
    "EMULATOR_READOUT_PARAM",
    "ABORT_PARAM",
    "WRITE_TAPINFO_TO_FITS",
}


@dataclass
class CameraConfig:
    source: str = "<defaults>"
    archon_ip: str = ""
    archon_port: int = 4242
    expose_param: str = ""
    shutenable_param: str = ""
    shutenable_enable: str = "1"
    shutenable_disable: str = "0"
    hdr_shift: int = 16
    trigin_expose_param: str = ""
    trigin_expose_enable: str = "1"
    trigin_expose_disable: str = "0"
    trigin_untimed_param: str = ""
    trigin_untimed_enable: str = "1"
    trigin_untimed_disable: str = "0"
    trigin_readout_param: str = ""
    trigin_readout_enable: str = "1"
    trigin_readout_disable: str = "0"
    default_firmware: str = ""
    readout_time: int = 0  # ms; 0 = not configured
    imdir: str = "/tmp"
    autodir: bool = True
    basename: str = "image"
    logpath: str = ""
    blkport: int = 0
    nbport: int = 0
    asyncport: int = 0
    asyncgroup: str = ""  # "" or "none" = no async port
    asyncif: str = ""  # extension: interface address for outgoing multicast
    bindaddr: str = ""  # extension: listen address of BLKPORT/NBPORT ("" = all)
    tm_zone: str = "UTC"  # "UTC" or "local"
    tm_zone_log: str = ""  # "UTC", "local" or "" (= tm_zone): time zone of the log
    tz_env: str = ""  # TZ environment value that defines "local" ("" = the host's)
    daemon: bool = False
    longerror: bool = False
    amps_as_cube: bool = False
    dirmode: int = 0o755
    logstderr: bool = True
    firmware_dirs_raw: str = ""  # FIRMWARE_DIRS as written ("" = the default)
    allow: list[str] = field(default_factory=list)  # ALLOW: client networks ([] = all)
    blk_max_connections: int = 8  # the client served + 7 waiting
    nb_max_connections: int = 64
    arrays: dict[str, dict[str, str]] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)  # "KEY=VALUE" in file order

    def resolve(self, value: str) -> str:
        """A path from the file or a command: relative ones are taken relative
        to the configuration file's directory (never to the daemon's cwd, /)."""
        p = Path(value).expanduser()
        if p.is_absolute() or not value:
            return str(p) if value else ""
        base = Path(self.source).resolve().parent if self.source[:1] != "<" else Path.cwd()
        return str(base / p)

    def firmware_dirs(self) -> list[Path]:
        """Directories that load, loadtiming and systemfile may name (resolved).

        FIRMWARE_DIRS (colon-separated, relative to the configuration file),
        else the directory of DEFAULT_FIRMWARE and that of the configuration
        file.
        """
        if self.firmware_dirs_raw:
            names = [d for d in self.firmware_dirs_raw.split(":") if d.strip()]
            return [Path(self.resolve(d.strip())).resolve() for d in names]
        out: list[Path] = []
        if self.default_firmware:
            out.append(Path(self.default_firmware).resolve().parent)
        if self.source[:1] != "<":
            out.append(Path(self.source).resolve().parent)
        return out

    @property
    def log_utc(self) -> bool:
        return (self.tm_zone_log or self.tm_zone) != "local"

    def apply_tz(self) -> None:
        """Set TZ (TZ_ENV) for this process, so that "local" means that zone."""
        if self.tz_env and os.environ.get("TZ") != self.tz_env:
            os.environ["TZ"] = self.tz_env
            time.tzset()

    @property
    def async_enabled(self) -> bool:
        return bool(self.asyncport) and self.asyncgroup.lower() not in ("", "none")

    def same_ports(self, other: CameraConfig) -> bool:
        return (self.blkport, self.nbport, self.bindaddr) == (
            other.blkport,
            other.nbport,
            other.bindaddr,
        )


_STRING_KEYS = {
    "ARCHON_IP": "archon_ip",
    "EXPOSE_PARAM": "expose_param",
    "SHUTENABLE_PARAM": "shutenable_param",
    "SHUTENABLE_ENABLE": "shutenable_enable",
    "SHUTENABLE_DISABLE": "shutenable_disable",
    "TRIGIN_EXPOSE_PARAM": "trigin_expose_param",
    "TRIGIN_EXPOSE_ENABLE": "trigin_expose_enable",
    "TRIGIN_EXPOSE_DISABLE": "trigin_expose_disable",
    "TRIGIN_UNTIMED_PARAM": "trigin_untimed_param",
    "TRIGIN_UNTIMED_ENABLE": "trigin_untimed_enable",
    "TRIGIN_UNTIMED_DISABLE": "trigin_untimed_disable",
    "TRIGIN_READOUT_PARAM": "trigin_readout_param",
    "TRIGIN_READOUT_ENABLE": "trigin_readout_enable",
    "TRIGIN_READOUT_DISABLE": "trigin_readout_disable",
    "BASENAME": "basename",
    "ASYNCGROUP": "asyncgroup",
    "ASYNCIF": "asyncif",
    "BINDADDR": "bindaddr",
}
_PATH_KEYS = {"DEFAULT_FIRMWARE": "default_firmware", "IMDIR": "imdir", "LOGPATH": "logpath"}
_BOOL_KEYS = {
    "AUTODIR": "autodir",
    "DAEMON": "daemon",
    "LONGERROR": "longerror",
    "AMPS_AS_CUBE": "amps_as_cube",
    "LOGSTDERR": "logstderr",
}
_PORT_KEYS = {
    "ARCHON_PORT": "archon_port",
    "BLKPORT": "blkport",
    "NBPORT": "nbport",
    "ASYNCPORT": "asyncport",
}
MAX_CONNECTIONS = 4096
KNOWN_KEYS = (
    set(_STRING_KEYS)
    | set(_PATH_KEYS)
    | set(_BOOL_KEYS)
    | set(_PORT_KEYS)
    | {"HDR_SHIFT", "READOUT_TIME", "TM_ZONE", "TM_ZONE_LOG", "TZ_ENV", "DIRMODE"}
    | {"FIRMWARE_DIRS", "ALLOW", "BLK_MAX_CONNECTIONS", "NB_MAX_CONNECTIONS"}
)


def _int(key: str, value: str, lo: int, hi: int, where: str) -> int:
    try:
        return bounded_int(value, key, lo, hi)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def from_keyvalue(kv: KeyValueConfig) -> CameraConfig:
    """Build a :class:`CameraConfig`; raise ConfigError naming file and line."""
    cfg = CameraConfig(source=kv.source or "<string>")
    cfg.arrays = {k: dict(v) for k, v in kv.arrays.items()}
    for lineno, text in kv.skipped:
        log.warning("%s:%d: line %r too short to be KEY=VALUE; ignored", kv.source, lineno, text)
    for lineno, key, idx, value in kv.lines:
        where = f"{kv.source}:{lineno}"
        if idx is not None:
            if key != "DEFAULT_FIRMWARE":
                log.warning("%s: array key %s ignored (ARC controllers only)", where, key)
            else:
                cfg.applied.append(f"{key}=({idx} {value})")
            continue
        if key in _STRING_KEYS:
            setattr(cfg, _STRING_KEYS[key], value)
        elif key in _PATH_KEYS:
            setattr(cfg, _PATH_KEYS[key], cfg.resolve(value))
        elif key in _BOOL_KEYS:
            try:
                setattr(cfg, _BOOL_KEYS[key], parse_bool(value, key))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        elif key in _PORT_KEYS:
            setattr(cfg, _PORT_KEYS[key], _int(key, value, 1, 65535, where))
        elif key == "HDR_SHIFT":
            cfg.hdr_shift = _int(key, value, 0, 31, where)
        elif key == "READOUT_TIME":
            cfg.readout_time = _int(key, value, 0, 24 * 3600 * 1000, where)
        elif key in ("TM_ZONE", "TM_ZONE_LOG"):
            v = value.strip().lower()
            if v in ("gmt", "utc"):
                zone = "UTC"
            elif v == "local":
                zone = "local"
            else:
                raise ConfigError(f"{where}: {key} must be GMT, UTC or local, got {value!r}")
            setattr(cfg, key.lower(), zone)
        elif key == "TZ_ENV":
            tz = value.strip()
            if not tz or not all(33 <= ord(c) < 127 for c in tz) or len(tz) > 200:
                raise ConfigError(f"{where}: TZ_ENV must be a TZ value without spaces")
            cfg.tz_env = tz
        elif key == "DIRMODE":
            try:
                cfg.dirmode = int(value, 8) | 0o700
            except ValueError:
                raise ConfigError(f"{where}: DIRMODE must be octal digits, got {value!r}") from None
        elif key == "FIRMWARE_DIRS":
            cfg.firmware_dirs_raw = value
        elif key == "ALLOW":
            cfg.allow = [n for n in value.replace(",", " ").split() if n]
            for net in cfg.allow:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"{where}: ALLOW: {net!r} is not a network (CIDR) or address"
                    ) from None
        elif key == "BLK_MAX_CONNECTIONS":
            cfg.blk_max_connections = _int(key, value, 1, MAX_CONNECTIONS, where)
        elif key == "NB_MAX_CONNECTIONS":
            cfg.nb_max_connections = _int(key, value, 1, MAX_CONNECTIONS, where)
        elif key in IGNORED_KEYS:
            continue
        else:
            log.warning("%s: unknown key %s ignored", where, key)
            continue
        cfg.applied.append(f"{key}={value}")
    return check(cfg)


def check(cfg: CameraConfig) -> CameraConfig:
    where = cfg.source
    if not cfg.applied:
        raise ConfigError(f"{where}: no configuration keys applied")
    for key, attr in (("BLKPORT", "blkport"), ("NBPORT", "nbport"), ("LOGPATH", "logpath")):
        if not getattr(cfg, attr):
            raise ConfigError(f"{where}: {key} is required")
    if cfg.blkport == cfg.nbport:
        raise ConfigError(f"{where}: BLKPORT and NBPORT must differ")
    if cfg.asyncgroup and cfg.asyncgroup.lower() != "none":
        try:
            ipaddress.IPv4Address(cfg.asyncgroup)
        except ValueError:
            raise ConfigError(
                f"{where}: ASYNCGROUP must be an IPv4 address or none: {cfg.asyncgroup!r}"
            ) from None
        if not cfg.asyncport:
            raise ConfigError(f"{where}: ASYNCGROUP needs ASYNCPORT")
    if cfg.bindaddr:
        try:
            ipaddress.ip_address(cfg.bindaddr)
        except ValueError:
            raise ConfigError(
                f"{where}: BINDADDR must be an IP address: {cfg.bindaddr!r}"
            ) from None
    if cfg.asyncif:
        try:
            ipaddress.IPv4Address(cfg.asyncif)
        except ValueError:
            raise ConfigError(
                f"{where}: ASYNCIF must be an IPv4 address: {cfg.asyncif!r}"
            ) from None
    if not cfg.imdir:
        raise ConfigError(f"{where}: IMDIR must not be empty")
    if "/" in cfg.basename or not cfg.basename:
        raise ConfigError(f"{where}: BASENAME must be a file name without '/'")
    return cfg


def load(path: str | os.PathLike) -> CameraConfig:
    return from_keyvalue(read_keyvalue(path, CONFIG_MIN_LINE))


def parse(text: str, source: str = "<string>") -> CameraConfig:
    return from_keyvalue(parse_keyvalue(text, source, CONFIG_MIN_LINE))


def defaults() -> CameraConfig:
    return CameraConfig()


def field_names() -> list[str]:
    return [f.name for f in fields(CameraConfig)]


def render(template: str, **overrides: object) -> str:
    """Replace (or append) ``KEY=VALUE`` lines of a config text.

    For tests, the demo and the benchmark: ``render(DEMO_CFG.read_text(),
    BLKPORT=4000, IMDIR="/tmp/x")``.
    """
    lines = template.splitlines()
    todo = {k.upper(): v for k, v in overrides.items()}
    out = []
    for line in lines:
        key = (
            line.split("=", 1)[0].strip()
            if "=" in line and not line.lstrip().startswith("#")
            else ""
        )
        if key in todo:
            v = todo.pop(key)
            if v is not None:
                out.append(f"{key}={v}")
            continue
        out.append(line)
    out.extend(f"{k}={v}" for k, v in todo.items() if v is not None)
    return "\n".join(out) + "\n"

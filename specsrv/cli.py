"""``specsrv``: a spec server (``fourc -S``) with simulated motors and counters.

``specsrv [-S [PORT|LOW-HIGH]] [-S1|-S2] [-A ADDR[/BITS]] [-N NAME] [-c FILE]
[-C FILE] [-f] [-s] [-d [LEVEL]] [-D LEVEL|DIR] [-H ADDR] [-k] [-L LOCK]
[-l LOG] [-v]``

The letters follow spec's own command line where they mean something there
(``-S``, ``-A``, ``-N``, ``-s``, ``-f``, ``-C``, ``-d debug``, ``-D direc``);
the suite's runtime options that clash with them are long options
(``--daemon``), and the spellings of earlier versions keep working: ``-d``
alone is ``--daemon`` and ``-D`` with a number is the debug level.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common import cli, runtime
from common.config import ConfigError

from . import protocol as P
from .engine import SpecEngine
from .interp import Limits
from .motors import DEFAULT_CONFIG, read_config
from .record import DEFAULT_MAX_BYTES as DEFAULT_RECORD_MAX
from .record import PacketRecorder
from .server import DEFAULT_MAX_CLIENTS, bind_first_free
from .state import StateFile

log = logging.getLogger("specsrv")


#: ports below this need root: never bound because of a typo such as -S3
FIRST_UNPRIVILEGED_PORT = 1024
#: spec reads at most 32 -C start-up command files
MAX_STARTUP_FILES = 32


def _unprivileged(port: int, text: str) -> int:
    if port < FIRST_UNPRIVILEGED_PORT:
        raise argparse.ArgumentTypeError(
            f"port {port} (from {text!r}) is below {FIRST_UNPRIVILEGED_PORT}; spec's server"
            " modes are -S1 and -S2, and privileged ports are never used"
        )
    return port


def parse_ports(text: str) -> list[int]:
    """``""`` (default range), ``PORT`` or ``LOW-HIGH`` -> ports to try in order."""
    if text in ("", None):
        return list(range(P.SV_PORT_FIRST, P.SV_PORT_LAST + 1))
    if "-" in text:
        lo_s, _, hi_s = text.partition("-")
        lo, hi = cli.port_number(lo_s), cli.port_number(hi_s)
        if hi < lo:
            raise argparse.ArgumentTypeError(f"empty port range {text!r}")
        return list(range(lo, hi + 1))
    return [cli.port_number(text)]


class ServerFlag(argparse.Action):
    """``-S``, ``-S1``, ``-S2``, each with an optional port or port range."""

    def __call__(self, parser, namespace, values, option_string=None):
        mode = {"-S": 1, "-S1": 1, "-S2": 2}[option_string]
        try:
            ports = parse_ports(values or "")
            _unprivileged(ports[0], values)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{option_string}: {exc}")
        namespace.mode = mode
        namespace.ports = ports


def debug_level(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a debug level: {text!r}") from None


class DebugOrDaemon(argparse.Action):
    """spec's ``-d debug``; ``-d`` with no value is ``--daemon`` (earlier versions)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            namespace.daemon = True
            return
        try:
            namespace.debug = debug_level(values)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"-d: {exc}")


class LevelOrDirectory(argparse.Action):
    """``-D``: a number is the debug level (earlier versions), anything else
    is spec's auxiliary file directory, where the state file lives."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            namespace.debug = debug_level(values)
        except argparse.ArgumentTypeError:
            namespace.state_dir = values


def flag_value(text: str) -> int:
    v = debug_level(text)
    if v not in (P.SV_DELETED, P.SV_DELETED_ALT):
        raise argparse.ArgumentTypeError("the deletion flag is 0x1000 or 0x0001")
    return v


def byte_count(text: str) -> int:
    v = cli.positive_int(text)
    if v < 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1024")
    return v


def default_name() -> str:
    """The instance name: the command name, as spec uses its own (fourc, psic)."""
    prog = os.path.basename(sys.argv[0] or "")
    if not prog or prog.endswith(".py") or prog in ("-c", "-m", "python", "python3"):
        return "specsrv"
    return prog


def build_parser() -> argparse.ArgumentParser:
    p = cli.make_parser(
        "specsrv",
        "spec server mode (binary svr_head protocol) with simulated motors and counters.",
    )
    for flag in ("-S", "-S1", "-S2"):
        p.add_argument(
            flag,
            nargs="?",
            const="",
            metavar="PORT|LOW-HIGH",
            action=ServerFlag,
            dest="ports_arg",
            help={
                "-S": "serve on PORT, or the first free port of LOW-HIGH "
                "(default range 6510-6530); limit mode 1",
                "-S1": "as -S (mode 1: a motor at a limit stops alone)",
                "-S2": "as -S, mode 2: a limit hit stops all motors and the command",
            }[flag],
        )
    p.set_defaults(mode=1, ports=None, state_dir=None, debug=0, daemon=False)
    p.add_argument(
        "-N",
        dest="name",
        metavar="NAME",
        default=None,
        help="instance name sent in HELLO_REPLY (default: the command name)",
    )
    p.add_argument(
        "-c",
        "--config",
        dest="config",
        metavar="FILE",
        default=None,
        help="motor and counter configuration, specsrv.conf(5) (default: the example four-circle)",
    )
    p.add_argument(
        "-s", dest="simulate", action="store_true", help="simulate mode (status/simulate 1)"
    )
    p.add_argument(
        "-d",
        dest="debug",
        metavar="LEVEL",
        nargs="?",
        default=0,
        action=DebugOrDaemon,
        help="initial DEBUG level: 0x1000 packets, 0x800000 socket data, 0x400000 as hex"
        " (spec's -d); -d alone is --daemon",
    )
    p.add_argument(
        "-D",
        dest="debug",
        metavar="DIR",
        action=LevelOrDirectory,
        help="spec's auxiliary file directory: the state file is DIR/NAME/settings"
        " (a number is the debug level, as -d LEVEL)",
    )
    p.add_argument(
        "--state-dir",
        dest="state_dir",
        metavar="DIR",
        default=None,
        help="keep motor positions, offsets and limits in DIR/NAME/settings across"
        " restarts (default: not kept)",
    )
    p.add_argument(
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        default=None,
        help="files that commands name (newfile, fprintf, on) are confined to DIR"
        " (default: the directory specsrv starts in)",
    )
    p.add_argument(
        "-f",
        dest="fresh",
        action="store_true",
        help="fresh start: ignore the saved state (it is written again from now on)",
    )
    p.add_argument(
        "-C",
        dest="startup",
        metavar="FILE",
        action="append",
        default=[],
        help="run this command (macro) file at start-up, before clients are served;"
        f" repeatable, up to {MAX_STARTUP_FILES}",
    )
    p.add_argument(
        "--record",
        dest="record",
        metavar="FILE",
        default=None,
        help="append every packet read and written (also the gateway's) to FILE as JSON lines",
    )
    p.add_argument(
        "--record-max",
        dest="record_max",
        metavar="BYTES",
        type=byte_count,
        default=DEFAULT_RECORD_MAX,
        help=f"stop recording when FILE reaches BYTES (default {DEFAULT_RECORD_MAX})",
    )
    p.add_argument(
        "--deleted-flag",
        dest="deleted_flag",
        metavar="FLAG",
        type=flag_value,
        default=P.SV_DELETED,
        help="flags value of events for deleted variables: 0x1000 (SV_DELETED, default)"
        " or 0x0001 (what certif-pyspec tests for)",
    )
    p.add_argument(
        "--max-clients",
        dest="max_clients",
        metavar="N",
        type=cli.positive_int,
        default=DEFAULT_MAX_CLIENTS,
        help=f"simultaneous client connections; more are refused with a log line"
        f" (default {DEFAULT_MAX_CLIENTS})",
    )
    p.add_argument(
        "--max-string",
        dest="max_string",
        metavar="CHARS",
        type=byte_count,
        default=Limits.max_string,
        help=f"characters in one string value and one printf field (default {Limits.max_string})",
    )
    p.add_argument(
        "--max-array",
        dest="max_array",
        metavar="BYTES",
        type=byte_count,
        default=Limits.max_array,
        help=f"bytes of one data array (default {Limits.max_array})",
    )
    p.add_argument(
        "--max-memory",
        dest="max_memory",
        metavar="BYTES",
        type=byte_count,
        default=Limits.max_memory,
        help=f"bytes of all variables together (default {Limits.max_memory})",
    )
    p.add_argument(
        "-H",
        "--bind",
        dest="host",
        metavar="ADDR",
        default="0.0.0.0",
        help="address to listen on (default all interfaces)",
    )
    p.add_argument(
        "--max-data",
        dest="max_data",
        metavar="BYTES",
        type=cli.positive_int,
        default=P.DEFAULT_MAX_DATA,
        help=f"largest data section accepted in one packet (default {P.DEFAULT_MAX_DATA})",
    )
    p.add_argument(
        "--update",
        dest="update",
        metavar="SECONDS",
        type=float,
        default=0.05,
        help="motor/counter event interval while moving or counting (default 0.05)",
    )
    cli.add_runtime_args(
        p,
        cli.RuntimeFlags(daemon=("--daemon",), allow=("-A",)),
        default_lockfile=None,
        default_logfile="/tmp/specsrv.log",
    )
    return p


class SpecService(runtime.Service):
    name = "specsrv"

    def __init__(self, args) -> None:
        self.args = args
        # absolute now: a daemon works in / and re-reads the file on SIGHUP
        self.config_path = os.path.abspath(args.config or str(DEFAULT_CONFIG))
        cfg = read_config(self.config_path)
        name = args.name or default_name()
        if len(args.startup) > MAX_STARTUP_FILES:
            raise ConfigError(f"at most {MAX_STARTUP_FILES} -C files")
        # the daemon works in /: resolve every path before the fork
        state = StateFile(os.path.abspath(args.state_dir), name) if args.state_dir else None
        args.startup = [os.path.abspath(f) for f in args.startup]
        data_dir = os.path.abspath(args.data_dir or os.getcwd())
        recorder = None
        if args.record:
            try:
                recorder = PacketRecorder(os.path.abspath(args.record), args.record_max)
            except OSError as exc:
                raise ConfigError(f"cannot open {args.record}: {exc.strerror}") from None
        self.spec = SpecEngine(
            name,
            cfg,
            mode=args.mode,
            simulate=args.simulate,
            debug=args.debug,
            max_data=args.max_data,
            update=max(0.005, args.update),
            deleted_flag=args.deleted_flag,
            limits=Limits(args.max_string, args.max_array, args.max_memory),
            state=state,
            fresh=args.fresh,
            data_dir=data_dir,
            recorder=recorder,
        )
        self.tcp = None

    def bind(self):
        ports = self.args.ports or parse_ports("")
        self.tcp = bind_first_free(
            self.args.host,
            ports,
            self.spec,
            allow=self.args.allow,
            max_clients=self.args.max_clients,
        )
        return [self.tcp]

    def start(self) -> None:
        self.spec.start()
        for path in self.args.startup:
            if not self.spec.run_startup_file(path):
                break  # as spec: an error skips the remaining start-up files
        self.tcp.start()
        log.info(
            "spec server %r listening on %s:%d (mode %d, %d motors, %d counters)",
            self.spec.name,
            self.args.host,
            self.spec.port,
            self.spec.mode,
            len(self.spec.hw.motors),
            len(self.spec.hw.counters),
        )

    def reload(self):
        # Motors cannot be swapped under running clients; check the file and
        # apply what can change live (rates, limits, parameters).
        cfg = read_config(self.config_path)
        hw = self.spec.hw
        old = {m.mne for m in hw.motors}, {c.mne for c in hw.counters}
        new = {m.mne for m in cfg.motors}, {c.mne for c in cfg.counters}
        if old != new:
            raise ConfigError("motor or counter mnemonics changed: restart specsrv to apply")
        for mc in cfg.motors:
            if mc.remote or hw.by_mne[mc.mne].remote is not None:
                continue  # a gateway motor's parameters belong to its server
            hw.set_param(mc.mne, "base_rate", mc.base)
            hw.set_param(mc.mne, "slew_rate", mc.slew)
            hw.set_param(mc.mne, "acceleration", mc.accel)
            hw.set_param(mc.mne, "backlash", mc.backlash)
            m = hw.by_mne[mc.mne]
            with hw.lock:
                m.low, m.high = mc.low, mc.high
                m.cfg = mc
            hw.emit(f"motor/{m.mne}/low_limit", m.low)
            hw.emit(f"motor/{m.mne}/high_limit", m.high)
        for cc in cfg.counters:
            c = hw.cnt_by_mne[cc.mne]
            if cc.remote or c.remote is not None:
                continue
            c.rate, c.cfg = cc.rate, cc
        return f"{self.config_path}: rates and limits reloaded"

    def stop(self) -> int:
        self.spec.stop()
        return self.tcp.stop() if self.tcp else 0


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_or_exit(build_parser(), argv)
    if args.lockfile is None and (args.daemon or args.kill):
        # one daemon per instance name, and -k finds it without being told
        args.lockfile = f"/tmp/specsrv-{args.name or default_name()}.lock"
    return runtime.serve("specsrv", args, SpecService)


if __name__ == "__main__":
    sys.exit(main())

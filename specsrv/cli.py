"""``specsrv``: a spec server (``fourc -S``) with simulated motors and counters.

``specsrv [-S [PORT|LOW-HIGH]] [-S1|-S2] [-A ADDR[/BITS]] [-N NAME] [-c FILE]
[-s] [-D LEVEL] [-H ADDR] [-d] [-k] [-L LOCK] [-l LOG] [-v]``
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
from .motors import DEFAULT_CONFIG, read_config
from .server import bind_first_free

log = logging.getLogger("specsrv")


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
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{option_string}: {exc}")
        namespace.mode = mode
        namespace.ports = ports


def debug_level(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a debug level: {text!r}") from None


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
    p.set_defaults(mode=1, ports=None)
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
        "-D",
        dest="debug",
        metavar="LEVEL",
        type=debug_level,
        default=0,
        help="initial DEBUG level: 0x1000 packets, 0x800000 socket data, 0x400000 as hex",
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
        cli.RuntimeFlags(allow=("-A",)),
        default_lockfile=None,
        default_logfile="/tmp/specsrv.log",
    )
    return p


class SpecService(runtime.Service):
    name = "specsrv"

    def __init__(self, args) -> None:
        self.args = args
        self.config_path = args.config or str(DEFAULT_CONFIG)
        cfg = read_config(self.config_path)
        self.spec = SpecEngine(
            args.name or default_name(),
            cfg,
            mode=args.mode,
            simulate=args.simulate,
            debug=args.debug,
            max_data=args.max_data,
            update=max(0.005, args.update),
        )
        self.tcp = None

    def bind(self):
        ports = self.args.ports or parse_ports("")
        self.tcp = bind_first_free(self.args.host, ports, self.spec, allow=self.args.allow)
        return [self.tcp]

    def start(self) -> None:
        self.spec.start()
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

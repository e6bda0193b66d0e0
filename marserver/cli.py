"""marserver command line: ``marserver [OPTION] [hostname] [port]``."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys

from common import cli, options, runtime

from . import protocol as P
from .server import DEFAULT_BACKOFF_MAX, DEFAULT_QUEUE, MAX_CLIENTS, MarServer, Settings

DESCRIPTION = """\
Replicate the sockets of a mar345 image plate scanner or a mar desktop
beamline (dtb): one connection to each hardware port, up to 10 clients on
hardware port + N.  hostname defaults to localhost; port is the hardware's
COMMAND port number (the other three follow it), default 4451 (dtb) or
4441 (mar345)."""


# -d is DATA and -s STATUS, so the runtime options have long names only
RUNTIME_FLAGS = cli.RuntimeFlags(
    daemon=("--daemon",), kill=("--kill",), lockfile=("--lockfile",), logfile=("--logfile",)
)


def add_hardware_args(
    p: argparse.ArgumentParser, default: str, *, dtb_help: str, mar_help: str
) -> None:
    """``-dtb/--base`` and ``-mar/--scanner`` (dest ``hardware``), in the
    order of the program's own page: the default first."""
    group = p.add_mutually_exclusive_group()
    spellings = {"dtb": (("-dtb", "--base"), dtb_help), "mar345": (("-mar", "--scanner"), mar_help)}
    for name in sorted(spellings, key=lambda n: n != default):
        flags, text = spellings[name]
        group.add_argument(*flags, dest="hardware", action="store_const", const=name, help=text)
    p.set_defaults(hardware=default)


def build_parser() -> argparse.ArgumentParser:
    p = cli.make_parser(
        "marserver",
        DESCRIPTION,
        config_option=("--config",),
        default_config_files=[options.default_config_file("marserver")],
    )
    p.add_argument("hostname", nargs="?", default="localhost", help="hardware host (localhost)")
    p.add_argument("port", nargs="?", type=cli.port_number, help="hardware COMMAND port number")
    p.add_argument(
        "--debug",
        metavar="NUMBER",
        type=cli.non_negative_int,
        default=0,
        help="debugging flag; > 0 logs every record relayed (default 0)",
    )
    add_hardware_args(
        p,
        "dtb",
        dtb_help="the hardware is a mar desktop beamline (default)",
        mar_help="the hardware is a mar345 scanner",
    )
    p.add_argument(
        "-port",
        dest="port_spec",
        metavar="#|STAT|COMM|DATA|MESS|ALL",
        action="append",
        default=[],
        help="replicate hardware port number # or the named ports (comma list, repeatable)",
    )
    p.add_argument(
        "-a",
        "--add",
        metavar="NUMBER",
        type=int,
        default=1000,
        help="clients connect on hardware port + NUMBER (default 1000)",
    )
    sel = p.add_argument_group("ports")
    sel.add_argument("--all", action="store_true", help="all four hardware ports (the default)")
    for short, long_, port in (
        ("-s", "--status", P.Port.STAT),
        ("-c", "--comm", P.Port.COMM),
        ("-d", "--data", P.Port.DATA),
        ("-m", "--mess", P.Port.MESS),
    ):
        sel.add_argument(
            short,
            long_,
            dest="only",
            action="append_const",
            const=port,
            help=f"the {port.label} port only (may be combined)",
        )
    for long_, port in (
        ("--nostat", P.Port.STAT),
        ("--nocomm", P.Port.COMM),
        ("--nodata", P.Port.DATA),
        ("--nomess", P.Port.MESS),
    ):
        sel.add_argument(
            long_,
            dest="without",
            action="append_const",
            const=port,
            help=f"do not connect to the {port.label} port",
        )
    p.add_argument(
        "--swap",
        "-swap",
        action="store_true",
        help="swap bytes of records to and from the hardware (default: don't)",
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--listen",
        metavar="ADDR",
        default="",
        help="address the client ports listen on (default: all)",
    )
    net.add_argument(
        "--backoff",
        metavar="SECONDS",
        type=cli.positive_float,
        default=DEFAULT_BACKOFF_MAX,
        help=f"longest wait between reconnection attempts (default {DEFAULT_BACKOFF_MAX:g})",
    )
    net.add_argument(
        "--queue",
        metavar="BYTES",
        type=cli.positive_int,
        default=DEFAULT_QUEUE,
        help=f"bytes queued for a client before it is dropped (default {DEFAULT_QUEUE})",
    )
    net.add_argument(
        "--max-clients",
        metavar="N",
        type=cli.positive_int,
        default=MAX_CLIENTS,
        help=f"clients per client port; more are refused (default {MAX_CLIENTS})",
    )
    net.add_argument(
        "--backpressure",
        action="store_true",
        help="when a client that still reads falls behind, pause reading that hardware"
        " port (up to 3 s) instead of dropping it; off by default, as the hardware"
        " reader then waits for clients",
    )
    cli.add_runtime_args(
        p,
        dataclasses.replace(RUNTIME_FLAGS, allow=("-A", "--allow")),
        default_lockfile=None,
        default_logfile="/tmp/marserver.log",
    )
    return p


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    hw = P.HARDWARE[args.hardware]
    if args.port is None and args.hostname.isdigit():
        # the synopsis is "[hostname] port": a lone number is the port, not a host
        try:
            args.port = cli.port_number(args.hostname)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument port: {exc}")
        args.hostname = "localhost"
    base = args.port if args.port is not None else hw.base
    ports: set[P.Port] = set(args.only or [])
    for spec in args.port_spec:
        try:
            ports |= P.parse_port_spec(spec, hw, base)
        except ValueError as exc:
            parser.error(f"-port: {exc}")
    if args.all or not ports:
        ports = set(P.ALL_PORTS)
    ports -= set(args.without or [])
    if not ports:
        parser.error("no hardware port left to replicate")
    for port in ports:
        number = hw.port_number(port, base) + args.add
        if not 0 < number < 65536:
            parser.error(f"-a {args.add}: client port {number} is out of range")
    return Settings(
        hw=hw,
        host=args.hostname,
        base=base,
        ports=frozenset(ports),
        add=args.add,
        swap=args.swap,
        listen=args.listen,
        allow=args.allow,
        backoff_max=args.backoff,
        queue_limit=args.queue,
        backpressure=args.backpressure,
        max_clients=args.max_clients,
    )


def default_lockfile(settings: Settings) -> str:
    """One lock per instance: named after its first client port."""
    first = min(settings.client_port(p) for p in settings.ports)
    return f"/tmp/marserver-{first}.lock"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = cli.parse_or_exit(parser, argv)
    # SIGHUP compares a fresh parse with this one, before main() fills in defaults
    live = options.LiveOptions(parser, argv, copy.copy(args))
    settings = settings_from_args(parser, args)
    if args.lockfile is None and (args.daemon or args.kill):
        args.lockfile = default_lockfile(settings)
    if args.debug > 0:
        args.verbose = max(args.verbose, 2)
    return runtime.run(MarServer(settings, live), runtime.options_from_args(args))


if __name__ == "__main__":
    sys.exit(main())

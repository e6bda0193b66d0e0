"""The command line every server built on the framework shares.

``NAME [-h] [-p PORT] [-l LOGFILE] [-L LOCKFILE] [-v LEVEL] [-d] [-k] [-Q]
[--bind HOST] [--byte-order ORDER] [device options]``, as the seed lists
them, with the lock file ``/tmp/NAME-PORT.lock`` and the daemon log file
``/tmp/NAME-PORT.log``.  A device server's ``main`` is one line::

    def main(argv=None):
        return serve(MyDevice, argv)
"""

from __future__ import annotations

import copy
import logging
import os
import sys

from common import cli, options, runtime
from common import log as clog
from common.log import TRACE

from . import protocol as P
from .device import Device, DeviceError
from .server import IDLE_TIMEOUT, MAX_CONNECTIONS, HdwService

#: ``-v LEVEL`` of the seed (no ``-v``: no logging but warnings and errors)
LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: TRACE, 4: 1}


def server_name(default: str, argv0: str | None = None) -> str:
    """The name the server answers ``hello`` to: the command it was started as.

    A copy or link of ``mca_server`` under another name answers to that
    name, as the C servers do; ``python -m ...`` keeps the device's name.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    base = os.path.basename(argv0 or "")
    if not base or base.endswith(".py") or base in ("-c", "-m") or base.startswith("python"):
        return default
    return base


def idle_seconds(text: str) -> float:
    """``--idle-timeout``: 0 (never) or a positive number of seconds."""
    return 0.0 if text.strip() in ("0", "0.0") else cli.positive_float(text)


def add_port_option(parser, what: str) -> None:
    """``-p PORT``, default 5000, for the servers and the client alike."""
    parser.add_argument(
        "-p",
        dest="port",
        metavar="PORT",
        type=cli.port_number,
        default=P.DEFAULT_PORT,
        help=f"{what} (default {P.DEFAULT_PORT})",
    )


def build_parser(device_cls: type[Device], name: str):
    desc = (device_cls.__doc__ or "").strip().splitlines()
    kind = "MCA" if device_cls.ndim == 1 else "Image Device"
    parser = cli.make_parser(
        name,
        (desc[0] if desc else f"{name}: a spec server-hardware device server")
        + f'\n\nspec connects to it as a "Server {kind}".',
        epilog=(device_cls.usage() or None),
        config_option=("--config",),
        default_config_files=[options.default_config_file(name)],
    )
    add_port_option(parser, "TCP port to listen on")
    parser.add_argument(
        "-Q",
        dest="quit_on_goodbye",
        action="store_true",
        help="exit when spec quits (on goodbye 1)",
    )
    parser.add_argument(
        "--bind",
        metavar="HOST",
        default="",
        help="listen on this address only (default: all interfaces)",
    )
    parser.add_argument(
        "--byte-order",
        dest="byte_order",
        choices=sorted(P.BYTE_ORDERS),
        default="little",
        help="byte order of binary data until a client sets byte_order (default little)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-connections",
        metavar="N",
        type=cli.positive_int,
        default=MAX_CONNECTIONS,
        help="simultaneous connections; when all are in use, the longest idle one"
        f" (idle 1 s or more) is closed for a new client (default {MAX_CONNECTIONS})",
    )
    limits.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=idle_seconds,
        default=IDLE_TIMEOUT,
        help="close a connection that sends nothing for this long (default 0: never)",
    )
    cli.add_runtime_args(
        parser,
        cli.RuntimeFlags(
            daemon=("-d",),
            kill=("-k",),
            lockfile=("-L",),
            logfile=("-l", "--logfile"),
            verbose=("-v", "--verbose"),
            verbose_takes_level=True,
            allow=("--allow",),
        ),
        default_lockfile=f"/tmp/{name}-PORT.lock",
        default_logfile=f"/tmp/{name}-PORT.log",
    )
    device_cls.add_arguments(parser.add_argument_group(f"{name} device"))
    return parser


def serve(device_cls: type[Device], argv: list[str] | None = None, name: str | None = None) -> int:
    """Parse the command line, build the device and run the server."""
    name = name or server_name(device_cls.name)
    parser = build_parser(device_cls, name)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = cli.parse_or_exit(parser, argv)
    live = options.LiveOptions(parser, argv, copy.copy(args))
    # -v LEVEL of the seed: 0 is warnings and errors only
    live.live["verbose"] = lambda v: clog.set_level(LOG_LEVELS[int(v or 0)])
    if args.lockfile == f"/tmp/{name}-PORT.lock":
        args.lockfile = f"/tmp/{name}-{args.port}.lock"
    args.default_logfile = f"/tmp/{name}-{args.port}.log"
    device = device_cls()
    if not args.kill:
        try:
            device.parse_args(args)
            device.check_type()
        except DeviceError as exc:
            parser.error(str(exc))
    service = HdwService(
        device,
        name,
        args.port,
        host=args.bind,
        quit_on_goodbye=args.quit_on_goodbye,
        byte_order=P.BYTE_ORDERS[args.byte_order],
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        allow=args.allow,
        options=live,
    )
    opts = runtime.options_from_args(args, log_level=LOG_LEVELS[args.verbose])
    return runtime.run(service, opts)

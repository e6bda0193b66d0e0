"""Command-line helpers shared by every program of the suite.

The originals use flag spellings that argparse does not produce by default:
single-dash long options (``-dtb``, ``-mar``, ``-port``, ``-S1``), flags that
reuse ``-h`` for a host name, and options after positional arguments.  The
helpers here build a configargparse parser that keeps those spellings exactly
(no abbreviations, no surprises) and add the runtime options (daemon, lock
file, log file, verbosity, kill) with whatever spellings a program documents.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import logging
import math
import sys
from dataclasses import dataclass

import configargparse

log = logging.getLogger(__name__)

EXIT_USAGE = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's line breaks and show defaults where given."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def suite_version() -> str:
    """The installed package's version (``common.__version__`` when run from a tree)."""
    try:
        return importlib.metadata.version("beamline-servers")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def make_parser(
    prog: str,
    description: str,
    *,
    epilog: str | None = None,
    add_help: bool = True,
    config_option: tuple[str, ...] | None = None,
    default_config_files: list[str] | None = None,
) -> configargparse.ArgumentParser:
    """Return a parser that keeps documented spellings exactly.

    ``allow_abbrev`` is off so that ``-p`` can never be read as ``-port`` and
    ``--st`` is not silently ``--status``.  With ``add_help=False`` the program
    adds its own help flag (``sendsockcmd`` uses ``-h`` for the host).
    ``config_option`` names the flags of an optional configargparse
    ``KEY = VALUE`` file of defaults (for example ``("--config",)``), whose
    keys are the long options without dashes; ``default_config_files`` are
    read when they exist (see :mod:`common.options`).  The option's ``dest``
    is ``config_file``.
    """
    kwargs: dict = {}
    if config_option:
        kwargs["args_for_setting_config_path"] = list(config_option)
        kwargs["config_arg_help_message"] = (
            "read option values from this file (KEY = VALUE lines; the keys are the"
            " long options without --; command-line options win)"
        )
        kwargs["add_config_file_help"] = False
        kwargs["default_config_files"] = list(default_config_files or [])
    parser = configargparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        add_help=add_help,
        allow_abbrev=False,
        formatter_class=HelpFormatter,
        **kwargs,
    )
    if not add_help:
        parser.add_argument("--help", action="help", help="show this help message and exit")
    parser.add_argument(
        "--version",
        action="version",
        version=f"{prog} (beamline-servers) {suite_version()}",
        help="print the program name and version, then exit",
    )
    return parser


def port_number(text: str) -> int:
    """argparse type for a TCP/UDP port (1-65535)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port number out of range 1-65535: {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type for a finite number greater than 0 (seconds, rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be greater than 0 and finite: {text}")
    return value


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """argparse type for ``ADDR[/BITS]`` (spec's ``-A`` and our allow-lists)."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid address or network: {text!r}") from None


@dataclass(frozen=True)
class RuntimeFlags:
    """Spellings of the runtime options for one program.

    Each entry is a tuple of option strings, or ``()`` when the program does
    not have that option.  The ``dest`` names are fixed so that
    :func:`common.runtime.options_from_args` can read them.
    """

    daemon: tuple[str, ...] = ("-d", "--daemon")
    kill: tuple[str, ...] = ("-k", "--kill")
    lockfile: tuple[str, ...] = ("-L", "--lockfile")
    logfile: tuple[str, ...] = ("-l", "--logfile")
    verbose: tuple[str, ...] = ("-v", "--verbose")
    verbose_takes_level: bool = False
    foreground: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()


def add_runtime_args(
    parser: argparse.ArgumentParser,
    flags: RuntimeFlags = RuntimeFlags(),
    *,
    default_lockfile: str | None = None,
    default_logfile: str | None = None,
) -> None:
    """Add daemon / kill / lock / log / verbosity options with the given spellings."""
    group = parser.add_argument_group("runtime")
    if flags.daemon:
        group.add_argument(
            *flags.daemon,
            dest="daemon",
            action="store_true",
            default=False,
            help="run in the background as a daemon (detach, log to the log file)",
        )
    if flags.foreground:
        group.add_argument(
            *flags.foreground,
            dest="foreground",
            action="store_true",
            default=False,
            help="stay in the foreground even if the configuration asks for a daemon",
        )
    if flags.kill:
        group.add_argument(
            *flags.kill,
            dest="kill",
            action="store_true",
            default=False,
            help="stop the instance that holds the lock file (only if it is this program) and exit",
        )
    if flags.lockfile:
        group.add_argument(
            *flags.lockfile,
            dest="lockfile",
            metavar="LOCKFILE",
            default=default_lockfile,
            help="lock file holding the PID"
            + (f" (default {default_lockfile})" if default_lockfile else ""),
        )
    if flags.logfile:
        group.add_argument(
            *flags.logfile,
            dest="logfile",
            metavar="LOGFILE",
            default=None,
            help="append log lines to this file"
            + (f" (daemon default {default_logfile})" if default_logfile else ""),
        )
    # the spellings, so that messages name the options as this program has them
    parser.set_defaults(default_logfile=default_logfile, runtime_flags=flags)
    if flags.verbose:
        if flags.verbose_takes_level:
            group.add_argument(
                *flags.verbose,
                dest="verbose",
                metavar="LEVEL",
                type=int,
                choices=range(0, 5),
                default=0,
                help="log verbosity level 0-4",
            )
        else:
            group.add_argument(
                *flags.verbose,
                dest="verbose",
                action="count",
                default=0,
                help="more log output; repeat for more",
            )
    if flags.allow:
        group.add_argument(
            *flags.allow,
            dest="allow",
            metavar="ADDR[/BITS]",
            type=network,
            action="append",
            default=None,
            help="accept clients only from this host or network (repeatable)",
        )


def parse_or_exit(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; on a usage error argparse prints one line and exits 2.

    ``parse_intermixed_args`` is used so that options may follow positional
    arguments (``sendsockcmd -h host "cmd" -t 2000``).
    """
    if argv is None:
        argv = sys.argv[1:]
    try:
        return parser.parse_intermixed_args(argv)
    except TypeError:
        # parse_intermixed_args refuses some parser shapes (subparsers,
        # REMAINDER); those programs use plain parse_args.
        return parser.parse_args(argv)

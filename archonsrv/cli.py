"""camerad: detector controller server for the STA Archon CCD controller.

``camerad FILE.cfg`` (or ``-f FILE.cfg``, ``--config FILE.cfg``) reads the configuration, listens
on BLKPORT and NBPORT, sends status datagrams to ASYNCGROUP:ASYNCPORT, and
drives the Archon at ARCHON_IP:ARCHON_PORT.  ``-d`` or ``DAEMON=yes`` runs
it as a daemon (``--foreground`` keeps it in the foreground); SIGHUP
re-reads the configuration file.
"""

from __future__ import annotations

import os
import sys

from common import cli, runtime
from common.config import ConfigError

from . import config as C
from .server import Camerad


def build_parser():
    p = cli.make_parser(
        "camerad",
        "Detector controller server for the STA Archon CCD controller.",
        epilog="See camerad(1) and camerad.cfg(5).",
    )
    p.add_argument("config", nargs="?", metavar="FILE.cfg", help="configuration file")
    p.add_argument(
        "-f",
        "--config",
        dest="file",
        metavar="FILE.cfg",
        help="configuration file (same as FILE.cfg)",
    )
    cli.add_runtime_args(
        p,
        cli.RuntimeFlags(
            daemon=("-d",),
            foreground=("--foreground",),
            kill=(),
            lockfile=("--lockfile",),
            logfile=(),
            verbose=("-v", "--verbose"),
        ),
    )
    return p


def lockfile_for(cfg: C.CameraConfig) -> str:
    return f"/tmp/camerad.{cfg.blkport}.pid"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = cli.parse_or_exit(parser, argv)
    path = args.file or args.config
    if not path:
        parser.error(
            "no configuration file given (camerad FILE.cfg, -f FILE.cfg or --config FILE.cfg)"
        )
    if args.file and args.config and args.file != args.config:
        parser.error("two configuration files given")
    try:
        cfg = C.load(path)
    except ConfigError as exc:
        print(f"camerad: {exc}", file=sys.stderr)
        return 2
    cfg.apply_tz()
    daemon = (args.daemon or cfg.daemon) and not args.foreground
    logfile = str(C.Path(cfg.logpath) / "camerad_%Y%m%d.log").replace("%", "%%")
    logfile = logfile.replace("%%Y%%m%%d", "%Y%m%d")
    opts = runtime.options_from_args(
        args,
        daemon=daemon,
        logfile=logfile,
        lockfile=args.lockfile or lockfile_for(cfg),
        log_utc=cfg.log_utc,
    )
    # absolute now: the daemon works in / and re-reads the file on SIGHUP
    return runtime.run(Camerad(os.path.abspath(path), cfg), opts)


if __name__ == "__main__":
    sys.exit(main())

"""echod: the smallest program built on common/, used to test the runtime.

``echod -p PORT -c CONFIG [-d] [-k] [-L LOCK] [-l LOG] [-v]`` answers each
line with ``LINE DONE``, ``greet`` with the configured GREETING, and reloads
its KEY=VALUE configuration on SIGHUP.  An overlong line, or one with control
characters or bytes outside ASCII, is answered ``ERROR ...`` and logged
through the server's rate limiter (``--log-period`` sets its period).
"""

from __future__ import annotations

import os
import sys

from common import cli, runtime
from common.config import ConfigError, read_keyvalue
from common.framing import OverlongLine
from common.server import ConnectionClosed, LineHandler, ThreadedTCPServer


def load(path: str | None) -> dict:
    if not path:
        return {"GREETING": "hello", "MAXCLIENTS": "4"}
    cfg = read_keyvalue(path)
    unknown = cfg.keys() - {"GREETING", "MAXCLIENTS"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    try:
        int(cfg.get("MAXCLIENTS", "4"))
    except ValueError:
        raise ConfigError(f"{path}: MAXCLIENTS must be a number") from None
    return {"GREETING": cfg.get("GREETING", "hello"), "MAXCLIENTS": cfg.get("MAXCLIENTS", "4")}


class Handler(LineHandler):
    max_line = 256

    def handle(self) -> None:
        while True:
            try:
                line = self.reader.read_line()
            except (ConnectionClosed, TimeoutError):
                return
            if isinstance(line, OverlongLine):
                self.log_bad_input("overlong line", "%d bytes", line.size)
                self.send_line("ERROR line too long")
            elif any(b < 0x20 or b > 0x7E for b in line.replace(b"\t", b" ")):
                self.log_bad_input("bad line", "%d bytes not printable ASCII", len(line))
                self.send_line("ERROR bad line")
            elif line == b"greet":
                self.send_line(f"{self.server.service.settings['GREETING']} DONE")
            elif line == b"slow":
                import time

                time.sleep(1.0)
                self.send_line("slow DONE")
            elif line == b"silent":
                continue
            else:
                self.send_line(f"{line.decode('ascii', 'replace')} DONE")


class Echod(runtime.Service):
    name = "echod"

    def __init__(self, args) -> None:
        self.args = args
        self.settings = load(args.config)
        self.server = None

    def bind(self):
        self.server = ThreadedTCPServer(
            ("127.0.0.1", self.args.port),
            Handler,
            name="echod",
            max_connections=int(self.settings["MAXCLIENTS"]),
            allow=self.args.allow,
            log_period=self.args.log_period,
        )
        self.server.service = self
        return [self.server]

    def start(self) -> None:
        # start-up failures after the fork, for the readiness tests
        if self.args.fail_start == "error":
            raise RuntimeError("simulated start-up failure")
        if self.args.fail_start == "exit":
            os._exit(3)  # dies without a word
        self.server.start()

    def reload(self):
        new = load(self.args.config)
        self.settings = new
        self.server.max_connections = int(new["MAXCLIENTS"])
        return f"GREETING={new['GREETING']}"

    def stop(self) -> int:
        return self.server.stop() if self.server else 0


def build_parser():
    p = cli.make_parser("echod", "Line echo server used to test the shared runtime.")
    p.add_argument("-p", dest="port", type=cli.port_number, required=True, help="TCP port")
    p.add_argument("-c", dest="config", help="KEY=VALUE configuration file")
    p.add_argument(
        "--log-period",
        type=cli.positive_float,
        default=60.0,
        metavar="SECONDS",
        help="period of the per-peer log rate limit (default 60)",
    )
    p.add_argument(
        "--fail-start",
        choices=("error", "exit"),
        help="fail in start(), after any fork: raise an error, or exit without a word",
    )
    cli.add_runtime_args(
        p,
        cli.RuntimeFlags(allow=("-A",)),
        default_lockfile=None,
        default_logfile="/tmp/echod.log",
    )
    return p


def main(argv=None) -> int:
    args = cli.parse_or_exit(build_parser(), argv)
    return runtime.serve("echod", args, Echod)


if __name__ == "__main__":
    sys.exit(main())

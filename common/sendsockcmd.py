"""sendsockcmd: send one command line to a server and print the reply.

The small client that observatory and beamline shell scripts use with
``camerad`` and friends::

    sendsockcmd -h localhost -p 3031 "exptime 2000" -t 20000

It connects, sends the command with a newline, and prints what comes back
until the server closes the connection, a line ending in ``DONE`` or
``ERROR`` (camerad answers a refused set command with ``VALUE ERROR``) or
starting with ``ERROR`` arrives, the optional idle time passes after the
first reply bytes, or the timeout (milliseconds) runs out.
"""

from __future__ import annotations

import errno
import re
import socket
import sys
import time

from .cli import make_parser, non_negative_int, parse_or_exit, port_number

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 3031
DEFAULT_TIMEOUT_MS = 10000
MAX_REPLY = 16 << 20

EXIT_OK = 0
EXIT_CONNECT = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

_END_RE = re.compile(rb"(^|\s)(DONE|ERROR)\s*$|^ERROR(\s|$)")


def build_parser():
    p = make_parser(
        "sendsockcmd",
        "Send one command line to HOST:PORT and print the reply.",
        add_help=False,
        epilog="Exit status: 0 reply received, 1 cannot connect or connection error, "
        "2 usage error, 3 timeout.",
    )
    p.add_argument(
        "-h",
        dest="host",
        default=DEFAULT_HOST,
        metavar="HOST",
        help=f"server host name or address (default {DEFAULT_HOST})",
    )
    p.add_argument(
        "-p",
        dest="port",
        type=port_number,
        default=DEFAULT_PORT,
        metavar="PORT",
        help=f"server port (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "-t",
        dest="timeout",
        type=non_negative_int,
        default=DEFAULT_TIMEOUT_MS,
        metavar="MS",
        help=f"timeout in milliseconds (default {DEFAULT_TIMEOUT_MS})",
    )
    p.add_argument(
        "-m",
        dest="mode",
        type=int,
        choices=(0, 1),
        default=0,
        metavar="MODE",
        help="0: wait for and print the reply (default); 1: do not wait, print cmd_sent",
    )
    p.add_argument(
        "-i",
        dest="idle",
        type=non_negative_int,
        default=0,
        metavar="MS",
        help="stop this many milliseconds after the last reply bytes "
        "(0, the default: wait for DONE, ERROR, close or timeout)",
    )
    p.add_argument("command", nargs="+", help="command words, joined with spaces")
    return p


def reply_complete(data: bytes) -> bool:
    """True when the last complete line ends in DONE or ERROR, or starts with ERROR."""
    if not data.endswith(b"\n"):
        return False
    last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].strip()
    return bool(_END_RE.search(last))


def send_command(
    host: str, port: int, command: str, timeout_ms: int, *, wait: bool = True, idle_ms: int = 0
) -> tuple[int, bytes, str]:
    """Send ``command``; return ``(status, reply_bytes, message)``."""
    timeout = timeout_ms / 1000.0 if timeout_ms else None
    deadline = time.monotonic() + timeout if timeout else None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return EXIT_TIMEOUT, b"", f"ERROR {-errno.ETIME} TIMEOUT connecting to {host}:{port}"
    except OSError as exc:
        code = exc.errno or 0
        return (
            EXIT_CONNECT,
            b"",
            f"ERROR {code} cannot connect to {host}:{port}: {exc.strerror or exc}",
        )
    reply = bytearray()
    with sock:
        try:
            sock.sendall(command.encode("utf-8", "replace") + b"\n")
        except OSError as exc:
            return EXIT_CONNECT, b"", f"ERROR {exc.errno or 0} send failed: {exc.strerror or exc}"
        if not wait:
            return EXIT_OK, b"cmd_sent\n", ""
        while len(reply) < MAX_REPLY:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return EXIT_TIMEOUT, bytes(reply), f"ERROR {-errno.ETIME} TIMEOUT"
            wait_s = None if deadline is None else deadline - now
            if idle_ms and reply:
                wait_s = min(wait_s, idle_ms / 1000.0) if wait_s is not None else idle_ms / 1000.0
            sock.settimeout(wait_s)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if idle_ms and reply:
                    return EXIT_OK, bytes(reply), ""
                continue
            except OSError as exc:
                if reply:
                    return EXIT_OK, bytes(reply), ""
                return EXIT_CONNECT, b"", f"ERROR {exc.errno or 0} {exc.strerror or exc}"
            if not chunk:
                return EXIT_OK, bytes(reply), ""
            reply += chunk
            if reply_complete(bytes(reply)):
                return EXIT_OK, bytes(reply), ""
    return EXIT_OK, bytes(reply), ""


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit(build_parser(), argv)
    status, reply, message = send_command(
        args.host,
        args.port,
        " ".join(args.command),
        args.timeout,
        wait=args.mode == 0,
        idle_ms=args.idle,
    )
    if reply:
        out = reply if reply.endswith(b"\n") else reply + b"\n"
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    if message:
        # on stdout, as the original C program did, so scripts that look
        # for ERROR in the output keep working; the exit status tells too
        print(message, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

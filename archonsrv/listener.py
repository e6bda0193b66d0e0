"""camerad-listener: print camerad's asynchronous UDP/multicast messages.

The original camerad ships a small ``listener`` program; this is ours::

    camerad-listener 239.1.1.234 1234            # every message
    camerad-listener 239.1.1.234 1234 FILE:      # only those containing FILE:
    camerad-listener --config /etc/camerad.cfg   # ASYNCGROUP and ASYNCPORT from the file

It joins the group (or, for a unicast address, listens on the port) and
prints each ``TAG:message`` datagram as one line on standard output.
Datagrams that are not printable ASCII are shown escaped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import struct
import sys
import time

from common import cli
from common.badinput import quote
from common.config import ConfigError

from . import config as C
from . import protocol as P

EXIT_OK = 0
EXIT_TIMEOUT = 1
EXIT_USAGE = 2


def build_parser():
    p = cli.make_parser(
        "camerad-listener",
        "Print camerad's asynchronous messages (UDP multicast or unicast), one per line.",
        epilog="Exit status: 0 stopped or COUNT messages printed, 1 timeout, 2 usage error.",
    )
    p.add_argument("group", nargs="?", help="ASYNCGROUP: multicast group (or unicast address)")
    p.add_argument("port", nargs="?", type=cli.port_number, help="ASYNCPORT")
    p.add_argument("filter", nargs="?", help="print only messages containing this text")
    p.add_argument(
        "-f",
        "--config",
        dest="config",
        metavar="FILE.cfg",
        help="take ASYNCGROUP and ASYNCPORT (and ASYNCIF) from camerad's configuration",
    )
    p.add_argument(
        "--interface",
        metavar="ADDRESS",
        help="join the group on the interface with this address (default ASYNCIF or any)",
    )
    p.add_argument(
        "-n",
        "--count",
        type=cli.non_negative_int,
        default=0,
        metavar="N",
        help="exit after N messages (default 0: run until interrupted)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="exit with status 1 when nothing arrives for this long (default 0: wait forever)",
    )
    return p


def open_socket(group: str, port: int, interface: str | None) -> socket.socket:
    """A UDP socket receiving ``group:port`` (joined when it is a multicast group)."""
    addr = ipaddress.IPv4Address(group)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with contextlib.suppress(AttributeError, OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if addr.is_multicast:
        s.bind((group, port))
        iface = socket.inet_aton(interface or "0.0.0.0")
        mreq = struct.pack("4s4s", socket.inet_aton(group), iface)
        try:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        except OSError:
            if interface:
                raise
            # no multicast route: camerad sends via the loopback interface then
            mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    else:
        s.bind(("", port))  # unicast ASYNCGROUP: datagrams come to this host's port
    return s


def format_datagram(data: bytes) -> str:
    event = P.decode_async(data)
    if isinstance(event, P.AsyncMessage):
        return event.line()
    return f"[{event.reason}: {quote(data, 200)}]"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = cli.parse_or_exit(parser, argv)
    group, port, interface, text = args.group, args.port, args.interface, args.filter
    if args.config and group and port is None and text is None:
        group, text = None, group  # camerad-listener --config FILE.cfg FILTER
    if args.config:
        try:
            cfg = C.load(args.config)
        except ConfigError as exc:
            print(f"camerad-listener: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not cfg.async_enabled:
            print(f"camerad-listener: {args.config}: async port disabled", file=sys.stderr)
            return EXIT_USAGE
        group, port = group or cfg.asyncgroup, port or cfg.asyncport
        interface = interface or cfg.asyncif or None
    if not group or not port:
        parser.error("give GROUP and PORT, or --config FILE.cfg")
    try:
        sock = open_socket(group, port, interface)
    except (ValueError, OSError) as exc:
        print(f"camerad-listener: cannot listen on {group}:{port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_OK))
    printed = 0
    last = time.monotonic()
    try:
        while True:
            if args.timeout > 0:
                left = args.timeout - (time.monotonic() - last)
                if left <= 0:
                    return EXIT_TIMEOUT
                sock.settimeout(left)
            try:
                data = sock.recv(P.MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            last = time.monotonic()
            line = format_datagram(data)
            if text and text not in line:
                continue
            print(line, flush=True)
            printed += 1
            if args.count and printed >= args.count:
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())

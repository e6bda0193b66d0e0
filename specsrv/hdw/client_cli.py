"""hdw-client: talk to a server-hardware server from a shell script.

``hdw-client [-H HOST] [-p PORT] [-n NAME] COMMAND [ARGS...] [\\; COMMAND ...]``
connects, says ``hello``, sends each command on the one connection and
prints each reply.  ``read`` prints the data (one value per line, an image
one row per line) or saves them with ``-o FILE.npy``; ``write`` takes
values from standard input or ``-i FILE.npy``; ``wait`` polls
``get_status`` until the device is idle.
"""

from __future__ import annotations

import sys

import numpy as np

from common import cli
from common.cli import positive_float

from . import protocol as P
from .cli import add_port_option
from .client import Client, ConnectionClosed, HdwError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3


def build_parser():
    p = cli.make_parser(
        "hdw-client",
        "Send commands to a spec server-hardware server (mca_server, img_server, ...).\n"
        "Commands are separated by a ';' word; 'wait' polls get_status until idle.",
    )
    p.add_argument(
        "-H",
        dest="host",
        metavar="HOST",
        default="localhost",
        help="server host (default localhost)",
    )
    add_port_option(p, "server port")
    p.add_argument(
        "-n",
        dest="name",
        metavar="NAME",
        default=None,
        help="server name to check in hello (default: no check)",
    )
    p.add_argument(
        "-a",
        dest="addr",
        metavar="ADDR",
        default=None,
        help="sub-address for get, set, read and write (e.g. 0.1)",
    )
    p.add_argument(
        "-t",
        dest="timeout",
        metavar="SECONDS",
        type=positive_float,
        default=10.0,
        help="socket timeout, and the longest wait (default 10)",
    )
    p.add_argument(
        "-o",
        dest="output",
        metavar="FILE",
        default=None,
        help="save read data to this .npy file instead of printing them",
    )
    p.add_argument(
        "-i",
        dest="input",
        metavar="FILE",
        default=None,
        help="write data from this .npy file instead of standard input",
    )
    p.add_argument(
        "-B",
        dest="byte_order",
        choices=sorted(P.BYTE_ORDERS),
        default="little",
        help="byte order to ask the server for (default little)",
    )
    p.add_argument(
        "words", nargs="+", metavar="COMMAND", help="command and arguments; ';' separates commands"
    )
    return p


def split_commands(words: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for w in words:
        if w == ";":
            out.append([])
        elif w.endswith(";") and len(w) > 1:
            out[-1].append(w[:-1])
            out.append([])
        else:
            out[-1].append(w)
    return [c for c in out if c]


def _format(data: np.ndarray) -> str:
    if data.ndim == 2:
        return "\n".join(" ".join(map(str, row)) for row in data.tolist())
    return "\n".join(map(str, data.tolist()))


def _region(args: list[str]) -> list[int]:
    try:
        return [int(a) for a in args]
    except ValueError:
        raise P.ProtocolError("read/write bounds must be whole numbers") from None


def _number(word: str) -> int | float:
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        raise P.ProtocolError(f"write data: not a number: {word!r}") from None


def numbers(words: list[str]) -> np.ndarray:
    """Values typed as text, exact: whole numbers stay Python ints (64-bit safe)."""
    return np.array([_number(w) for w in words], dtype=object)


def run_command(c: Client, words: list[str], args) -> str | None:
    cmd, rest = words[0], words[1:]
    if cmd == "wait":
        if not c.wait(args.timeout):
            raise HdwError("wait", f"still busy after {args.timeout:g} s")
        return None
    if cmd == "read":
        data = c.read_region(*_region(rest), addr=args.addr)
        if args.output:
            np.save(args.output, data)
            return f"{data.size} points saved to {args.output}"
        return _format(data)
    if cmd == "write":
        bounds = _region(rest)
        if args.input:
            data = np.load(args.input)
        else:
            data = numbers(sys.stdin.read().split())
        c.write_region(data, *bounds, addr=args.addr)
        return None
    if cmd == "config":
        return c.config(" ".join(rest)).text()
    if cmd == "exit":
        text = c.exit()
        c.close()
        return text
    if cmd == "goodbye":
        c.goodbye(int(rest[0]) if rest else 0)
        return None
    if cmd in ("get", "set"):
        return c.request(cmd, *rest, addr=args.addr)
    return c.request(cmd, *rest)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_or_exit(build_parser(), argv)
    commands = split_commands(args.words)
    if not commands:
        print("hdw-client: no command", file=sys.stderr)
        return EXIT_USAGE
    client = Client(
        args.host, args.port, timeout=args.timeout, byte_order=P.BYTE_ORDERS[args.byte_order]
    )
    try:
        client.connect()
        client.hello(args.name)
        for words in commands:
            text = run_command(client, words, args)
            if text:
                print(text, flush=True)
            if client.sock is None:  # goodbye
                return 0
        client.goodbye(0)
        return 0
    except HdwError as exc:
        print(f"hdw-client: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (P.ProtocolError, ValueError) as exc:
        print(f"hdw-client: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ConnectionClosed) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"hdw-client: {args.host}:{args.port}: {why}", file=sys.stderr)
        return EXIT_CONNECT
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())

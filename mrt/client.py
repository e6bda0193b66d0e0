"""``mr_t_client``: fetch image series from Mr. T over its UDP protocol.

The client side of the seed's procedure: ping until a pong names a series,
request every frame's bytes in order (stop-and-wait, one request in flight),
ignore stale replies, resend on timeout, stop at the frame count or at a
premature end, then ping for the next series.  The frames can be saved as
received or decoded to pixels.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from common import cli
from common import log as clog

from . import codec, protocol
from .protocol import ExtendedPong, FrameFetch, JsonPong, PacketReply, Pong

log = logging.getLogger("mr_t_client")


class FetchError(RuntimeError):
    """The server stopped answering, or a series made no progress for too long."""


@dataclass
class SeriesData:
    series_id: int
    frame_count: int
    frames: list[bytes]
    premature_end: int | None = None
    bits: int = 0
    width: int = 0
    height: int = 0
    name: str = ""
    resends: int = 0
    stale: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(f) for f in self.frames)

    def pixels(self, encoding: str = "auto", bits=None, shape=None) -> np.ndarray:
        """Decode every frame to an (n, height, width) array."""
        bits = bits or self.bits
        shape = shape or (self.height, self.width)
        if not bits or not all(shape):
            raise codec.CodecError(
                "bit depth and frame shape are unknown (plain pongs):"
                " give --bits, --width and --height"
            )
        out = np.empty((len(self.frames), *shape), dtype=codec.DTYPES[bits])
        for i, blob in enumerate(self.frames):
            enc = codec.guess_encoding(blob, shape, bits) if encoding == "auto" else encoding
            out[i] = codec.decode_frame(blob, enc, shape, bits)
        return out


class MrTClient:
    """A UDP client of one Mr. T server (loopback or wherever it runs)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 0.2,
        extended_pong: bool = False,
        pong_format: str | None = None,
        max_resends: int = 50,
        idle_timeout: float = 30.0,
        poll_interval: float = 0.005,
    ) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        #: the pong generation expected: plain, extended, json, or auto (any of them)
        self.pong_format = pong_format or ("extended" if extended_pong else "auto")
        self.extended = self.pong_format == "extended"
        self.max_resends = max_resends
        self.idle_timeout = idle_timeout
        self.poll_interval = poll_interval
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.connect(self.addr)
        self.sock.settimeout(timeout)
        self._sock_timeout = timeout
        self.last_series = 0
        self._pong_warned = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recv(self, deadline: float):
        """One decoded datagram before ``deadline``, or None on timeout."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if abs(left - self._sock_timeout) > 0.02:
                self._sock_timeout = left
                self.sock.settimeout(left)
            try:
                data = self.sock.recv(70000)
            except TimeoutError:
                return None
            except ConnectionRefusedError:
                # ICMP port unreachable from an earlier send: server not up (yet)
                time.sleep(min(left, self.timeout))
                return None
            msg = protocol.decode_reply(data, self.pong_format)
            if not isinstance(msg, protocol.BadDatagram):
                return msg
            if data[:1] == bytes([protocol.PONG]) and not self._pong_warned:
                # a pong of another kind: the two sides disagree on the pong format,
                # and every pong would be ignored without a word
                self._pong_warned = True
                hint = (
                    f"does the server send {self.pong_format} pongs?"
                    f" (mr_t --pong-format {self.pong_format}); --pong-format auto reads all"
                    if self.pong_format != "auto"
                    else "no pong generation fits"
                )
                log.warning("ignored datagram: %s; %s", msg.reason, hint)
            else:
                log.debug("ignored datagram: %s", msg.reason)

    def ping(self) -> Pong | ExtendedPong | JsonPong | None:
        try:
            self.sock.send(protocol.Ping().encode())
        except OSError as exc:
            log.debug("ping: %s", exc)
            return None
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._recv(deadline)
            if msg is None or isinstance(msg, Pong | ExtendedPong | JsonPong):
                return msg

    def wait_series(
        self, wait: float = 0.0, ping_interval: float = 0.1, new_only: bool = True
    ) -> Pong | ExtendedPong | JsonPong | None:
        """Ping until a pong names a series (a new one with ``new_only``); None after ``wait`` s."""
        deadline = time.monotonic() + wait if wait > 0 else None
        while deadline is None or time.monotonic() < deadline:
            t = time.monotonic()
            pong = self.ping()
            if pong is not None and pong.series_id != 0:
                if not new_only or pong.series_id != self.last_series:
                    return pong
            rest = ping_interval - (time.monotonic() - t)
            if rest > 0:
                time.sleep(rest)
        return None

    def fetch(self, pong: Pong | ExtendedPong | JsonPong) -> SeriesData:
        """Fetch every frame of the series ``pong`` announced."""
        st = FrameFetch(pong.frame_count)
        data = SeriesData(pong.series_id, pong.frame_count, st.frames)
        if isinstance(pong, ExtendedPong | JsonPong):
            data.bits, data.width, data.height, data.name = (
                pong.bits,
                pong.width,
                pong.height,
                pong.name,
            )
        if isinstance(pong, JsonPong):
            data.extra = dict(pong.extra)
        self.last_series = pong.series_id
        resends = 0
        last_progress = time.monotonic()
        send = self.sock.send
        while not st.done:
            req = st.next_request()
            send(req.encode())
            deadline = time.monotonic() + self.timeout
            outcome = None
            while outcome is None:
                msg = self._recv(deadline)
                if msg is None:
                    outcome = "timeout"
                elif isinstance(msg, PacketReply):
                    r = st.on_reply(msg)
                    if r == "stale":
                        data.stale += 1
                    else:
                        outcome = r
                # pongs arriving late are stale too: ignored
            if outcome == "timeout":
                resends += 1
                data.resends += 1
                if resends > self.max_resends:
                    raise FetchError(
                        f"series {pong.series_id}: no reply to {resends} requests for frame "
                        f"{req.frame} byte {req.start}"
                    )
                continue
            resends = 0
            now = time.monotonic()
            if outcome == "wait":
                if now - last_progress > self.idle_timeout:
                    raise FetchError(
                        f"series {pong.series_id}: frame {req.frame} not available after "
                        f"{self.idle_timeout} s"
                    )
                time.sleep(self.poll_interval)
            else:
                last_progress = now
        data.premature_end = st.premature_end
        return data


def address(text: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.+):(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return m.group(1).strip("[]"), cli.port_number(m.group(2))


def build_parser():
    p = cli.make_parser(
        "mr_t_client",
        "Fetch image series from a Mr. T server over UDP and optionally save the frames.",
    )
    p.add_argument("address", metavar="HOST:PORT", type=address, help="the server's UDP address")
    p.add_argument(
        "--series", metavar="N", type=cli.non_negative_int, default=1, help="series (1; 0 = loop)"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="save frames (.npy: array; else raw)")
    p.add_argument("--raw", action="store_true", help="save frames as received, not decoded")
    p.add_argument(
        "--extended-pong",
        action="store_true",
        help="server sends extended pongs (the same as --pong-format extended)",
    )
    p.add_argument(
        "--pong-format",
        choices=("auto", *protocol.PONG_FORMATS),
        help="pong generation the server sends (default auto: any of plain, extended, json)",
    )
    p.add_argument("--bits", type=int, choices=(8, 16, 32), help="bit depth, for decoding")
    p.add_argument("--width", metavar="X", type=cli.positive_int, help="frame width, for decoding")
    p.add_argument("--height", metavar="Y", type=cli.positive_int, help="frame height")
    p.add_argument(
        "--encoding", metavar="ENC", default="auto", help="frame encoding, e.g. bs16-lz4< (auto)"
    )
    p.add_argument(
        "--timeout", metavar="MS", type=cli.positive_int, default=200, help="reply timeout (200)"
    )
    p.add_argument("--retries", metavar="N", type=cli.positive_int, default=50, help="resends (50)")
    p.add_argument(
        "--idle-timeout",
        metavar="SEC",
        type=float,
        default=30.0,
        help="give up when a frame does not come (30)",
    )
    p.add_argument(
        "--wait", metavar="SEC", type=float, default=0.0, help="wait for a series (0 = for ever)"
    )
    p.add_argument(
        "--ping-interval", metavar="SEC", type=float, default=0.1, help="between pings (0.1)"
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def output_path(template: str, series_id: int, index: int) -> str:
    if "%d" in template:
        return template.replace("%d", str(series_id))
    return template


def save(data: SeriesData, args, index: int) -> None:
    path = output_path(args.output, data.series_id, index)
    if args.raw:
        mode = "wb" if index == 0 or "%d" in args.output else "ab"
        with open(path, mode) as f:
            for frame in data.frames:
                f.write(frame)
        return
    shape = (args.height, args.width) if args.height and args.width else None
    arr = data.pixels(args.encoding, args.bits, shape)
    if path.endswith(".npy"):
        np.save(path, arr)
    else:
        mode = "wb" if index == 0 or "%d" in args.output else "ab"
        with open(path, mode) as f:
            f.write(arr.astype(arr.dtype.newbyteorder("<")).tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = cli.parse_or_exit(parser, argv)
    if args.encoding != "auto":
        try:
            codec.parse_encoding(args.encoding)
        except codec.CodecError as exc:
            parser.error(str(exc))
    fmt = args.pong_format or ("extended" if args.extended_pong else "auto")
    if args.extended_pong and fmt != "extended":
        parser.error(f"--extended-pong contradicts --pong-format {fmt}")
    if args.output and not args.raw and fmt == "plain":
        if not (args.bits and args.width and args.height):
            parser.error(
                "decoding frames needs extended or JSON pongs, or --bits, --width and --height"
            )
    clog.setup_logging("mr_t_client", clog.verbosity_to_level(args.verbose))
    host, port = args.address
    status = 0
    with MrTClient(
        host,
        port,
        timeout=args.timeout / 1000.0,
        pong_format=fmt,
        max_resends=args.retries,
        idle_timeout=args.idle_timeout,
    ) as client:
        index = 0
        try:
            while args.series == 0 or index < args.series:
                pong = client.wait_series(args.wait, args.ping_interval)
                if pong is None:
                    print(f"mr_t_client: no series within {args.wait} s", file=sys.stderr)
                    return 3
                data = client.fetch(pong)
                end = (
                    f", ended early after {len(data.frames)} frames"
                    if data.premature_end is not None
                    else ""
                )
                print(
                    f"series {data.series_id}: {len(data.frames)}/{data.frame_count or '?'} "
                    f"frames, {data.nbytes} bytes{end}",
                    flush=True,
                )
                if data.frame_count and len(data.frames) < data.frame_count:
                    status = 1  # frames announced but never fetched (ended early)
                if args.output:
                    try:
                        save(data, args, index)
                    except (OSError, codec.CodecError) as exc:
                        print(f"mr_t_client: cannot save: {exc}", file=sys.stderr)
                        status = 1
                index += 1
        except FetchError as exc:
            print(f"mr_t_client: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return status


if __name__ == "__main__":
    sys.exit(main())

"""``mr_t``: EIGER ZeroMQ stream in, frames out over UDP and into HDF5."""

from __future__ import annotations

import argparse
import re
import sys

from common import cli, options, runtime

from . import hdf5, protocol, series
from .server import ZMQ_RCVHWM, MrT

DEFAULT_ZMQ_PORT = 9999


def zmq_endpoint(text: str) -> str:
    """``tcp://host:port``, ``host:port`` or ``host`` (port 9999) -> ZeroMQ endpoint."""
    text = text.strip()
    if "://" in text:
        if not re.fullmatch(r"(tcp|ipc|inproc)://\S+", text):
            raise argparse.ArgumentTypeError(f"invalid ZeroMQ endpoint: {text!r}")
        return text
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+|\*)(?::(\d+))?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected HOST, HOST:PORT or tcp://HOST:PORT: {text!r}")
    port = int(m.group(2)) if m.group(2) else DEFAULT_ZMQ_PORT
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {port}")
    return f"tcp://{m.group(1)}:{port}"


def byte_size(text: str) -> int:
    """``1073741824``, ``512M``, ``2G``, ``64K`` (binary multiples) -> bytes, > 0."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}")
    value = int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def payload_size(text: str) -> int:
    value = cli.positive_int(text)
    if value > series.MAX_PAYLOAD:
        raise argparse.ArgumentTypeError(f"at most {series.MAX_PAYLOAD} bytes fit in a datagram")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = cli.make_parser(
        "mr_t",
        "Receive EIGER images from the detector's ZeroMQ stream (v1), keep them in a\n"
        "bounded cache, serve them over Mr. T's UDP protocol, optionally write NXmx HDF5.",
        config_option=("--config",),
        default_config_files=[options.default_config_file("mr_t")],
    )
    p.add_argument(
        "--eiger-zmq-host-and-port",
        metavar="ENDPOINT",
        type=zmq_endpoint,
        help="detector stream: tcp://HOST:PORT, HOST:PORT or HOST (port 9999)",
    )
    p.add_argument(
        "--input-h5-file",
        metavar="FILE",
        help="replay the frames of this HDF5 file (/entry/data/data) instead of a detector",
    )
    p.add_argument("--udp-host", metavar="HOST", help="UDP address to bind (required)")
    p.add_argument(
        "--udp-port", metavar="PORT", type=cli.port_number, help="UDP port to bind (required)"
    )
    p.add_argument(
        "--frame-cache-limit",
        metavar="N",
        type=cli.positive_int,
        default=0,
        help="most frames held in memory (default: bounded by bytes only)",
    )
    p.add_argument(
        "--frame-cache-bytes",
        metavar="BYTES",
        type=byte_size,
        default=series.DEFAULT_CACHE_BYTES,
        help="most frame bytes held in memory, suffix K, M or G (default 1G)",
    )
    p.add_argument(
        "--udp-payload-size",
        metavar="BYTES",
        type=payload_size,
        default=protocol.DEFAULT_PAYLOAD,
        help=f"frame bytes per packet reply (default {protocol.DEFAULT_PAYLOAD})",
    )
    p.add_argument(
        "--zmq-rcvhwm",
        metavar="N",
        type=cli.positive_int,
        default=ZMQ_RCVHWM,
        help=f"messages ZeroMQ may queue beyond the cache (default {ZMQ_RCVHWM})",
    )
    p.add_argument(
        "--extended-pong",
        action="store_true",
        help="answer pings with the later original's pong (bits, width, height, name);"
        " the same as --pong-format extended",
    )
    p.add_argument(
        "--pong-format",
        choices=protocol.PONG_FORMATS,
        help="pong generation: plain (9 bytes, the default), extended, or json"
        " (the newest upstream's JSON metadata pong)",
    )
    p.add_argument(
        "--mask-path",
        metavar="PATH",
        help="pixel mask file (.npy or HDF5), named in JSON pongs and written into the master",
    )
    p.add_argument(
        "--status-port",
        metavar="PORT",
        type=cli.port_number,
        help="TCP port on the UDP host that answers 'idle' or 'running' and closes",
    )
    p.add_argument(
        "--udp-allow",
        metavar="NET",
        type=cli.network,
        action="append",
        help="answer only hosts in this network (ADDR[/BITS]; repeat; default: every host)",
    )
    p.add_argument(
        "--hdf5-output", metavar="DIR", help="write each series as NXmx HDF5 files into DIR"
    )
    p.add_argument(
        "--hdf5-frames-per-file",
        metavar="N",
        type=cli.positive_int,
        default=hdf5.DEFAULT_FRAMES_PER_FILE,
        help=f"frames per HDF5 data file (default {hdf5.DEFAULT_FRAMES_PER_FILE})",
    )
    cli.add_runtime_args(p, cli.RuntimeFlags(), default_logfile="/var/log/mr_t.log")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = cli.parse_or_exit(parser, argv)
    fmt = args.pong_format or ("extended" if args.extended_pong else "plain")
    if args.extended_pong and fmt != "extended":
        parser.error(f"--extended-pong contradicts --pong-format {fmt}")
    if not args.kill:
        if args.eiger_zmq_host_and_port and args.input_h5_file:
            parser.error("give either --eiger-zmq-host-and-port or --input-h5-file, not both")
        if not args.eiger_zmq_host_and_port and not args.input_h5_file:
            parser.error("one input is required: --eiger-zmq-host-and-port or --input-h5-file")
        if args.udp_host is None or args.udp_port is None:
            parser.error("--udp-host and --udp-port are required")
    if args.lockfile is None and (args.daemon or args.kill) and args.udp_port:
        # a daemon needs a lock file that -k can find without being told
        args.lockfile = f"/tmp/mr_t-{args.udp_port}.lock"
    service = MrT(
        udp_host=args.udp_host or "127.0.0.1",
        udp_port=args.udp_port or 0,
        endpoint=args.eiger_zmq_host_and_port,
        input_h5=args.input_h5_file,
        frame_limit=args.frame_cache_limit,
        byte_limit=args.frame_cache_bytes,
        payload_size=args.udp_payload_size,
        pong_format=fmt,
        mask_path=args.mask_path,
        status_port=args.status_port,
        allow=args.udp_allow,
        hdf5_dir=args.hdf5_output,
        frames_per_file=args.hdf5_frames_per_file,
        zmq_rcvhwm=args.zmq_rcvhwm,
        options=options.LiveOptions(parser, argv, args),
    )
    return runtime.run(service, runtime.options_from_args(args))


if __name__ == "__main__":
    sys.exit(main())

"""``eiger-zmq-sim``: plays a DECTRIS EIGER stream (v1) on a ZeroMQ PUSH socket.

For each series: the global header (``header_detail`` all, basic or none,
optional appendix), N images (synthetic diffraction-like frames of the chosen
size and bit depth, or the frames of an HDF5 file) encoded ``bs<bits>-lz4<``
(with the 12-byte header), ``lz4<`` or ``<``, paced by absolute deadlines
(start + k / rate), then the series end.  Series may be aborted early and
repeated.  Frames are a pure function of (seed, frame number), so a test can
rebuild exactly what was sent with :class:`FrameSource`.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import zmq

from common import cli
from common import log as clog

from . import codec, hdf5, protocol

log = logging.getLogger("eiger-zmq-sim")

DEFAULT_BIND = "tcp://127.0.0.1:9999"
KINDS = ("bslz4", "lz4", "raw")


class FrameSource:
    """Synthetic frames: Poisson background with a few Bragg-like spots.

    ``distinct`` frames are generated (lazily) and repeated cyclically, so a
    long fast series does not spend its time making pixels.
    """

    def __init__(
        self,
        width: int,
        height: int,
        bits: int = 16,
        kind: str = "bslz4",
        seed: int = 0,
        distinct: int = 16,
    ) -> None:
        self.shape = (height, width)
        self.bits = bits
        self.dtype = f"uint{bits}"
        self.encoding = codec.encoding_name(kind, bits)
        self.seed = seed
        self.distinct = max(1, distinct)
        self._blobs: dict[int, bytes] = {}

    def pixels(self, k: int) -> np.ndarray:
        k %= self.distinct
        rng = np.random.default_rng([self.seed, k])
        y, x = self.shape
        img = rng.poisson(0.4, size=self.shape).astype(np.uint32)
        for _ in range(8):
            cy, cx = int(rng.integers(0, y)), int(rng.integers(0, x))
            img[max(0, cy - 1) : cy + 2, max(0, cx - 1) : cx + 2] += int(rng.integers(50, 5000))
        top = (1 << self.bits) - 1
        np.minimum(img, top, out=img)
        return img.astype(codec.DTYPES[self.bits])

    def blob(self, k: int) -> bytes:
        k %= self.distinct
        b = self._blobs.get(k)
        if b is None:
            b = codec.encode_frame(self.pixels(k), self.encoding)
            self._blobs[k] = b
        return b


class FileSource:
    """Frames of an HDF5 file (bslz4 chunks unchanged, others raw), cycled."""

    def __init__(self, path: str) -> None:
        self.frames = list(hdf5.read_frames(path))
        if not self.frames:
            raise ValueError(f"{path}: no frames")
        f = self.frames[0]
        self.shape, self.dtype, self.encoding = f.shape, f.dtype, f.encoding
        self.bits = codec.TYPE_BITS[f.dtype]

    def blob(self, k: int) -> bytes:
        return self.frames[k % len(self.frames)].blob


def detector_config(src, nimages: int, rate: float, kind: str) -> dict:
    y, x = src.shape
    frame_time = 1.0 / rate if rate > 0 else 0.0005
    return {
        "auto_summation": True,
        "beam_center_x": x / 2,
        "beam_center_y": y / 2,
        "bit_depth_image": src.bits,
        "bit_depth_readout": min(src.bits, 16),
        "compression": {"bslz4": "bslz4", "lz4": "lz4"}.get(kind, "none"),
        "count_time": frame_time - 1e-7,
        "countrate_correction_applied": True,
        "data_collection_date": time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime()),
        "description": "Dectris EIGER2 Si (simulated by eiger-zmq-sim)",
        "detector_distance": 0.12,
        "detector_number": "E-32-0000-SIM",
        "detector_readout_time": 1e-7,
        "flatfield_correction_applied": True,
        "frame_time": frame_time,
        "incident_energy": 12400.0,
        "nimages": nimages,
        "ntrigger": 1,
        "photon_energy": 12400.0,
        "pixel_mask_applied": False,
        "sensor_material": "Si",
        "sensor_thickness": 0.00045,
        "software_version": "beamline-servers sim",
        "threshold_energy": 6200.0,
        "trigger_mode": "ints",
        "x_pixel_size": 7.5e-05,
        "x_pixels_in_detector": x,
        "y_pixel_size": 7.5e-05,
        "y_pixels_in_detector": y,
    }


def header_parts(src, series, detail: str, config: dict, appendix: bytes | None) -> list[bytes]:
    y, x = src.shape
    flat = np.ones((y, x), dtype="<f4").tobytes() if detail == "all" else b""
    mask = np.zeros((y, x), dtype="<u4")
    if detail == "all":
        mask[:, x // 2] = 1  # a gap column, as between modules
    table = np.zeros((2, 1000), dtype="<f4")
    table[0] = np.arange(1000)
    table[1] = np.arange(1000) * 1.01
    return protocol.encode_header(
        series,
        detail,
        config,
        flatfield=flat,
        pixel_mask=mask.tobytes() if detail == "all" else b"",
        countrate=table.tobytes() if detail == "all" else b"",
        shape_xy=(x, y),
        appendix=appendix,
    )


STRAY_PARTS = [
    b'{"htype":"dimage_d-1.0","shape":[4,4],"type":"uint16","encoding":"<","size":32}',
    b"\x00" * 32,
    b'{"htype":"dconfig-1.0","start_time":0,"stop_time":0,"real_time":0}',
]


def play(sock: zmq.Socket, src, args, series, nimages: int) -> None:
    config = detector_config(src, nimages, args.rate, args.encoding)
    appendix = args.header_appendix.encode() if args.header_appendix is not None else None
    img_app = args.image_appendix.encode() if args.image_appendix is not None else None
    send = nimages if args.abort_after is None else min(nimages, args.abort_after)
    for k in range(min(send, getattr(src, "distinct", 0))):
        src.blob(k)  # encode the distinct frames before the series, as a detector would
    sock.send_multipart(header_parts(src, series, args.header_detail, config, appendix))
    t0 = time.monotonic()
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    late = 0
    for k in range(send):
        if period:
            delay = t0 + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
        ns = int(k * period * 1e9)
        blob = src.blob(k)
        sock.send_multipart(
            protocol.encode_image(
                series,
                k,
                blob,
                src.shape,
                src.dtype,
                src.encoding,
                times=(ns, ns + int(config["count_time"] * 1e9), int(config["count_time"] * 1e9)),
                appendix=img_app,
            ),
            copy=len(blob) < 65536,
        )
    sock.send_multipart(protocol.encode_end(series))
    dt = time.monotonic() - t0
    log.info(
        "series %s: %d of %d frames in %.3f s (%.1f Hz)%s%s",
        series,
        send,
        nimages,
        dt,
        send / dt if dt > 0 else 0.0,
        ", aborted" if send < nimages else "",
        f", {late} frames more than one period late" if late else "",
    )
    if send < nimages and args.stray_after_abort:
        for part in STRAY_PARTS:
            sock.send(part)
        log.info("series %s: %d stray parts sent after the abort", series, len(STRAY_PARTS))


def build_parser():
    p = cli.make_parser(
        "eiger-zmq-sim",
        "Play a DECTRIS EIGER ZeroMQ stream (v1): header, images, series end, on a PUSH socket.",
    )
    p.add_argument(
        "--bind", metavar="ENDPOINT", default=DEFAULT_BIND, help=f"PUSH endpoint ({DEFAULT_BIND})"
    )
    p.add_argument(
        "--width", metavar="X", type=cli.positive_int, default=1028, help="pixels (1028)"
    )
    p.add_argument("--height", metavar="Y", type=cli.positive_int, default=512, help="pixels (512)")
    p.add_argument("--bits", type=int, choices=(8, 16, 32), default=16, help="bit depth (16)")
    p.add_argument("--encoding", choices=KINDS, default="bslz4", help="image encoding (bslz4)")
    p.add_argument(
        "--frames", metavar="N", type=cli.non_negative_int, help="images per series (10)"
    )
    p.add_argument(
        "--rate",
        metavar="HZ",
        type=float,
        default=100.0,
        help="frame rate; 0 sends as fast as possible (100)",
    )
    p.add_argument(
        "--header-detail",
        choices=("all", "basic", "none"),
        default="basic",
        help="header parts sent (basic)",
    )
    p.add_argument("--header-appendix", metavar="TEXT", help="header appendix part")
    p.add_argument("--image-appendix", metavar="TEXT", help="image appendix part")
    p.add_argument(
        "--series", metavar="N", type=cli.non_negative_int, default=1, help="series (1; 0 = loop)"
    )
    p.add_argument(
        "--series-id", metavar="ID", type=cli.non_negative_int, default=1, help="first id (1)"
    )
    p.add_argument(
        "--abort-after", metavar="K", type=cli.non_negative_int, help="end each series after K"
    )
    p.add_argument(
        "--stray-after-abort",
        action="store_true",
        help="after an aborted series send leftover image parts as stray messages",
    )
    p.add_argument("--pause", metavar="SEC", type=float, default=0.2, help="between series (0.2)")
    p.add_argument("--input-h5-file", metavar="FILE", help="send the frames of this HDF5 file")
    p.add_argument(
        "--distinct", metavar="K", type=cli.positive_int, default=16, help="distinct frames (16)"
    )
    p.add_argument("--seed", metavar="S", type=cli.non_negative_int, default=0, help="seed (0)")
    p.add_argument(
        "--linger",
        metavar="SEC",
        type=float,
        default=-1.0,
        help="at exit wait this long for delivery; negative waits for ever (-1)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_or_exit(build_parser(), argv)
    clog.setup_logging("eiger-zmq-sim", clog.verbosity_to_level(args.verbose))
    try:
        if args.input_h5_file:
            src = FileSource(args.input_h5_file)
            frames = args.frames if args.frames is not None else len(src.frames)
        else:
            src = FrameSource(
                args.width, args.height, args.bits, args.encoding, args.seed, args.distinct
            )
            frames = args.frames if args.frames is not None else 10
    except (OSError, ValueError, KeyError) as exc:
        print(f"eiger-zmq-sim: {exc}", file=sys.stderr)
        return 1
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 16)
    try:
        sock.bind(args.bind)
    except zmq.ZMQError as exc:
        print(f"eiger-zmq-sim: cannot bind {args.bind}: {exc}", file=sys.stderr)
        sock.close(0)
        ctx.term()
        return 1
    log.info(
        "PUSH bound to %s: %s x %s, %s, %s",
        args.bind,
        src.shape[1],
        src.shape[0],
        src.dtype,
        src.encoding,
    )
    try:
        n = 0
        while args.series == 0 or n < args.series:
            if n:
                time.sleep(max(0.0, args.pause))
            play(sock, src, args, args.series_id + n, frames)
            n += 1
    except KeyboardInterrupt:
        log.info("interrupted")
        args.linger = 0
    finally:
        sock.close(int(args.linger * 1000) if args.linger >= 0 else -1)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())

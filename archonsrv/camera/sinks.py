"""Where the frames of an exposure go: the sinks of :func:`.exposure.run`.

* :class:`StreamedSink`: one file per frame, written while the FETCH blocks
  arrive (the image is never held whole in memory);
* :class:`AmpsSink`: one file per frame with an extension per amplifier
  (``cubeamps``);
* :class:`CubeSink`: one file for the whole sequence, an extension per frame
  (``datacube`` with more than one exposure);
* :class:`ImageRawSink`: RAWENABLE=1 in an image mode: the image, then the
  raw samples of the same buffer as extension ``RAW`` (the original's
  IMAGE+RAW file);
* :class:`NullSink`: read the frames, write nothing (``test bw``).

Every file is written under a temporary name and renamed when complete
(:class:`~.fitsio.AtomicFits`); a failed write sends ``FILE:<name> ERROR``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np

from .. import acf as ACF
from .. import archon as A
from ..controller import ArchonError
from . import fitsio, headers
from .core import Camera, CommandError

log = logging.getLogger("camerad")


def file_done(cam: Camera, path: Path) -> None:
    cam.imnum += 1
    log.info("wrote %s", path)
    cam.notify("FILE", f"{path} COMPLETE")


def open_file(cam: Camera, start, keys, buf, write_primary: bool):
    directory = headers.target_dir(cam, start)
    name = fitsio.unique_name(directory, headers.name_for(cam, start)).name
    f = fitsio.AtomicFits(directory, name)
    if write_primary:
        try:
            f.primary(None, headers.cards(cam, name, buf, start, keys))
        except BaseException:
            f.discard()
            raise
    return f, name


def read_frame(cam: Camera, buf: A.BufferStatus, geom: ACF.Geometry, sink=None):
    """FETCH a frame buffer: the image array, or None when ``sink`` took the blocks."""
    if buf.width and buf.height and not geom.raw:
        if buf.width * buf.height != geom.width * geom.height:
            cam.notify(
                "NOTICE",
                f"Archon frame {buf.width}x{buf.height} differs from ACF geometry "
                f"{geom.width}x{geom.height}",
            )
    addr = buf.base + (buf.rawoffset if geom.raw else 0)
    with cam.ctl.lock:
        cam.ctl.lock_buffer(buf.index)
        try:
            t0 = time.monotonic()
            data = cam.ctl.fetch(addr, geom.blocks, sink=sink)
            log.debug(
                "fetched frame %d: %d blocks in %.3f s",
                buf.frame,
                geom.blocks,
                time.monotonic() - t0,
            )
        finally:
            if cam.ctl.is_open:
                try:
                    cam.ctl.lock_buffer(0)
                except ArchonError as exc:
                    log.warning("LOCK0 failed: %s", exc)
    if data is None:
        return None
    dtype = "<u2" if geom.bytes_per_pixel == 2 else "<u4"
    return data[: geom.image_bytes].view(dtype).reshape(geom.height, geom.width)


@contextlib.contextmanager
def frame_file(cam: Camera, start, keys, buf, held=None):
    """``(file, name)`` for one frame; a failure discards it and sends FILE:... ERROR.

    A frame that cannot be written is not lost: with ``held`` (the image in
    memory) it is kept for ``writeframe``; else it is still in the Archon's
    buffer for ``readframe``.  A NOTICE says which.
    """
    try:
        f, name = open_file(cam, start, keys, buf, write_primary=False)
    except BaseException:
        keep_frame(cam, buf, held)
        raise
    try:
        yield f, name
    except BaseException:
        f.discard()
        cam.notify("FILE", f"{f.directory / name} ERROR")
        keep_frame(cam, buf, held)
        raise


def keep_frame(cam: Camera, buf, held) -> None:
    if held is not None:
        with cam.lock:
            cam.held_frame = held
        cam.notify("NOTICE", f"frame {buf.frame} kept in memory; writeframe writes it")
    else:
        cam.notify(
            "NOTICE",
            f"frame {buf.frame} is in Archon buffer {buf.index} until overwritten; "
            f"readframe {buf.index} then writeframe writes it",
        )


class Sink:
    def __init__(self, cam: Camera, plan) -> None:
        self.cam = cam
        self.plan = plan
        self.geom = plan.geometry

    def frame(self, k: int, start: float, keys: list, buf) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def read(self, buf, sink=None):
        return read_frame(self.cam, buf, self.geom, sink=sink)


class NullSink(Sink):
    def frame(self, k, start, keys, buf) -> None:
        self.read(buf)


class StreamedSink(Sink):
    """Fetch a frame straight into its FITS file, block by block."""

    def frame(self, k, start, keys, buf) -> None:
        cam, geom = self.cam, self.geom
        with frame_file(cam, start, keys, buf) as (f, name):
            img = f.stream_image(
                geom.width,
                geom.height,
                geom.bitpix,
                cam.hdrshift,
                headers.cards(cam, name, buf, start, keys),
            )
            try:
                self.read(buf, sink=img.feed)
            except BaseException:
                img.abort()
                raise
            path = img.finish()
        file_done(cam, path)


class AmpsSink(Sink):
    """One file per frame; with cubeamps an extension per amplifier."""

    def frame(self, k, start, keys, buf) -> None:
        self.write(start, keys, buf, self.read(buf))

    def write(self, start, keys, buf, image) -> Path:
        """Write one frame already in memory; return its path."""
        cam, geom = self.cam, self.geom
        held = (buf, image, start, geom, self.plan.mode, keys)
        with frame_file(cam, start, keys, buf, held) as (f, name):
            pix = fitsio.pixels(image, geom.bitpix, cam.hdrshift)
            if cam.cubeamps:
                f.primary(None, headers.cards(cam, name, buf, start, keys))
                for d in range(geom.num_detect):
                    for j, (x1, x2, y1, y2) in enumerate(geom.amp_sections):
                        xo = d * geom.cols
                        sub = pix[y1 - 1 : y2, xo + x1 - 1 : xo + x2]
                        extno = d * len(geom.amp_sections) + j + 1
                        f.extension(
                            np.ascontiguousarray(sub),
                            [
                                ("EXTNAME", str(extno), "amplifier number"),
                                ("AMPSEC", f"[{x1}:{x2},{y1}:{y2}]", "amplifier section"),
                            ],
                        )
            else:
                f.primary(pix, headers.cards(cam, name, buf, start, keys))
            path = f.commit()
        file_done(cam, path)
        return path


class CubeSink(Sink):
    """All frames of the sequence in one file, an extension each."""

    def __init__(self, cam: Camera, plan) -> None:
        super().__init__(cam, plan)
        self.cube: fitsio.AtomicFits | None = None

    def frame(self, k, start, keys, buf) -> None:
        cam, geom = self.cam, self.geom
        image = self.read(buf)
        if self.cube is None:
            self.cube = open_file(cam, start, keys, buf, write_primary=True)[0]
        try:
            self.cube.extension(
                fitsio.pixels(image, geom.bitpix, cam.hdrshift),
                [
                    ("EXTNAME", str(k), "exposure number"),
                    ("FRAMENUM", buf.frame, "Archon frame number"),
                    ("DATE-OBS", headers.stamp(cam, start), "exposure start"),
                    *keys,
                ],
            )
        except fitsio.FitsWriteError:
            cam.notify("DATACUBE", f"{k} ERROR")
            self.cube = None
            raise
        cam.notify("DATACUBE", f"{k} COMPLETE")

    def close(self) -> None:
        if self.cube is not None:
            path = self.cube.commit()
            self.cube = None
            file_done(self.cam, path)

    def abort(self) -> None:
        if self.cube is not None:
            self.cube.discard()
            self.cam.notify("FILE", f"{self.cube.directory / self.cube.name} ERROR")
            self.cube = None


class ImageRawSink(Sink):
    """The image as primary HDU and the raw samples as extension RAW, one file per frame."""

    def __init__(self, cam: Camera, plan) -> None:
        super().__init__(cam, plan)
        try:
            self.raw_geom = ACF.compute_geometry(
                cam.values(), cam.acf.modes["DEFAULT"].arch, raw=True
            )
        except ACF.AcfError as exc:
            raise CommandError(f"RAWENABLE=1: {exc}") from None

    def frame(self, k, start, keys, buf) -> None:
        cam, geom = self.cam, self.geom
        image = self.read(buf)
        raw = read_frame(cam, buf, self.raw_geom)
        with frame_file(cam, start, keys, buf) as (f, name):
            f.primary(
                fitsio.pixels(image, geom.bitpix, cam.hdrshift),
                headers.cards(cam, name, buf, start, keys),
            )
            f.extension(
                raw,
                [
                    ("EXTNAME", "RAW", "raw samples of the same frame buffer"),
                    ("RAWSEL", cam.values().get("RAWSEL", ""), "raw channel"),
                    ("FRAMENUM", buf.frame, "Archon frame number"),
                ],
            )
            path = f.commit()
        file_done(cam, path)


def raw_enabled(cam: Camera, plan) -> bool:
    return not plan.raw and cam.values().get("RAWENABLE", "0") == "1"


def choose(cam: Camera, plan) -> Sink:
    if not plan.write:
        return NullSink(cam, plan)
    if not cam.cubeamps and not (cam.datacube and plan.n > 1):
        if raw_enabled(cam, plan):
            return ImageRawSink(cam, plan)
        return StreamedSink(cam, plan)
    if cam.datacube and not cam.cubeamps and plan.n > 1:
        return CubeSink(cam, plan)
    return AmpsSink(cam, plan)

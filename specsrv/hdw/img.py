"""img_server: a simulated 2-D detector for spec's "Server Image Device".

An exposure of PRESET seconds (``run PRESET MODE``) produces a
diffraction-like image: Debye-Scherrer rings around the beam centre on a
diffuse background, a beam-stop shadow, a dark offset and Poisson noise.
``read ROW_BEG ROW_END COL_BEG COL_END`` returns any region of interest;
``write`` stores data into one.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common import cli
from common.cli import positive_float

from .cli import serve
from .device import DataBlock, DeviceError, ImageDevice, parse_number
from .simbase import SimDevice, positive_number, to_type

MAX_SIDE = 16384
DARK = 10.0  # counts per pixel in every frame
#: ring radii as fractions of the half-diagonal, and relative intensities
RINGS = ((0.12, 1.0), (0.2, 0.6), (0.235, 0.35), (0.33, 0.5), (0.41, 0.2), (0.47, 0.3), (0.6, 0.1))


def side(text: str) -> int:
    value = cli.positive_int(text)
    if value > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"at most {MAX_SIDE}")
    return value


def diffraction_pattern(rows: int, cols: int, centre: tuple[float, float]) -> np.ndarray:
    """Expected photons per pixel per second at flux 1 (float32, row-major)."""
    cy, cx = centre
    y = (np.arange(rows, dtype=np.float32) - np.float32(cy))[:, None]
    x = (np.arange(cols, dtype=np.float32) - np.float32(cx))[None, :]
    r = np.sqrt(y * y + x * x)
    scale = np.float32(0.5 * np.hypot(rows, cols))
    rn = r / scale
    img = np.float32(0.3) / (np.float32(1.0) + (rn / np.float32(0.08)) ** 2)
    width = np.float32(0.004)
    for radius, height in RINGS:
        img += np.float32(height) * np.exp(-0.5 * ((rn - np.float32(radius)) / width) ** 2)
    img[rn < 0.03] *= np.float32(0.01)  # beam stop
    return img


class SimImage(SimDevice, ImageDevice):
    """Simulated 2-D detector: diffraction rings with noise, any ROI."""

    name = "img_server"
    writable = True
    select_poll_interval = 0.05
    default_type = "ushort"
    kind = "image"

    def __init__(self) -> None:
        super().__init__()
        self.shape = (512, 512)
        self.flux = 1000.0
        self.frames = 0
        self.exposure = 0.0
        self._alloc()

    def _alloc(self) -> None:
        rows, cols = self.shape
        self.centre = (0.48 * rows, 0.52 * cols)
        self.pattern = diffraction_pattern(rows, cols, self.centre)
        self.image = to_type(np.zeros(self.shape, dtype=np.uint8), self.type_name)

    # -- command line -----------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser) -> None:
        for flag, dest, what in (("-r", "rows", "rows"), ("-c", "cols", "columns")):
            parser.add_argument(
                flag,
                dest=dest,
                metavar=dest.upper(),
                type=side,
                default=512,
                help=f"image {what} (default 512)",
            )
        parser.add_argument(
            "-f",
            dest="flux",
            metavar="FLUX",
            type=positive_float,
            default=1000.0,
            help="photons per second in the brightest ring pixel (default 1000)",
        )
        super().add_arguments(parser)

    def parse_args(self, args) -> None:
        super().parse_args(args)
        self.shape = (args.rows, args.cols)
        self.flux = args.flux
        self._alloc()

    def description(self) -> str:
        rows, cols = self.shape
        return f"Simulated image detector {rows}x{cols}"

    # -- acquisition ---------------------------------------------------------------
    def _expose(self) -> None:
        """Read the 'sensor' out: a new frame of the exposure so far."""
        seconds = self.acq.real_time
        lam = self.pattern * np.float32(self.flux * seconds) + np.float32(DARK)
        self.image = to_type(self.rng.poisson(lam), self.type_name)
        self.exposure = seconds
        self.frames += 1

    def _advance(self) -> None:
        if self.acq.running:
            self.acq.advance()
            if not self.acq.running:
                self._expose()

    def select_poll(self) -> None:
        self._advance()

    def clear(self, addr: int) -> None:
        self._advance()
        self.image = np.zeros_like(self.image)
        self.acq.clear()

    def run(self, addr: int, mode: int, preset: float) -> None:
        self._advance()
        self.acq.clear()
        self.acq.start(mode, preset)

    def stop(self, addr: int, mode: int) -> None:
        if self.acq.running:
            self.acq.halt()
            self._expose()

    def poll(self, addr: int) -> int:
        self._advance()
        return int(self.acq.running)

    def check_addr(self, addr: int) -> None:
        if addr > 0:
            raise DeviceError(f"no sub-address {addr}: this detector has one module (0)")

    def send_data(self, addr: int, block: DataBlock) -> None:
        self._advance()
        self.check_addr(addr)
        # a view: frames are replaced, never changed in place, so it stays valid
        block.data = self.image[block.region.slices()]

    def receive_data(self, addr: int, block: DataBlock) -> None:
        self.check_addr(addr)
        image = self.image.copy()
        image[block.region.slices()] = to_type(block.data, self.type_name)
        self.image = image

    # -- parameters ------------------------------------------------------------------
    def getters(self, addr: int):
        img = self.image
        return {
            **super().getters(addr),
            "flux": lambda: f"{self.flux:g}",
            "beam_center": lambda: "{:g} {:g}".format(*self.centre),
            "exposure": lambda: f"{self.exposure:.3f}",
            "frames": lambda: str(self.frames),
            "sum": lambda: f"{img.sum(dtype=np.float64):.15g}",
            "max": lambda: f"{img.max():g}" if img.dtype.kind == "f" else str(img.max()),
        }

    def setters(self, addr: int):
        def flux(values: list[str]) -> str:
            self.flux = positive_number(values[0], "flux")
            return f"{self.flux:g}"

        def beam_center(values: list[str]) -> str:
            # any finite position: the beam may hit off the sensor (offset detectors)
            y, x = (parse_number(v, "beam_center") for v in values)
            if not (np.isfinite(y) and np.isfinite(x)):
                raise DeviceError("beam_center must be two finite numbers")
            self.centre = (y, x)
            self.pattern = diffraction_pattern(*self.shape, self.centre)
            return f"{y:g} {x:g}"

        return {**super().setters(addr), "flux": (1, flux), "beam_center": (2, beam_center)}


def main(argv: list[str] | None = None) -> int:
    return serve(SimImage, argv)


if __name__ == "__main__":
    sys.exit(main())

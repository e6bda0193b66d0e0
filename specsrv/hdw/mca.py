"""mca_server: a simulated multi-element MCA for spec's "Server MCA".

Each element (sub-address ``a=0.0``, ``a=0.1``, ...) has its own spectrum:
fluorescence-like Gaussian peaks on a falling background.  While a run is
on, counts arrive at ``rate`` counts per second per element with Poisson
noise; the preset (seconds, or monitor counts in ``mcount`` mode) ends the
run.  ``clear``, ``halt``, reading and writing any channel range work as
on a real MCA.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common import cli
from common.cli import positive_float

from .cli import serve
from .device import DataBlock, DeviceError, McaDevice
from .simbase import SimDevice, positive_number, to_type

MAX_CHANNELS = 65536
#: peak positions as fractions of the channel range, and relative heights
PEAKS = ((0.16, 1.0), (0.18, 0.18), (0.32, 0.45), (0.355, 0.08), (0.55, 0.25), (0.8, 0.05))
DEAD_TIME_PER_COUNT = 2e-6  # s, for live_time


def channel_count(text: str) -> int:
    value = cli.positive_int(text)
    if value > MAX_CHANNELS:
        raise argparse.ArgumentTypeError(f"at most {MAX_CHANNELS} channels")
    return value


def element_count(text: str) -> int:
    value = cli.positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError("at most 64 elements")
    return value


def spectrum_shape(chans: int, element: int) -> np.ndarray:
    """Probability of a count landing in each channel (sums to 1)."""
    x = np.arange(chans, dtype=np.float64)
    gain = 1.0 + 0.01 * element  # elements differ a little, as real ones do
    shape = 0.4 * np.exp(-x / (0.25 * chans)) + 0.02
    for pos, height in PEAKS:
        centre = pos * chans * gain
        sigma = 0.004 * chans + 0.002 * centre
        shape += height * np.exp(-0.5 * ((x - centre) / sigma) ** 2)
    return shape / shape.sum()


class SimMca(SimDevice, McaDevice):
    """Simulated MCA: Poisson-noisy peaks on a background, N elements."""

    name = "mca_server"
    writable = True
    select_poll_interval = 0.1
    default_type = "long"

    def __init__(self) -> None:
        super().__init__()
        self.shape = (1024,)
        self.elements = 4
        self.rate = 20000.0
        self._alloc()

    def _alloc(self) -> None:
        chans = self.shape[0]
        self.counts = np.zeros((self.elements, chans), dtype=np.float64)
        self.shapes = np.stack([spectrum_shape(chans, e) for e in range(self.elements)])

    # -- command line --------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument(
            "-n",
            dest="channels",
            metavar="CHANS",
            type=channel_count,
            default=1024,
            help="channels per element (default 1024)",
        )
        parser.add_argument(
            "-e",
            dest="elements",
            metavar="N",
            type=element_count,
            default=4,
            help="detector elements, sub-addresses 0 to N-1 (default 4)",
        )
        parser.add_argument(
            "-r",
            dest="rate",
            metavar="CPS",
            type=positive_float,
            default=20000.0,
            help="counts per second per element while running (default 20000)",
        )
        super().add_arguments(parser)

    def parse_args(self, args) -> None:
        super().parse_args(args)
        self.shape = (args.channels,)
        self.elements = args.elements
        self.rate = args.rate
        self._alloc()

    def description(self) -> str:
        return f"Simulated MCA, {self.elements} elements"

    # -- acquisition ------------------------------------------------------------
    def _add(self, dt: float) -> None:
        if dt > 0:
            self.counts += self.rng.poisson(self.shapes * (self.rate * dt))

    def _advance(self) -> None:
        self._add(self.acq.advance())

    def _element(self, addr: int) -> int:
        e = 0 if addr < 0 else addr
        if e >= self.elements:
            raise DeviceError(f"no element {addr}: this MCA has elements 0 to {self.elements - 1}")
        return e

    def check_addr(self, addr: int) -> None:
        self._element(addr)

    def select_poll(self) -> None:
        self._advance()

    def clear(self, addr: int) -> None:
        self._advance()
        self.counts[:] = 0
        self.acq.clear()

    def run(self, addr: int, mode: int, preset: float) -> None:
        self._advance()
        self.acq.start(mode, preset)

    def stop(self, addr: int, mode: int) -> None:
        self._add(self.acq.halt())

    def poll(self, addr: int) -> int:
        self._advance()
        return int(self.acq.running)

    def send_data(self, addr: int, block: DataBlock) -> None:
        self._advance()
        e = self._element(addr)
        data = to_type(self.counts[e][block.region.slices()], self.type_name)
        # the data are sent after the lock is released, while select_poll keeps
        # adding counts in place: send a snapshot, never a view (type double)
        block.data = data.copy() if np.shares_memory(data, self.counts) else data

    def receive_data(self, addr: int, block: DataBlock) -> None:
        e = self._element(addr)
        self.counts[e][block.region.slices()] = block.data.astype(np.float64)

    # -- parameters ------------------------------------------------------------------
    def getters(self, addr: int):
        acq = self.acq
        return {
            **super().getters(addr),
            "rate": lambda: f"{self.rate:g}",
            "real_time": lambda: f"{acq.real_time:.3f}",
            "live_time": lambda: f"{acq.real_time / (1 + self.rate * DEAD_TIME_PER_COUNT):.3f}",
            "preset": lambda: f"{acq.preset:g}",
            "total": lambda: str(int(self.counts[self._element(addr)].sum())),
            "elements": lambda: str(self.elements),
        }

    def setters(self, addr: int):
        def rate(values: list[str]) -> str:
            self.rate = positive_number(values[0], "rate")
            return f"{self.rate:g}"

        return {**super().setters(addr), "rate": (1, rate)}


def main(argv: list[str] | None = None) -> int:
    return serve(SimMca, argv)


if __name__ == "__main__":
    sys.exit(main())

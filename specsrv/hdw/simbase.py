"""What the two simulated devices share: the acquisition clock and data types.

The ``run PRESET MODE`` semantics of the simulators: mode 1 (``mcount``)
counts to a monitor preset, simulated as PRESET / ``monitor_rate`` seconds;
modes 2 (``tcount``) and 4 (``xxx_par("run")``) count PRESET seconds; a
preset of 0 (``move_cnt``, mode 3, or no preset set) counts until ``halt``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from .device import MODE_MCOUNT, Device, DeviceError, parse_number, type_name_arg
from .protocol import dtype_for

__all__ = ["Acquisition", "SimDevice", "to_type", "type_name_arg"]

DEFAULT_MONITOR_RATE = 10000.0


class Acquisition:
    """Run / halt / preset bookkeeping on a monotonic clock.

    ``advance(now)`` returns the seconds of counting since the previous call
    (never past the preset) so a device can add that much signal; it also
    ends the run when the preset is reached.
    """

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.running = False
        self.preset_s = 0.0  # 0 = until halt
        self.preset = 0.0
        self.mode = 0
        self.real_time = 0.0  # seconds counted since clear
        self.monitor_rate = DEFAULT_MONITOR_RATE
        self._last = 0.0
        self._end = 0.0

    def start(self, mode: int, preset: float) -> None:
        seconds = preset / self.monitor_rate if mode == MODE_MCOUNT else preset
        now = self.clock()
        self.mode, self.preset, self.preset_s = mode, preset, seconds
        self._last = now
        self._end = now + seconds if seconds > 0 else float("inf")
        self.running = True

    def advance(self) -> float:
        if not self.running:
            return 0.0
        now = self.clock()
        upto = min(now, self._end)
        dt = max(0.0, upto - self._last)
        self._last = upto
        self.real_time += dt
        if now >= self._end:
            self.running = False
        return dt

    def halt(self) -> float:
        dt = self.advance()
        self.running = False
        return dt

    def clear(self) -> None:
        self.real_time = 0.0

    def remaining(self) -> float:
        if not self.running:
            return 0.0
        return max(0.0, self._end - self.clock())

    def set_monitor_rate(self, text: str) -> None:
        value = parse_number(text, "monitor_rate")
        if not value > 0:
            raise DeviceError("monitor_rate must be > 0")
        self.monitor_rate = value


def to_type(data: np.ndarray, type_name: str) -> np.ndarray:
    """``data`` in the native type, saturating integers at the type's limits."""
    dtype = dtype_for(type_name, "=")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if data.dtype.kind == "f":
            data = np.rint(data)
        data = np.clip(data, info.min, info.max)
    return data.astype(dtype, copy=False)


def positive_number(text: str, what: str) -> float:
    value = parse_number(text, what)
    if not (np.isfinite(value) and value > 0):
        raise DeviceError(f"{what} must be a number > 0")
    return value


def positive_float(text: str) -> float:
    """argparse type for a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0: {text}")
    return value


Getter = Callable[[], str]
Setter = Callable[[list[str]], str]


class SimDevice(Device):
    """Shared by the simulators: ``-t TYPE``, ``-s SEED``, tables of parameters.

    A subclass lists its parameters in ``getters()`` (name -> function giving
    the text of ``get``) and ``setters()`` (name -> (number of values,
    function taking the values and giving the reply of ``set``)).
    """

    default_type = "long"
    #: the one value ``-u`` accepts (spec's example starts img_server with ``-u image``)
    kind = "mca"

    def __init__(self) -> None:
        super().__init__()
        self.type_name = self.default_type
        self.rng = np.random.default_rng()
        self.acq = Acquisition()

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument(
            "-t",
            dest="type_name",
            metavar="TYPE",
            type=type_name_arg,
            default=cls.default_type,
            help=f"native data type (default {cls.default_type})",
        )
        parser.add_argument(
            "-s",
            dest="seed",
            metavar="SEED",
            type=int,
            default=None,
            help="seed of the random numbers, for repeatable data",
        )
        parser.add_argument(
            "-u",
            dest="kind",
            metavar="KIND",
            choices=[cls.kind],
            default=cls.kind,
            help=f"device kind, only {cls.kind} (accepted for spec's example configurations)",
        )

    def parse_args(self, args) -> None:
        self.type_name = args.type_name
        self.rng = np.random.default_rng(args.seed)

    @classmethod
    def usage(cls) -> str:
        probe = cls()
        setters, getters = probe.setters(-1), probe.getters(-1)
        return (
            f"parameters (get/set): {' '.join(setters)}; "
            f"read only: {' '.join(k for k in getters if k not in setters)}"
        )

    def _advance(self) -> None:
        """Bring the simulation up to now."""

    def check_addr(self, addr: int) -> None:
        """Raise DeviceError for a sub-address the device does not have."""

    def getters(self, addr: int) -> dict[str, Getter]:
        return {"monitor_rate": lambda: f"{self.acq.monitor_rate:g}"}

    def setters(self, addr: int) -> dict[str, tuple[int, Setter]]:
        def monitor_rate(values: list[str]) -> str:
            self.acq.set_monitor_rate(values[0])
            return f"{self.acq.monitor_rate:g}"

        return {"monitor_rate": (1, monitor_rate)}

    def pars(self, addr: int, how: int, cmd: str, args: list[str]) -> str:
        self._advance()
        self.check_addr(addr)
        getters = self.getters(addr)
        if how == 1:
            setters = self.setters(addr)
            if cmd in setters:
                nargs, setter = setters[cmd]
                if len(args) != nargs:
                    raise DeviceError(f"usage: set {cmd} {' '.join(['VALUE'] * nargs)}")
                return setter(args)
            if cmd in getters:
                raise DeviceError(f"{cmd} is read-only")
        elif cmd in getters:
            if args:
                raise DeviceError(f"usage: get {cmd}")
            return getters[cmd]()
        raise DeviceError(f"unknown parameter {cmd!r}")

"""The device API: one Python class per piece of hardware.

Its methods mirror the C ``struct device_funcs`` of spec's server overhead
module (``parse_args``, ``description``, ``initialize``, ``config``,
``clear``, ``run``, ``stop``, ``poll``, ``pars``, ``send_data``,
``receive_data``, ``exit``, ``usage``, ``select_poll``, ``cmd``).  Where the
C functions fill an error-string buffer and return a status, these raise
:class:`DeviceError` with the message; where they fill a reply buffer, these
return the reply text.  The framework (:mod:`specsrv.hdw.session`) calls
them one at a time, under a lock, so a device need not be thread-safe.

A new device is one small subclass of :class:`McaDevice` (1-D) or
:class:`ImageDevice` (2-D); see ``specsrv-hdw(7)`` and :mod:`specsrv.hdw.mca`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from .protocol import DATA_TYPES, Config, ProtocolError, Region

#: ``run`` modes sent by spec
MODE_MCOUNT = 1
MODE_TCOUNT = 2
MODE_MOVE_CNT = 3
MODE_PAR_RUN = 4


class DeviceError(Exception):
    """A device function failed; the message goes into the ``!:`` reply."""


@dataclass
class DataBlock:
    """What ``send_data`` fills and ``receive_data`` gets (C ``struct data_block``).

    ``region`` holds the inclusive bounds requested; ``type_name`` the type the
    data travel in (the native type unless ``send_data`` picks another for
    an image); ``data`` an array of ``region.shape``.
    """

    region: Region
    type_name: str
    data: np.ndarray | None = None

    @property
    def npts(self) -> int:
        return self.region.npts


class Device:
    """Base class with sensible defaults for every ``device_funcs`` entry.

    Class attributes a subclass sets:

    ``name``
        the server name: checked against ``hello NAME``, used for the lock
        and log files ``/tmp/NAME-PORT.lock`` and ``.log``;
    ``ndim``
        1 for an MCA-type device, 2 for an image-type device;
    ``writable``
        True if ``write`` is accepted (``receive_data`` implemented);
    ``select_poll_interval``
        seconds between ``select_poll`` calls (only if overridden).

    Instance attributes ``type_name`` and ``shape`` are what ``config``
    reports; the framework checks ``read``/``write`` regions against them.
    """

    name = "hdw_server"
    ndim = 1
    writable = False
    select_poll_interval = 0.1

    def __init__(self) -> None:
        self.type_name = "long"
        self.shape: tuple[int, ...] = (1024,) if self.ndim == 1 else (512, 512)

    # -- command line --------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Register the device's own command-line options (the parse_args half)."""

    def parse_args(self, args: argparse.Namespace) -> None:
        """Apply the device's own options; raise DeviceError to refuse them."""

    @classmethod
    def usage(cls) -> str:
        """Extra text for ``-h``, after the options."""
        return ""

    # -- life cycle -----------------------------------------------------------
    def description(self) -> str:
        """The free text at the end of the ``hello back`` reply."""
        return "Generic"

    def initialize(self) -> None:
        """Open the hardware; called once at start-up, after any daemon fork."""

    def exit(self) -> None:
        """Release the hardware; called on ``exit`` and when the server stops."""

    def select_poll(self) -> None:
        """Periodic hook (every ``select_poll_interval`` s) when overridden."""

    # -- commands -----------------------------------------------------------------
    def config(self, arg: str) -> None:
        """``config [ARG]``: ARG is spec's ADDR field ('' when empty)."""

    def clear(self, addr: int) -> None:
        """``clear``: zero the data."""

    def run(self, addr: int, mode: int, preset: float) -> None:
        """``run PRESET MODE``: start acquiring."""
        raise DeviceError("run not supported by this device")

    def stop(self, addr: int, mode: int) -> None:
        """``halt [MODE]``: stop acquiring (mode 1 = stop()/^C, 0 = halt/timer)."""

    def poll(self, addr: int) -> int:
        """``get_status``: nonzero while acquiring."""
        return 0

    def pars(self, addr: int, how: int, cmd: str, args: list[str]) -> str:
        """``get PAR`` (how 0) and ``set PAR VALUE...`` (how 1); return the reply text."""
        raise DeviceError(f"unknown parameter {cmd!r}")

    def send_data(self, addr: int, block: DataBlock) -> None:
        """``read``: set ``block.data`` to the region's values (may change type_name)."""
        raise DeviceError("read not supported by this device")

    def receive_data(self, addr: int, block: DataBlock) -> None:
        """``write`` + data + ``xfer_done``: store ``block.data`` in the region."""
        raise DeviceError("write not supported by this device")

    def cmd(self, addr: int, cmd: str, args: list[str]) -> str | None:
        """Any command the framework does not know; return reply text."""
        raise DeviceError(f"unknown command {cmd!r}")

    # -- helpers the framework uses ------------------------------------------------
    def config_reply(self) -> Config:
        return Config(self.type_name, tuple(self.shape))

    def check_type(self) -> None:
        if self.type_name not in DATA_TYPES:
            raise DeviceError(f"native type {self.type_name!r} is not a protocol type")
        if len(self.shape) != self.ndim or any(n <= 0 for n in self.shape):
            raise DeviceError(f"bad shape {self.shape} for a {self.ndim}-D device")


class McaDevice(Device):
    """An MCA-type (1-D) device: ``config`` answers ``TYPE NPTS``."""

    ndim = 1


class ImageDevice(Device):
    """An image-type (2-D) device: ``config`` answers ``TYPE ROWS COLS``."""

    ndim = 2


def type_name_arg(text: str) -> str:
    """argparse type for a native type name."""
    if text not in DATA_TYPES:
        raise argparse.ArgumentTypeError(
            f"unknown data type {text!r} (one of {', '.join(DATA_TYPES)})"
        )
    return text


def parse_number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DeviceError(f"{what} must be a number, not {text!r}") from None


__all__ = [
    "DataBlock",
    "Device",
    "DeviceError",
    "ImageDevice",
    "McaDevice",
    "ProtocolError",
    "MODE_MCOUNT",
    "MODE_TCOUNT",
    "MODE_MOVE_CNT",
    "MODE_PAR_RUN",
]

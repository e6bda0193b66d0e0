"""camerad's command table: every command with the preconditions it states.

A handler is registered with :func:`command`, naming what must hold before
it runs: ``OPEN`` (the user opened the controller connection), ``LOADED``
(an ACF is loaded, implies OPEN) and ``IDLE`` (no exposure is running).
``needs`` hold for every use of the command, ``set_needs`` only when it is
given arguments (the set form of a get/set command).  :meth:`Camera.execute`
checks them before calling the handler, so handlers do not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OPEN = "open"
LOADED = "loaded"
IDLE = "idle"


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable  # handler(camera, args) -> str
    needs: tuple[str, ...] = ()
    set_needs: tuple[str, ...] = ()
    busy_what: str = ""  # "cannot change <busy_what> during an exposure"

    def preconditions(self, args: str) -> tuple[str, ...]:
        return self.needs + self.set_needs if args else self.needs


COMMANDS: dict[str, Command] = {}

#: commands of the original that exist only for other controllers
ARC_ONLY = {"useframes", "readout", "amplifier"}
HXRG_ONLY = {"hsetup", "hexpose", "hroi", "hwindow", "video"}


def command(
    *names: str,
    needs: tuple[str, ...] = (),
    set_needs: tuple[str, ...] = (),
    busy_what: str = "",
):
    """Register ``fn(camera, args)`` under each of ``names``."""

    def register(fn: Callable) -> Callable:
        for name in names:
            if name in COMMANDS:
                raise ValueError(f"command {name} registered twice")
            COMMANDS[name] = Command(name, fn, needs, set_needs, busy_what)
        return fn

    return register

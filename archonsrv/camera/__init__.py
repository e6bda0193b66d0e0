"""camerad's camera engine, usable in-process without sockets.

``Camera(cfg, notify, controller=None).execute("expose 2")`` runs one
command and returns its reply line.  The package is split by concern:

* :mod:`.core`: the :class:`Camera` state, :meth:`~Camera.execute` and the
  precondition checks of the command table (:mod:`.table`);
* :mod:`.connection`, :mod:`.settings`, :mod:`.modules`, :mod:`.shutter`,
  :mod:`.diagnostics`: the commands, one module per group;
* :mod:`.exposure` (an :class:`~.exposure.ExposurePlan` and its run),
  :mod:`.sinks` (where frames go), :mod:`.headers` and :mod:`.fitsio`
  (FITS cards and atomic files).
"""

from __future__ import annotations

from . import connection, diagnostics, exposure, modules, settings, shutter  # noqa: F401 - register
from .core import Aborted, Camera, CommandError
from .exposure import ExposurePlan
from .table import COMMANDS

__all__ = ["COMMANDS", "Aborted", "Camera", "CommandError", "ExposurePlan"]

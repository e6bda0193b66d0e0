"""Set the process name to the command name.

``python3 -m marserver.cli`` would otherwise show as ``python3`` in ``ps``
and be invisible to ``pgrep marserver`` and ``start-stop-daemon --name``.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def set_process_name(name: str) -> None:
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a dependency, but never fatal
        log.debug("setproctitle not installed; process name unchanged")
        return
    args = " ".join(sys.argv[1:])
    setproctitle.setproctitle(f"{name} {args}".strip())
    # the short name (/proc/PID/comm) is what pgrep and start-stop-daemon match
    setproctitle.setthreadtitle(name[:15])

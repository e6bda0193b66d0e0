"""Detach from the terminal with python-daemon, keeping bound sockets.

``detach_process=True`` is passed explicitly: python-daemon would otherwise
decline to fork when the parent is init or a super-server, and a program
started by systemd with ``Type=forking`` must fork.  Signal handling is left
to :mod:`common.signals` (``signal_map`` empty), the working directory is
``/`` and the umask 022, and standard streams go to ``/dev/null``; the log
file is opened again by the caller after the fork.
"""

from __future__ import annotations

import daemon


def daemonize(preserve: list) -> None:
    """Fork into the background; returns in the daemon process only."""
    files = []
    for obj in preserve:
        if obj is None:
            continue
        files.append(obj.fileno() if hasattr(obj, "fileno") else int(obj))
    ctx = daemon.DaemonContext(
        detach_process=True,
        files_preserve=files,
        working_directory="/",
        umask=0o022,
        signal_map={},
        prevent_core=False,
    )
    ctx.open()

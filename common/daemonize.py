"""Detach from the terminal with python-daemon; the parent waits until the daemon is ready.

:func:`daemonize` forks once itself and lets python-daemon's
``DaemonContext(detach_process=True)`` do the rest in the child (a second
fork, ``setsid``, a third fork, working directory ``/``, umask 022, every
descriptor closed except the bound sockets, standard streams on
``/dev/null``).  ``detach_process=True`` is passed explicitly: python-daemon
would otherwise decline to fork when the parent is init or a super-server.
Signal handling is left to :mod:`common.signals` (``signal_map`` empty).

The original process does not exit at once: it waits on a pipe until the
daemon reports, through the :class:`Readiness` it gets back, either that it
is ready (lock taken, PID written, listening, threads started: exit 0) or
that it failed (the daemon's message on stderr, exit 1).  A daemon that dies
without a word closes the pipe, which the parent reports too.  So
``prog -d && cat LOCKFILE`` always finds the PID, and a service manager that
reads the PID file when ``-d`` returns (``Type=forking``) finds it.
"""

from __future__ import annotations

import os
import select
import sys
import time

import daemon

READY_TIMEOUT = 120.0
_MAX_MESSAGE = 4096


class Readiness:
    """The daemon's end of the start-up pipe: report once, then it is closed."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def _send(self, data: bytes) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, data[:_MAX_MESSAGE])
        except OSError:
            pass  # the parent is gone (killed, or its terminal closed): nothing to tell
        finally:
            os.close(fd)

    def ready(self) -> None:
        self._send(f"OK {os.getpid()}\n".encode())

    def failed(self, message: str) -> None:
        self._send(b"ERROR " + message.encode("utf-8", "replace") + b"\n")


def _wait_for_daemon(fd: int, name: str, timeout: float) -> int:
    """In the original process: the daemon's verdict as an exit status."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < _MAX_MESSAGE:
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"{name}: the daemon did not report ready within {timeout:g} s"
                " (it may still be starting; see its log file)",
                file=sys.stderr,
            )
            return 1
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, _MAX_MESSAGE)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    text = data.decode("utf-8", "replace").strip()
    if text.startswith("OK"):
        return 0
    if text.startswith("ERROR "):
        print(f"{name}: {text[6:]}", file=sys.stderr)
    else:
        print(f"{name}: the daemon exited during start-up (see its log file)", file=sys.stderr)
    return 1


def daemonize(preserve: list, name: str = "daemon", timeout: float = READY_TIMEOUT) -> Readiness:
    """Fork into the background; returns in the daemon process only.

    The original process exits (``os._exit``) with status 0 once the daemon
    calls :meth:`Readiness.ready`, or 1 with the daemon's message on stderr
    once it calls :meth:`Readiness.failed` or dies.
    """
    files = []
    for obj in preserve:
        if obj is None:
            continue
        files.append(obj.fileno() if hasattr(obj, "fileno") else int(obj))
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        try:
            status = _wait_for_daemon(rfd, name, timeout)
        finally:
            sys.stderr.flush()
            # the intermediate child exits as soon as python-daemon forks again
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os._exit(status)
    os.close(rfd)
    ctx = daemon.DaemonContext(
        detach_process=True,
        files_preserve=[*files, wfd],
        working_directory="/",
        umask=0o022,
        signal_map={},
        prevent_core=False,
    )
    try:
        ctx.open()
    except Exception as exc:  # noqa: BLE001 - tell the waiting parent, never run on half-detached
        Readiness(wfd).failed(f"cannot become a daemon: {exc}")
        os._exit(1)
    return Readiness(wfd)

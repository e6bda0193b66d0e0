"""PID lock files, through the ``lockfile`` library, behind one small module.

A lock file holds the PID of the running instance.  A second start finds the
file, sees that the PID is alive and refuses; a lock whose PID is dead
(stale, left by a crash or a power cut) is replaced with a log line.  ``-k``
reads the PID, sends SIGTERM, waits, then SIGKILL, and removes the file.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path

from lockfile import AlreadyLocked, LockFailed, LockTimeout
from lockfile.pidlockfile import PIDLockFile

log = logging.getLogger(__name__)


class LockError(RuntimeError):
    """The lock is held by a live process, or cannot be created."""


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists (signal 0 probe)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by somebody else
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A process that has exited but not been reaped yet counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    # state follows the command name, which is in parentheses
    tail = stat[stat.rfind(b")") + 1 :].split()
    return bool(tail) and tail[0] == b"Z"


def read_pid(path: str | os.PathLike) -> int | None:
    """The PID written in a lock file, or None if absent or unreadable."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def running_pid(path: str | os.PathLike) -> int | None:
    """The PID of a live holder of the lock, or None."""
    pid = read_pid(path)
    if pid is not None and pid != os.getpid() and pid_alive(pid):
        return pid
    return None


class PidLock:
    """One program instance's lock file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._lock = PIDLockFile(self.path, timeout=0)
        self.held = False

    def check(self) -> None:
        """Raise :class:`LockError` if a live process holds the lock.

        Called before forking, so that the error reaches the terminal.
        """
        pid = running_pid(self.path)
        if pid is not None:
            raise LockError(f"already running with PID {pid} (lock file {self.path})")

    def acquire(self) -> None:
        """Take the lock for this process, replacing a stale one."""
        for _attempt in range(3):
            try:
                self._lock.acquire(timeout=0)
                self.held = True
                return
            except (AlreadyLocked, LockTimeout):
                pid = read_pid(self.path)
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    raise LockError(
                        f"already running with PID {pid} (lock file {self.path})"
                    ) from None
                log.warning(
                    "replacing stale lock file %s (PID %s is not running)",
                    self.path,
                    pid if pid is not None else "unreadable",
                )
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise LockError(f"cannot remove stale lock file {self.path}: {exc}") from None
            except LockFailed as exc:
                raise LockError(f"cannot create lock file {self.path}: {exc}") from None
        raise LockError(f"cannot take lock file {self.path}: it keeps reappearing")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if not self.held:
            return
        self.held = False
        if read_pid(self.path) == os.getpid():
            try:
                os.unlink(self.path)
            except OSError as exc:
                log.warning("cannot remove lock file %s: %s", self.path, exc)


def kill_running(path: str | os.PathLike, timeout: float = 5.0) -> tuple[int, str]:
    """Stop the instance named by a lock file: SIGTERM, wait, SIGKILL.

    Returns ``(exit_status, message)``: 0 when it stopped (or a stale lock was
    cleaned up), 1 when there was nothing to stop or it could not be stopped.
    """
    path = os.fspath(path)
    pid = read_pid(path)
    if pid is None:
        if os.path.exists(path):
            _unlink(path)
            return 1, f"lock file {path} held no PID; removed it"
        return 1, f"not running (no lock file {path})"
    if not pid_alive(pid):
        _unlink(path)
        return 0, f"PID {pid} was not running; removed stale lock file {path}"
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        return 1, f"not allowed to signal PID {pid}"
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    how = "stopped"
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        how = "killed (did not stop on SIGTERM)"
        end = time.monotonic() + 2.0
        while time.monotonic() < end and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            return 1, f"PID {pid} survived SIGKILL"
    if read_pid(path) == pid:
        _unlink(path)
    return 0, f"PID {pid} {how}"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove lock file %s: %s", path, exc)

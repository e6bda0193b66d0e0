"""PID lock files held as kernel locks for the life of the process.

A lock file holds the PID of the running instance as text (``PID\\n``, the
format of ``lockfile.PIDLockFile``, of ``start-stop-daemon --pidfile`` and
of systemd's ``PIDFile=``), and the running instance holds a POSIX record
lock (``fcntl`` ``F_SETLK``, write lock on the whole file) on it for as long
as it lives.  The kernel drops that lock when the process ends, however it
ends, so:

* a second start finds the lock held and refuses ("already running");
* a lock file whose owner died (a crash, ``kill -9``, a power cut) is
  *stale*: nobody holds the lock, and a start takes it over with a log line;
* ``-k`` asks the kernel which process holds the lock (``F_GETLK``) and
  signals that process only, and only if its process name is the
  program's; a stale file, or one naming an unrelated process (a PID that
  was reused, a file written by hand), is reported and nothing is signalled.

A POSIX lock, not ``flock``, because ``F_GETLK`` names the holding process:
``-k`` need not trust the PID written in the file.  The one caveat of POSIX
locks is that a process loses its lock when it closes *any* descriptor of
the file; only :class:`PidLock` opens the file in the process that holds it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import stat
import struct
import time

log = logging.getLogger(__name__)

# struct flock on Linux (x86-64, arm64, ...): short l_type, short l_whence,
# off_t l_start, off_t l_len, pid_t l_pid, padded to 32 bytes
_FLOCK = "hhqqi4x"


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


def process_name(pid: int) -> str:
    """The short process name (``/proc/PID/comm``), or "" if unknown."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _cmdline_name(pid: int) -> str:
    """The first word of the process title (what ``setproctitle`` set)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read(4096)
    except OSError:
        return ""
    first = raw.replace(b"\0", b" ").split(b" ", 1)[0]
    return os.path.basename(first.decode("utf-8", "replace"))


def is_program(pid: int, name: str) -> bool:
    """True if process ``pid`` is the program ``name``.

    Every program of the suite sets its process name
    (:mod:`common.proctitle`): ``/proc/PID/comm`` is the name cut to 15
    characters, and the process title starts with the name.
    """
    return process_name(pid) == name[:15] or _cmdline_name(pid) == name


def _parse_pid(data: bytes) -> int | None:
    words = data.split()
    try:
        return int(words[0])
    except (ValueError, IndexError):
        return None


def _stale_reason(data: bytes) -> str:
    """Why a lock file nobody holds is stale, from its contents."""
    pid = _parse_pid(data)
    if pid is None:
        return "it names no PID"
    if pid_alive(pid):
        return f"PID {pid} ({process_name(pid) or 'unknown'}) is alive but does not hold the lock"
    return f"PID {pid} is not running"


def _read_head(path: str | os.PathLike) -> bytes:
    """The first bytes of a regular file; never blocks on a FIFO or follows a symlink."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.read(fd, 64)
    finally:
        os.close(fd)


def read_pid(path: str | os.PathLike) -> int | None:
    """The PID written in a lock file, or None if absent or unreadable."""
    try:
        return _parse_pid(_read_head(path))
    except OSError:
        return None


def holder_pid(path: str | os.PathLike) -> int | None:
    """The PID of the process holding the kernel lock on ``path``, or None.

    Asked of the kernel (``F_GETLK``), not read from the file.  Never call
    this in the process that holds the lock (closing the probe descriptor
    would release it); that process is never reported anyway.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        try:
            got = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
        except OSError:
            return None
        l_type, _whence, _start, _len, l_pid = struct.unpack(_FLOCK, got)
        if l_type == fcntl.F_UNLCK or l_pid <= 0:
            return None
        return l_pid
    finally:
        os.close(fd)


def running_pid(path: str | os.PathLike) -> int | None:
    """The PID of a live holder of the lock, or None."""
    pid = holder_pid(path)
    if pid is not None and pid != os.getpid():
        return pid
    return None


class PidLock:
    """One program instance's lock file, held until :meth:`release` or exit."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def check(self) -> None:
        """Raise :class:`LockError` if a live process holds the lock.

        Called before forking, so that the error reaches the terminal.
        """
        pid = running_pid(self.path)
        if pid is not None:
            raise LockError(f"already running with PID {pid} (lock file {self.path})")

    def acquire(self) -> None:
        """Lock the file, write this process's PID into it, keep it open.

        A file left by a dead owner (or naming a process that does not hold
        the lock) is taken over with a log line.
        """
        for _attempt in range(5):
            # never through a symlink, never into a FIFO, device or somebody else's
            # file: in a shared directory such as /tmp another user could plant one
            flags = os.O_RDWR | os.O_CREAT | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise LockError(f"lock file {self.path} is a symbolic link; refused") from None
                raise LockError(f"cannot create lock file {self.path}: {exc.strerror}") from None
            st = os.fstat(fd)
            problem = None
            if not stat.S_ISREG(st.st_mode):
                problem = "is not a regular file"
            elif st.st_uid != os.geteuid():
                problem = f"belongs to another user (uid {st.st_uid})"
            if problem:
                os.close(fd)
                raise LockError(f"lock file {self.path} {problem}; refused")
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    pid = holder_pid(self.path)
                    raise LockError(
                        f"already running with PID {pid if pid else read_pid(self.path)}"
                        f" (lock file {self.path})"
                    ) from None
                raise LockError(f"cannot lock {self.path}: {exc.strerror}") from None
            # The previous owner may have removed the file between our open and
            # our lock; then we hold a lock on a name nobody sees.  Try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = os.pread(fd, 64, 0)
            if old.strip():
                log.warning("taking over stale lock file %s (%s)", self.path, _stale_reason(old))
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as exc:
                os.close(fd)
                raise LockError(f"cannot write lock file {self.path}: {exc.strerror}") from None
            self._fd = fd
            return
        raise LockError(f"cannot take lock file {self.path}: it keeps disappearing")

    def release(self) -> None:
        """Remove the lock file and drop the lock, if this process holds it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # unlink while still locked, so that no other start sees our file
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("cannot remove lock file %s: %s", self.path, exc)
        finally:
            os.close(fd)


def kill_running(path: str | os.PathLike, name: str, timeout: float = 5.0) -> tuple[int, str]:
    """Stop the instance of program ``name`` holding the lock: SIGTERM, wait, SIGKILL.

    Returns ``(exit_status, message)``: 0 when it stopped, 1 when nothing
    was signalled (no lock file, a stale lock, a holder that is not
    ``name``) or it could not be stopped.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return 1, f"not running (no lock file {path})"
    pid = holder_pid(path)
    if pid is None:
        try:
            why = _stale_reason(_read_head(path))
        except OSError as exc:
            return 1, f"cannot read lock file {path}: {exc.strerror}"
        return 1, (
            f"not running: stale lock file {path} ({why}); nothing signalled"
            f" (the next start takes it over)"
        )
    if not is_program(pid, name):
        return 1, (
            f"lock file {path} is held by PID {pid} ({process_name(pid) or 'unknown'}),"
            f" which is not {name}; nothing signalled"
        )
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
    if read_pid(path) == pid and holder_pid(path) is None:
        _unlink(path)
    return 0, f"PID {pid} {how}"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove lock file %s: %s", path, exc)

"""Logging set-up shared by every program.

Log lines carry a timestamp, the program name and PID, the level and the
thread name.  In the foreground they go to stderr (and to the log file when
one is given); a daemon logs to its log file, appended, never silently to
/dev/null.  :func:`reopen` closes and reopens the file so that logrotate can
move it away (done on SIGHUP by :mod:`common.runtime`).

Verbosity (``-v``) applies to the suite's own loggers only (the names in
:data:`SUITE_LOGGERS` and the program's name); libraries (h5py, astropy,
zmq, ...) log at WARNING and above whatever the verbosity, so that their
debug chatter never reaches a beamline log.

Levels, the same for every program of the suite:

=========  ===============================================================
ERROR      something failed that an operator must act on: a file not
           written, a hardware link lost, start-up or reload refused
WARNING    input or state the program survived but an operator should
           know of: malformed or overlong client input (rate-limited per
           peer, :mod:`common.ratelimit`), a client dropped for falling
           behind, a refused connection, a stale lock replaced
INFO       the life cycle: start, stop, reload, client connect and
           disconnect, a series or exposure begun and ended
DEBUG      one line per command or request (``-v``)
TRACE      per-packet detail, payload sizes (``-vv``)
=========  ===============================================================
"""

from __future__ import annotations

import logging
import os
import sys
import time

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

FORMAT = (
    "%(asctime)s.%(msecs)03d %(progname)s[%(process)d] %(levelname)s %(threadName)s: %(message)s"
)
DATEFMT = "%Y-%m-%d %H:%M:%S"

#: top-level logger names of the suite's own code; ``-v`` applies to these
SUITE_LOGGERS = (
    "common",
    "marserver",
    "marsim",
    "specsrv",
    "archonsrv",
    "camerad",
    "archonsim",
    "mrt",
    "mr_t",
    "mr_t_client",
    "eiger-zmq-sim",
)
#: level of every other logger (libraries), whatever the verbosity
LIBRARY_LEVEL = logging.WARNING

_handlers: list[logging.Handler] = []
_levelled: set[str] = set()
# the arguments of the last setup_logging call, for retarget()
_setup: dict = {}


class _ProgFilter(logging.Filter):
    def __init__(self, progname: str) -> None:
        super().__init__()
        self.progname = progname

    def filter(self, record: logging.LogRecord) -> bool:
        record.progname = self.progname
        return True


class ReopenableFileHandler(logging.FileHandler):
    """A file handler that can be told to reopen its file (logrotate)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                try:
                    self.stream.flush()
                    self.stream.close()
                finally:
                    self.stream = None
            self.stream = self._open()
        finally:
            self.release()


class DailyFileHandler(ReopenableFileHandler):
    """A log file named by strftime fields (``camerad_%Y%m%d.log``): one file a day.

    The name is re-evaluated at each record; when it changes (midnight in
    UTC or local time) the old file is closed and the new one opened.
    """

    def __init__(self, pattern: str, utc: bool = False, encoding: str = "utf-8") -> None:
        self.pattern = pattern
        self.utc = utc
        self._current = self._file_for_now()
        super().__init__(self._current, mode="a", encoding=encoding)

    def _file_for_now(self) -> str:
        return time.strftime(self.pattern, time.gmtime() if self.utc else time.localtime())

    def emit(self, record: logging.LogRecord) -> None:
        name = self._file_for_now()
        if name != self._current:
            self.acquire()
            try:
                self._current = name
                self.baseFilename = os.path.abspath(name)
                self.reopen()
            finally:
                self.release()
        super().emit(record)


def verbosity_to_level(verbose: int, base: int = logging.INFO) -> int:
    """0 -> INFO, 1 -> DEBUG, 2 or more -> TRACE (per-packet detail)."""
    if verbose <= 0:
        return base
    if verbose == 1:
        return logging.DEBUG
    return TRACE


def setup_logging(
    progname: str,
    level: int = logging.INFO,
    logfile: str | None = None,
    *,
    stderr: bool = True,
    utc: bool = False,
) -> None:
    """Configure the root logger.  Safe to call again (after a fork).

    A ``logfile`` containing ``%`` is a strftime pattern (``%Y%m%d``): the
    log then starts a new file each day (:class:`DailyFileHandler`).
    """
    _setup.update(progname=progname, level=level, logfile=logfile, stderr=stderr, utc=utc)
    root = logging.getLogger()
    for h in list(_handlers):
        root.removeHandler(h)
        try:
            h.close()
        except Exception:  # noqa: BLE001 - a handler that fails to close is dropped anyway
            pass
    _handlers.clear()
    formatter = logging.Formatter(FORMAT, DATEFMT)
    if utc:
        formatter.converter = time.gmtime
    filt = _ProgFilter(progname)
    if logfile:
        d = os.path.dirname(os.path.abspath(logfile))
        os.makedirs(d, exist_ok=True)
        if "%" in logfile:
            # a strftime pattern: a new file each day
            fh: logging.Handler = DailyFileHandler(logfile, utc=utc)
        else:
            fh = ReopenableFileHandler(logfile, mode="a", encoding="utf-8")
        _handlers.append(fh)
    if stderr or not logfile:
        sh = logging.StreamHandler(sys.stderr)
        _handlers.append(sh)
    for h in _handlers:
        h.setFormatter(formatter)
        h.addFilter(filt)
        root.addHandler(h)
    root.setLevel(LIBRARY_LEVEL)
    _levelled.update(SUITE_LOGGERS)
    _levelled.add(progname)
    set_level(level)


def retarget(logfile: str | None) -> None:
    """Log to another file from now on (a changed ``logfile`` option on SIGHUP).

    ``None`` (the option removed) keeps the file in use; stderr logging stays
    as it was.  An unusable file raises ``OSError`` before anything changes.
    """
    if not _setup or not logfile:
        return
    logfile = os.path.abspath(logfile)
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    with open(logfile, "a"):
        pass
    current = logging.getLogger(_setup["progname"]).level or _setup["level"]
    setup_logging(
        _setup["progname"],
        current,
        logfile,
        stderr=_setup["stderr"],
        utc=_setup["utc"],
    )


def reopen() -> None:
    """Reopen every log file (after logrotate moved it)."""
    for h in _handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()


def set_level(level: int) -> None:
    """Set the verbosity of the suite's own loggers (libraries stay at WARNING)."""
    for name in _levelled or SUITE_LOGGERS:
        logging.getLogger(name).setLevel(level)

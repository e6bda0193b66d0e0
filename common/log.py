"""Logging set-up shared by every program.

Log lines carry a timestamp, the program name and PID, the level and the
thread name.  In the foreground they go to stderr (and to the log file when
one is given); a daemon logs to its log file, appended, never silently to
/dev/null.  :func:`reopen` closes and reopens the file so that logrotate can
move it away (done on SIGHUP by :mod:`common.runtime`).
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

_handlers: list[logging.Handler] = []


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
    root.setLevel(level)


def reopen() -> None:
    """Reopen every log file (after logrotate moved it)."""
    for h in _handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()


def set_level(level: int) -> None:
    logging.getLogger().setLevel(level)

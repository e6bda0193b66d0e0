"""The daemon runtime every program runs under.

A program describes itself as a :class:`Service` (bind sockets, start
threads, reload configuration, stop) and calls :func:`run` with its
:class:`RuntimeOptions`.  ``run`` does the rest, in this order:

1. ``-k``: stop the instance that holds the lock file (a kernel lock, see
   :mod:`common.lock`) if its process name is the program's, and return;
   a stale or foreign lock file is reported and nothing is signalled;
2. refuse to start if a live process holds the lock (message on the
   terminal, exit 1);
3. ``Service.bind()``: listening sockets are bound *before* any fork, so a
   port already in use is reported on the terminal with exit 1 and no lock
   file is left behind;
4. with ``-d``: python-daemon ``DaemonContext(detach_process=True)``
   (it forks even when the parent is PID 1, as under systemd), keeping the
   bound sockets open across the fork; from here on errors go to the log,
   and the original process waits (:mod:`common.daemonize`) until step 6 is
   done (exit 0) or has failed (the error on its stderr, exit 1);
5. set the process name, take the lock (PID inside; a stale lock file is
   taken over with a log line), log start-up;
6. ``Service.start()`` starts the server threads; then the start-up is
   reported: to the waiting parent of ``-d``, and to systemd
   (``READY=1``, :mod:`common.sdnotify`) when ``NOTIFY_SOCKET`` is set;
7. the main thread waits for signals: SIGHUP reopens the log file and calls
   ``Service.reload()`` (a :class:`~common.config.ConfigError` keeps the old
   configuration, with a log line), between ``RELOADING=1`` and
   ``READY=1`` notifications; SIGTERM or SIGINT sends ``STOPPING=1``,
   stops the service, removes the lock and returns 0 within about 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from . import log as clog
from . import sdnotify
from .config import ConfigError
from .daemonize import READY_TIMEOUT, Readiness, daemonize
from .lock import LockError, PidLock, kill_running
from .proctitle import set_process_name
from .signals import SignalWatcher

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAIL = 1


class Service:
    """What a program plugs into :func:`run`.  Override what applies."""

    #: command name, used for the process title and log lines
    name = "service"

    def bind(self) -> list:
        """Create and bind listening sockets; return objects with ``fileno()``.

        Runs before the daemon fork.  Raise ``OSError`` (port in use) or
        :class:`~common.config.ConfigError`; either stops the start-up with a
        message on the terminal.
        """
        return []

    def start(self) -> None:
        """Start server threads.  Runs after the fork."""

    def reload(self) -> str | None:
        """Re-read configuration and apply what can change live.

        Raise :class:`~common.config.ConfigError` to reject the new
        configuration (the old stays in force).  May return a summary line.
        """
        return None

    def stop(self) -> int:
        """Stop threads and close sockets; return the number of threads left."""
        return 0

    def on_tick(self) -> None:
        """Called from the main loop about every ``tick`` seconds."""


@dataclass
class RuntimeOptions:
    daemon: bool = False
    kill: bool = False
    lockfile: str | None = None
    logfile: str | None = None
    default_logfile: str | None = None
    log_level: int = logging.INFO
    log_utc: bool = False
    kill_timeout: float = 5.0
    # how long the parent of -d waits for the daemon to report ready
    ready_timeout: float = READY_TIMEOUT
    tick: float = 0.5
    extra_preserve: list = field(default_factory=list)
    # how the program spells its kill and lock file options, for messages
    kill_option: str = "-k"
    lockfile_option: str = "-L"


def options_from_args(args: argparse.Namespace, **overrides) -> RuntimeOptions:
    """Build :class:`RuntimeOptions` from options added by ``add_runtime_args``."""
    opts = RuntimeOptions(
        daemon=bool(getattr(args, "daemon", False)) and not getattr(args, "foreground", False),
        kill=bool(getattr(args, "kill", False)),
        lockfile=getattr(args, "lockfile", None),
        logfile=getattr(args, "logfile", None),
        default_logfile=getattr(args, "default_logfile", None),
        log_level=clog.verbosity_to_level(int(getattr(args, "verbose", 0) or 0)),
    )
    flags = getattr(args, "runtime_flags", None)
    if flags is not None and flags.kill:
        opts.kill_option = flags.kill[0]
    if flags is not None and flags.lockfile:
        opts.lockfile_option = flags.lockfile[0]
    for k, v in overrides.items():
        setattr(opts, k, v)
    return opts


def serve(prog: str, args: argparse.Namespace, make_service, **overrides) -> int:
    """Build a service from parsed arguments and :func:`run` it.

    A :class:`~common.config.ConfigError` while building it (an unreadable or
    invalid configuration file) is a usage error: one line, exit status 2,
    nothing started and no lock file left.
    """
    try:
        service = make_service(args)
    except ConfigError as exc:
        _err(prog, str(exc))
        return 2
    return run(service, options_from_args(args, **overrides))


def _err(prog: str, msg: str) -> None:
    print(f"{prog}: {msg}", file=sys.stderr, flush=True)


def run(service: Service, opts: RuntimeOptions) -> int:
    """Run ``service`` until SIGTERM/SIGINT; return the process exit status."""
    prog = service.name
    if opts.kill:
        if not opts.lockfile:
            _err(
                prog,
                f"{opts.kill_option} needs the lock file of the running instance:"
                f" give {opts.lockfile_option} LOCKFILE as it was started with",
            )
            return EXIT_FAIL
        status, msg = kill_running(opts.lockfile, prog, opts.kill_timeout)
        print(f"{prog}: {msg}", file=sys.stderr if status else sys.stdout, flush=True)
        return status

    logfile = opts.logfile or (opts.default_logfile if opts.daemon else None)
    if logfile:
        # the daemon works in /, so a relative name must be resolved before the fork
        logfile = os.path.abspath(logfile)
    # Foreground start-up logs to stderr; the log file (if any) is opened too.
    new_log = bool(logfile) and "%" not in logfile and not os.path.exists(logfile)
    try:
        clog.setup_logging(prog, opts.log_level, logfile, stderr=not opts.daemon, utc=opts.log_utc)
    except OSError as exc:
        _err(prog, f"cannot open log file {logfile}: {exc.strerror}")
        return EXIT_FAIL

    def refuse(msg: str) -> int:
        """A start refused before anything ran: say why, leave no empty new log file."""
        _err(prog, msg)
        if new_log:
            clog.setup_logging(prog, opts.log_level, None, stderr=not opts.daemon)
            with contextlib.suppress(OSError):
                if os.path.getsize(logfile) == 0:
                    os.unlink(logfile)
        return EXIT_FAIL

    lock = PidLock(opts.lockfile) if opts.lockfile else None
    if lock is not None:
        try:
            lock.check()
        except LockError as exc:
            return refuse(str(exc))

    try:
        bound = service.bind()
    except ConfigError as exc:
        return refuse(str(exc))
    except OSError as exc:
        return refuse(f"cannot listen: {exc.strerror or exc}")

    ready = Readiness(None)
    if opts.daemon:
        preserve = [b for b in bound if b is not None] + list(opts.extra_preserve)
        # Close our log handlers before the fork; reopen them after it.
        clog.setup_logging(prog, opts.log_level, None, stderr=False)
        ready = daemonize(preserve, prog, opts.ready_timeout)
        try:
            clog.setup_logging(prog, opts.log_level, logfile, stderr=False, utc=opts.log_utc)
        except OSError as exc:
            ready.failed(f"cannot open log file {logfile}: {exc.strerror}")
            os._exit(EXIT_FAIL)

    def fail(msg: str, logged: bool = False) -> None:
        """A start-up error after the fork: to the log, and to whoever waits."""
        if not logged:
            log.error("%s", msg)
        if opts.daemon:
            ready.failed(msg)
        else:
            _err(prog, msg)

    # the name first: whoever holds the lock answers to the program's name (-k checks it)
    set_process_name(prog)
    if lock is not None:
        try:
            lock.acquire()
        except LockError as exc:
            fail(str(exc))
            service.stop()
            return EXIT_FAIL

    watcher = SignalWatcher().install()
    status = EXIT_OK
    try:
        try:
            service.start()
        except Exception as exc:  # noqa: BLE001 - report any start-up failure, then clean up
            log.exception("start-up failed: %s", exc)
            fail(f"start-up failed: {exc}", logged=True)
            return EXIT_FAIL
        log.info(
            "%s started (PID %d%s%s)",
            prog,
            os.getpid(),
            ", daemon" if opts.daemon else "",
            f", lock {lock.path}" if lock else "",
        )
        ready.ready()
        sdnotify.ready(f"{prog} running")
        status = _main_loop(service, watcher, opts)
    finally:
        sdnotify.stopping()
        t0 = time.monotonic()
        left = service.stop()
        watcher.restore()
        if lock is not None:
            lock.release()
        extra = [
            t.name
            for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon
        ]
        log.info(
            "%s stopped in %.2f s (%d server threads left%s)",
            prog,
            time.monotonic() - t0,
            left,
            f", non-daemon threads: {', '.join(extra)}" if extra else "",
        )
        logging.shutdown()
    return status


def _main_loop(service: Service, watcher: SignalWatcher, opts: RuntimeOptions) -> int:
    while True:
        for signum in watcher.wait(opts.tick):
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("received %s, shutting down", signal.Signals(signum).name)
                return EXIT_OK
            if signum == signal.SIGHUP:
                sdnotify.reloading()
                clog.reopen()
                log.info("received SIGHUP: log reopened, reloading configuration")
                try:
                    summary = service.reload()
                except ConfigError as exc:
                    log.error("configuration rejected, keeping the old one: %s", exc)
                except Exception:  # noqa: BLE001 - a reload bug must not kill the daemon
                    log.exception("reload failed, keeping the old configuration")
                else:
                    log.info("configuration reloaded%s", f": {summary}" if summary else "")
                sdnotify.reloaded()
        try:
            service.on_tick()
        except Exception:  # noqa: BLE001
            log.exception("periodic task failed")


def request_shutdown() -> None:
    """Ask the main loop to shut down, as SIGTERM does (an ``exit`` command)."""
    os.kill(os.getpid(), signal.SIGTERM)

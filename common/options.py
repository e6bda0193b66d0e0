"""Option files and SIGHUP reload for programs whose settings are their options.

Programs without a configuration format of their own (marserver, marsim,
mca_server, img_server, mr_t, ...) accept ``--config FILE``: a configargparse
file whose keys are the program's long options without the dashes::

    # /etc/beamline-servers/marserver.conf
    max-clients = 6
    allow = [127.0.0.1, 10.1.2.0/24]
    verbose = 1

Values given on the command line win over the file, and the file wins over
the built-in defaults.  A program may also name a default file under
``/etc/beamline-servers/`` that is read when it exists
(:data:`DEFAULT_DIR`).

On SIGHUP :class:`LiveOptions` parses the same command line again, which
re-reads the file, compares the result with the options in force and:

* applies each changed option that the program registered as *live*
  (connection limits, allow-lists, queue and cache sizes; the runtime's
  ``verbose`` and ``logfile`` are always live);
* logs one WARNING naming each changed option that needs a restart, and
  keeps the value in force for it;
* rejects the whole new file when it does not parse (unknown key, bad
  value, unreadable file): :class:`~common.config.ConfigError`, so the
  runtime logs it and the old settings stay in force.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
from collections.abc import Callable

from . import log as clog
from .config import ConfigError

log = logging.getLogger(__name__)

#: where a program's default option file lives: DEFAULT_DIR/PROG.conf
DEFAULT_DIR = "/etc/beamline-servers"

#: runtime options that never change without a restart
RESTART_ONLY = frozenset({"daemon", "kill", "lockfile", "foreground", "config_file"})
#: bookkeeping attributes that are not options
IGNORED = frozenset({"runtime_flags", "default_logfile"})


def default_config_file(prog: str) -> str:
    return os.path.join(DEFAULT_DIR, f"{prog}.conf")


def parse_quietly(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` again; a usage or file error becomes a ConfigError."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            try:
                return parser.parse_intermixed_args(argv)
            except TypeError:
                return parser.parse_args(argv)
    except SystemExit:
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        msg = lines[-1] if lines else "the options do not parse"
        # "prog: error: ..." -> "..."
        if ": error: " in msg:
            msg = msg.split(": error: ", 1)[1]
        raise ConfigError(msg) from None


def absolute_config_paths(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with the option file's path made absolute (resolved now, before a fork)."""
    flags = [
        f
        for action in parser._actions
        if getattr(action, "is_config_file_arg", False)
        for f in action.option_strings
    ]
    out = list(argv)
    for i, tok in enumerate(out):
        if tok in flags and i + 1 < len(out):
            out[i + 1] = os.path.abspath(out[i + 1])
        for f in flags:
            if tok.startswith(f + "="):
                out[i] = f + "=" + os.path.abspath(tok[len(f) + 1 :])
    return out


class LiveOptions:
    """The options in force, and how to change them on SIGHUP."""

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        argv: list[str],
        args: argparse.Namespace,
        live: dict[str, Callable[[object], None]] | None = None,
    ) -> None:
        self.parser = parser
        # a daemon works in /: a relative option file must be found again on SIGHUP
        self.argv = absolute_config_paths(parser, argv)
        self.args = args
        for action in parser._actions:
            path = getattr(args, action.dest, None)
            if getattr(action, "is_config_file_arg", False) and isinstance(path, str):
                setattr(args, action.dest, os.path.abspath(path))
        self.live: dict[str, Callable[[object], None]] = {
            "verbose": lambda v: clog.set_level(clog.verbosity_to_level(int(v or 0))),
            "logfile": lambda path: clog.retarget(path),
        }
        self.live.update(live or {})

    def _spelling(self, dest: str) -> str:
        """An option's name as an option file spells it (its long option, no dashes)."""
        for action in self.parser._actions:
            if action.dest == dest:
                for opt in action.option_strings:
                    if opt.startswith("--"):
                        return opt[2:]
        return dest

    def reload(self) -> str:
        """Re-read the option file; apply live changes; return a summary line."""
        try:
            new = parse_quietly(self.parser, self.argv)
        except ConfigError as exc:
            where = getattr(self.args, "config_file", None)
            raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
        changed = sorted(
            k for k, v in vars(new).items() if k not in IGNORED and getattr(self.args, k, None) != v
        )
        applied, restart = [], []
        for key in changed:
            value = getattr(new, key)
            apply = self.live.get(key)
            if apply is None or key in RESTART_ONLY:
                restart.append(key)
                continue
            try:
                apply(value)
            except (ValueError, OSError) as exc:
                done = ", ".join(self._spelling(k) for k in applied)
                raise ConfigError(
                    f"{self._spelling(key)}: {exc}"
                    + (f" (already applied before it: {done})" if done else "")
                ) from None
            setattr(self.args, key, value)
            applied.append(key)
        # name the options as the file spells them (max-clients, not max_clients)
        applied = [self._spelling(k) for k in applied]
        restart = [self._spelling(k) for k in restart]
        if restart:
            log.warning(
                "changed option(s) need a restart, still using the old value: %s",
                ", ".join(restart),
            )
        parts = []
        if applied:
            parts.append("applied " + ", ".join(applied))
        if restart:
            parts.append("need a restart: " + ", ".join(restart))
        return "; ".join(parts) or "no option changed"

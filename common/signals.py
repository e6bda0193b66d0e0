"""Signal handling: handlers only record the signal; the main thread acts.

Python runs signal handlers in the main thread between bytecodes, and a
handler that takes locks or does I/O can deadlock against the very code it
interrupted.  :class:`SignalWatcher` therefore only appends the signal number
to a bounded deque and sets an event; :meth:`SignalWatcher.wait` returns the
recorded signals to the main loop, which does the real work (reload, log
reopen, shutdown).
"""

from __future__ import annotations

import collections
import signal
import threading

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,)


class SignalWatcher:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) -> None:
        self.signals = tuple(signals)
        self._pending: collections.deque[int] = collections.deque(maxlen=64)
        self._event = threading.Event()
        self._previous: dict[int, object] = {}

    def _handler(self, signum, _frame) -> None:
        self._pending.append(signum)
        self._event.set()

    def install(self) -> SignalWatcher:
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)
        # a client that vanishes must give EPIPE, never kill the daemon
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def post(self, signum: int) -> None:
        """Record a signal from code (an ``exit`` command acts like SIGTERM)."""
        self._pending.append(signum)
        self._event.set()

    def wait(self, timeout: float | None = None) -> list[int]:
        """Wait up to ``timeout`` s for signals; return those recorded, oldest first."""
        self._event.wait(timeout)
        self._event.clear()
        out = []
        while self._pending:
            out.append(self._pending.popleft())
        return out

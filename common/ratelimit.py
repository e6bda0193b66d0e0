"""Rate-limited log lines, so that no peer can flood a log.

A client that sends junk, a hardware link that keeps failing, or a host that
keeps knocking on an allow-listed port would otherwise write one log line per
event.  :class:`LogLimiter` lets the first ``burst`` lines of each *key*
through in each ``period`` (a key is a message kind, usually with the peer
address: ``"bad line from 10.0.0.7"``), counts the rest, and writes one
summary line (``N more ... suppressed``) when the period ends.

Memory is bounded: at most ``max_keys`` keys are tracked; the key seen least
recently is forgotten first (its pending count is summarised then).  Because
a key usually holds a peer address, and UDP source addresses are easy to
forge, there is also a budget over all keys together: at most ``total`` lines
per period, the rest counted and summarised as ``(all peers)``.  The
defaults, used by every program of the suite, are 5 lines per key, 100 lines
in all, per 60 s, and 1024 keys.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

BURST = 5
PERIOD = 60.0
MAX_KEYS = 1024
TOTAL = 100
ALL = "(all peers)"


class LogLimiter:
    """At most ``burst`` lines per key per ``period`` seconds; counts the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = BURST,
        period: float = PERIOD,
        max_keys: int = MAX_KEYS,
        clock=time.monotonic,
        total: int = TOTAL,
    ) -> None:
        if burst < 1 or period <= 0 or max_keys < 1 or total < 1:
            raise ValueError("burst, total and max_keys must be >= 1 and period > 0")
        self.logger = logger
        self.burst, self.period, self.max_keys = burst, period, max_keys
        self._clock = clock
        # key -> [window start, lines in window, suppressed in window, level]
        self._state: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()
        self.total = total
        # over all keys: [window start, lines in window, suppressed in window, level]
        self._all = [clock(), 0, 0, logging.DEBUG]
        self.suppressed_total = 0

    def log(self, key: str, level: int, msg: str, *args) -> bool:
        """Log ``msg % args`` unless ``key`` is over its limit; True if written."""
        now = self._clock()
        summaries: list[tuple[int, str, int]] = []
        with self._lock:
            st = self._state.get(key)
            if st is not None and now - st[0] >= self.period:
                if st[2]:
                    summaries.append((st[3], key, st[2]))
                st = None
            if st is None:
                st = [now, 0, 0, level]
                self._state[key] = st
                while len(self._state) > self.max_keys:
                    _old, ost = self._state.popitem(last=False)
                    if ost[2]:
                        summaries.append((ost[3], _old, ost[2]))
            self._state.move_to_end(key)
            st[1] += 1
            st[3] = max(st[3], level)
            passed = st[1] <= self.burst
            if not passed:
                st[2] += 1
                self.suppressed_total += 1
            else:
                g = self._all
                if now - g[0] >= self.period:
                    if g[2]:
                        summaries.append((g[3], ALL, g[2]))
                    g[:] = [now, 0, 0, logging.DEBUG]
                g[1] += 1
                if g[1] > self.total:
                    passed = False
                    g[2] += 1
                    g[3] = max(g[3], level)
                    self.suppressed_total += 1
        for lvl, k, n in summaries:
            self.logger.log(lvl, "%d more '%s' messages suppressed", n, k)
        if passed:
            self.logger.log(level, msg, *args)
        return passed

    def flush(self) -> int:
        """Summarise the keys whose period has ended; return lines written."""
        now = self._clock()
        out: list[tuple[int, str, int]] = []
        with self._lock:
            for key in [k for k, st in self._state.items() if now - st[0] >= self.period]:
                st = self._state.pop(key)
                if st[2]:
                    out.append((st[3], key, st[2]))
            g = self._all
            if now - g[0] >= self.period and g[2]:
                out.append((g[3], ALL, g[2]))
                g[:] = [now, 0, 0, logging.DEBUG]
        for lvl, k, n in out:
            self.logger.log(lvl, "%d more '%s' messages suppressed", n, k)
        return len(out)

    def __len__(self) -> int:
        return len(self._state)

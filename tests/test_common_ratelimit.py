"""common.ratelimit.LogLimiter: per-key bursts, summaries, bounded keys, a budget over all."""

from __future__ import annotations

import logging

import pytest

from common.ratelimit import ALL, LogLimiter

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.ratelimit"]


def make(**kw):
    clock = Clock()
    return LogLimiter(logging.getLogger("test.ratelimit"), clock=clock, **kw), clock


def test_burst_per_key_then_a_summary_when_the_period_ends(caplog):
    lim, clock = make(burst=3, period=10.0)
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        passed = [lim.log("bad from A", logging.WARNING, "bad %d", i) for i in range(10)]
        assert passed == [True] * 3 + [False] * 7
        assert lim.log("bad from B", logging.WARNING, "other"), "another key has its own burst"
        clock.now = 11.0
        assert lim.flush() == 1
    got = lines(caplog)
    assert got[:3] == ["bad 0", "bad 1", "bad 2"]
    assert "7 more 'bad from A' messages suppressed" in got
    assert lim.suppressed_total == 7


def test_keys_are_bounded_and_a_forgotten_key_is_summarised(caplog):
    lim, _ = make(burst=1, max_keys=4, total=1000)
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        lim.log("k0", logging.WARNING, "k0")
        lim.log("k0", logging.WARNING, "k0 again")  # suppressed
        for i in range(1, 10):
            lim.log(f"k{i}", logging.WARNING, f"k{i}")
    assert len(lim) == 4
    assert "1 more 'k0' messages suppressed" in lines(caplog)


def test_forged_peers_cannot_pass_the_budget_over_all_keys(caplog):
    lim, clock = make(burst=5, total=20, period=60.0)
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        for i in range(500):  # every datagram from a new (forged) address
            lim.log(f"refused 10.0.{i // 256}.{i % 256}", logging.WARNING, "refused %d", i)
        clock.now = 61.0
        lim.flush()
    got = lines(caplog)
    assert sum(1 for g in got if g.startswith("refused ")) == 20
    assert f"480 more '{ALL}' messages suppressed" in got

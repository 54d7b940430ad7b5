"""IdentifyLimiter: shards wait on the clock for their slot; a stop ends the wait."""

from __future__ import annotations

import threading

from discord_voice import IdentifyLimiter, SessionStartLimit
from discord_voice.clock import Signal
from discord_voice.testing import FakeClock
from tests.timeouts import LONG


def test_the_second_shard_of_a_bucket_waits_5_s_on_the_clock() -> None:
    clock, limiter, stop = FakeClock(start=10.0), IdentifyLimiter(1), Signal()
    assert limiter.wait(0, clock, stop)  # the first goes at once
    results: list[bool] = []
    waiter = threading.Thread(
        target=lambda: results.append(limiter.wait(1, clock, stop)), name="test-identify"
    )
    waiter.start()
    clock.wait_for_deadline(15.0, LONG)  # parked until its slot
    assert results == []
    clock.advance(5.0)
    waiter.join(LONG)
    assert results == [True] and limiter.booked == 2


def test_a_stop_ends_the_wait_without_an_identify() -> None:
    clock, limiter, stop = FakeClock(), IdentifyLimiter(1), Signal()
    limiter.wait(0, clock, stop)
    results: list[bool] = []
    waiter = threading.Thread(
        target=lambda: results.append(limiter.wait(0, clock, stop)), name="test-identify"
    )
    waiter.start()
    clock.wait_for_deadline(5.0, LONG)
    stop.set()  # the gateway was closed meanwhile
    waiter.join(LONG)
    assert results == [False]


def test_get_gateway_bots_limits_change_the_buckets() -> None:
    clock, limiter, stop = FakeClock(), IdentifyLimiter(1), Signal()
    limiter.apply(SessionStartLimit(total=1000, remaining=999, reset_at=1e6, max_concurrency=2))
    assert limiter.max_concurrency == 2
    assert limiter.wait(0, clock, stop) and limiter.wait(1, clock, stop)  # two buckets: at once
    assert "max_concurrency=2 booked=2" in repr(limiter)

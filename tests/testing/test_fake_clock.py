"""FakeClock: what a test may rely on when it reads the parked deadlines and moves time."""

from __future__ import annotations

import threading

import pytest

from discord_voice.clock import Signal
from discord_voice.testing import FakeClock
from tests.timeouts import LONG


class Parked:
    """A thread parked in `clock.wait_until(deadline, signal)`; records what the wait returned."""

    def __init__(self, clock: FakeClock, deadline: float) -> None:
        self.signal = Signal()
        self.result: list[bool] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(clock.wait_until(deadline, self.signal)),
            name="test-parked",
        )
        self.thread.start()

    def join(self) -> bool:
        self.thread.join(LONG)
        assert not self.thread.is_alive()
        return self.result[0]


def test_a_passed_deadline_releases_the_sleeper_and_reports_no_signal() -> None:
    clock = FakeClock(start=10.0)
    parked = Parked(clock, 12.5)
    assert clock.wait_for_sleepers(1, LONG) == [12.5]
    assert clock.advance_to_next(LONG) == 12.5
    assert clock.sleepers() == []  # released before the thread even runs again
    assert parked.join() is False
    assert clock.monotonic() == 12.5


def test_a_set_signal_unparks_the_sleeper_before_set_returns() -> None:
    # A registration that brings an earlier deadline sets the loop's signal; a test reading the
    # parked deadlines right after must not see the old one, or it would advance past the new.
    clock = FakeClock(start=10.0)
    parked = Parked(clock, 12.5)
    assert clock.wait_for_sleepers(1, LONG) == [12.5]
    # Holding the clock's (reentrant) lock keeps the parked thread from running at all, so what
    # `sleepers()` shows here is what `set()` itself did.
    with clock._cond:
        parked.signal.set()
        assert clock.sleepers() == []
    assert parked.join() is True
    assert clock.monotonic() == 10.0  # a signal never moves time


def test_a_signal_set_before_the_wait_returns_at_once() -> None:
    clock = FakeClock(start=1.0)
    signal = Signal()
    signal.set()
    assert clock.wait_until(99.0, signal) is True
    assert clock.sleepers() == []


def test_time_never_goes_backwards() -> None:
    clock = FakeClock(start=3.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-0.001)
    clock.advance(0.02)
    clock.advance(0.02)
    assert clock.monotonic() == 3.04  # integer nanoseconds: no drift from repeated steps

"""A logical clock for tests: time moves only when the test says so.

Pass it to `Voice(..., clock=clock)` / `Gateway(..., clock=clock)`; the library's pacing,
heartbeats, handshake deadlines and reconnect backoff then park in ``wait_until`` until the test
calls `FakeClock.advance` (or the awaited event comes first). Use
`FakeClock.wait_for_sleepers` to know a thread is parked before advancing, which removes the race
between "thread about to wait" and "test moves time" without any sleep, and
`FakeClock.wait_for_deadline` to know that a thread waits until one given instant (a backoff, a
timeout) whatever else is parked.
"""

from __future__ import annotations

import threading
import time

from discord_voice.clock import Signal

__all__ = ["FakeClock"]


class FakeClock:
    """Implements `discord_voice.clock.Clock` with logical seconds starting at `start`.

    Thread safety: all methods may be called from any thread.
    """

    def __init__(self, start: float = 0.0) -> None:
        # Integer nanoseconds: repeated advance(0.02) must land exactly on origin + n * 0.02.
        self._ns = _to_ns(start)
        self._cond = threading.Condition()
        self._sleepers: dict[int, float] = {}  # thread id -> deadline
        self._woken = 0

    def monotonic(self) -> float:
        with self._cond:
            return self._ns / 1e9

    def wait_until(self, deadline: float, signal: Signal) -> bool:
        me = threading.get_ident()

        def wake() -> None:
            # Like a deadline that passed: the woken thread no longer counts as parked, even
            # before it runs again. Otherwise a test could see its old deadline just after the
            # signal was set (by a registration that brings an earlier deadline) and advance to
            # it, skipping the new one.
            with self._cond:
                self._sleepers.pop(me, None)
                self._cond.notify_all()

        registered = signal.add_listener(wake)
        try:
            with self._cond:
                while not signal.is_set() and self._ns < _to_ns(deadline):
                    self._sleepers[me] = deadline
                    self._cond.notify_all()  # wake wait_for_sleepers
                    self._cond.wait()
                self._sleepers.pop(me, None)
        finally:
            if registered:
                signal.remove_listener(wake)
        return signal.is_set()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every thread whose deadline has passed."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        with self._cond:
            self._ns += _to_ns(seconds)
            self._release_due()

    def sleepers(self) -> list[float]:
        """Deadlines of the threads parked in `wait_until` right now."""
        with self._cond:
            return sorted(self._sleepers.values())

    def wait_for_sleepers(self, count: int = 1, timeout: float = 5.0) -> list[float]:
        """Block (in real time, bounded) until at least `count` threads are parked.

        Returns their deadlines. Raises TimeoutError if that does not happen within `timeout`.
        """
        end = time.monotonic() + timeout
        with self._cond:
            while len(self._sleepers) < count:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._sleepers)} thread(s) parked on the fake clock, wanted {count}"
                    )
                self._cond.wait(remaining)
            return sorted(self._sleepers.values())

    def wait_for_deadline(self, deadline: float, timeout: float = 5.0) -> list[float]:
        """Block (in real time, bounded) until a thread is parked until exactly `deadline`.

        Returns every parked deadline. Unlike `wait_for_sleepers`, other threads parked on the
        clock meanwhile (a handshake wait, a heartbeat) cannot satisfy it by their number.
        Raises TimeoutError if that does not happen within `timeout`.
        """
        end = time.monotonic() + timeout
        wanted = _to_ns(deadline)
        with self._cond:
            while all(_to_ns(d) != wanted for d in self._sleepers.values()):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no thread parked on the fake clock until {deadline}; parked: "
                        f"{sorted(self._sleepers.values())}"
                    )
                self._cond.wait(remaining)
            return sorted(self._sleepers.values())

    def advance_to_next(self, timeout: float = 5.0) -> float:
        """Wait for a sleeper, then advance exactly to the earliest parked deadline."""
        deadlines = self.wait_for_sleepers(1, timeout)
        with self._cond:
            self._ns = max(self._ns, _to_ns(deadlines[0]))
            self._release_due()
            return self._ns / 1e9

    def _release_due(self) -> None:
        # A released thread no longer counts as parked, even before it runs again; otherwise
        # wait_for_sleepers could see it and let the test advance twice for one wake-up.
        for ident, deadline in list(self._sleepers.items()):
            if _to_ns(deadline) <= self._ns:
                del self._sleepers[ident]
        self._cond.notify_all()


def _to_ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)

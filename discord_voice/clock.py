"""Time as a seam: every deadline, heartbeat and pacing wait in the library goes through a `Clock`.

`SystemClock` is the real monotonic clock. `discord_voice.testing.FakeClock` implements the same
protocol with logical time, so pacing and heartbeat logic can be tested without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "Signal", "SystemClock"]


class Signal:
    """A one-shot flag that threads wait on, like `threading.Event`.

    Unlike an Event, interested parties (a fake clock) can register a callback that runs when the
    flag is set, so a thread parked in ``clock.wait_until`` wakes without polling. A timed wait is
    a single lock acquire (the pacing hot path waits on one every 20 ms).

    Thread safety: every method may be called from any thread.
    """

    def __init__(self) -> None:
        self._flag = False
        self._gate = threading.Lock()  # held until set(); waiters acquire it with a timeout
        self._gate.acquire()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def set(self) -> None:
        """Set the flag, wake every waiter and run the registered callbacks (once each)."""
        with self._lock:
            if self._flag:
                return
            self._flag = True
            listeners, self._listeners = self._listeners, []
        self._gate.release()
        for listener in listeners:
            listener()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or `timeout` real seconds pass; return the flag."""
        if self._flag:
            return True
        if timeout is not None and timeout <= 0:
            return False
        if self._gate.acquire(timeout=-1 if timeout is None else timeout):
            self._gate.release()  # pass the wake-up on to the next waiter
            return True
        return self._flag

    def add_listener(self, listener: Callable[[], None]) -> bool:
        """Register `listener` for the next `set`; return False (not registered) if already set."""
        with self._lock:
            if self._flag:
                return False
            self._listeners.append(listener)
            return True

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            try:
                self._listeners.remove(listener)
            except ValueError:
                pass


class Clock(Protocol):
    """A monotonic clock that can also block until a deadline."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (only differences matter)."""
        ...

    def wait_until(self, deadline: float, signal: Signal) -> bool:
        """Block until ``monotonic() >= deadline`` or `signal` is set; return whether it is."""
        ...


class SystemClock:
    """The real clock: `time.monotonic` and timed waits on the signal.

    Thread safety: stateless; share one instance freely.
    """

    def monotonic(self) -> float:
        return time.monotonic()

    def wait_until(self, deadline: float, signal: Signal) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return signal.is_set()
        return signal.wait(remaining)

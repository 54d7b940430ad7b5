"""Time as a seam: every protocol deadline, wait and backoff in the library goes through a `Clock`.

`SystemClock` is the real monotonic clock and the default everywhere. The testing package's
`FakeClock` implements the same protocol with logical time, so pacing, heartbeats, join deadlines
and whole recoveries (backoff included) run at CPU speed in tests, driven by ``advance``.

Which time a wait uses (where the choice is not obvious):

(a) Protocol time is the injected clock: the join deadline and every handshake stage (IP
    discovery's deadline too), resume, reconnect and move deadlines, the backoff between
    recovery attempts, heartbeats and their watchdogs, pacing, rate-limit slots. Waits on a
    `concurrent.futures.Future` or on a condition are written as a `Signal` plus
    ``clock.wait_until(deadline, signal)`` (`future_signal` makes the signal), never as
    ``future.result(deadline - clock.monotonic())``: a real-time wait whose length came from a
    fake clock would not be driven by that clock, and with a fake clock the wait lasts until the
    test moves time past the deadline, as it should.
(b) OS-level I/O timeouts (a socket timeout handed to the kernel or to websocket-client) are
    relative durations and need no clock read. Where a remaining time is computed for one, it is
    computed from the injected clock and the loop around it checks the deadline on that clock;
    under a fake clock such a loop keeps polling the socket in real time until the test advances.
(c) Shutdown bounds are real time: joining threads (``_shell/threads.py``), the close handshake
    after the library decided to close (``WebSocketChannel.drain_until_close``) and the budget
    of ``Connection.disconnect(timeout)``. A fake clock must never make a close hang. Outside
    ``_shell/threads.py`` real time is read through a `SystemClock`, never `time` directly.
(d) A timeout that a caller passes to a method that only observes (``Connection.wait``,
    ``wait_for_state``, ``wait_for_e2ee``, ``stop_speaking``, ``opus_send.put``,
    ``Gateway.wait``) is real seconds, like any standard-library timeout.

Only this module and ``_shell/threads.py`` (and the CLI demo) call `time`; ``tests/test_hygiene.py``
enforces it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

__all__ = ["Clock", "Signal", "SystemClock", "future_signal"]


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


def future_signal(future: Future[Any]) -> Signal:
    """A `Signal` set once `future` is done (at once if it is), to wait for it on a clock.

    ``clock.wait_until(deadline, future_signal(f))`` is the clock-driven form of
    ``f.result(timeout)``: under a `FakeClock` it times out only when the test advances time.
    """
    signal = Signal()
    future.add_done_callback(lambda _: signal.set())
    return signal

"""The main gateway's heartbeat: op 1 on the `HeartbeatSchedule`, latency, zombie detection.

`GatewayHeartbeat.run` is the body of the ``dv-gateway-heartbeat`` thread; `beat` (for op 1
requests) and `on_ack` are called from the reader.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from discord_voice._shell.ws_session import WebSocketSession
from discord_voice.clock import Clock, Signal
from discord_voice.core.main_gateway_timing import HeartbeatSchedule
from discord_voice.errors import ConnectionClosed, HeartbeatTimeout

__all__ = ["GatewayHeartbeat", "RandomSource"]


class RandomSource(Protocol):
    """Where the first-heartbeat jitter comes from (`random.Random` fits)."""

    def random(self) -> float: ...


class GatewayHeartbeat:
    """Heartbeats every `interval` s (the first after ``interval * jitter``) over `session`.

    `payload()` makes each op 1 text; `stop` ends `run`.

    Thread safety: every method from any thread (`run` on one thread only); the schedule is
    guarded by a lock that is never held while sending.
    """

    def __init__(
        self,
        interval: float,
        jitter: float,
        *,
        clock: Clock,
        stop: Signal,
        session: WebSocketSession,
        payload: Callable[[], str],
    ) -> None:
        self._lock = threading.Lock()
        self._schedule = HeartbeatSchedule(interval, clock.monotonic(), jitter)
        self._clock, self._stop = clock, stop
        self._session, self._payload = session, payload

    @property
    def latency(self) -> float | None:
        """Round trip of the last acknowledged beat in seconds (None before the first ACK)."""
        with self._lock:
            return self._schedule.latency

    def on_ack(self) -> None:
        """Record a heartbeat ACK (op 11) received now."""
        with self._lock:
            self._schedule.on_ack(self._clock.monotonic())

    def beat(self, *, requested: bool = False) -> None:
        """Send op 1 now (heartbeats bypass the rate limiter); a `requested` one keeps the grid.

        Raises `ConnectionClosed` if it cannot be sent.
        """
        with self._lock:
            self._schedule.on_sent(self._clock.monotonic(), requested=requested)
            payload = self._payload()
        self._session.send_text(payload)

    def run(self) -> None:
        """Beat whenever the schedule says a beat is due, until the stop signal is set.

        Raises `HeartbeatTimeout` when a beat falls due while the previous one is still
        unacknowledged (a zombie connection). If a beat cannot be sent, aborts the socket so
        the reader wakes and reports how the connection ended, and returns.
        """
        schedule = self._schedule
        while True:
            with self._lock:
                due = schedule.next_due
            if self._clock.wait_until(due, self._stop):
                return
            now = self._clock.monotonic()
            with self._lock:
                if now < schedule.next_due:  # woke before the deadline: wait again
                    continue
                zombie = schedule.is_zombie(now)
            if zombie:
                raise HeartbeatTimeout(
                    f"no heartbeat ACK from the main gateway within {schedule.interval:g}s; "
                    "closed the zombie connection",
                    schedule.interval,
                )
            try:
                self.beat()
            except ConnectionClosed:
                self._session.abort()
                return

"""Main gateway timing, sans-I/O: when to heartbeat, and how fast ordinary sends may go.

`HeartbeatSchedule` (first beat after ``interval * jitter``, then a fixed grid, zombie detection)
and `SendRateLimiter` (a token bucket under Discord's 120 events per 60 s) are arithmetic on the
``now`` values their owner reads from its clock; nothing here sleeps or reads time itself.
"""

from __future__ import annotations

from discord_voice.errors import LocalProtocolError

__all__ = ["HeartbeatSchedule", "SendRateLimiter"]


class HeartbeatSchedule:
    """When to beat and when the connection is a zombie (GW §Sending Heartbeats).

    The first beat is due ``interval * jitter`` after Hello, then every ``interval`` on a fixed
    grid. If the previous beat is still unacknowledged when the next one is due, the connection
    is a zombie. Beats the server asked for (op 1) do not move the grid.
    """

    def __init__(self, interval: float, now: float, jitter: float) -> None:
        if not interval > 0:
            raise ValueError("heartbeat interval must be positive")
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        self.interval = interval
        self.next_due = now + interval * jitter
        #: Last heartbeat round trip in seconds (None until the first ACK).
        self.latency: float | None = None
        self.beats_sent = 0
        self._sent_at: float | None = None
        self._awaiting_ack = False

    def is_zombie(self, now: float) -> bool:
        """True if a beat is due at `now` while the previous one was never acknowledged."""
        return self._awaiting_ack and now >= self.next_due

    def on_sent(self, now: float, *, requested: bool = False) -> None:
        """Record a beat sent at `now`; a scheduled beat advances `next_due` by one interval."""
        self._sent_at = now
        self._awaiting_ack = True
        self.beats_sent += 1
        if not requested:
            self.next_due += self.interval
            if self.next_due <= now:  # fell a whole interval behind: restart the grid
                self.next_due = now + self.interval

    def on_ack(self, now: float) -> float | None:
        """Record an ACK; return the new latency, or None if no beat was outstanding."""
        if not self._awaiting_ack or self._sent_at is None:
            return None
        self._awaiting_ack = False
        self.latency = now - self._sent_at
        return self.latency


class SendRateLimiter:
    """A token bucket that keeps ordinary sends within `limit` per `period` seconds.

    Discord allows 120 events per 60 s per connection (GW §Rate Limiting); the default of 110
    leaves room for heartbeats, which bypass the bucket. The bucket holds ``limit / 2`` tokens
    and refills at ``limit / 2`` per period, so no window of `period` seconds ever sees more
    than `limit` sends. A send that finds the bucket empty books a later slot instead.
    """

    def __init__(self, limit: int = 110, period: float = 60.0) -> None:
        if limit < 2 or not period > 0:
            raise ValueError("limit must be >= 2 and period positive")
        self.capacity = limit / 2
        self.rate = (limit - self.capacity) / period
        self._tokens = self.capacity
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def reserve(self, now: float, max_delay: float = float("inf")) -> float:
        """Book one send; return the time it may go (``>= now``).

        Raises LocalProtocolError, booking nothing, if that time is more than `max_delay` away.
        """
        self._refill(now)
        delay = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
        if delay > max_delay:
            raise LocalProtocolError(
                f"main gateway send rate limit: the next send slot is {delay:.1f}s away"
            )
        self._tokens -= 1
        return now + delay

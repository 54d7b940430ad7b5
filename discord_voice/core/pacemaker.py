"""Heartbeat arithmetic for the voice gateway: when to beat, which nonce, RTT, and death.

Pure: every method takes ``now`` (seconds on the caller's monotonic clock). Beats are scheduled
on an absolute grid (``start + k * interval``) so that a slow send does not shift later beats;
if the caller falls more than one interval behind, the grid restarts from ``now``.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["Pacemaker"]


class Pacemaker:
    """Schedules heartbeats, matches ACKs and decides when the socket is dead.

    A connection is dead when the oldest unacknowledged beat was sent more than
    ``dead_after`` intervals ago (default 2, so it is detected within 3 intervals).
    """

    _MAX_OUTSTANDING = 16

    def __init__(self, interval: float, now: float, *, dead_after: float = 2.0) -> None:
        if not interval > 0:
            raise ValueError("heartbeat interval must be positive")
        self.interval = interval
        self.dead_after = dead_after
        self.next_due = now + interval
        #: Last measured round trip in seconds (None until the first ACK).
        self.latency: float | None = None
        self.beats_sent = 0
        self.acks_received = 0
        self._last_nonce = 0
        self._outstanding: OrderedDict[int, float] = OrderedDict()

    def beat(self, now: float) -> int:
        """Record a heartbeat sent at `now`; return its nonce (milliseconds, strictly rising)."""
        nonce = max(int(now * 1000), self._last_nonce + 1)
        self._last_nonce = nonce
        self._outstanding[nonce] = now
        while len(self._outstanding) > self._MAX_OUTSTANDING:
            self._outstanding.popitem(last=False)
        self.beats_sent += 1
        self.next_due += self.interval
        if self.next_due <= now:  # fell a whole interval behind: restart the grid
            self.next_due = now + self.interval
        return nonce

    def ack(self, nonce: int, now: float) -> float | None:
        """Match an ACK; return the round trip, or None for an unknown or repeated nonce.

        An ACK also acknowledges every older beat (the server answers in order).
        """
        sent = self._outstanding.get(nonce)
        if sent is None:
            return None
        while self._outstanding:
            old_nonce, _ = self._outstanding.popitem(last=False)
            if old_nonce == nonce:
                break
        self.acks_received += 1
        self.latency = now - sent
        return self.latency

    def is_dead(self, now: float) -> bool:
        """True when the oldest unacknowledged beat is more than ``dead_after`` intervals old."""
        if not self._outstanding:
            return False
        oldest = next(iter(self._outstanding.values()))
        return now - oldest > self.dead_after * self.interval

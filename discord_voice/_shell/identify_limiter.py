"""`IdentifyLimiter`: the Identify slots of one bot's shards in one process, shared by their
`Gateway` objects (`core.sharding.IdentifySlots` behind a lock, waited for on a clock)."""

from __future__ import annotations

import logging
import threading

from discord_voice.clock import Clock, Signal
from discord_voice.core.sharding import IDENTIFY_INTERVAL, IdentifySlots, SessionStartLimit

__all__ = ["IdentifyLimiter"]

log = logging.getLogger(__name__)


class IdentifyLimiter:
    """One Identify per ``max_concurrency`` bucket per 5 s, and never more than the session
    start limit allows, for every `Gateway` given this limiter (pass the same one to all the
    shards of a process; `ShardGroup` does). A `Gateway` without one gets its own, which
    spaces its own re-identifies. Every gateway sharing it must use the same clock.
    `interval` is Discord's 5 s; tests of reconnects against a fake without the limit may
    shorten it (``FakeDiscord(max_concurrency=None)``, its default, does not enforce it).

    Thread safety: every method may be called from any thread.
    """

    def __init__(self, max_concurrency: int = 1, *, interval: float = IDENTIFY_INTERVAL) -> None:
        self._slots = IdentifySlots(max_concurrency, interval=interval)
        self._lock = threading.Lock()

    @property
    def max_concurrency(self) -> int:
        with self._lock:
            return self._slots.max_concurrency

    @property
    def booked(self) -> int:
        """Identifies allowed so far."""
        with self._lock:
            return self._slots.booked

    def apply(self, limit: SessionStartLimit) -> None:
        """Follow Get Gateway Bot's ``session_start_limit`` from now on."""
        with self._lock:
            self._slots.apply(limit)

    def wait(self, shard_id: int, clock: Clock, stop: Signal) -> bool:
        """Book `shard_id`'s next slot and wait on `clock` until it; False if `stop` was set
        first (the slot stays booked: the schedule is only ever later than Discord's)."""
        now = clock.monotonic()
        with self._lock:
            at = self._slots.reserve(shard_id, now)
        if at > now:
            log.info("shard %d waits %.1f s for its identify slot", shard_id, at - now)
        return not clock.wait_until(at, stop)

    def __repr__(self) -> str:
        return f"<IdentifyLimiter max_concurrency={self.max_concurrency} booked={self.booked}>"

"""Sharding: which shard of the main gateway owns a guild, and when a shard may identify.

Rules (Discord's gateway documentation, "Sharding" and "Session Start Limit Object"):

1. A shard is ``[shard_id, shard_count]`` with ``0 <= shard_id < shard_count``; it is sent in
   Identify and receives the events of the guilds with
   ``(guild_id >> 22) % shard_count == shard_id`` (events without a guild go to shard 0).
   A guild's Voice State Update must be sent on the shard that owns the guild.
2. Identify is rate limited by ``max_concurrency``: a shard's bucket is
   ``shard_id % max_concurrency`` and each bucket allows one Identify per `IDENTIFY_INTERVAL`
   (5 s). Resume does not count.
3. At most ``session_start_limit.remaining`` Identifies may be sent before
   ``reset_after``; past it, Discord resets the token. So when none remains, the next
   Identify waits for the reset.

`IdentifySlots` applies rules 2 and 3 to times passed in (seconds on any monotonic clock);
the shell waits on its clock until the slot it was given. Sans-I/O, not thread safe (the
shell's `IdentifyLimiter` holds a lock around it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from discord_voice.errors import LocalProtocolError

__all__ = [
    "IDENTIFY_INTERVAL",
    "MAX_SNOWFLAKE",
    "WINDOW",
    "IdentifySlots",
    "SessionStartLimit",
    "Shard",
    "parse_shard",
    "shard_for",
]

#: Seconds between two Identifies of one bucket.
IDENTIFY_INTERVAL: Final = 5.0
#: The session start limit's window (seconds): 1000 Identifies a day.
WINDOW: Final = 86400.0
#: Snowflakes are unsigned 64-bit integers.
MAX_SNOWFLAKE: Final = (1 << 64) - 1


def _snowflake(guild_id: int | str) -> int:
    if isinstance(guild_id, bool):
        raise LocalProtocolError(f"guild_id must be an int or a decimal string, got {guild_id!r}")
    if isinstance(guild_id, str):
        if not (guild_id.isdecimal() and guild_id.isascii()):
            raise LocalProtocolError(f"guild_id must be a decimal id, got {guild_id!r}")
        guild_id = int(guild_id)
    if not isinstance(guild_id, int) or not 0 <= guild_id <= MAX_SNOWFLAKE:
        raise LocalProtocolError(f"guild_id must be a snowflake (0..2**64-1), got {guild_id!r}")
    return guild_id


def _count(shard_count: object) -> int:
    if isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1:
        raise LocalProtocolError(f"shard_count must be a positive int, got {shard_count!r}")
    return shard_count


def shard_for(guild_id: int | str, shard_count: int) -> int:
    """The id of the shard that owns `guild_id` among `shard_count` shards (rule 1)."""
    return (_snowflake(guild_id) >> 22) % _count(shard_count)


@dataclass(frozen=True)
class Shard:
    """One shard: ``Shard(0, 1)`` is an unsharded bot's only one."""

    shard_id: int
    shard_count: int

    def __post_init__(self) -> None:
        count = _count(self.shard_count)
        sid = self.shard_id
        if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid < count:
            raise LocalProtocolError(f"shard_id must be an int in 0..{count - 1}, got {sid!r}")

    def owns(self, guild_id: int | str) -> bool:
        return shard_for(guild_id, self.shard_count) == self.shard_id

    def payload(self) -> list[int]:
        """Identify's ``shard`` field."""
        return [self.shard_id, self.shard_count]

    def __str__(self) -> str:
        return f"{self.shard_id}/{self.shard_count}"


def parse_shard(text: str) -> Shard:
    """``"ID/COUNT"`` (the command line's ``--shard``) as a `Shard`."""
    head, sep, tail = text.partition("/")
    if not sep or not head.isdecimal() or not tail.isdecimal():
        raise LocalProtocolError(f"a shard is written ID/COUNT (e.g. 0/4), got {text!r}")
    return Shard(int(head), int(tail))


@dataclass(frozen=True)
class SessionStartLimit:
    """``session_start_limit`` of Get Gateway Bot, its ``reset_after`` made a time (`reset_at`,
    on the clock of the `IdentifySlots` it is given to)."""

    total: int
    remaining: int
    reset_at: float
    max_concurrency: int

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.total < 0 or self.remaining < 0:
            raise LocalProtocolError(f"invalid session start limit: {self!r}")


class IdentifySlots:
    """When each shard may identify (rules 2 and 3): `reserve` gives a shard the first free
    slot of its bucket and books it. Without a `SessionStartLimit`, only rule 2 applies (with
    ``max_concurrency`` 1 unless told otherwise).

    Booked slots are never moved: a shard that reserved a slot and then identified earlier or
    not at all still holds it, so the schedule can only be later than Discord's, never earlier.
    """

    def __init__(self, max_concurrency: int = 1, *, interval: float = IDENTIFY_INTERVAL) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise LocalProtocolError("max_concurrency must be a positive int")
        if max_concurrency < 1 or not interval >= 0:
            raise LocalProtocolError("max_concurrency must be positive and interval >= 0")
        self._concurrency = max_concurrency
        self._interval = interval
        self._next: dict[int, float] = {}  # bucket -> earliest time of its next Identify
        self._limit: SessionStartLimit | None = None
        self._remaining = 0
        self.booked = 0  # Identifies booked so far

    @property
    def max_concurrency(self) -> int:
        return self._concurrency

    def apply(self, limit: SessionStartLimit) -> None:
        """Use Get Gateway Bot's limits from now on (buckets follow its ``max_concurrency``)."""
        if limit.max_concurrency != self._concurrency:
            latest = max(self._next.values(), default=None)
            self._concurrency = limit.max_concurrency
            # buckets change meaning: every new bucket waits for the latest booked slot
            self._next = {} if latest is None else dict.fromkeys(range(self._concurrency), latest)
        self._limit, self._remaining = limit, limit.remaining

    def _renew(self, limit: SessionStartLimit) -> SessionStartLimit:
        """The next window of the limit: all of `total` again, for a day."""
        if limit.total == 0:
            raise LocalProtocolError("the session start limit allows no Identify at all")
        renewed = SessionStartLimit(
            limit.total, limit.total, limit.reset_at + WINDOW, limit.max_concurrency
        )
        self._limit, self._remaining = renewed, renewed.total
        return renewed

    def bucket(self, shard_id: int) -> int:
        return shard_id % self._concurrency

    def reserve(self, shard_id: int, now: float) -> float:
        """Book the first slot of `shard_id`'s bucket at or after `now`; returns its time."""
        if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
            raise LocalProtocolError(f"shard_id must be a non-negative int, got {shard_id!r}")
        at = max(now, self._next.get(self.bucket(shard_id), now))
        limit = self._limit
        if limit is not None:
            if at >= limit.reset_at:  # a new window has begun since the limits were read
                limit = self._renew(limit)
            if self._remaining == 0:  # rule 3: never one more before the reset
                at = max(at, limit.reset_at)
                limit = self._renew(limit)
            self._remaining -= 1
        self._next[self.bucket(shard_id)] = at + self._interval
        self.booked += 1
        return at

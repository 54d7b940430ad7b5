"""Who sent a packet: one voice session's SSRC -> user map, with a hold for early audio.

Discord names a speaker's SSRC with Speaking (op 5, or the undocumented op 12's ``audio_ssrc``),
but its audio can arrive first; clients that dropped it lost everyone's first words
(``receive.md`` §3). So (events in, decisions out; `now` is the caller's clock):

- a packet of a mapped SSRC is delivered to its user (`Deliver`);
- a packet of an unknown SSRC is held, per SSRC at most `HOLD_PACKETS` (the oldest goes first
  and is counted) and at most `HOLD_SECONDS` after that SSRC's first held packet: when the time
  is up (`expire`, or the next packet) the held packets are dropped and counted (`Expired`);
- `speaking(user, ssrc)` maps the SSRC and releases what was held for it, in arrival order. If
  the SSRC belonged to another user, or the user had another SSRC, that user's per-user state
  must start over (`Reset`: decoder, jitter buffer; the old SSRC is unmapped);
- `disconnected(user)` (op 13) resets the user at once (`Reset`) but keeps its SSRC mapped for
  `FORGET_AFTER` seconds, for the packets still in flight;
- our own SSRC is never mapped (the packet layer drops it before).

Pure: no clock of its own, no I/O; the receive thread owns one per voice session.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

__all__ = [
    "FORGET_AFTER",
    "HOLD_PACKETS",
    "HOLD_SECONDS",
    "Deliver",
    "Expired",
    "Reset",
    "SsrcMap",
]

#: How many packets of one unknown SSRC are held (~2 s of 20 ms frames).
HOLD_PACKETS: Final = 100
#: How long packets of an unknown SSRC are held, from the first one.
HOLD_SECONDS: Final = 2.0
#: How long a departed user's SSRC stays mapped for packets in flight.
FORGET_AFTER: Final = 1.0

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Deliver(Generic[P]):
    user_id: int
    packet: P


@dataclass(frozen=True, slots=True)
class Reset:
    """The user's per-user state (decoder, buffer) must start over."""

    user_id: int


@dataclass(frozen=True, slots=True)
class Expired:
    """`count` packets of `ssrc` were dropped unmapped (the hold ran out, or overflowed)."""

    ssrc: int
    count: int


Action = Deliver[P] | Reset | Expired


@dataclass(slots=True)
class _Held(Generic[P]):
    since: float
    packets: deque[P]


class SsrcMap(Generic[P]):
    """The map of one voice session (see the module docstring). Not thread-safe: one owner."""

    def __init__(
        self,
        *,
        hold_packets: int = HOLD_PACKETS,
        hold_seconds: float = HOLD_SECONDS,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        if hold_packets < 1:
            raise ValueError("hold_packets must be at least 1")
        self._hold_packets = hold_packets
        self._hold_seconds = hold_seconds
        self._forget_after = forget_after
        self._users: dict[int, int] = {}  # ssrc -> user id
        self._ssrcs: dict[int, int] = {}  # user id -> ssrc
        self._held: dict[int, _Held[P]] = {}  # unknown ssrc -> its held packets
        self._leaving: dict[int, float] = {}  # ssrc -> when to unmap it (op 13)

    def user_of(self, ssrc: int) -> int | None:
        return self._users.get(ssrc)

    def ssrc_of(self, user_id: int) -> int | None:
        return self._ssrcs.get(user_id)

    @property
    def held(self) -> int:
        """Packets held for unknown SSRCs right now."""
        return sum(len(h.packets) for h in self._held.values())

    def packet(self, ssrc: int, packet: P, now: float) -> list[Action[P]]:
        """A packet of `ssrc` arrived."""
        actions: list[Action[P]] = self.expire(now)
        user = self._users.get(ssrc)
        if user is not None:
            actions.append(Deliver(user, packet))
            return actions
        held = self._held.get(ssrc)
        if held is None:
            held = self._held[ssrc] = _Held(now, deque())
        held.packets.append(packet)
        if len(held.packets) > self._hold_packets:
            held.packets.popleft()
            actions.append(Expired(ssrc, 1))
        return actions

    def speaking(self, user_id: int, ssrc: int, now: float) -> list[Action[P]]:
        """Op 5 / op 12: `ssrc` is `user_id`'s audio."""
        actions: list[Action[P]] = self.expire(now)
        if self._users.get(ssrc) == user_id:
            self._leaving.pop(ssrc, None)  # back before the in-flight window ended
            return actions
        owner = self._users.get(ssrc)
        if owner is not None:  # the SSRC changed owner
            del self._ssrcs[owner]
            actions.append(Reset(owner))
        previous = self._ssrcs.get(user_id)
        if previous is not None:  # the user has a new SSRC (a reconnect)
            del self._users[previous]
            self._leaving.pop(previous, None)
            actions.append(Reset(user_id))
        self._leaving.pop(ssrc, None)
        self._users[ssrc] = user_id
        self._ssrcs[user_id] = ssrc
        held = self._held.pop(ssrc, None)
        if held is not None:
            actions.extend(Deliver(user_id, packet) for packet in held.packets)
        return actions

    def disconnected(self, user_id: int, now: float) -> list[Action[P]]:
        """Op 13: the user left the call."""
        actions: list[Action[P]] = self.expire(now)
        ssrc = self._ssrcs.get(user_id)
        if ssrc is not None:
            self._leaving[ssrc] = now + self._forget_after
        actions.append(Reset(user_id))
        return actions

    def expire(self, now: float) -> list[Action[P]]:
        """Drop holds that ran out and forget departed users' SSRCs whose time has come."""
        actions: list[Action[P]] = []
        if not self._held and not self._leaving:
            return actions  # the common case, once per packet
        for ssrc in [s for s, h in self._held.items() if now - h.since >= self._hold_seconds]:
            actions.append(Expired(ssrc, len(self._held.pop(ssrc).packets)))
        for ssrc in [s for s, when in self._leaving.items() if now >= when]:
            del self._leaving[ssrc]
            user = self._users.pop(ssrc, None)
            if user is not None and self._ssrcs.get(user) == ssrc:
                del self._ssrcs[user]
        return actions

    def clear(self) -> list[Action[P]]:
        """A new voice session (reconnect, move): every mapping and hold ends."""
        actions: list[Action[P]] = [Expired(s, len(h.packets)) for s, h in self._held.items()]
        actions.extend(Reset(user) for user in self._ssrcs)
        self._users.clear()
        self._ssrcs.clear()
        self._held.clear()
        self._leaving.clear()
        return actions

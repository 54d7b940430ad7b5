"""UDP impairment on the fake's receive path: drop, duplicate, reorder and delay, seeded.

`FakeDiscord.impair_udp` installs a `UdpImpairment` in the UDP server. It acts on packets that
decrypted (what would become ``fake.frames()``), after decryption and before recording, so the
*recording order* of ``frames()`` (and their ``index``) is the impaired order, while each frame's
``arrival`` stays the kernel's receive time of the real packet. Per packet, in this order, with
one ``random.Random(seed)``:

1. with probability ``drop`` it is not recorded;
2. with probability ``duplicate`` it is recorded twice (two frames, same fields, new indexes);
3. with probability ``reorder`` it is held and recorded right *after* the next packet (or alone
   once `REORDER_HOLD` seconds pass without one);
4. every packet that goes on is held ``delay`` milliseconds before it is recorded.

The same seed and the same packets in the same order give the same recorded sequence. Packets
that fail to parse or decrypt are reported in ``udp_errors`` at once, unimpaired.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["REORDER_HOLD", "ImpairmentStats", "UdpImpairment"]

T = TypeVar("T")

#: Seconds a packet picked for reordering waits for a successor before it is recorded anyway.
REORDER_HOLD = 0.2


@dataclass
class ImpairmentStats:
    """What an impairment did so far (counts of packets)."""

    seen: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0


class UdpImpairment(Generic[T]):
    """Seeded impairment of a packet stream; used by the UDP receive thread only."""

    def __init__(
        self, drop: float, duplicate: float, reorder: float, delay: float, seed: int
    ) -> None:
        for name, p in (("drop", drop), ("duplicate", duplicate), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if not 0.0 <= delay <= 10_000:
            raise ValueError(f"delay must be 0-10000 ms, got {delay}")
        self.drop, self.duplicate, self.reorder = drop, duplicate, reorder
        self.delay = delay / 1000.0
        self.seed = seed
        self._rng = random.Random(seed)
        self._held: tuple[T, float] | None = None  # (packet, held since) waiting for reordering
        self._delayed: list[tuple[float, T]] = []  # (due, packet), due order
        self.stats = ImpairmentStats()

    def __repr__(self) -> str:
        return (
            f"UdpImpairment(drop={self.drop}, duplicate={self.duplicate}, "
            f"reorder={self.reorder}, delay={self.delay * 1000:g}, seed={self.seed})"
        )

    def feed(self, packets: list[T], now: float) -> None:
        """Packets that arrived (in arrival order) at monotonic time `now`."""
        for packet in packets:
            self.stats.seen += 1
            if self._rng.random() < self.drop:
                self.stats.dropped += 1
                continue
            copies = [packet]
            if self._rng.random() < self.duplicate:
                self.stats.duplicated += 1
                copies.append(packet)
            hold = self._rng.random() < self.reorder
            held, self._held = self._held, None
            if hold and held is None:
                self.stats.reordered += 1
                self._held = (copies[0], now)
                copies = copies[1:]
            for copy in copies:
                self._later(copy, now)
            if held is not None:
                self._later(held[0], now)

    def due(self, now: float) -> list[T]:
        """Packets to record now, in order."""
        held = self._held
        if held is not None and now - held[1] >= REORDER_HOLD:
            self._held = None
            self._later(held[0], now)
        ready = [p for due, p in self._delayed if due <= now]
        self._delayed = [(due, p) for due, p in self._delayed if due > now]
        return ready

    def next_wakeup(self) -> float | None:
        """The monotonic time `due` will next have something, if anything is held."""
        times = [due for due, _ in self._delayed[:1]]
        if self._held is not None:
            times.append(self._held[1] + REORDER_HOLD)
        return min(times) if times else None

    def flush(self) -> list[T]:
        """Everything still held, in order (the impairment is being replaced)."""
        out = [p for _, p in self._delayed]
        if self._held is not None:
            out.append(self._held[0])
        self._delayed, self._held = [], None
        return out

    def _later(self, packet: T, now: float) -> None:
        if self.delay:
            self.stats.delayed += 1
        self._delayed.append((now + self.delay, packet))  # `now` never goes back: stays sorted

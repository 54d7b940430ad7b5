"""Mixing members' audio into one stream: the timeline of `MixSink`, without I/O or threads.

Each member's blocks come from the listener already in that member's own order, with their
pauses written as silence (``listen.py``), but members' blocks do not come at the same moments
nor at the same rate: the listener writes a member's blocks when their packets arrive (and a
pause's silence only when the member speaks again). So the mix keeps one lane per member on a
common timeline of 20 ms slots, slot 0 being the moment the first block came:

- A member's lane starts at the slot of the moment its first block came.
- Slot ``k`` is mixed once ``latency`` seconds have passed since it was due, whatever has come:
  lanes without a block there are silent in it. The mix therefore runs at wall-clock speed and
  its length is the time from the first block to the end (pauses of everyone included).
- A block for a slot already mixed: silence is skipped (a pause the mix already has); audio is
  moved to the slot of the moment it came, never dropped (packets that came late, or a sender
  whose timestamps do not count its pauses).
- Silence more than `SLACK` ahead of the wall clock is skipped, so a member whose timestamps run
  ahead of real time comes back in line at each pause.

Samples are summed and clipped to 16 bits. Time is passed in (``now``, seconds of any monotonic
clock), so the rules are tested in memory.
"""

from __future__ import annotations

import math
import operator
import sys
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Final

__all__ = ["BLOCK", "BLOCK_SECONDS", "SLACK", "Mixer", "MixerStats", "mix"]

#: One block: 20 ms of 48 kHz stereo s16le.
BLOCK: Final = 3840
BLOCK_SECONDS: Final = 0.02
#: Silence this far ahead of the wall clock is skipped.
SLACK: Final = 0.2

_SLACK_SLOTS: Final = round(SLACK / BLOCK_SECONDS)
_SWAP: Final = sys.byteorder == "big"  # blocks are little-endian


def _samples(block: bytes) -> array[int]:
    samples = array("h", block)
    if _SWAP:
        samples.byteswap()
    return samples


def mix(blocks: list[bytes]) -> bytes:
    """The sum of equal-length s16le blocks, clipped to [-32768, 32767]."""
    if len(blocks) == 1:
        return blocks[0]
    arrays = [_samples(block) for block in blocks]
    if len(arrays) == 2:
        total = list(map(operator.add, arrays[0], arrays[1]))
    else:
        total = list(map(sum, zip(*arrays, strict=True)))
    if min(total) < -32768 or max(total) > 32767:
        total = [-32768 if v < -32768 else 32767 if v > 32767 else v for v in total]
    out = array("h", total)
    if _SWAP:
        out.byteswap()
    return out.tobytes()


@dataclass
class MixerStats:
    blocks: int = 0  # mixed blocks given out
    members: int = 0  # lanes ever opened
    moved_late: int = 0  # audio blocks that came for a slot already mixed (moved, not lost)
    skipped_silence: int = 0  # pause blocks the timeline did not need


@dataclass
class _Lane:
    next_slot: int  # the slot of the lane's next block
    blocks: deque[bytes] = field(default_factory=deque)  # slots next_slot - len .. next_slot - 1


class Mixer:
    """One mixed stream from per-member blocks; see the module docstring.

    `add` and `finish` return the mixed blocks that are ready, in order. Not thread safe: one
    caller (the listener thread, through `MixSink`).
    """

    def __init__(self, *, latency: float = 0.5) -> None:
        if not latency >= 0:
            raise ValueError(f"latency must be >= 0 seconds, not {latency!r}")
        self._latency = latency
        self._origin: float | None = None  # when slot 0 began
        self._head = 0  # the next slot to mix
        self._lanes: dict[int, _Lane] = {}
        self.stats = MixerStats()

    def add(self, member: int, block: bytes, now: float) -> list[bytes]:
        """Put `member`'s next block on the timeline; returns the blocks mixed by `now`."""
        if len(block) != BLOCK:
            raise ValueError(f"a block is {BLOCK} bytes (20 ms of 48 kHz stereo s16le)")
        if self._origin is None:
            self._origin = now
        out = self.ready(now)  # the timeline first moves to `now`
        wall = self._slot(now)
        lane = self._lanes.get(member)
        if lane is None:
            lane = self._lanes[member] = _Lane(wall)
            self.stats.members += 1
        silent = not any(block)
        if lane.next_slot < self._head:  # the mix has passed this lane's position
            if silent:
                lane.next_slot += 1
                self.stats.skipped_silence += 1
                return out
            lane.next_slot = wall
            self.stats.moved_late += 1
        elif silent and lane.next_slot > wall + _SLACK_SLOTS:
            self.stats.skipped_silence += 1
            return out
        lane.blocks.append(block)
        lane.next_slot += 1
        return out + self.ready(now)

    def ready(self, now: float) -> list[bytes]:
        """The blocks whose slot ended at least ``latency`` seconds before `now`."""
        if self._origin is None:
            return []
        return self._mix_until(self._slot(now - self._latency))

    def finish(self) -> list[bytes]:
        """Everything still on the timeline, mixed (the end of the stream)."""
        end = max((lane.next_slot for lane in self._lanes.values()), default=self._head)
        return self._mix_until(end)

    def _slot(self, t: float) -> int:
        assert self._origin is not None
        return math.floor((t - self._origin) / BLOCK_SECONDS + 1e-9)

    def _mix_until(self, end: int) -> list[bytes]:
        out: list[bytes] = []
        while self._head < end:
            here = []
            for lane in self._lanes.values():
                if lane.blocks and lane.next_slot - len(lane.blocks) == self._head:
                    here.append(lane.blocks.popleft())
            out.append(mix(here) if here else bytes(BLOCK))
            self._head += 1
        self.stats.blocks += len(out)
        return out

"""One speaker's jitter buffer: packets in arrival order in, a gapless timeline out.

Packets arrive late, out of order, twice or never (``receive.md`` §5). The buffer puts them
back in RTP sequence order (16-bit, wrapping) and releases, in order:

- `Frame`: the next packet, to decode;
- `Gap`: a packet that is declared lost, once `delay` later packets are waiting behind it (or at
  `flush`); ``fec`` is the payload of the packet right after it when that one is there (decode
  its in-band FEC), else None (packet-loss concealment). ``samples`` is the duration it stood
  for (that of the packet before it);
- `Silence`: the sender paused: a packet's timestamp is ahead of where the previous one ended
  with no sequence gap; its ``samples`` are silence (at most `MAX_SILENCE`; more is clipped);
- after more than `MAX_GAP` missing packets in a row (a sender that restarted its sequence), the
  buffer resynchronises on the next packet instead of emitting a gap for each.

Late packets (behind what was released) and duplicates are dropped and counted. Pure: the
caller decodes, and calls `flush` when the speaker went quiet (no packet for ~200 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_GAP", "MAX_SILENCE", "Frame", "Gap", "JitterBuffer", "JitterStats", "Silence"]

#: Missing packets in a row that are still gaps (concealed); beyond, a resync (silence).
MAX_GAP: Final = 10
#: The longest pause written as silence (samples at 48 kHz): 60 s.
MAX_SILENCE: Final = 60 * 48000


@dataclass(frozen=True, slots=True)
class Frame:
    sequence: int
    timestamp: int
    payload: bytes
    samples: int


@dataclass(frozen=True, slots=True)
class Gap:
    sequence: int
    samples: int
    fec: bytes | None = None


@dataclass(frozen=True, slots=True)
class Silence:
    samples: int


Output = Frame | Gap | Silence


def _seq_diff(a: int, b: int) -> int:
    """a - b in 16-bit sequence space, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def _ts_diff(a: int, b: int) -> int:
    """a - b in 32-bit timestamp space."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


@dataclass(slots=True)
class JitterStats:
    frames: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    resyncs: int = 0
    silence_samples: int = 0


@dataclass(slots=True)
class _Packet:
    timestamp: int
    payload: bytes
    samples: int


class JitterBuffer:
    """See the module docstring. Not thread-safe: one owner."""

    def __init__(self, *, delay: int = 4, max_gap: int = MAX_GAP) -> None:
        if delay < 1:
            raise ValueError("delay must be at least 1 packet")
        self._delay = delay
        self._max_gap = max_gap
        self._packets: dict[int, _Packet] = {}
        self._next_seq: int | None = None  # the next sequence to release
        self._next_ts = 0  # where the released audio ends, in RTP timestamp units
        self._last_samples = 960
        self.stats = JitterStats()

    @property
    def waiting(self) -> int:
        return len(self._packets)

    def push(self, sequence: int, timestamp: int, payload: bytes, samples: int) -> list[Output]:
        """A packet arrived; return what can be released now."""
        if self._next_seq is None:
            self._next_seq, self._next_ts = sequence, timestamp
        ahead = _seq_diff(sequence, self._next_seq)
        if ahead < 0:
            self.stats.late += 1
            return []
        if sequence in self._packets:
            self.stats.duplicates += 1
            return []
        self._packets[sequence] = _Packet(timestamp, payload, samples)
        return self._release(final=False)

    def flush(self) -> list[Output]:
        """The speaker went quiet: release everything, declaring what is missing lost. The
        timeline goes on: the next talk spurt's timestamp says how long the pause was."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> list[Output]:
        out: list[Output] = []
        packets = self._packets
        while packets:
            assert self._next_seq is not None
            seq = self._next_seq
            packet = packets.pop(seq, None)
            if packet is not None:
                pause = _ts_diff(packet.timestamp, self._next_ts)
                if pause > 0:
                    silence = min(pause, MAX_SILENCE)
                    self.stats.silence_samples += silence
                    out.append(Silence(silence))
                out.append(Frame(seq, packet.timestamp, packet.payload, packet.samples))
                self.stats.frames += 1
                self._last_samples = packet.samples
                self._next_seq = (seq + 1) & 0xFFFF
                self._next_ts = (packet.timestamp + packet.samples) & 0xFFFFFFFF
                continue
            if not final and len(packets) < self._delay:
                break  # it may still come
            nearest = min(packets, key=lambda s: _seq_diff(s, seq))
            if _seq_diff(nearest, seq) > self._max_gap:  # a restart, not a loss: resync
                self.stats.resyncs += 1
                self._next_seq = nearest
                continue
            after = packets.get((seq + 1) & 0xFFFF)
            out.append(Gap(seq, self._last_samples, after.payload if after else None))
            self.stats.lost += 1
            self._next_seq = (seq + 1) & 0xFFFF
            self._next_ts = (self._next_ts + self._last_samples) & 0xFFFFFFFF
        return out

"""Listening: other members' packets from ``opus_recv`` to per-user PCM, on a ``dv-listener``
thread started by `Connection.listen`.

Per user (``receive.md`` §5): a `core.jitter.JitterBuffer` puts packets back in order; each
`Frame` is decoded, a `Gap` recovered from the next packet's in-band FEC or concealed, a
`Silence` written as zeros (a pause); a user with no packet for `QUIET` seconds is flushed (the
rest of the buffer decoded); a user idle for `IDLE_STATE` seconds is forgotten. A user's packets
from a new SSRC (they left and came back: op 13 then op 5/11, or Discord gave them another one)
end their state too, and a new decoder and buffer start. When a forgotten or reset user speaks
again, the time since their last packet is written as silence first, so each user's stream keeps
its wall-clock timeline however long the absence. The sink gets
``sink.write(user_id, pcm)`` with 3840-byte blocks (20 ms of 48 kHz stereo s16le; the last one of
a user padded with silence at the end) and ``sink.close()`` once, when listening stops.

A packet libopus rejects is counted (`ListenStats.bad_packets`), that user's decoder starts
over and the next packet goes on: a bad packet never ends the thread. An exception from the
sink does: it is the listener's error (`Listener.wait`), and the sink is still closed.

Thread safety: `stop`, `stats` and `wait` from any thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Final, Protocol

from discord_voice.clock import Clock, Signal
from discord_voice.core.frames import frame_samples
from discord_voice.core.jitter import Frame, Gap, JitterBuffer, Output, Silence
from discord_voice.core.receive_flow import VoicePacket
from discord_voice.errors import InvalidFrame, OpusError
from discord_voice.opus import Decoder

__all__ = ["BLOCK", "IDLE_STATE", "QUIET", "ListenStats", "Listener", "Sink"]

log = logging.getLogger(__name__)

#: Bytes in one block given to the sink: 20 ms of 48 kHz stereo s16le.
BLOCK: Final = 3840
#: A user with no packet for this long is flushed (the end of a talk spurt).
QUIET: Final = 0.2
#: A user with no packet for this long is forgotten (decoder and buffer dropped).
IDLE_STATE: Final = 60.0
#: How long one wait for a packet lasts before the thread looks at time and requests again.
POLL: Final = 0.05


class Sink(Protocol):
    """Where decoded audio goes (`WaveSink`, `MixSink`, your own)."""

    def write(self, user_id: int, pcm: bytes) -> None:
        """20 ms (3840 bytes) of `user_id`'s 48 kHz stereo s16le PCM, in order."""
        ...

    def close(self) -> None:
        """Listening stopped: nothing more will be written."""
        ...


class PacketSource(Protocol):
    def get(self, block: bool = True, timeout: float | None = None) -> VoicePacket: ...


@dataclass
class ListenStats:
    blocks: int = 0  # blocks written to the sink
    concealed: int = 0  # lost packets made up (FEC or concealment)
    recovered_by_fec: int = 0
    silence_samples: int = 0  # pauses written as silence
    bad_packets: int = 0  # packets libopus rejected (the decoder was reset)
    late_or_duplicate: int = 0
    resets: int = 0  # a user's state started over for their new SSRC
    forgotten: int = 0  # idle users' state dropped after IDLE_STATE seconds
    users: dict[int, int] = field(default_factory=dict)  # user -> blocks written


@dataclass
class _User:
    ssrc: int
    buffer: JitterBuffer
    decoder: Decoder
    heard: float  # when their last packet came
    heard_samples: int = 0  # how long it was (its audio ends 48 kHz samples after `heard`)
    pending: bytearray = field(default_factory=bytearray)  # PCM not yet a whole block
    flushed: bool = True


class Listener:
    """Decodes ``opus_recv`` into `sink` on a ``dv-listener:<name>`` thread (see the module
    docstring); made and started by `Connection.listen`."""

    def __init__(self, packets: PacketSource, sink: Sink, clock: Clock, *, name: str) -> None:
        self._packets = packets
        self._sink = sink
        self._clock = clock
        self._stop = Signal()
        self._users: dict[int, _User] = {}  # the listener thread's
        self._last_heard: dict[int, float] = {}  # users whose state ended: their audio's end
        self._lock = threading.Lock()  # guards `_stats` for readers
        self._stats = ListenStats()
        self._error: BaseException | None = None
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"dv-listener:{name}")

    def start(self) -> Listener:
        self.thread.start()
        return self

    @property
    def sink(self) -> Sink:
        return self._sink

    def stats(self) -> ListenStats:
        with self._lock:
            s = self._stats
            return ListenStats(
                s.blocks,
                s.concealed,
                s.recovered_by_fec,
                s.silence_samples,
                s.bad_packets,
                s.late_or_duplicate,
                s.resets,
                s.forgotten,
                dict(s.users),
            )

    def stop(self) -> None:
        """Flush every user and close the sink (on the listener thread); returns at once."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once stopped (raising the sink's error, if it failed); False on timeout."""
        if not self._done.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return True

    # -- the listener thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    packet = self._packets.get(timeout=POLL)
                except queue.Empty:
                    packet = None
                now = self._clock.monotonic()
                if packet is not None:
                    self._take(packet, now)
                self._quiet(now)
            while True:  # what was received before the stop is part of what was said
                try:
                    packet = self._packets.get(block=False)
                except queue.Empty:
                    break
                self._take(packet, self._clock.monotonic())
            for user_id in list(self._users):
                self._flush(user_id, final=True)
        except BaseException as exc:  # noqa: BLE001 - the sink failed: reported by wait()
            self._error = exc
            log.error("listener %s failed: %r", self.thread.name, exc)
        finally:
            try:
                self._sink.close()
            except Exception as exc:  # noqa: BLE001 - reported by wait(), never only logged
                self._error = self._error or exc
            self._done.set()

    def _take(self, packet: VoicePacket, now: float) -> None:
        user = self._users.get(packet.user_id)
        if user is not None and user.ssrc != packet.ssrc:
            self._end(packet.user_id)
            with self._lock:
                self._stats.resets += 1
            user = None
        if user is None:
            user = self._users[packet.user_id] = self._start(packet, now)
        user.heard = now
        user.flushed = False
        try:
            samples = frame_samples(packet.opus)
        except InvalidFrame:
            self._count_bad(user)
            return
        user.heard_samples = samples
        before = user.buffer.stats.late + user.buffer.stats.duplicates
        out = user.buffer.push(packet.sequence, packet.timestamp, packet.opus, samples)
        if user.buffer.stats.late + user.buffer.stats.duplicates != before:
            with self._lock:
                self._stats.late_or_duplicate += 1
        self._play(packet.user_id, user, out)

    def _quiet(self, now: float) -> None:
        for user_id, user in list(self._users.items()):
            if not user.flushed and now - user.heard >= QUIET:
                self._flush(user_id, final=False)
            elif now - user.heard >= IDLE_STATE:
                self._end(user_id)
                with self._lock:
                    self._stats.forgotten += 1

    def _start(self, packet: VoicePacket, now: float) -> _User:
        """A user's new state; if an earlier one ended, their absence is written as silence."""
        user = _User(packet.ssrc, JitterBuffer(), Decoder(), now)
        last = self._last_heard.pop(packet.user_id, None)
        if last is not None:
            self._play(packet.user_id, user, [Silence(max(0, round((now - last) * 50)) * 960)])
        return user

    def _end(self, user_id: int) -> None:
        """Decode the rest of a user's audio (the last block padded) and drop their state."""
        self._flush(user_id, final=True)
        user = self._users.pop(user_id)
        self._last_heard[user_id] = user.heard + user.heard_samples / 48000

    def _flush(self, user_id: int, *, final: bool) -> None:
        user = self._users[user_id]
        self._play(user_id, user, user.buffer.flush())
        user.flushed = True
        if final and user.pending:  # the very end: a whole block, padded with silence
            user.pending.extend(bytes(BLOCK - len(user.pending)))
            self._emit(user_id, user)

    def _play(self, user_id: int, user: _User, out: list[Output]) -> None:
        for item in out:
            if isinstance(item, Silence):
                with self._lock:
                    self._stats.silence_samples += item.samples
                left = item.samples
                while left:  # a second at a time: a long absence is not one huge buffer
                    step = min(left, 48000)
                    user.pending.extend(bytes(step * 4))
                    left -= step
                    self._emit(user_id, user)
            else:
                user.pending.extend(self._decode(user, item))
                self._emit(user_id, user)

    def _decode(self, user: _User, item: Frame | Gap) -> bytes:
        try:
            if isinstance(item, Frame):
                return user.decoder.decode(item.payload)
            with self._lock:
                self._stats.concealed += 1
                if item.fec is not None:
                    self._stats.recovered_by_fec += 1
            if item.fec is not None:
                return user.decoder.decode_fec(item.fec, item.samples)
            return user.decoder.conceal(item.samples)
        except OpusError:
            self._count_bad(user)
            samples = item.samples
            return bytes(samples * 4)  # keep the timeline: silence where it could not decode

    def _count_bad(self, user: _User) -> None:
        user.decoder.reset()
        with self._lock:
            self._stats.bad_packets += 1

    def _emit(self, user_id: int, user: _User) -> None:
        pending = user.pending
        whole = len(pending) - len(pending) % BLOCK
        for start in range(0, whole, BLOCK):
            self._sink.write(user_id, bytes(pending[start : start + BLOCK]))
        if whole:
            del pending[:whole]
            with self._lock:
                self._stats.blocks += whole // BLOCK
                self._stats.users[user_id] = self._stats.users.get(user_id, 0) + whole // BLOCK

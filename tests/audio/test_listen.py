"""Listener in memory: packets from a plain queue, decoded into a recording sink."""

from __future__ import annotations

import queue
import threading

from discord_voice.audio.listen import BLOCK, Listener
from discord_voice.clock import Signal, SystemClock
from discord_voice.core.receive_flow import VoicePacket
from discord_voice.opus import encode_frames, tone
from tests.timeouts import LONG


class Recording:
    def __init__(self) -> None:
        self.blocks: list[tuple[int, bytes, str]] = []
        self.closed = 0

    def write(self, user_id: int, pcm: bytes) -> None:
        self.blocks.append((user_id, pcm, threading.current_thread().name))

    def close(self) -> None:
        self.closed += 1


def packets(user: int, frames: list[bytes], start: int = 0) -> list[VoicePacket]:
    return [
        VoicePacket(user, 1000 + user, start + n, 960 * (start + n), frame, 0.0)
        for n, frame in enumerate(frames)
    ]


def run(items: list[VoicePacket], sink: Recording) -> Listener:
    source: queue.Queue[VoicePacket] = queue.Queue()
    for item in items:
        source.put(item)
    listener = Listener(source, sink, SystemClock(), name="g").start()
    listener.stop()  # what was queued is still decoded: a stop flushes what was said
    assert listener.wait(LONG)
    listener.thread.join(LONG)
    return listener


def test_each_users_audio_comes_out_in_blocks_on_the_listener_thread() -> None:
    frames = list(encode_frames(tone(440.0, 0.2)))
    sink = Recording()
    run(packets(1, frames) + packets(2, frames[:5]), sink)
    assert sink.closed == 1
    per_user = {u: [pcm for user, pcm, _ in sink.blocks if user == u] for u in (1, 2)}
    assert len(per_user[1]) == 10 and len(per_user[2]) == 5
    assert all(len(pcm) == BLOCK for _, pcm, _ in sink.blocks)
    assert {name for _, _, name in sink.blocks} == {"dv-listener:g"}


def test_a_bad_packet_is_counted_and_the_timeline_goes_on() -> None:
    frames = list(encode_frames(tone(440.0, 0.2)))
    bad = b"\x03\x00"  # code 3 with no frames: not an Opus packet
    items = packets(1, frames[:4]) + packets(1, [bad], 4) + packets(1, frames[5:], 5)
    sink = Recording()
    listener = run(items, sink)
    stats = listener.stats()
    assert stats.bad_packets == 1
    assert len(sink.blocks) >= 9  # the bad one's place is kept (concealed or silence)
    assert listener.thread.is_alive() is False


def test_a_sink_that_fails_ends_listening_with_its_error_and_is_still_closed() -> None:
    class Failing(Recording):
        def write(self, user_id: int, pcm: bytes) -> None:
            raise OSError("disk full")

    sink = Failing()
    source: queue.Queue[VoicePacket] = queue.Queue()
    for item in packets(1, list(encode_frames(tone(440.0, 0.1)))):
        source.put(item)
    listener = Listener(source, sink, SystemClock(), name="g").start()
    listener.stop()
    try:
        listener.wait(LONG)
    except OSError as exc:
        assert "disk full" in str(exc)
    else:
        raise AssertionError("the sink's error was not raised")
    listener.thread.join(LONG)
    assert sink.closed == 1


class ManualClock:
    """The listener's clock, moved by the test (it only reads it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wait_until(self, deadline: float, signal: Signal) -> bool:
        raise AssertionError("the listener never waits on its clock")


class Timeline:
    """A sink that keeps, per user, which blocks were silent (without keeping the PCM)."""

    def __init__(self) -> None:
        self.silent: dict[int, list[bool]] = {}
        self.closed = 0

    def write(self, user_id: int, pcm: bytes) -> None:
        assert len(pcm) == BLOCK
        self.silent.setdefault(user_id, []).append(not any(pcm))

    def close(self) -> None:
        self.closed += 1


class Stepper:
    """Feeds the listener one packet at a time at chosen clock times, in lockstep with it: the
    next packet goes in once the listener asks for another (so it has handled the last)."""

    def __init__(self, sink: Timeline) -> None:
        self.clock = ManualClock()
        self.inner: queue.Queue[VoicePacket] = queue.Queue()
        self.turn = threading.Condition()
        self.fed = self.taken = self.handled = 0
        self.listener = Listener(self, sink, self.clock, name="g").start()

    def get(self, block: bool = True, timeout: float | None = None) -> VoicePacket:
        with self.turn:
            self.handled = self.taken
            self.turn.notify_all()
        item = self.inner.get(block, timeout)
        with self.turn:
            self.taken += 1
        return item

    def settle(self) -> None:
        with self.turn:
            assert self.turn.wait_for(lambda: self.handled == self.fed, LONG)

    def feed(self, items: list[VoicePacket], at: float) -> None:
        for item in items:
            self.settle()
            self.clock.now = at
            self.fed += 1
            self.inner.put(item)
            at += 0.02
        self.settle()

    def stop(self) -> Listener:
        self.listener.stop()
        assert self.listener.wait(LONG)
        self.listener.thread.join(LONG)
        return self.listener


def test_a_users_new_ssrc_restarts_their_state_and_keeps_their_timeline() -> None:
    frames = list(encode_frames(tone(440.0, 0.2)))
    sink = Timeline()
    steps = Stepper(sink)
    steps.feed(packets(1, frames), at=0.0)  # ssrc 1001, sequences 0-9
    moved = [
        VoicePacket(1, 2001, 40000 + n, 7 + 960 * n, frame, 0.0) for n, frame in enumerate(frames)
    ]
    steps.feed(moved, at=2.0)  # 1.8 s after the last packet: a new session, a new SSRC
    listener = steps.stop()
    stats = listener.stats()
    assert stats.resets == 1 and stats.bad_packets == 0
    timeline = sink.silent[1]
    # 10 blocks of tone, then the absence as silence (90 blocks: 1.8 s), then 10 of tone
    assert len(timeline) == 10 + 90 + 10
    assert not any(timeline[:10]) and all(timeline[10:100]) and not any(timeline[101:])


def test_an_idle_users_state_is_dropped_and_their_absence_kept_as_silence() -> None:
    frames = list(encode_frames(tone(440.0, 0.1)))
    sink = Timeline()
    steps = Stepper(sink)
    steps.feed(packets(1, frames), at=0.0)
    steps.feed(packets(2, frames), at=30.0)
    steps.feed(packets(2, frames, 5), at=70.0)  # user 1 was last heard at 0.08: forgotten now
    assert steps.listener.stats().forgotten == 1
    steps.feed(packets(1, frames, 5), at=90.0)  # back, with the same SSRC and sequence on
    listener = steps.stop()
    assert listener.stats().resets == 0
    timeline = sink.silent[1]
    assert len(timeline) == 5 + round((90.0 - 0.1) * 50) + 5
    assert not any(timeline[:5]) and all(timeline[5:-6]) and not any(timeline[-4:])

"""Listener in memory: packets from a plain queue, decoded into a recording sink."""

from __future__ import annotations

import queue
import threading

from discord_voice.audio.listen import BLOCK, Listener
from discord_voice.clock import SystemClock
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

"""discord_voice.audio.player without a network: `scale_pcm`, `Player`'s checks, `OpusPacketSource`,
and the player's thread against a `PlayTarget` built on the real `OpusQueue`.

The target's ``test-consumer`` thread stands in for the connection's sender: it takes frames
(``take_nowait`` / ``mark_sent``) only as far as the test allows, so what has been "sent" at any
moment is the test's choice, not the scheduler's. Its log holds the frames in the order taken
and a `SILENCE` entry wherever ``stop_speaking`` ran (after the frames queued before it).
"""

from __future__ import annotations

import inspect
import io
import math
import struct
import sys
import threading
from collections.abc import Generator, Iterator

import pytest

from discord_voice import AudioError, OpusPacketSource, OpusSource, PCMSource, Source
from discord_voice._shell.opus_queue import OpusQueue
from discord_voice.audio.player import Player, PlayerState, scale_pcm
from tests.frames import opus_frame
from tests.timeouts import LONG

GUILD = "4242"
MAXSIZE = 4
FRAME_SECONDS = 0.02
SILENCE = "silence"  # the log's entry for a stop_speaking call
VOLUME_ERROR = r"volume must be between 0\.0 and 2\.0"


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def tagged(count: int) -> list[bytes]:
    return [opus_frame(b"frame-%03d" % n) for n in range(count)]


class FakeConnection:
    """A `PlayTarget`: the real `OpusQueue` as ``opus_send``, drained by a ``test-consumer``
    thread that takes only as many frames as `allow` permits."""

    def __init__(self, maxsize: int = MAXSIZE, guild_id: str = GUILD) -> None:
        self.opus_send = OpusQueue(maxsize)
        self.guild_id = guild_id
        self.log: list[bytes | str] = []  # guarded by _cond
        self._cond = threading.Condition()
        self._allowed = 0
        self._closing = False
        self.opus_send.set_consumer(self._notify)
        self._thread = threading.Thread(target=self._consume, name="test-consumer")
        self._thread.start()

    def allow(self, count: int) -> None:
        """Let the consumer take `count` more frames (as they come)."""
        with self._cond:
            self._allowed += count
            self._cond.notify_all()

    def allow_all(self) -> None:
        self.allow(sys.maxsize // 2)

    def wait_logged(self, count: int) -> list[bytes | str]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.log) >= count, LONG), self.log
            return list(self.log)

    def stop_speaking(self, timeout: float = 5.0) -> None:
        """As `Connection.stop_speaking`: what is queued goes first, then the silence."""
        frames = self.opus_send
        with frames.all_tasks_done:
            if not frames.all_tasks_done.wait_for(lambda: frames.unfinished_tasks == 0, timeout):
                raise TimeoutError("the queued frames were not sent")
        with self._cond:
            self.log.append(SILENCE)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(LONG)
        assert not self._thread.is_alive()

    def _notify(self) -> None:  # after every put (OpusQueue.set_consumer)
        with self._cond:
            self._cond.notify_all()

    def _consume(self) -> None:
        frames = self.opus_send
        with self._cond:
            while True:
                self._cond.wait_for(
                    lambda: self._closing or (self._allowed > 0 and frames.qsize() > 0)
                )
                if self._closing:
                    return
                item = frames.take_nowait()
                if item is None:  # withdrawn by the player meanwhile
                    continue
                assert isinstance(item, bytes)
                self._allowed -= 1
                self.log.append(item)
                frames.mark_sent()
                self._cond.notify_all()


class Packets(OpusSource):
    """Given Opus packets; counts its reads (the test waits on them); may fail at one."""

    def __init__(self, packets: list[bytes], *, fail_at: int | None = None) -> None:
        self._packets = packets
        self._fail_at = fail_at
        self._cond = threading.Condition()
        self.reads = 0
        self.closed = 0

    def read(self) -> bytes | None:
        with self._cond:
            index = self.reads
            self.reads += 1
            self._cond.notify_all()
        if index == self._fail_at:
            raise OSError("disk on fire")
        return self._packets[index] if index < len(self._packets) else None

    def wait_reads(self, count: int) -> None:
        """Until read `count` times: the player has put (and counted) every frame before."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.reads >= count, LONG), self.reads

    def close(self) -> None:
        self.closed += 1


class After:
    def __init__(self) -> None:
        self.calls: list[tuple[BaseException | None, str]] = []
        self.done = threading.Event()

    def __call__(self, error: BaseException | None) -> None:
        self.calls.append((error, threading.current_thread().name))
        self.done.set()


@pytest.fixture
def target() -> Iterator[FakeConnection]:
    connection = FakeConnection()
    yield connection
    connection.close()


# --- scale_pcm ------------------------------------------------------------------------------


def test_scale_pcm_at_half_volume_truncates_toward_zero() -> None:
    before = pcm(0, 1, -1, 3, -3, 100, -101, 32767, -32768)
    assert scale_pcm(before, 0.5) == pcm(0, 0, 0, 1, -1, 50, -50, 16383, -16384)


def test_scale_pcm_at_double_volume_clips_to_16_bits() -> None:
    before = pcm(0, 1, -1, 100, -100, 16383, 16384, -16384, -16385, 20000, -20000, 32767, -32768)
    after = pcm(0, 2, -2, 200, -200, 32766, 32767, -32768, -32768, 32767, -32768, 32767, -32768)
    assert scale_pcm(before, 2.0) == after


def test_scale_pcm_at_full_volume_returns_the_same_object() -> None:
    before = pcm(1, -2, 32767, -32768)
    assert scale_pcm(before, 1.0) is before


def test_scale_pcm_at_zero_volume_is_silence_of_the_same_length() -> None:
    before = pcm(1, -1, 12345, -12345, 32767, -32768)
    assert scale_pcm(before, 0.0) == bytes(len(before))


# --- Player: arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("volume", [-0.01, 2.01, -1.0, 3.0, math.inf, math.nan])
def test_player_refuses_a_volume_outside_0_to_2(target: FakeConnection, volume: float) -> None:
    source = Packets([])
    with pytest.raises(ValueError, match=VOLUME_ERROR):
        Player(target, source, volume=volume)
    player = Player(target, source)  # not started: no thread to join
    with pytest.raises(ValueError, match=VOLUME_ERROR):
        player.volume = volume
    assert player.volume == 1.0


@pytest.mark.parametrize("volume", [0.0, 0.5, 1.0, 2.0])
def test_player_accepts_a_volume_from_0_to_2(target: FakeConnection, volume: float) -> None:
    assert Player(target, Packets([]), volume=volume).volume == volume
    player = Player(target, Packets([]))
    player.volume = volume
    assert player.volume == volume


class NeitherOpusNorPCM(Source):
    is_opus = False


@pytest.mark.parametrize("source", [b"\xf8frame", "song.mp3", None, NeitherOpusNorPCM()])
def test_player_refuses_what_is_not_an_opus_or_pcm_source(
    target: FakeConnection, source: object
) -> None:
    with pytest.raises(TypeError, match="expected an OpusSource or a PCMSource"):
        Player(target, source)  # type: ignore[arg-type]


# --- OpusPacketSource -----------------------------------------------------------------------


def test_opus_packet_source_reads_its_iterable_then_none() -> None:
    packets = tagged(3)
    source = OpusPacketSource(packets)
    assert source.is_opus and isinstance(source, OpusSource)
    assert [source.read() for _ in range(5)] == [*packets, None, None]
    assert source.duration is None
    source.close()  # a list has nothing to close
    source.close()


def test_opus_packet_source_duration_is_what_was_given() -> None:
    assert OpusPacketSource(iter(tagged(50)), duration=1.0).duration == 1.0


def test_opus_packet_source_close_closes_a_generator() -> None:
    events: list[str] = []

    def packets() -> Generator[bytes, None, None]:
        try:
            yield from tagged(10)
        finally:
            events.append("closed")

    generator = packets()
    source = OpusPacketSource(generator)
    assert source.read() == tagged(1)[0]
    source.close()
    assert events == ["closed"]
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED
    assert source.read() is None
    source.close()  # idempotent
    assert events == ["closed"]


def test_opus_packet_source_plays_every_packet_in_order(target: FakeConnection) -> None:
    packets = tagged(12)
    after = After()
    target.allow_all()
    player = Player(target, OpusPacketSource(packets, duration=0.24), after=after).start()
    player.wait(LONG)
    assert target.wait_logged(len(packets) + 1) == [*packets, SILENCE]
    assert player.duration == 0.24
    assert player.position == pytest.approx(len(packets) * FRAME_SECONDS)
    player.join(LONG)


# --- Player: the thread ---------------------------------------------------------------------


def test_position_counts_only_the_frames_the_consumer_took(target: FakeConnection) -> None:
    packets = tagged(20)
    source = Packets(packets)
    player = Player(target, source).start()
    source.wait_reads(MAXSIZE + 1)  # the queue is full, the next frame waits to go in
    assert player.position == 0.0
    target.allow(3)
    target.wait_logged(3)
    source.wait_reads(MAXSIZE + 3 + 1)  # refilled: the last frame put has been counted
    assert player.position == pytest.approx(3 * FRAME_SECONDS)
    assert target.opus_send.unfinished_tasks == MAXSIZE  # queued, not sent: not counted
    target.allow_all()
    player.wait(LONG)
    assert player.position == pytest.approx(len(packets) * FRAME_SECONDS)
    assert target.wait_logged(len(packets) + 1) == [*packets, SILENCE]
    player.join(LONG)


def test_pause_withdraws_the_queued_frames_and_resume_requeues_exactly_them_first(
    target: FakeConnection,
) -> None:
    packets = tagged(20)
    source = Packets(packets)
    player = Player(target, source).start()
    target.allow(2)
    target.wait_logged(2)
    source.wait_reads(2 + MAXSIZE + 1)  # frames 2-5 queued, frame 6 in the player's hand
    player.pause()
    assert target.wait_logged(3) == [*packets[:2], SILENCE]  # after the withdrawal
    assert list(target.opus_send.queue) == []
    assert target.opus_send.unfinished_tasks == 0
    assert player.position == pytest.approx(2 * FRAME_SECONDS)  # withdrawn: not sent
    target.allow_all()  # the consumer would take anything now: paused, the player puts nothing
    assert source.reads == 2 + MAXSIZE + 1  # and reads nothing
    player.resume()
    player.wait(LONG)
    log = target.wait_logged(len(packets) + 2)
    # every frame once and in order: the withdrawn ones (and the one in hand) first
    assert log == [*packets[:2], SILENCE, *packets[2:], SILENCE]
    assert source.reads == len(packets) + 1  # none read twice: the held frames were reused
    assert player.state is PlayerState.DONE
    player.join(LONG)


def test_stop_takes_back_the_queued_frames_and_sends_silence(target: FakeConnection) -> None:
    source = Packets(tagged(50))
    after = After()
    player = Player(target, source, after=after).start()
    source.wait_reads(MAXSIZE + 1)
    player.stop()
    player.wait(LONG)  # no error: a stop is not a failure
    assert target.wait_logged(1) == [SILENCE]  # nothing was sent: the queued frames came back
    assert list(target.opus_send.queue) == []
    assert player.position == 0.0
    assert source.closed == 1
    player.join(LONG)
    assert after.calls == [(None, f"dv-player:{GUILD}")]


@pytest.mark.parametrize("ending", ["end", "stop", "error"])
def test_after_is_called_once_on_the_player_thread(target: FakeConnection, ending: str) -> None:
    source = Packets(tagged(30), fail_at=3 if ending == "error" else None)
    after = After()
    player = Player(target, source, after=after).start()
    assert player.thread.name == f"dv-player:{GUILD}"
    if ending == "stop":
        source.wait_reads(1)
        player.stop()
    target.allow_all()
    assert after.done.wait(LONG)
    player.join(LONG)
    assert not player.thread.is_alive()
    assert len(after.calls) == 1
    error, thread_name = after.calls[0]
    assert thread_name == f"dv-player:{GUILD}"
    if ending == "error":
        assert isinstance(error, AudioError) and isinstance(error.__cause__, OSError)
        with pytest.raises(AudioError, match="disk on fire"):
            player.wait(0)
    else:
        assert error is None
        player.wait(0)
    assert source.closed == 1
    assert player.state is PlayerState.DONE


def test_a_pcm_source_is_encoded_in_20_ms_frames_the_last_one_padded(
    target: FakeConnection,
) -> None:
    seconds = 0.09  # four frames and a half
    source = PCMSource(io.BytesIO(bytes(round(seconds * 192000))), duration=seconds)
    target.allow_all()
    player = Player(target, source, volume=0.5).start()
    player.wait(LONG)
    log = target.wait_logged(6)
    assert len(log) == 6 and log[-1] == SILENCE  # 5 frames of 20 ms, then the silence
    assert all(isinstance(frame, bytes) for frame in log[:-1])
    assert player.position == pytest.approx(5 * FRAME_SECONDS)  # the padding was sent too
    assert player.duration == seconds
    player.join(LONG)


def test_wait_returns_false_while_playing_and_never_raises_timeout_error() -> None:
    # a TimeoutError from wait() could not be told from the player's own failure (a
    # HeartbeatTimeout is a TimeoutError too)
    target = FakeConnection()
    player = Player(target, Packets(tagged(3))).start()
    try:
        assert player.wait(0) is False  # the consumer takes nothing yet: still playing
        target.allow_all()
        assert player.wait(LONG) is True
        assert player.wait_for_state(PlayerState.DONE, 0)
    finally:
        player.stop()
        target.allow_all()
        player.join(LONG)
        target.close()

"""Connection.play end to end: sources played into the fake Discord, checked on what it received.

The fake decrypts every packet (transport cipher, then DAVE with its libdave member), so the
frames compared here are what another member of the call would hear.
"""

from __future__ import annotations

import io
import math
import threading
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from discord_voice import (
    AlreadyPlaying,
    AudioError,
    ConnectionClosed,
    FFmpegSource,
    OpusSource,
    PCMSource,
    PlayerState,
)
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP
from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing import FakeDiscord
from discord_voice.testing.records import ReceivedFrame
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, World
from tests.timeouts import LONG


class Frames(OpusSource):
    """An Opus source of given packets; can fail after some, or block until released."""

    def __init__(
        self,
        packets: list[bytes],
        *,
        fail_at: int | None = None,
        duration: float | None = None,
    ) -> None:
        self.packets = packets
        self.fail_at = fail_at
        self.index = 0
        self.closed = 0
        self.reads = 0
        self._duration = duration

    @property
    def duration(self) -> float | None:
        return self._duration

    def read(self) -> bytes | None:
        self.reads += 1
        if self.fail_at is not None and self.index == self.fail_at:
            raise OSError("disk on fire")
        if self.index >= len(self.packets):
            return None
        self.index += 1
        return self.packets[self.index - 1]

    def close(self) -> None:
        self.closed += 1


def tagged(count: int) -> list[bytes]:
    return [opus_frame(b"play-%05d" % n) for n in range(count)]


def speaking_flags(fake: FakeDiscord) -> list[object]:
    return [
        m.data["d"]["speaking"]
        for m in fake.voice_messages
        if m.direction == "client" and m.op == VoiceOp.SPEAKING and m.data is not None
    ]


def audio(frames: list[ReceivedFrame]) -> list[bytes]:
    return [f.opus for f in frames]


class After:
    def __init__(self) -> None:
        self.calls: list[tuple[BaseException | None, str]] = []
        self.done = threading.Event()

    def __call__(self, error: BaseException | None) -> None:
        self.calls.append((error, threading.current_thread().name))
        self.done.set()


def test_a_source_is_played_to_the_end_then_silence_and_speaking_off(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    packets = tagged(12)
    source = Frames(packets, duration=0.24)
    after = After()
    player = conn.play(source, after=after)
    assert player.duration == 0.24
    player.wait(LONG)
    total = len(packets) + SILENCE_FRAMES_ON_STOP
    received = audio(world.fake.wait_for_frames(total, LONG, ssrc=conn.ssrc))
    assert received == packets + [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
    assert world.fake.wait_until(lambda f: speaking_flags(f)[-1:] == [0], LONG)
    assert speaking_flags(world.fake)[0] != 0
    assert after.calls == [(None, f"dv-player:{GUILD}")]
    assert source.closed == 1
    assert player.state is PlayerState.DONE
    assert player.position == pytest.approx(0.24)
    assert all(f.dave == "decrypted" for f in world.fake.frames(conn.ssrc)[: len(packets)])
    conn.disconnect()


def test_pause_takes_back_the_queued_frames_and_resume_goes_on_where_it_stopped(
    world: World,
) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    packets = tagged(60)
    player = conn.play(Frames(packets))
    world.fake.wait_for_frames(5, LONG, ssrc=conn.ssrc)
    player.pause()
    # paused once Speaking 0 went out: the silence after the frames already in flight
    assert world.fake.wait_until(lambda f: 0 in speaking_flags(f), LONG)
    assert player.wait_for_state(PlayerState.PAUSED, LONG)
    sent_before = player.position
    player.resume()
    player.wait(LONG)
    total = len(packets) + 2 * SILENCE_FRAMES_ON_STOP
    received = audio(world.fake.wait_for_frames(total, LONG, ssrc=conn.ssrc))
    silence = [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
    # every frame once, in order, with one run of silence where the pause was: nothing was
    # sent during the pause, nothing lost or repeated at the resume
    cut = received.index(OPUS_SILENCE_FRAME)
    assert received == packets[:cut] + silence + packets[cut:] + silence
    assert 5 <= cut < len(packets)
    assert sent_before == pytest.approx(cut * 0.02)
    assert world.fake.wait_until(lambda f: speaking_flags(f) == [1, 0, 1, 0], LONG)
    conn.disconnect()


def test_stop_ends_at_once_with_silence_and_no_error(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    packets = tagged(500)  # 10 s
    source = Frames(packets)
    after = After()
    player = conn.play(source, after=after)
    world.fake.wait_for_frames(3, LONG, ssrc=conn.ssrc)
    player.stop()
    player.wait(LONG)
    assert after.calls == [(None, f"dv-player:{GUILD}")]
    assert source.closed == 1
    silence = [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
    assert world.fake.wait_until(lambda f: audio(f.frames(conn.ssrc))[-5:] == silence, LONG)
    received = audio(world.fake.frames(conn.ssrc))
    played = received[:-SILENCE_FRAMES_ON_STOP]
    assert played == packets[: len(played)]
    assert received[len(played) :] == [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
    assert len(played) < 100  # the queued frames were taken back, not played out
    assert world.fake.wait_until(lambda f: speaking_flags(f)[-1:] == [0], LONG)
    assert list(conn.opus_send.queue) == []
    conn.disconnect()


def test_play_while_playing_is_refused_until_the_player_ends(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    first = conn.play(Frames(tagged(500)))
    second = Frames(tagged(1))
    with pytest.raises(AlreadyPlaying, match="already playing"):
        conn.play(second)
    assert second.reads == 0 and second.closed == 0  # not touched: still the caller's
    first.stop()
    first.wait(LONG)
    conn.play(second).wait(LONG)
    assert conn.player is not first
    conn.disconnect()


def test_a_failing_source_ends_the_player_with_a_typed_error_and_the_connection_lives(
    world: World,
) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    packets = tagged(8)
    after = After()
    player = conn.play(Frames(packets, fail_at=4), after=after)
    with pytest.raises(AudioError, match="disk on fire") as info:
        player.wait(LONG)
    assert isinstance(info.value.__cause__, OSError)
    assert after.calls == [(info.value, f"dv-player:{GUILD}")]
    total = 4 + SILENCE_FRAMES_ON_STOP  # what was read before the failure, then silence
    received = audio(world.fake.wait_for_frames(total, LONG, ssrc=conn.ssrc))
    assert received == packets[:4] + [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
    conn.play(Frames(packets[:2])).wait(LONG)  # the connection is fine
    conn.disconnect()


def test_disconnect_while_playing_stops_the_player_without_an_error(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    after = After()
    source = Frames(tagged(500))
    player = conn.play(source, after=after)
    world.fake.wait_for_frames(2, LONG, ssrc=conn.ssrc)
    conn.disconnect()  # joins the player thread too (the suite's fixture checks none is left)
    assert not player.thread.is_alive()
    player.wait(0)
    assert after.calls == [(None, f"dv-player:{GUILD}")]
    assert source.closed == 1


def test_a_connection_that_fails_while_paused_ends_the_player_with_its_error(
    world: World,
) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    after = After()
    player = conn.play(Frames(tagged(500)), after=after)
    world.fake.wait_for_frames(2, LONG, ssrc=conn.ssrc)
    player.pause()
    assert world.fake.wait_until(lambda f: 0 in speaking_flags(f), LONG)
    world.fake.close_voice(4004, "authentication failed")  # fatal: the connection ends
    with pytest.raises(ConnectionClosed):
        player.wait(LONG)
    assert after.done.is_set() and isinstance(after.calls[0][0], ConnectionClosed)
    conn.disconnect()


def write_wav(path: Path, seconds: float, rate: int, channels: int, frequency: float) -> None:
    count = round(seconds * rate)
    t = np.arange(count) / rate
    mono = (0.4 * 32767 * np.sin(2 * math.pi * frequency * t)).astype("<i2")
    samples = np.repeat(mono, channels) if channels > 1 else mono
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def decode(packets: list[bytes]) -> np.ndarray:
    """Mono float samples at 48 kHz, decoded by FFmpeg's own Opus decoder (not libopus)."""
    decoder = av.CodecContext.create("opus", "r")
    chunks = []
    for packet in packets:
        for frame in decoder.decode(av.Packet(packet)):
            chunks.append(frame.to_ndarray().reshape(-1, frame.samples)[0])
    return np.concatenate(chunks).astype(np.float64)


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * 48000 / len(samples))


def test_a_wav_played_through_ffmpeg_arrives_as_its_tone_and_length(
    world: World, tmp_path: Path
) -> None:
    path = tmp_path / "tone.wav"
    write_wav(path, 1.0, 44100, 1, 440.0)  # not Discord's format: FFmpeg resamples it
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    source = FFmpegSource(path)
    player = conn.play(source)
    player.wait(LONG)
    assert player.duration == pytest.approx(1.0, abs=0.01)
    # every packet sent has arrived (the player returns once the last one left)
    frames = world.fake.wait_for_frames(conn.stats.frames_sent, LONG, ssrc=conn.ssrc)
    assert all(f.dave == "decrypted" for f in frames[:-SILENCE_FRAMES_ON_STOP])
    packets = audio(frames)[:-SILENCE_FRAMES_ON_STOP]
    assert audio(frames)[-SILENCE_FRAMES_ON_STOP:] == [OPUS_SILENCE_FRAME] * 5
    samples = decode(packets)
    assert len(samples) / 48000 == pytest.approx(1.0, abs=0.06)
    assert dominant_frequency(samples) == pytest.approx(440.0, abs=3.0)
    assert player.position == pytest.approx(len(packets) * 0.02)
    conn.disconnect()


def test_volume_scales_pcm_before_encoding(world: World) -> None:
    pcm = b"".join(
        (0.4 * 32767 * np.sin(2 * math.pi * 440 * (np.arange(960) + 960 * n) / 48000))
        .astype("<i2")
        .repeat(2)
        .tobytes()
        for n in range(25)
    )
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    levels = []
    for volume in (1.0, 0.5):
        before = len(world.fake.frames(conn.ssrc))
        conn.play(PCMSource(io.BytesIO(pcm)), volume=volume).wait(LONG)
        arrived = world.fake.wait_for_frames(conn.stats.frames_sent, LONG, ssrc=conn.ssrc)
        packets = audio(arrived[before:])[:-SILENCE_FRAMES_ON_STOP]
        samples = decode(packets)[4800:]  # past the encoder's start
        levels.append(float(np.sqrt(np.mean(samples**2))))
    assert levels[1] / levels[0] == pytest.approx(0.5, abs=0.05)
    conn.disconnect()


def test_after_may_start_the_next_track(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    first, second = tagged(3), [opus_frame(b"next %d" % n) for n in range(3)]
    errors: list[BaseException | None] = []
    done = threading.Event()

    def after(error: BaseException | None) -> None:  # on the ending player's thread
        errors.append(error)
        if len(errors) == 1:
            conn.play(Frames(second), after=after)
        else:
            done.set()

    conn.play(Frames(first), after=after)
    assert done.wait(LONG)
    assert errors == [None, None]
    silence = [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
    total = 2 * (3 + SILENCE_FRAMES_ON_STOP)
    received = audio(world.fake.wait_for_frames(total, LONG, ssrc=conn.ssrc))
    assert received == first + silence + second + silence
    conn.disconnect()  # joins both players' threads (the suite's fixture checks)

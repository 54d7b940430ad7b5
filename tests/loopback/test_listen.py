"""conn.listen(sink): a fake member's tone, with loss and a pause, decoded into WaveSink files."""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from discord_voice import LocalProtocolError, MixSink, MultiSink, WaveSink
from discord_voice.opus import encode_frames, tone
from tests.loopback.conftest import CHANNEL, GUILD, World
from tests.test_opus import peak_frequency
from tests.timeouts import LONG


class Counting(WaveSink):
    """A WaveSink a test can wait on (no sleeping)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.blocks = 0
        self.written = threading.Condition()
        self.closed_count = 0

    def write(self, user_id: int, pcm: bytes) -> None:
        assert len(pcm) == 3840 and threading.current_thread().name.startswith("dv-listener:")
        super().write(user_id, pcm)
        with self.written:
            self.blocks += 1
            self.written.notify_all()

    def close(self) -> None:
        self.closed_count += 1
        super().close()

    def wait_blocks(self, count: int) -> None:
        with self.written:
            assert self.written.wait_for(lambda: self.blocks >= count, LONG), self.blocks


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 48000)
        data = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    return len(data), data[:, 0].astype(np.float64)


def test_a_tone_with_loss_and_a_pause_comes_out_at_its_frequency_and_length(
    world: World, tmp_path: Path
) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)
    sink = Counting(tmp_path / "rec")
    listener = conn.listen(sink)
    frames = list(encode_frames(tone(440.0, 1.0)))  # 50 packets of 20 ms
    sent = speaker.send(frames[:25], loss=0.05, seed=3)
    speaker.skip(0.5)  # a pause: the timestamp jumps, the sequence does not
    sent += speaker.send(frames[25:], loss=0.05, seed=4)
    lost = [p.sequence for p in sent if p.dropped]
    assert lost and not sent[0].dropped and not sent[-1].dropped  # seeds chosen so
    sink.wait_blocks(70)
    conn.stop_listening()
    assert sink.closed_count == 1
    samples, left = read_wav(sink.paths()[speaker.user_id])
    assert samples / 48000 == pytest.approx(1.5, abs=0.06)  # the pause is in the file
    assert abs(peak_frequency(left[:24000]) - 440.0) <= 3.0
    pause = left[int(0.55 * 48000) : int(0.95 * 48000)]
    assert np.max(np.abs(pause)) == 0  # silence, not concealment noise
    stats = listener.stats()
    assert stats.concealed == len(lost) and stats.bad_packets == 0
    assert stats.silence_samples >= 0.45 * 48000
    conn.disconnect()


def test_two_members_mixed_into_one_file_keep_both_tones(world: World, tmp_path: Path) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    low, high = world.fake.add_speaker(), world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)
    each = Counting(tmp_path / "each")
    mixed = MixSink(tmp_path / "mix.wav")
    conn.listen(MultiSink(each, mixed))
    low_frames = list(encode_frames(tone(440.0, 1.0)))
    high_frames = list(encode_frames(tone(1000.0, 1.0)))
    for start in range(0, 50, 5):  # both speak at once, 100 ms at a time
        low.send(low_frames[start : start + 5])
        high.send(high_frames[start : start + 5])
    each.wait_blocks(100)
    conn.stop_listening()
    assert set(each.paths()) == {low.user_id, high.user_id}
    samples, left = read_wav(tmp_path / "mix.wav")
    assert samples / 48000 == pytest.approx(1.0, abs=0.1)
    spectrum = np.abs(np.fft.rfft(left[:48000] * np.hanning(len(left[:48000]))))
    freqs = np.fft.rfftfreq(len(left[:48000]), 1 / 48000)
    low_band, high_band = (freqs > 200) & (freqs < 700), (freqs > 700) & (freqs < 2000)
    assert freqs[low_band][np.argmax(spectrum[low_band])] == pytest.approx(440.0, abs=3)
    assert freqs[high_band][np.argmax(spectrum[high_band])] == pytest.approx(1000.0, abs=3)
    peaks = spectrum[low_band].max(), spectrum[high_band].max()
    assert min(peaks) > 0.3 * max(peaks)  # both members are in the mix, neither drowned
    assert mixed.stats().members == 2 and mixed.stats().moved_late == 0
    conn.disconnect()


def test_listening_needs_receive_and_once_at_a_time(world: World, tmp_path: Path) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    with pytest.raises(LocalProtocolError, match="receive=True"):
        conn.listen(WaveSink(tmp_path))
    conn.disconnect()


def test_disconnect_stops_listening_and_closes_the_sink(world: World, tmp_path: Path) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    sink = Counting(tmp_path)
    conn.listen(sink)
    with pytest.raises(LocalProtocolError, match="already listening"):
        conn.listen(WaveSink(tmp_path / "other"))
    conn.disconnect()  # joins dv-listener (the suite's fixture checks no thread is left)
    assert sink.closed_count == 1

"""The mix's timeline (``audio/mixer.py``) in memory, and `MixSink` / `MultiSink`."""

from __future__ import annotations

import wave
from array import array
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice import MixSink, MultiSink, WaveSink
from discord_voice.audio.mixer import BLOCK, Mixer, mix

SILENCE = bytes(BLOCK)


def block(value: int) -> bytes:
    """A block whose every sample is `value`."""
    return array("h", [value] * (BLOCK // 2)).tobytes()


def values(blocks: list[bytes]) -> list[int]:
    """The sample value of each block (each was made by `block` or summed from such)."""
    out = []
    for b in blocks:
        samples = array("h", b)
        assert len(set(samples)) == 1
        out.append(samples[0])
    return out


class Steps:
    """Feeds a Mixer at chosen times and keeps everything it gave out."""

    def __init__(self, latency: float = 0.5) -> None:
        self.mixer = Mixer(latency=latency)
        self.out: list[bytes] = []

    def add(self, member: int, b: bytes, now: float) -> None:
        self.out += self.mixer.add(member, b, now)

    def finish(self) -> list[int]:
        self.out += self.mixer.finish()
        return values(self.out)


def test_simultaneous_members_are_summed_and_clipped() -> None:
    assert values([mix([block(1000), block(-300), block(7)])]) == [707]
    assert values([mix([block(30000), block(30000)])]) == [32767]
    assert values([mix([block(-30000), block(-30000), block(-5)])]) == [-32768]
    s = Steps()
    for n in range(3):
        s.add(1, block(100 + n), n * 0.02)
        s.add(2, block(10), n * 0.02)
    assert s.finish() == [110, 111, 112]


def test_a_member_is_placed_where_it_was_first_heard() -> None:
    s = Steps()
    s.add(1, block(5), 0.0)
    s.add(2, block(9), 1.0)  # one second later: slot 50
    s.add(2, block(9), 1.02)
    got = s.finish()
    assert got == [5] + [0] * 49 + [9, 9]


def test_blocks_are_mixed_only_once_their_latency_has_passed() -> None:
    mixer = Mixer(latency=0.5)
    assert mixer.add(1, block(1), 0.0) == []
    assert mixer.add(1, block(2), 0.02) == []
    assert mixer.ready(0.519) == []
    assert values(mixer.ready(0.52)) == [1]  # slot 0 ended at 0.02: due at 0.52
    assert values(mixer.ready(0.54)) == [2]
    assert values(mixer.ready(0.60)) == [0] * 3  # nobody spoke: the mix goes on with silence
    assert mixer.finish() == []
    assert mixer.stats.blocks == 5


def test_a_pause_written_when_the_member_speaks_again_does_not_stretch_the_mix() -> None:
    s = Steps()
    for n in range(10):  # 0.2 s of talk, in real time
        s.add(1, block(3), n * 0.02)
    # 4.8 s later the member speaks again: the listener writes the pause, then the audio
    for _ in range(240):
        s.add(1, SILENCE, 5.0)
    for n in range(5):
        s.add(1, block(4), 5.0 + n * 0.02)
    got = s.finish()
    assert got[:10] == [3] * 10
    first = got.index(4)
    assert 248 <= first <= 252  # where it was heard (5.0 s = slot 250), not after the pause
    assert got[first:] == [4] * 5 and set(got[10:first]) == {0}
    assert s.mixer.stats.skipped_silence > 0 and s.mixer.stats.moved_late == 0


def test_audio_for_a_slot_already_mixed_is_moved_not_lost() -> None:
    s = Steps()
    for n in range(5):
        s.add(1, block(1), n * 0.02)
    # a sender whose timestamps do not count pauses: no silence, the lane is far behind
    for n in range(3):
        s.add(1, block(2), 3.0 + n * 0.02)
    got = s.finish()
    assert got.count(1) == 5 and got.count(2) == 3
    assert got.index(2) == 150  # where it was heard (3.0 s), like a member's first block
    assert s.mixer.stats.moved_late == 1


def test_silence_far_ahead_of_the_clock_is_skipped() -> None:
    s = Steps()
    for _ in range(30):  # 0.6 s of audio at once (a burst): kept, the lane runs ahead
        s.add(1, block(1), 0.0)
    for _ in range(20):
        s.add(1, SILENCE, 0.0)
    s.add(1, block(2), 0.0)
    got = s.finish()
    assert got == [1] * 30 + [2]
    assert s.mixer.stats.skipped_silence == 20


def test_wrong_block_size_and_latency_are_refused() -> None:
    with pytest.raises(ValueError, match="3840 bytes"):
        Mixer().add(1, bytes(100), 0.0)
    with pytest.raises(ValueError, match="latency"):
        Mixer(latency=-1)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # member
            st.booleans(),  # audio (else silence)
            st.sampled_from([0.0, 0.0, 0.005, 0.02, 0.03, 0.2, 1.5]),  # time before this write
        ),
        max_size=120,
    ),
    st.sampled_from([0.0, 0.1, 0.5]),
)
def test_every_audio_block_comes_out_once_in_its_members_order(
    steps: list[tuple[int, bool, float]], latency: float
) -> None:
    # member m's n-th audio block is the digit (n % 31) + 1 in base 32 at position m: the sum of
    # three members never clips, and each member's digits can be read back from the mix
    s = Steps(latency)
    now = 0.0
    sent: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for member, audio, dt in steps:
        now += dt
        if audio:
            digit = len(sent[member]) % 31 + 1
            sent[member].append(digit)
            s.add(member, block(digit * 32**member), now)
        else:
            s.add(member, SILENCE, now)
    got = s.finish()
    for member in range(3):
        digits = [v // 32**member % 32 for v in got]
        assert [d for d in digits if d] == sent[member]
    assert s.mixer.stats.blocks == len(got)


def test_mix_sink_writes_one_wave_file(tmp_path: Path) -> None:
    class Clock:
        now = 0.0

        def monotonic(self) -> float:
            return self.now

        def wait_until(self, deadline: float, signal: object) -> bool:
            raise AssertionError("not used")

    clock = Clock()
    sink = MixSink(tmp_path / "mix.wav", clock=clock)
    for n in range(4):
        clock.now = n * 0.02
        sink.write(1, block(100))
        sink.write(2, block(-40))
    sink.close()
    sink.close()  # once is enough; twice is harmless
    with wave.open(str(tmp_path / "mix.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 48000)
        data = wav.readframes(wav.getnframes())
    assert data == block(60) * 4
    assert sink.stats().members == 2 and sink.stats().blocks == 4
    with pytest.raises(ValueError, match="closed"):
        sink.write(1, block(1))


def test_mix_sink_gives_blocks_to_a_callback() -> None:
    got: list[bytes] = []
    sink = MixSink(got.append, latency=0.0)
    sink.write(7, block(5))
    sink.close()
    assert values(got) == [5] and "callback" in repr(sink)


def test_multi_sink_writes_to_each_and_closes_all(tmp_path: Path) -> None:
    class Failing:
        closed = False

        def write(self, user_id: int, pcm: bytes) -> None:
            pass

        def close(self) -> None:
            self.closed = True
            raise OSError("disk full")

    waves = WaveSink(tmp_path / "each")
    mixed: list[bytes] = []
    failing = Failing()
    sink = MultiSink(waves, failing, MixSink(mixed.append, latency=0.0))
    sink.write(3, block(9))
    with pytest.raises(OSError, match="disk full"):
        sink.close()
    assert failing.closed and values(mixed) == [9]
    assert (tmp_path / "each" / "3.wav").exists()
    with pytest.raises(ValueError, match="at least one"):
        MultiSink()

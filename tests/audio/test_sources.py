"""discord_voice.audio sources: PCM, Ogg Opus passthrough, FFmpeg (PCM and Opus remux), WAV,
and `probe`/`open_source` that choose between them.

Independent parts do the checking: Ogg Opus files are written by PyAV (FFmpeg's muxer) from
packets made by our encoder, WAV files by the stdlib ``wave`` module, FLAC by the ffmpeg binary
itself, and decoded PCM is checked with a numpy FFT. Every FFmpeg process a test starts is
looked for in ``/proc`` after `close` (by the file path on its command line) and must be gone
and reaped, and its ``dv-ffmpeg-log`` thread joined.
"""

from __future__ import annotations

import io
import math
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from discord_voice.audio import (
    FFmpegOpusSource,
    FFmpegSource,
    OggOpusSource,
    PCMSource,
    ProbeKind,
    WaveSource,
    find_ffmpeg,
    open_source,
    probe,
)
from discord_voice.audio import ffmpeg as ffmpeg_module
from discord_voice.audio.source import PCM_BYTES_PER_SECOND
from discord_voice.errors import FFmpegFailed, FFmpegNotFound, InvalidPacket
from discord_voice.ogg import stream_duration
from discord_voice.opus import encode_frames, tone
from tests import make_assets
from tests.test_opus import peak_frequency
from tests.timeouts import LONG

FRAME_BYTES = 3840  # 20 ms of 48 kHz stereo s16le
FRAME_SECONDS = 0.02


# --- helpers --------------------------------------------------------------------------------


def sine(frequency: float, seconds: float, rate: int, channels: int) -> npt.NDArray[np.int16]:
    """Interleaved s16 samples of a sine wave (the same value on every channel)."""
    count = round(seconds * rate)
    wave_ = 0.3 * 32767 * np.sin(2 * np.pi * frequency * np.arange(count) / rate)
    mono = np.round(wave_).astype(np.int16)
    return np.repeat(mono, channels)


def write_wav(
    path: Path, frequency: float, seconds: float, rate: int, channels: int
) -> npt.NDArray[np.int16]:
    """A 16-bit PCM WAV written by the stdlib; returns the interleaved samples written."""
    samples = sine(frequency, seconds, rate, channels)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return samples


def run_ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary the library would use (to make test files)."""
    argv = [find_ffmpeg(), "-nostdin", "-loglevel", "error", *args]
    subprocess.run(argv, check=True, timeout=LONG)


def read_all_pcm(source: PCMSource, size: int = FRAME_BYTES) -> bytes:
    chunks = []
    while chunk := source.read(size):
        chunks.append(chunk)
    return b"".join(chunks)


def stereo(pcm: bytes) -> npt.NDArray[np.float64]:
    """s16le stereo PCM as an array of shape (samples, 2)."""
    return np.frombuffer(pcm, dtype="<i2").reshape(-1, 2).astype(np.float64)


def processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line contains `text` (a scan of /proc).

    A zombie's command line is empty, so `assert_reaped` checks those separately."""
    needle = os.fsencode(text)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                cmdline = file.read()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def assert_reaped(pid: int) -> None:
    """`pid` is no longer a child of this process: it exited and was waited for (no zombie)."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def ffmpeg_log_threads(pid: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"dv-ffmpeg-log:{pid}"]


def assert_ffmpeg_gone(pid: int, path: Path) -> None:
    assert processes_mentioning(str(path)) == []
    assert_reaped(pid)
    assert ffmpeg_log_threads(pid) == []


# --- shared files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packets() -> list[bytes]:
    """1 s of a 440 Hz tone, encoded by our encoder: 50 packets of 20 ms."""
    return list(encode_frames(tone(440.0, seconds=1.0)))


@pytest.fixture(scope="module")
def ogg_file(tmp_path_factory: pytest.TempPathFactory, packets: list[bytes]) -> Path:
    """`packets` muxed by PyAV (FFmpeg's Ogg muxer), pre-skip 312."""
    path = tmp_path_factory.mktemp("ogg") / "tone.opus"
    make_assets.write_ogg_opus(path, [packets], pre_skip=312)
    return path


def last_granule(data: bytes) -> int:
    """The granule position of the file's last page, read with `struct` (not the library)."""
    position = data.rfind(b"OggS")
    granule: int = struct.unpack_from("<q", data, position + 6)[0]
    return granule


# --- PCMSource ------------------------------------------------------------------------------


class TrickleReader:
    """A pipe-like binary file: at most `step` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step
        self.closed = False

    def read(self, size: int, /) -> bytes:
        return self._data.read(min(size, self._step))

    def close(self) -> None:
        self.closed = True


def test_pcm_source_returns_full_reads_then_the_rest_then_nothing() -> None:
    data = bytes(range(256)) * 4 + b"\x01\x02\x03\x04" * 3  # 1036 bytes: 259 samples
    source = PCMSource(io.BytesIO(data))
    assert not source.is_opus
    assert source.read(400) == data[:400]
    assert source.read(400) == data[400:800]
    assert source.read(400) == data[800:]
    assert source.read(400) == b""
    assert source.read(400) == b""


def test_pcm_source_fills_each_read_from_a_trickling_input() -> None:
    data = bytes(n % 251 for n in range(FRAME_BYTES * 3 + 8))
    source = PCMSource(TrickleReader(data, step=1000))
    assert [len(source.read(FRAME_BYTES)) for _ in range(5)] == [FRAME_BYTES] * 3 + [8, 0]


@pytest.mark.parametrize("torn", [1, 2, 3])
def test_pcm_source_drops_a_torn_trailing_sample(torn: int) -> None:
    data = bytes(range(40)) + b"\xff" * torn
    source = PCMSource(io.BytesIO(data))
    assert source.read(32) == data[:32]
    assert source.read(32) == data[32:40]
    assert source.read(32) == b""


@pytest.mark.parametrize("close_input", [True, False])
def test_pcm_source_closes_its_input_only_when_asked(close_input: bool) -> None:
    fileobj = io.BytesIO(bytes(16))
    with PCMSource(fileobj, close_input=close_input):
        pass
    assert fileobj.closed is close_input
    trickle = TrickleReader(bytes(16), step=4)
    source = PCMSource(trickle, close_input=close_input)
    source.close()
    source.close()  # idempotent
    assert trickle.closed is close_input


def test_pcm_source_duration_is_what_was_given() -> None:
    assert PCMSource(io.BytesIO(b"")).duration is None
    assert PCMSource(io.BytesIO(b""), duration=12.5).duration == 12.5


# --- OggOpusSource --------------------------------------------------------------------------


def read_packets(source: OggOpusSource | FFmpegOpusSource) -> list[bytes]:
    found = []
    while (packet := source.read()) is not None:
        found.append(packet)
    return found


def test_ogg_opus_source_reads_the_packets_pyav_wrote(ogg_file: Path, packets: list[bytes]) -> None:
    source = OggOpusSource(ogg_file)
    with source:
        assert source.is_opus
        assert read_packets(source) == packets
        assert source.read() is None


def test_ogg_opus_source_duration_is_the_last_granule_minus_pre_skip(
    ogg_file: Path, packets: list[bytes]
) -> None:
    granule = last_granule(ogg_file.read_bytes())
    source = OggOpusSource(str(ogg_file))
    with source:
        duration = source.duration
    assert duration == (granule - 312) / 48000
    assert duration is not None
    assert abs(duration - len(packets) * FRAME_SECONDS) <= FRAME_SECONDS


def test_ogg_opus_source_reads_a_binary_stream_without_a_duration(
    ogg_file: Path, packets: list[bytes]
) -> None:
    source = OggOpusSource(io.BytesIO(ogg_file.read_bytes()))
    with source:
        assert source.duration is None
        assert read_packets(source) == packets


def test_ogg_opus_source_on_a_truncated_file_raises_with_the_offset(
    ogg_file: Path, packets: list[bytes], tmp_path: Path
) -> None:
    data = ogg_file.read_bytes()
    truncated = tmp_path / "truncated.opus"
    truncated.write_bytes(data[:-10])  # inside the last page
    got: list[bytes] = []
    source = OggOpusSource(truncated)
    with source, pytest.raises(InvalidPacket) as caught:
        while (packet := source.read()) is not None:
            got.append(packet)
    assert re.search(r"offset \d+", str(caught.value)), str(caught.value)
    assert got == packets[: len(got)]


def test_ogg_opus_source_on_a_missing_file_raises_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        OggOpusSource(tmp_path / "missing.opus")


# --- probe and open_source ------------------------------------------------------------------


def test_probe_and_open_an_ogg_opus_file(ogg_file: Path, packets: list[bytes]) -> None:
    found = probe(ogg_file)
    assert (found.kind, found.target, found.passthrough) == (
        ProbeKind.OGG_OPUS,
        str(ogg_file),
        True,
    )
    source = open_source(ogg_file)
    with source:
        assert isinstance(source, OggOpusSource)
        assert source.read() == packets[0]


def test_probe_and_open_a_wav_in_discords_format(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    write_wav(path, 440.0, 0.1, rate=48000, channels=2)
    found = probe(path)
    assert (found.kind, found.passthrough) == (ProbeKind.WAVE, False)
    source = open_source(path)
    with source:
        assert isinstance(source, WaveSource)
        assert not source.converted


def test_probe_goes_by_content_not_by_name(tmp_path: Path, ogg_file: Path) -> None:
    wav_named_mp3 = tmp_path / "song.mp3"
    write_wav(wav_named_mp3, 440.0, 0.1, rate=48000, channels=2)
    assert probe(wav_named_mp3).kind is ProbeKind.WAVE
    opus_named_wav = tmp_path / "song.wav"
    opus_named_wav.write_bytes(ogg_file.read_bytes())
    assert probe(opus_named_wav).kind is ProbeKind.OGG_OPUS
    # an Ogg file whose first stream is not Opus is not passed through
    not_opus = tmp_path / "other.ogg"
    not_opus.write_bytes(ogg_file.read_bytes().replace(b"OpusHead", b"VorbHead", 1))
    assert probe(not_opus).kind is ProbeKind.OTHER


def test_probe_and_open_a_flac_file_goes_through_ffmpeg(tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    write_wav(wav, 440.0, 0.2, rate=44100, channels=1)
    flac = tmp_path / "tone.flac"
    run_ffmpeg("-i", str(wav), str(flac))
    found = probe(flac)
    assert (found.kind, found.passthrough) == (ProbeKind.OTHER, False)
    source = open_source(flac)
    with source:
        assert isinstance(source, FFmpegSource)
        pid = source.pid
        assert len(read_all_pcm(source)) > 0
    assert_ffmpeg_gone(pid, flac)


def test_probe_of_random_bytes_is_other(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes((n * 37 + 11) % 256 for n in range(1000)))
    assert probe(path).kind is ProbeKind.OTHER
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert probe(empty).kind is ProbeKind.OTHER


def test_probe_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        probe(tmp_path / "missing.opus")


@pytest.mark.parametrize(
    ("url", "kind", "passthrough"),
    [
        ("https://example.com/a.opus", ProbeKind.OPUS_URL, True),
        ("https://example.com/a.opus?token=1", ProbeKind.OPUS_URL, True),
        ("https://example.com/a.mp3", ProbeKind.OTHER, False),
        ("http://example.com/stream", ProbeKind.OTHER, False),
    ],
)
def test_probe_of_urls_looks_at_the_path_only(url: str, kind: ProbeKind, passthrough: bool) -> None:
    found = probe(url)  # no request is made: probe only parses the URL
    assert (found.kind, found.target, found.passthrough) == (kind, url, passthrough)


def test_ffmpeg_options_force_the_ffmpeg_path(ogg_file: Path) -> None:
    source = open_source(ogg_file, options="-af volume=1.0")
    with source:
        assert isinstance(source, FFmpegSource)
        pid = source.pid
        pcm = read_all_pcm(source)  # decoded by FFmpeg, not passed through
    assert abs(len(pcm) - PCM_BYTES_PER_SECOND) <= FRAME_BYTES
    assert abs(peak_frequency(stereo(pcm)[:, 0]) - 440.0) <= 3.0
    assert_ffmpeg_gone(pid, ogg_file)


# --- FFmpegSource ---------------------------------------------------------------------------


def test_ffmpeg_source_decodes_a_wav_to_48k_stereo(tmp_path: Path) -> None:
    path = tmp_path / "mono-22050.wav"
    write_wav(path, 440.0, 1.0, rate=22050, channels=1)
    source = FFmpegSource(path)
    with source:
        pid = source.pid
        assert pid in processes_mentioning(str(path))  # the scan sees a live ffmpeg
        pcm = read_all_pcm(source)
        assert source.duration == 1.0  # from FFmpeg's "Duration: 00:00:01.00"
    assert abs(len(pcm) - PCM_BYTES_PER_SECOND) <= FRAME_BYTES
    samples = stereo(pcm)
    assert np.array_equal(samples[:, 0], samples[:, 1])  # mono upmixed: both channels the same
    assert abs(peak_frequency(samples[:, 0]) - 440.0) <= 3.0
    assert_ffmpeg_gone(pid, path)


def test_ffmpeg_source_close_midway_reaps_the_process(tmp_path: Path) -> None:
    path = tmp_path / "ten-seconds.wav"
    write_wav(path, 440.0, 10.0, rate=8000, channels=1)
    source = FFmpegSource(path)
    pid = source.pid
    try:
        # ffmpeg is now blocked on the full pipe; close() must still end and reap it
        assert len(source.read(FRAME_BYTES)) == FRAME_BYTES
        assert ffmpeg_log_threads(pid)
    finally:
        source.close()
    source.close()  # idempotent
    assert_ffmpeg_gone(pid, path)
    # it exited on its own (the broken pipe, SIGTERM), not from the SIGKILL after EXIT_WAIT
    assert source._ffmpeg._process.returncode != -signal.SIGKILL


def test_ffmpeg_source_on_a_missing_file_fails_with_ffmpegs_words(tmp_path: Path) -> None:
    path = tmp_path / "missing.wav"
    source = FFmpegSource(path)
    with source:
        pid = source.pid
        with pytest.raises(FFmpegFailed) as caught:
            read_all_pcm(source)
        assert_reaped(pid)  # finish() waited for it, before close
    failed = caught.value
    assert failed.returncode not in (None, 0)
    assert str(path) in failed.stderr_tail or "No such file" in failed.stderr_tail
    assert failed.stderr_tail in str(failed)
    assert_ffmpeg_gone(pid, path)


def test_ffmpeg_source_interrupt_unblocks_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "thirty-seconds.wav"
    write_wav(path, 440.0, 30.0, rate=8000, channels=1)
    source = FFmpegSource(path, before_options="-re")  # ffmpeg delivers in real time
    pid = source.pid
    got_audio = threading.Event()
    total = 0
    errors: list[BaseException] = []

    def reader() -> None:
        nonlocal total
        try:
            while chunk := source.read(FRAME_BYTES):
                total += len(chunk)
                got_audio.set()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=reader, name="test-reader")
    thread.start()
    try:
        assert got_audio.wait(LONG), "no audio came from ffmpeg"
        source.interrupt()
        thread.join(LONG)
        assert not thread.is_alive(), "interrupt() did not unblock the reader"
    finally:
        source.close()
        thread.join(LONG)
    assert errors == []  # an interrupted ffmpeg is not a failure
    assert 0 < total < 10 * PCM_BYTES_PER_SECOND  # far less than the 30 s of audio
    assert_ffmpeg_gone(pid, path)


def test_ffmpeg_source_with_a_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(FFmpegNotFound, match="could not run"):
        FFmpegSource(tmp_path / "x.wav", executable=str(tmp_path / "no-ffmpeg"))


# --- find_ffmpeg ----------------------------------------------------------------------------


def test_find_ffmpeg_environment_variable_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    named = tmp_path / "my-ffmpeg"
    named.write_bytes(b"")
    monkeypatch.setenv(ffmpeg_module.ENV_VAR, str(named))
    monkeypatch.setattr("discord_voice.audio.ffmpeg.shutil.which", lambda name: "/usr/bin/ffmpeg")
    assert find_ffmpeg() == str(named)


def test_find_ffmpeg_environment_variable_to_a_missing_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nothing-here"
    monkeypatch.setenv(ffmpeg_module.ENV_VAR, str(missing))
    monkeypatch.setattr("discord_voice.audio.ffmpeg.shutil.which", lambda name: "/usr/bin/ffmpeg")
    with pytest.raises(FFmpegNotFound, match=re.escape(str(missing))):
        find_ffmpeg()


def test_find_ffmpeg_uses_path_next(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def which(name: str) -> str:
        asked.append(name)
        return "/opt/bin/ffmpeg"

    monkeypatch.delenv(ffmpeg_module.ENV_VAR, raising=False)
    monkeypatch.setattr("discord_voice.audio.ffmpeg.shutil.which", which)
    assert find_ffmpeg() == "/opt/bin/ffmpeg"
    assert asked == ["ffmpeg"]


def test_find_ffmpeg_falls_back_to_imageio_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    import imageio_ffmpeg

    monkeypatch.delenv(ffmpeg_module.ENV_VAR, raising=False)
    monkeypatch.setattr("discord_voice.audio.ffmpeg.shutil.which", lambda name: None)
    found = find_ffmpeg()
    assert found == imageio_ffmpeg.get_ffmpeg_exe()
    assert os.path.isfile(found)


def test_find_ffmpeg_without_any_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ffmpeg_module.ENV_VAR, raising=False)
    monkeypatch.setattr("discord_voice.audio.ffmpeg.shutil.which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(FFmpegNotFound) as caught:
        find_ffmpeg()
    assert "discord-voice[ffmpeg]" in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)


def test_find_ffmpeg_with_imageio_ffmpeg_lacking_a_binary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import imageio_ffmpeg

    def no_binary() -> str:
        raise RuntimeError("no ffmpeg exe could be found")

    monkeypatch.delenv(ffmpeg_module.ENV_VAR, raising=False)
    monkeypatch.setattr("discord_voice.audio.ffmpeg.shutil.which", lambda name: None)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_binary)
    with pytest.raises(FFmpegNotFound, match="no ffmpeg exe could be found") as caught:
        find_ffmpeg()
    assert "discord-voice[ffmpeg]" in str(caught.value)


# --- WaveSource -----------------------------------------------------------------------------


def test_wave_source_reads_discords_format_directly(tmp_path: Path) -> None:
    path = tmp_path / "stereo-48k.wav"
    samples = write_wav(path, 440.0, 0.5, rate=48000, channels=2)
    source = WaveSource(path)
    with source:
        assert not source.converted
        assert source.duration == 0.5
        pcm = read_all_pcm(source)
    assert pcm == samples.astype("<i2").tobytes()
    assert processes_mentioning(str(path)) == []  # no ffmpeg was started


def test_wave_source_reads_in_any_frame_size(tmp_path: Path) -> None:
    path = tmp_path / "stereo-48k.wav"
    samples = write_wav(path, 440.0, 0.1, rate=48000, channels=2)
    source = WaveSource(path)
    with source:
        assert read_all_pcm(source, size=1000) == samples.astype("<i2").tobytes()


def test_wave_source_converts_other_formats(tmp_path: Path) -> None:
    path = tmp_path / "mono-16k.wav"
    write_wav(path, 440.0, 0.5, rate=16000, channels=1)
    source = WaveSource(path)
    with source:
        assert source.converted
        assert source.duration == 0.5  # from the header
        pcm = read_all_pcm(source)
    assert abs(len(pcm) - PCM_BYTES_PER_SECOND // 2) <= FRAME_BYTES
    assert abs(peak_frequency(stereo(pcm)[:, 0]) - 440.0) <= 3.0
    assert processes_mentioning(str(path)) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("dv-ffmpeg-log")]


def test_wave_source_converts_what_the_stdlib_cannot_read(tmp_path: Path) -> None:
    wav = tmp_path / "s16.wav"
    write_wav(wav, 440.0, 0.2, rate=48000, channels=2)
    float_wav = tmp_path / "f32.wav"
    run_ffmpeg("-i", str(wav), "-c:a", "pcm_f32le", str(float_wav))
    assert probe(float_wav).kind is ProbeKind.WAVE
    source = WaveSource(float_wav)
    with source:
        assert source.converted
        pcm = read_all_pcm(source)
    assert abs(len(pcm) - PCM_BYTES_PER_SECOND // 5) <= FRAME_BYTES
    assert processes_mentioning(str(float_wav)) == []


# --- FFmpegOpusSource -----------------------------------------------------------------------


def test_ffmpeg_opus_source_remuxes_without_decoding(ogg_file: Path, packets: list[bytes]) -> None:
    source = FFmpegOpusSource(ogg_file)
    with source:
        pid = source.pid
        assert source.is_opus
        got = read_packets(source)
        duration = source.duration
    assert got == packets
    assert duration is not None
    assert math.isclose(duration, len(packets) * FRAME_SECONDS, abs_tol=FRAME_SECONDS)
    assert_ffmpeg_gone(pid, ogg_file)


def test_ffmpeg_opus_source_on_audio_that_is_not_opus_fails(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    write_wav(path, 440.0, 0.2, rate=48000, channels=2)
    source = FFmpegOpusSource(path)
    with source:
        pid = source.pid
        with pytest.raises(FFmpegFailed) as caught:
            read_packets(source)
    assert caught.value.returncode not in (None, 0)
    assert caught.value.stderr_tail
    assert_ffmpeg_gone(pid, path)


def test_ffmpeg_opus_source_interrupt_unblocks_a_reader(
    tmp_path: Path, packets: list[bytes]
) -> None:
    path = tmp_path / "thirty-seconds.opus"
    make_assets.write_ogg_opus(path, [packets * 30])
    source = FFmpegOpusSource(path, before_options="-re")
    pid = source.pid
    got_audio = threading.Event()
    count = 0
    errors: list[BaseException] = []

    def reader() -> None:
        nonlocal count
        try:
            while source.read() is not None:
                count += 1
                got_audio.set()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=reader, name="test-reader-opus")
    thread.start()
    try:
        assert got_audio.wait(LONG), "no packet came from ffmpeg"
        source.interrupt()
        thread.join(LONG)
        assert not thread.is_alive(), "interrupt() did not unblock the reader"
    finally:
        source.close()
        thread.join(LONG)
    assert errors == []  # ffmpeg, set up and sending, ends the Ogg stream cleanly on SIGTERM
    assert count < 10 * 50  # far less than the 1500 packets of the file
    assert_ffmpeg_gone(pid, path)


def test_ffmpeg_opus_source_interrupted_before_its_first_page_just_ends(
    tmp_path: Path, packets: list[bytes]
) -> None:
    path = tmp_path / "thirty-seconds.opus"
    make_assets.write_ogg_opus(path, [packets * 30])
    source = FFmpegOpusSource(path, before_options="-re")  # the first page takes ~1 s
    pid = source.pid
    with source:
        source.interrupt()
        assert source.read() is None  # a stop, not a torn file
    assert_ffmpeg_gone(pid, path)


@pytest.mark.parametrize("size", [0, -4, 6, 3841])
def test_pcm_source_reads_whole_stereo_samples_only(size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        PCMSource(io.BytesIO(bytes(64))).read(size)


def test_a_truncated_ogg_opus_file_reports_what_is_left(ogg_file: Path, tmp_path: Path) -> None:
    data = ogg_file.read_bytes()
    half = tmp_path / "half.opus"
    half.write_bytes(data[: len(data) // 2])
    duration = stream_duration(half)
    full = stream_duration(ogg_file)
    assert duration is not None and full is not None
    assert duration < 0.75 * full  # the last complete page left, not the torn one's header


def test_an_opus_url_passes_through_byte_for_byte(ogg_file: Path, packets: list[bytes]) -> None:
    # a real HTTP server on loopback: FFmpeg fetches the URL and remuxes, libopus is not used
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # not on stderr

    handler = functools.partial(Quiet, directory=str(ogg_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http")
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{ogg_file.name}"
        found = probe(url)
        assert found.kind is ProbeKind.OPUS_URL and found.passthrough
        source = open_source(url)
        assert isinstance(source, FFmpegOpusSource)
        with source:
            assert read_packets(source) == packets
    finally:
        server.shutdown()
        server.server_close()
        thread.join(LONG)

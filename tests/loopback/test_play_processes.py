"""No FFmpeg process outlives its player: after the end of the stream, `Player.stop`, a failing
source, a connection that drops, and the exit of a script that never closed its source.

Each test's input file has a unique path (pytest's ``tmp_path``); ``/proc/*/cmdline`` is scanned
for it afterwards (`processes_mentioning`), and the process must also have been waited for (no
zombie) and its ``dv-ffmpeg-log`` thread joined (`assert_ffmpeg_gone`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from discord_voice import (
    AudioError,
    ConnectionClosed,
    FFmpegFailed,
    FFmpegOpusSource,
    FFmpegSource,
)
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP
from discord_voice.opus import encode_frames, tone
from tests import make_assets
from tests.audio.test_sources import assert_ffmpeg_gone, processes_mentioning, write_wav
from tests.loopback.conftest import CHANNEL, GUILD, World
from tests.timeouts import LONG

REPO = Path(__file__).resolve().parent.parent.parent
LIBOPUS_ENV_VAR = "DISCORD_VOICE_LIBOPUS"
SILENCE = [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP

FFmpeg = FFmpegSource | FFmpegOpusSource


def wav(tmp_path: Path, seconds: float) -> Path:
    """A mono 8 kHz WAV: FFmpeg must resample it (an FFmpegSource decodes anything)."""
    path = tmp_path / f"tone-{seconds:g}s.wav"
    write_wav(path, 440.0, seconds, rate=8000, channels=1)
    return path


def ogg_opus(tmp_path: Path, seconds: int) -> Path:
    path = tmp_path / f"tone-{seconds}s.opus"
    make_assets.write_ogg_opus(path, [list(encode_frames(tone(440.0, seconds=1.0))) * seconds])
    return path


def ffmpeg_source(kind: str, tmp_path: Path, seconds: int) -> tuple[FFmpeg, Path]:
    """FFmpeg decoding a WAV to PCM, or remuxing Ogg Opus without decoding; and its input."""
    if kind == "decode":
        path = wav(tmp_path, seconds)
        return FFmpegSource(path), path
    path = ogg_opus(tmp_path, seconds)
    return FFmpegOpusSource(path), path


@pytest.mark.parametrize("kind", ["decode", "remux"])
def test_the_end_of_the_stream_reaps_ffmpeg(world: World, tmp_path: Path, kind: str) -> None:
    source, path = ffmpeg_source(kind, tmp_path, 1)
    pid = source.pid
    assert pid in processes_mentioning(str(path))  # the scan sees it while it runs
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    player = conn.play(source)
    player.wait(LONG)
    assert_ffmpeg_gone(pid, path)
    # played to its end: about 50 frames of audio, then the silence
    assert world.fake.wait_until(
        lambda fake: [f.opus for f in fake.frames(conn.ssrc)][-SILENCE_FRAMES_ON_STOP:] == SILENCE,
        LONG,
    )
    assert len(world.fake.frames(conn.ssrc)) >= 45 + SILENCE_FRAMES_ON_STOP
    conn.disconnect()


@pytest.mark.parametrize("kind", ["decode", "remux"])
def test_stop_reaps_ffmpeg(world: World, tmp_path: Path, kind: str) -> None:
    source, path = ffmpeg_source(kind, tmp_path, 30)  # far longer than the test
    pid = source.pid
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    player = conn.play(source)
    world.fake.wait_for_frames(3, LONG, ssrc=conn.ssrc)  # playing; ffmpeg waits on the pipe
    player.stop()
    player.wait(LONG)  # a stop is not a failure
    assert_ffmpeg_gone(pid, path)
    conn.disconnect()


def test_a_file_ffmpeg_cannot_read_fails_the_player_with_its_stderr_and_reaps_it(
    world: World, tmp_path: Path
) -> None:
    path = tmp_path / "corrupt.mp3"
    path.write_bytes(b"ID3 this is not audio\n" * 50)
    source = FFmpegSource(path)
    pid = source.pid
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    player = conn.play(source)
    with pytest.raises(FFmpegFailed) as caught:
        player.wait(LONG)
    failed = caught.value
    assert failed.returncode not in (None, 0)
    assert failed.stderr_tail and failed.stderr_tail in str(failed)
    assert_ffmpeg_gone(pid, path)
    conn.play(FFmpegSource(wav(tmp_path, 0.1))).wait(LONG)  # the connection is fine
    conn.disconnect()


def test_audio_that_is_not_opus_fails_the_remux_and_reaps_ffmpeg(
    world: World, tmp_path: Path
) -> None:
    path = wav(tmp_path, 1.0)
    source = FFmpegOpusSource(path)  # -c:a copy of PCM into Ogg: FFmpeg refuses
    pid = source.pid
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    with pytest.raises(FFmpegFailed) as caught:
        conn.play(source).wait(LONG)
    assert caught.value.stderr_tail
    assert_ffmpeg_gone(pid, path)
    conn.disconnect()


class FailingSource(FFmpegSource):
    """An FFmpegSource whose reader fails mid-stream, while FFmpeg still runs."""

    reads = 0

    def read(self, size: int) -> bytes:
        self.reads += 1
        if self.reads > 5:
            raise OSError("the reader broke")
        return super().read(size)


def test_an_exception_in_the_source_ends_the_player_and_reaps_ffmpeg(
    world: World, tmp_path: Path
) -> None:
    path = wav(tmp_path, 30)
    source = FailingSource(path)
    pid = source.pid
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    player = conn.play(source)
    with pytest.raises(AudioError, match="the reader broke") as caught:
        player.wait(LONG)
    assert isinstance(caught.value.__cause__, OSError)
    assert_ffmpeg_gone(pid, path)
    conn.disconnect()


def test_a_dropped_connection_ends_the_player_and_reaps_ffmpeg(
    world: World, tmp_path: Path
) -> None:
    path = wav(tmp_path, 30)
    source = FFmpegSource(path, before_options="-re")  # real time: FFmpeg is still reading
    pid = source.pid
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    player = conn.play(source)
    world.fake.wait_for_frames(3, LONG, ssrc=conn.ssrc)
    world.fake.close_voice(4004, "authentication failed")  # fatal: the connection ends
    with pytest.raises(ConnectionClosed):
        player.wait(LONG)
    assert_ffmpeg_gone(pid, path)
    conn.disconnect()


# the child: starts FFmpeg, reads one frame, prints the pid and exits without closing the
# source; at atexit (after the library's exit hook, which threading runs first) it reports
# whether FFmpeg had already been waited for by this process
CHILD = textwrap.dedent(
    """
    import atexit, os, sys
    from discord_voice.audio import FFmpegSource

    source = FFmpegSource(sys.argv[1])
    assert len(source.read(3840)) == 3840
    pid = source.pid

    def report():
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            print("reaped before atexit", flush=True)
        else:
            print("NOT reaped before atexit", flush=True)

    atexit.register(report)
    print(pid, flush=True)
    """
)


def test_a_script_that_exits_without_closing_its_source_reaps_ffmpeg(tmp_path: Path) -> None:
    path = wav(tmp_path, 30)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if LIBOPUS_ENV_VAR in os.environ:
        env[LIBOPUS_ENV_VAR] = os.environ[LIBOPUS_ENV_VAR]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=4 * LONG,  # a hang here means FFmpeg kept the script alive
    )
    assert done.returncode == 0, done.stderr
    first, report = done.stdout.split()[0], " ".join(done.stdout.split()[1:])
    pid = int(first)
    assert report == "reaped before atexit", done.stdout
    assert not Path(f"/proc/{pid}").exists()  # neither running nor a zombie
    assert processes_mentioning(str(path)) == []

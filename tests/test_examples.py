"""The examples stay runnable: each one that can runs offline (no DISCORD_TOKEN: against the
fake Discord) and must say that the fake received its audio, decrypted; the others import."""

from __future__ import annotations

import importlib.resources
import importlib.util
import math
import os
import re
import runpy
import sys
import wave
from array import array
from pathlib import Path
from types import ModuleType

import pytest

from discord_voice import OggOpusSource
from discord_voice.offline import OFFLINE_CHANNEL_ID, OFFLINE_GUILD_ID, discord_or_fake
from discord_voice.opus import encode_frames, tone
from tests import make_assets
from tests.audio.test_sources import processes_mentioning
from tests.timeouts import LONG

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The examples with a ``main(argv)`` that joins a channel.
MAINS = [
    "echo_bot",
    "play_file",
    "play_ogg_opus",
    "play_tone",
    "queue_bot",
    "record_channel",
    "speak_tts",
]
#: Those that run offline without a token.
OFFLINE = ["play_file", "play_ogg_opus", "queue_bot", "speak_tts"]
SUMMARY = re.compile(
    r"the fake Discord received (\d+) packets from ssrc \d+: (\d+) audio \((\d+) decrypted "
    r"by its libdave member, (\d+) bytes of Opus\), (\d+) silence"
)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def received(output: str) -> tuple[int, int]:
    """(audio packets, silence packets) from the summary line; every audio packet decrypted."""
    found = SUMMARY.findall(output)
    assert len(found) == 1, f"no summary line in:\n{output}"
    total, audio, decrypted, opus_bytes, silence = map(int, found[0])
    assert audio > 0 and decrypted == audio and opus_bytes > 0
    assert total == audio + silence
    return audio, silence


def write_wav(path: Path, seconds: float, rate: int, channels: int) -> None:
    """A 440 Hz tone in 16-bit PCM, written by the stdlib."""
    count = round(seconds * rate)
    samples = array(
        "h",
        (
            round(8000 * math.sin(2 * math.pi * 440 * n / rate))
            for n in range(count)
            for _ in range(channels)
        ),
    )
    if sys.byteorder == "big":
        samples.byteswap()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token: the examples run against a local fake Discord."""
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)


# --- the examples that existed before -------------------------------------------------------


def test_offline_example_passes_against_the_fake() -> None:
    load("test_with_fake_discord").test_bot_plays_every_frame_in_order()


def test_adapter_example_satisfies_the_main_gateway_protocol() -> None:
    runpy.run_path(str(EXAMPLES / "own_gateway_adapter.py"))


@pytest.mark.parametrize("name", MAINS)
def test_examples_import_and_document_their_use(name: str) -> None:
    module = load(name)
    assert callable(module.main) and module.__doc__ and "DISCORD_TOKEN=" in module.__doc__
    assert f"examples/{name}.py" in module.__doc__


@pytest.mark.parametrize("name", OFFLINE)
def test_with_a_token_the_ids_are_required(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "not-a-token")  # refused before any connection
    with pytest.raises(SystemExit) as exited:
        load(name).main(["x.opus"] if name != "queue_bot" else ["x.opus", "--guild", "1"])
    assert exited.value.code == 2
    assert "DISCORD_TOKEN" in capsys.readouterr().err


# --- play_file ------------------------------------------------------------------------------


def test_play_file_plays_a_wav_in_discords_format(
    offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "half-a-second.wav"
    write_wav(path, 0.5, 48000, 2)
    assert load("play_file").main([str(path)]) == 0
    output = capsys.readouterr().out
    assert "WaveSource" in output and "done: 0.5 s / 0.5 s" in output
    assert received(output) == (25, 5)  # 0.5 s in 20 ms frames, then the silence


def test_play_file_plays_other_formats_through_ffmpeg(
    offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mono-22k.wav"
    write_wav(path, 0.5, 22050, 1)
    assert load("play_file").main([str(path)]) == 0
    output = capsys.readouterr().out
    assert "via ffmpeg" in output
    audio, silence = received(output)
    assert 24 <= audio <= 26 and silence == 5


def test_play_file_reports_a_file_ffmpeg_cannot_read(
    offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "not-audio.mp3"
    path.write_text("this is not audio\n" * 20)
    assert load("play_file").main([str(path)]) == 1
    assert "playing failed: ffmpeg exited with code" in capsys.readouterr().err


# --- play_ogg_opus --------------------------------------------------------------------------


def test_play_ogg_opus_passes_the_packets_through(
    offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tone.opus"
    packets = list(encode_frames(tone(440.0, seconds=0.4)))
    make_assets.write_ogg_opus(path, [packets])
    assert load("play_ogg_opus").main([str(path)]) == 0
    output = capsys.readouterr().out
    assert "tone.opus (0.40 s of Opus, passed through)" in output
    assert received(output) == (len(packets), 5)


def test_play_ogg_opus_finds_the_bundled_tone() -> None:
    bundled = load("play_ogg_opus").BUNDLED_TONE  # played offline without a FILE (5 s)
    with importlib.resources.as_file(bundled) as path, OggOpusSource(path) as source:
        assert source.duration == pytest.approx(5.0)
        assert source.read() is not None


# --- speak_tts ------------------------------------------------------------------------------


def test_speak_tts_says_something(offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert load("speak_tts").main(["hi there", "--volume", "0.5"]) == 0
    output = capsys.readouterr().out
    assert "stand-in" in output or "espeak-ng spoke" in output
    assert "at volume 0.5" in output
    assert received(output)[1] == 5


def test_speak_tts_stand_in_is_a_tone_per_word_in_discords_pcm() -> None:
    pcm = load("speak_tts").speech_stand_in("hi there")
    # per word: 0.12 s + 30 ms a letter, then 80 ms of silence; 4 bytes a stereo sample
    assert len(pcm) == 4 * (int(48000 * 0.18) + int(48000 * 0.27) + 2 * int(48000 * 0.08))
    assert max(pcm) > 0 and pcm[-4 * 3840 :] == bytes(4 * 3840)


def test_speak_tts_pipes_espeak_through_ffmpeg(
    offline: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a stand-in espeak-ng first on PATH: writes a 0.3 s 22.05 kHz mono WAV to stdout, as the
    # real one does (`espeak-ng --stdout TEXT`)
    script = tmp_path / "espeak.py"
    script.write_text(
        "import io, sys, wave\n"
        "out = io.BytesIO()\n"
        "with wave.open(out, 'wb') as w:\n"
        "    w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)\n"
        "    w.writeframes(b'\\x00\\x10' * 6615)\n"
        "sys.stdout.buffer.write(out.getvalue())\n"
    )
    espeak = tmp_path / "bin" / "espeak-ng"
    espeak.parent.mkdir()
    espeak.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{script}' \"$@\"\n")
    espeak.chmod(0o755)
    monkeypatch.setenv("PATH", f"{espeak.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    module = load("speak_tts")
    pcm = module.espeak_pcm("hello")
    assert pcm is not None and abs(len(pcm) - 0.3 * 192000) <= 3840  # 48 kHz stereo 16-bit
    assert module.main(["hello"]) == 0
    output = capsys.readouterr().out
    assert "espeak-ng spoke, FFmpeg converted" in output
    assert received(output)[0] in range(14, 17)


# --- queue_bot ------------------------------------------------------------------------------


def test_queue_bot_plays_two_generated_tracks_in_order(
    offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load("queue_bot").main([]) == 0
    output = capsys.readouterr().out
    played = re.findall(r"playing .*tone-(\d+)hz\.wav", output)
    assert played == ["440", "660"]
    assert received(output) == (2 * 20, 2 * 5)  # 0.4 s each, each followed by silence


def test_queue_bot_plays_given_files_and_skips_bad_ones(
    offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.wav"
    write_wav(good, 0.2, 48000, 2)
    missing = tmp_path / "missing.wav"
    assert load("queue_bot").main([str(missing), str(good)]) == 0
    output = capsys.readouterr().out
    assert f"skipping {missing}" in output and f"playing {good}" in output
    assert received(output) == (10, 5)


def test_queue_bot_stop_ends_the_current_track_and_skips_the_rest(tmp_path: Path) -> None:
    module = load("queue_bot")
    long, short = tmp_path / "long.wav", tmp_path / "short.wav"
    write_wav(long, 5.0, 8000, 1)  # through FFmpeg, so that stopping must reap it too
    write_wav(short, 0.2, 48000, 2)
    with (
        discord_or_fake(None) as session,
        module.dv.Voice(session.gateway) as voice,
        voice.join_channel(OFFLINE_GUILD_ID, OFFLINE_CHANNEL_ID, timeout=LONG) as conn,
        module.QueueBot(conn) as bot,
    ):
        assert session.fake is not None
        bot.add(str(long))
        bot.add(str(short))
        session.fake.wait_for_frames(3, LONG, ssrc=conn.ssrc)  # the long track plays
        bot.stop()
        bot.stop()  # idempotent
        player = conn.player
        assert player is not None and player.is_done()
        assert "long.wav" in repr(player.source)  # the short one never started
        assert processes_mentioning(str(long)) == []  # its FFmpeg was reaped


# --- receiving ---------------------------------------------------------------------------------


def test_echo_bot_plays_back_what_a_member_said(
    offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load("echo_bot").main([]) == 0
    out = capsys.readouterr().out
    assert "echoed 1 time(s)" in out
    audio, silence = received(out)
    assert audio == 25 and silence == 5  # the member's 0.5 s, as it was said, then silence


def test_record_channel_writes_the_speakers_wav(
    offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load("record_channel").main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    files = [path for path in tmp_path.glob("*.wav") if path.name != "mix.wav"]
    assert len(files) == 1 and str(files[0]) in out
    assert f"mixed everyone in {tmp_path / 'mix.wav'}" in out
    for path in (files[0], tmp_path / "mix.wav"):
        with wave.open(str(path), "rb") as wav:
            assert wav.getnframes() / 48000 == pytest.approx(1.0, abs=0.06)


def test_the_sharded_recipe_restarts_a_killed_group_and_its_guilds_are_joined_again() -> None:
    import os
    import signal
    import threading

    from discord_voice.core.opcodes import GatewayOp
    from discord_voice.testing import FakeDiscord

    bot = load("sharded_bot")
    joins = [((1_000_000 + n) << 22, 1000 + n) for n in range(4)]  # guild n on shard n

    def joined(fake: FakeDiscord, guild: int) -> int:
        return sum(
            1
            for m in fake.main_messages
            if m.direction == "client"
            and m.op == GatewayOp.VOICE_STATE_UPDATE
            and m.data is not None
            and m.data["d"]["guild_id"] == str(guild)
            and m.data["d"]["channel_id"] is not None
        )

    with FakeDiscord(dave=False, shards=4) as fake:
        supervisor = bot.Supervisor(
            bot.slices(4, 2),
            bot.group_command(4, joins, fake.gateway_url, max_concurrency=4),
            {**os.environ, "DISCORD_TOKEN": fake.token},
            first_backoff=0.1,
            stagger=0.0,
        )
        runner = threading.Thread(target=supervisor.run, name="test-supervisor")
        runner.start()
        try:
            everyone = lambda f: all(joined(f, g) == 1 for g, _ in joins)  # noqa: E731
            assert fake.wait_until(everyone, LONG * 6)
            assert fake.wait_until(lambda f: len(f.voice_sessions) == 4, LONG * 3)
            second = supervisor.children[1]
            assert second.shard_ids == [2, 3]
            os.kill(second.process.pid, signal.SIGKILL)  # a crash, as hard as it comes
            again = lambda f: all(joined(f, g) == 2 for g, _ in joins[2:])  # noqa: E731
            assert fake.wait_until(again, LONG * 6)  # restarted: shards 2 and 3 rejoin
            assert supervisor.restarts == 1 and second.starts == 2
            assert [joined(fake, g) for g, _ in joins[:2]] == [1, 1]  # the others untouched
            assert fake.violations == []  # every op 4 on the guild's own shard
        finally:
            supervisor.stop()
            runner.join(LONG * 4)
        assert not runner.is_alive()
        codes = [child.process.returncode for child in supervisor.children]
        assert codes == [0, 0]  # both stopped by SIGTERM: left their channels, exited 0
        assert fake.wait_until(
            lambda f: all(
                sum(
                    1
                    for m in f.main_messages
                    if m.direction == "client"
                    and m.op == GatewayOp.VOICE_STATE_UPDATE
                    and m.data is not None
                    and m.data["d"]["guild_id"] == str(g)
                    and m.data["d"]["channel_id"] is None
                )
                >= 1
                for g, _ in joins
            ),
            LONG,
        )


def test_the_sharded_recipe_splits_shards_and_spaces_first_starts() -> None:
    bot = load("sharded_bot")
    assert bot.slices(4, 2) == [[0, 1], [2, 3]] and bot.slices(5, 2) == [[0, 1], [2, 3, 4]]
    supervisor = bot.Supervisor(bot.slices(6, 3), lambda ids: [], {}, max_concurrency=2)
    assert [c.delay for c in supervisor.children] == [0.0, 5.0, 10.0]  # one round per 2 shards


def test_the_sharded_recipe_runs_offline_and_stops_on_ctrl_c() -> None:
    import selectors
    import signal
    import subprocess
    import time

    child = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "sharded_bot.py"), "supervise"],
        env={k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = b""
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + LONG * 6
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            while seen.count(b"voice channel(s)") < 2:  # both groups joined their guilds
                left = deadline - time.monotonic()
                assert left > 0 and selector.select(left), seen
                chunk = os.read(child.stdout.fileno(), 4096)
                assert chunk, seen
                seen += chunk
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=LONG * 4)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert b"shards [0, 1]: in 2 voice channel(s)" in seen + out
    assert b"shards [2, 3]: in 2 voice channel(s)" in seen + out
    assert b"Traceback" not in err

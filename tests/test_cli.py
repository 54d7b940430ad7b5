"""The command line (discord_voice.cli): play and probe against a fake Discord, exit codes, and
one-line errors. Most tests call `main` in this process; the Ctrl-C test runs a real child."""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import sys
import time
import wave
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from discord_voice.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, main
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP
from discord_voice.core.opcodes import GatewayOp
from discord_voice.testing import FakeDiscord, FakeSpeaker
from tests.timeouts import LONG

ROOT = Path(__file__).resolve().parent.parent
GUILD, CHANNEL = "41771983423143937", "127121515262115840"


def write_tone(path: Path, seconds: float, rate: int = 44100) -> Path:
    samples = array(
        "h",
        (
            round(8000 * math.sin(2 * math.pi * 440 * n / rate))
            for n in range(round(seconds * rate))
        ),
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDiscord]:
    with FakeDiscord(voice_heartbeat_interval=0.5) as running:
        monkeypatch.setenv("DISCORD_TOKEN", running.token)
        yield running


def online(fake: FakeDiscord, *args: str) -> list[str]:
    return [*args, "--gateway-url", fake.gateway_url, "--guild", GUILD, "--channel", CHANNEL]


def leaves(fake: FakeDiscord) -> list[dict[str, object]]:
    return [
        m.data["d"]
        for m in fake.main_messages
        if m.direction == "client"
        and m.op == GatewayOp.VOICE_STATE_UPDATE
        and m.data is not None
        and m.data["d"]["channel_id"] is None
    ]


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[-1].startswith("discord-voice: error: ")
    return lines[-1]


def test_play_offline_into_the_built_in_fake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    path = write_tone(tmp_path / "tone.wav", 0.5)
    assert main(["play", str(path), "--fake"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "25 audio (25 decrypted by its libdave member" in out and "5 silence" in out
    assert "played 0:00 / 0:00" in err or "played 0:01 / 0:00" in err


def test_play_with_a_token_joins_plays_and_leaves(
    fake: FakeDiscord, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_tone(tmp_path / "tone.wav", 0.4)
    assert main(online(fake, "play", str(path), "--volume", "0.5", "--bitrate", "32000")) == 0
    session = fake.voice_sessions[-1]
    frames = fake.wait_for_frames(20 + SILENCE_FRAMES_ON_STOP, LONG, ssrc=session.ssrc)
    assert [f.opus for f in frames[-SILENCE_FRAMES_ON_STOP:]] == [OPUS_SILENCE_FRAME] * 5
    assert len(fake.frames(session.ssrc)) - SILENCE_FRAMES_ON_STOP == 20  # 0.4 s of 20 ms
    assert all(f.dave == "decrypted" for f in frames[:-SILENCE_FRAMES_ON_STOP])
    assert len(leaves(fake)) == 1
    assert fake.violations == []
    assert "played 0:00 / 0:00" in capsys.readouterr().err


def test_a_refused_token_is_one_line_and_exit_1(
    fake: FakeDiscord,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "not-the-token")
    path = write_tone(tmp_path / "tone.wav", 0.1)
    assert main(online(fake, "play", str(path))) == EXIT_FAILURE
    line = one_line_error(capsys.readouterr().err)
    assert "refused the token" in line and "4004" in line
    assert "not-the-token" not in line


def test_a_missing_file_is_one_line_and_exit_1(
    fake: FakeDiscord, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.mp3"
    assert main(online(fake, "play", str(missing))) == EXIT_FAILURE
    assert one_line_error(capsys.readouterr().err).endswith(f"no such file: {missing}")
    assert fake.main_sessions == []  # it failed before connecting


def test_no_ffmpeg_says_how_to_get_one(
    fake: FakeDiscord,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISCORD_VOICE_FFMPEG", str(tmp_path / "no-ffmpeg-here"))
    path = write_tone(tmp_path / "tone.wav", 0.1)  # 44.1 kHz mono: needs FFmpeg
    assert main(online(fake, "play", str(path))) == EXIT_FAILURE
    line = one_line_error(capsys.readouterr().err)
    assert "discord-voice[ffmpeg]" in line and "DISCORD_VOICE_FFMPEG" in line


def test_a_join_that_times_out_names_the_stage_and_the_likely_cause(
    fake: FakeDiscord, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.withhold("voice_state_update")  # as without the GUILD_VOICE_STATES intent
    path = write_tone(tmp_path / "tone.wav", 0.1)
    assert main([*online(fake, "play", str(path)), "--timeout", "0.5"]) == EXIT_FAILURE
    line = one_line_error(capsys.readouterr().err)
    assert "voice_state_update" in line and "GUILD_VOICE_STATES" in line


@pytest.mark.parametrize(
    "args",
    [
        ["play", "x.wav", "--fake", "--gateway-url", "ws://127.0.0.1:1"],
        ["play", "x.wav", "--fake", "--volume", "3"],
        ["play", "x.wav"],  # no --guild/--channel
        ["probe"],
    ],
)
def test_usage_mistakes_exit_2(
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    monkeypatch.chdir(tmp_path)
    write_tone(tmp_path / "x.wav", 0.1)
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_probe_reports_the_connection_and_writes_a_trace_without_secrets(
    fake: FakeDiscord, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.jsonl"
    args = [*online(fake, "probe"), "--trace", str(trace), "--latency-wait", str(LONG)]
    assert main(args) == EXIT_OK
    out, err = capsys.readouterr()
    report = dict(
        line.split(None, 1)
        for line in out.replace("voice server", "voice_server")
        .replace("ip discovery", "ip_discovery")
        .splitlines()
    )
    session = fake.voice_sessions[-1]
    assert report["transport"] == session.mode
    assert report["ssrc"] == str(session.ssrc)
    assert report["end-to-end"].startswith("DAVE protocol v1, epoch 1, privacy code ")
    assert session.discovered_address is not None
    host, port = session.discovered_address
    assert report["ip_discovery"] == f"{host}:{port}"
    assert report["latency"].endswith("ms (voice heartbeat)")
    text = trace.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    assert f"trace: {len(records)} records" in err
    assert session.secret_key is not None and session.session_id is not None
    for secret in (fake.token, session.session_id, session.secret_key.hex()):
        assert secret not in text
    assert {r["channel"] for r in records} == {"main gateway websocket", "voice websocket"}


def interrupted(
    fake: FakeDiscord, args: list[str], ready: Callable[[subprocess.Popen[str]], str]
) -> tuple[str, str]:
    """Runs ``python -m discord_voice *args`` against `fake` in a child process, sends it SIGINT
    once `ready(child)` returns (the stderr it read), checks exit 130 and no traceback, and
    returns the child's stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISCORD_TOKEN": fake.token}
    child = subprocess.Popen(
        [sys.executable, "-m", "discord_voice", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        early = ready(child)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=LONG * 3)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    err = early + err
    assert child.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    return out, err


def stderr_until(child: subprocess.Popen[str], text: str, timeout: float) -> str:
    """What the child writes on stderr, read until `text` appears (AssertionError after
    `timeout` seconds or at its end)."""
    assert child.stderr is not None
    fd, seen = child.stderr.fileno(), b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and selector.select(left), f"no {text!r} on stderr: {seen!r}"
            chunk = os.read(fd, 4096)
            assert chunk, f"stderr ended before {text!r}: {seen!r}"
            seen += chunk
    return seen.decode()


def test_ctrl_c_stops_with_silence_leaves_and_exits_130(fake: FakeDiscord, tmp_path: Path) -> None:
    path = write_tone(tmp_path / "long.wav", 30.0, rate=8000)

    def playing(child: subprocess.Popen[str]) -> str:
        assert fake.wait_until(
            lambda f: bool(f.voice_sessions) and len(f.frames(f.voice_sessions[-1].ssrc)) >= 5,
            LONG * 3,
        )
        return ""

    interrupted(fake, online(fake, "play", str(path)), playing)
    ssrc = fake.voice_sessions[-1].ssrc
    silence = [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
    assert fake.wait_until(lambda f: [x.opus for x in f.frames(ssrc)[-5:]] == silence, LONG)
    frames = fake.frames(ssrc)
    assert len(frames) < 30 * 50  # stopped, not played out
    assert fake.wait_until(lambda f: len(leaves(f)) == 1, LONG)


def test_the_command_line_needs_no_testing_extra_until_it_runs_offline() -> None:
    # as on a plain `pip install discord-voice`: the fake's dependencies are missing
    code = """
import sys
for name in ("websockets", "cryptography", "Crypto", "dave"):
    sys.modules[name] = None  # importing them raises ImportError
import discord_voice.cli, discord_voice.offline
assert not any(m.startswith("discord_voice.testing") for m in sys.modules), "imported"
from discord_voice.offline import discord_or_fake
from discord_voice.errors import VoiceError
try:
    with discord_or_fake(None):
        pass
except VoiceError as exc:
    assert "discord-voice[testing]" in str(exc), exc
else:
    raise AssertionError("no error")
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_record_offline_writes_each_speaker_to_a_wav_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    out_dir = tmp_path / "recording"
    assert main(["record", str(out_dir), "--fake", "--seconds", "1"]) == EXIT_OK
    out, err = capsys.readouterr()
    files = list(out_dir.glob("*.wav"))
    assert len(files) == 1 and str(files[0]) in out
    assert "1 speaker(s) recorded" in err
    with wave.open(str(files[0]), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 48000)
        assert wav.getnframes() / 48000 == pytest.approx(1.0, abs=0.06)  # the fake's 1 s tone


def test_record_with_mix_writes_the_channel_to_one_more_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    out_dir = tmp_path / "recording"
    assert main(["record", str(out_dir), "--fake", "--seconds", "1", "--mix"]) == EXIT_OK
    out, _ = capsys.readouterr()
    mix = out_dir / "mix.wav"
    assert f"mix\t{mix}" in out and len(list(out_dir.glob("*.wav"))) == 2
    with wave.open(str(mix), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 48000)
        assert wav.getnframes() / 48000 == pytest.approx(1.0, abs=0.1)  # the one speaker
        assert any(wav.readframes(wav.getnframes()))


def test_ctrl_c_while_recording_keeps_finished_files_and_exits_130(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    from discord_voice.opus import encode_frames, tone

    out_dir = tmp_path / "recording"
    speakers: list[FakeSpeaker] = []

    def recording(child: subprocess.Popen[str]) -> str:
        early = stderr_until(child, "recording channel", LONG * 3)
        speakers.append(fake.add_speaker())
        speakers[0].send(list(encode_frames(tone(440.0, 0.5))))  # settles DAVE first
        return early + stderr_until(child, "1 speaker(s) heard", LONG * 3)  # in its files

    args = online(fake, "record", str(out_dir), "--seconds", "600", "--mix")
    out, err = interrupted(fake, args, recording)
    assert "1 speaker(s) recorded" in err
    member_file = out_dir / f"{speakers[0].user_id}.wav"
    for path in (member_file, out_dir / "mix.wav"):
        assert str(path) in out
        with wave.open(str(path), "rb") as wav:  # finished: the header matches the data
            frames = wav.getnframes()
            assert 0 < frames <= 48000 and frames * 4 + 44 == path.stat().st_size
    assert fake.wait_until(lambda f: len(leaves(f)) == 1, LONG)


def test_shard_option_identifies_as_that_shard_and_refuses_another_shards_guild(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from discord_voice.offline import OFFLINE_GUILD_ID

    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    out = str(tmp_path / "rec")
    # the offline guild belongs to shard 2 of 4
    assert main(["record", out, "--fake", "--shard", "2/4", "--seconds", "0.3"]) == EXIT_OK
    capsys.readouterr()
    assert main(["record", out, "--fake", "--shard", "1/4", "--seconds", "0.3"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"guild {OFFLINE_GUILD_ID} belongs to shard 2/4, not 1/4" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("shard", ["4/4", "x", "1-4"])
def test_a_bad_shard_is_a_usage_error(shard: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["probe", "--fake", "--shard", shard])
    assert info.value.code == 2 and "--shard" in capsys.readouterr().err

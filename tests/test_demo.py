"""The quick-start demo runs the whole flow and reports what the fake Discord received."""

from __future__ import annotations

import io

import pytest

from discord_voice.cli import main
from discord_voice.core.opcodes import MODE_XCHACHA20
from discord_voice.demo import run_demo


def test_demo_report_is_truthful() -> None:
    out = io.StringIO()
    report = run_demo(seconds=0.4, mode=MODE_XCHACHA20, out=out)
    assert report.mode == MODE_XCHACHA20
    assert report.e2ee.startswith("DAVE v1, epoch 1, privacy code ")
    assert report.frames_sent == 20 + 5 and report.frames_received == 25
    assert report.frames_intact == 20 and report.silence_frames == 5
    assert report.threads_left == 0
    assert 0 < report.join_seconds < 5
    text = out.getvalue()
    assert "result               OK" in text and "byte-identical" in text


def test_demo_without_dave() -> None:
    report = run_demo(seconds=0.2, dave=False, out=io.StringIO())
    assert report.e2ee == "off (no DAVE)" and report.frames_intact == 10


def test_demo_cli_rejects_unknown_modes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--mode", "xsalsa20"])
    assert "invalid choice" in capsys.readouterr().err

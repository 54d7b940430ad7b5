"""A script that never closes anything still exits promptly (no hang on non-daemon threads)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import logging
    import discord_voice as dv
    from discord_voice.testing import FakeDiscord

    logging.basicConfig(level=logging.WARNING)
    fake = FakeDiscord().start()
    gw = dv.Gateway(fake.token, url=fake.gateway_url)
    gw.connect(timeout=5)
    conn = dv.Voice(gw).join_channel(1, 2, timeout=5)
    conn.opus_send.put(b"\\xf8frame")  # a 20 ms Opus packet (TOC 0xf8)
    print("joined", flush=True)
    # no disconnect(), no gw.close(), no fake.close(): the interpreter must still exit
""")


def test_forgotten_connections_are_closed_at_interpreter_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "joined"
    assert "voice connection in guild 1 still open at interpreter exit" in done.stderr
    assert "main gateway still open at interpreter exit" in done.stderr

"""How to test your own bot offline with discord_voice.testing (run with pytest).

pip install "discord-voice[testing]" pytest
pytest examples/test_with_fake_discord.py
"""

from __future__ import annotations

import discord_voice as dv
from discord_voice.testing import FakeDiscord


def play(gateway_url: str, token: str, frames: list[bytes]) -> None:
    """The code under test: a tiny 'bot' that joins, plays frames and leaves."""
    with dv.Gateway(token, url=gateway_url) as gw:
        gw.connect(timeout=5)
        with dv.Voice(gw) as voice, voice.join_channel(1234, 5678, timeout=5) as conn:
            for frame in frames:
                conn.opus_send.put(frame)
            conn.stop_speaking()


def test_bot_plays_every_frame_in_order() -> None:
    # 20 ms Opus packets (TOC byte 0xF8: CELT fullband, 20 ms, one frame); any payload will do
    frames = [b"\xf8" + bytes([n]) * 20 for n in range(50)]
    with FakeDiscord() as fake:
        play(fake.gateway_url, fake.token, frames)
        received = fake.wait_for_frames(55, timeout=5)
        assert [f.opus for f in received] == frames + [dv.OPUS_SILENCE_FRAME] * 5
        assert not fake.violations and not fake.udp_errors

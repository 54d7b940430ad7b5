"""A fake Discord for tests: real websocket and UDP servers on 127.0.0.1, no network needed.

`FakeDiscord` runs a main gateway (v10 JSON), a voice gateway (v8) and a voice UDP server that
decrypts what it receives (``aead_aes256_gcm_rtpsize`` / ``aead_xchacha20_poly1305_rtpsize``)
with implementations independent of ``discord_voice.core``. It is strict: whatever Discord would
refuse, it refuses with Discord's close code, and it records the violation so a test can assert
there were none::

    from discord_voice.testing import FakeDiscord

    with FakeDiscord() as fake:
        ...  # connect your bot to fake.gateway_url with fake.token, join, play
        fake.wait_for_frames(10)
        assert fake.violations == [] and fake.udp_errors == []

`FakeClock` (logical time for pacing and heartbeat logic) lives here too. Needs the ``testing``
extra: ``pip install discord-voice[testing]`` (websockets, cryptography, pycryptodome).
"""

from __future__ import annotations

from discord_voice.testing.clock import FakeClock
from discord_voice.testing.fake_discord import FakeDiscord
from discord_voice.testing.records import (
    MainSession,
    ReceivedFrame,
    RecordedMessage,
    VoiceSession,
)

__all__ = [
    "FakeDiscord",
    "RecordedMessage",
    "ReceivedFrame",
    "VoiceSession",
    "MainSession",
    "FakeClock",
]

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
extra: ``pip install discord-voice[testing]`` (websockets, cryptography, pycryptodome, dave-py).

The names below are the public API. How the fake is built, for those who read or extend it:

- `fake_discord`: `FakeDiscord`, the one public class; it owns and wires everything else.
- `gateways`: the main gateway (v10) and the voice gateway (v8) on websockets' sync server, their
  sessions that outlive a websocket (resume), the shape checks answered with close codes.
- `udp`: the voice UDP server (IP discovery, RTP, transport decryption), seeded impairment.
- `dave`: Discord's side of DAVE: the MLS external sender, each channel's group, libdave members.
- `speakers`: `FakeSpeaker`, members played by the fake who send audio to the clients (for
  testing a receive path); it drives the other three parts and is driven by `fake_discord`.
- `records` (what the fake saw and sent), `world` (configuration, issued credentials, scripted
  faults) and `clock` (`FakeClock`): shared by the parts. The parts depend one way:
  ``speakers`` uses ``gateways``, ``udp`` and ``dave``; ``gateways`` uses ``udp`` and ``dave``,
  ``udp`` uses ``dave``, and none uses `fake_discord`.
"""

from __future__ import annotations

from discord_voice.testing.clock import FakeClock
from discord_voice.testing.fake_discord import FakeDiscord
from discord_voice.testing.records import (
    MainSession,
    ReceivedFrame,
    RecordedMessage,
    SentPacket,
    VoiceSession,
)
from discord_voice.testing.speakers import FakeSpeaker

__all__ = [
    "FakeDiscord",
    "FakeSpeaker",
    "RecordedMessage",
    "ReceivedFrame",
    "SentPacket",
    "VoiceSession",
    "MainSession",
    "FakeClock",
]

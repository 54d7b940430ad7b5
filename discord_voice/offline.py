"""A connected `Gateway` to real Discord with a token, or to a local fake Discord without one.

For scripts and examples that should also run offline::

    with discord_or_fake(os.environ.get("DISCORD_TOKEN")) as session:
        voice = Voice(session.gateway)
        conn = voice.join_channel(session.guild_id or GUILD, session.channel_id or CHANNEL)
        ...
        if session.fake is not None:
            print(session.received_summary(conn.ssrc))

Offline, the fake runs with DAVE on and a libdave member in the channel, so what the script
sends is decrypted as another member of the call would hear it. The fake needs the ``testing``
extra (``pip install "discord-voice[testing]"``); it is imported only when there is no token, so
a script with a token runs on the plain install.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from discord_voice.core.frames import OPUS_SILENCE_FRAME
from discord_voice.core.sharding import Shard
from discord_voice.errors import VoiceError
from discord_voice.gateway import Gateway

if TYPE_CHECKING:
    from discord_voice.testing.fake_discord import FakeDiscord

__all__ = ["OFFLINE_CHANNEL_ID", "OFFLINE_GUILD_ID", "OfflineSession", "discord_or_fake"]

#: The guild and channel an offline session joins when the caller gives none.
OFFLINE_GUILD_ID = 41771983423143937
OFFLINE_CHANNEL_ID = 127121515262115840


@dataclass(frozen=True)
class OfflineSession:
    """A connected gateway and, offline, the fake Discord it is connected to."""

    gateway: Gateway
    fake: FakeDiscord | None

    def received_summary(self, ssrc: int | None) -> str:
        """One line: what the fake received from `ssrc` (empty string when online)."""
        if self.fake is None or ssrc is None:
            return ""
        frames = self.fake.frames(ssrc)
        audio = [f for f in frames if f.opus != OPUS_SILENCE_FRAME]
        decrypted = sum(1 for f in audio if f.dave == "decrypted")
        return (
            f"the fake Discord received {len(frames)} packets from ssrc {ssrc}: "
            f"{len(audio)} audio ({decrypted} decrypted by its libdave member, "
            f"{sum(len(f.opus) for f in audio)} bytes of Opus), "
            f"{len(frames) - len(audio)} silence"
        )


@contextlib.contextmanager
def discord_or_fake(
    token: str | None,
    *,
    gateway_url: str | None = None,
    timeout: float = 30.0,
    shard: Shard | None = None,
    **fake_options: Any,
) -> Iterator[OfflineSession]:
    """Connect a `Gateway` with `token` (to `gateway_url` if given; as `shard` if given), or,
    without a token, to a `FakeDiscord(**fake_options)` started here (needing that shard's
    count of shards); close both on exit."""
    fake: FakeDiscord | None = None
    if not token:
        try:
            from discord_voice.testing import FakeDiscord
        except ImportError as exc:
            raise VoiceError(
                f"without DISCORD_TOKEN this runs against a local fake Discord, which needs "
                f'the testing extra: pip install "discord-voice[testing]" ({exc})'
            ) from exc
        if shard is not None:
            fake_options.setdefault("shards", shard.shard_count)
        fake = FakeDiscord(**fake_options).start()
        token, gateway_url = fake.token, fake.gateway_url
    try:
        gateway = Gateway(token, url=gateway_url, shard=shard)
        try:
            gateway.connect(timeout=timeout)
            yield OfflineSession(gateway, fake)
        finally:
            gateway.close()
    finally:
        if fake is not None:
            fake.close()

"""The contract between the voice layer and whatever talks to Discord's main gateway.

`Voice` needs three things from a main gateway: the bot's user id, a way to send a Voice State
Update (op 4), and the VOICE_STATE_UPDATE / VOICE_SERVER_UPDATE dispatches delivered to it.
`discord_voice.Gateway` implements this protocol; a bot that already runs its own gateway client
can implement it in a few lines (see the README, "Embedding in your own bot").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["MainGateway", "ShardedGateway", "VoiceEventHandler"]


@runtime_checkable
class VoiceEventHandler(Protocol):
    """Receives the two voice dispatches. `Voice` implements it.

    Thread safety: called from the gateway's reader thread; implementations must not block.
    """

    def on_voice_state_update(self, data: Mapping[str, Any]) -> None:
        """The ``d`` of a VOICE_STATE_UPDATE dispatch, unchanged."""
        ...

    def on_voice_server_update(self, data: Mapping[str, Any]) -> None:
        """The ``d`` of a VOICE_SERVER_UPDATE dispatch, unchanged."""
        ...


@runtime_checkable
class MainGateway(Protocol):
    """What `Voice` needs from a main gateway connection.

    Thread safety: `update_voice_state` may be called from any thread.
    """

    @property
    def user_id(self) -> int | None:
        """The bot's user id, known once the gateway is READY (None before)."""
        ...

    def update_voice_state(
        self, guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None:
        """Send op 4 Voice State Update; ``channel_id=None`` leaves voice in that guild.

        Ids arrive as decimal strings. Raises a `discord_voice.VoiceError` subclass when the
        payload cannot be sent (for example `ConnectionClosed`).
        """
        ...

    def add_voice_handler(self, handler: VoiceEventHandler) -> Callable[[], None]:
        """Deliver every VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE to `handler` from now on.

        Returns a function that removes the handler again.
        """
        ...


@runtime_checkable
class ShardedGateway(Protocol):
    """Optional: a main gateway that serves only some guilds (a shard, or a group of shards).

    `Voice.join_channel` asks before sending anything and raises `discord_voice.WrongShard`
    with the reason when the gateway cannot carry the guild's voice. `discord_voice.Gateway`
    and `discord_voice.ShardGroup` implement it; an unsharded gateway need not.
    """

    def shard_mismatch(self, guild_id: str) -> str | None:
        """None if this gateway owns `guild_id`; else why not (which shard does)."""
        ...

"""Embed discord_voice in a bot that already runs its own gateway client.

`Voice` only needs a `MainGateway`: the bot's user id, a way to send op 4 (Voice State Update),
and the two voice dispatches delivered to it. This adapter shows the whole contract; wire
`on_dispatch` into your client's event handling and `send_json` to its websocket send.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import discord_voice as dv


class MyGatewayAdapter:
    """Satisfies `discord_voice.MainGateway` for a gateway client we do not control."""

    def __init__(self, send_json: Callable[[dict[str, Any]], None]) -> None:
        self._send_json = send_json
        self._user_id: int | None = None
        self._handlers: list[dv.VoiceEventHandler] = []
        self._lock = threading.Lock()

    @property
    def user_id(self) -> int | None:
        return self._user_id

    def update_voice_state(
        self, guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None:
        self._send_json(
            {
                "op": 4,
                "d": {
                    "guild_id": guild_id,
                    "channel_id": channel_id,
                    "self_mute": self_mute,
                    "self_deaf": self_deaf,
                },
            }
        )

    def add_voice_handler(self, handler: dv.VoiceEventHandler) -> Callable[[], None]:
        with self._lock:
            self._handlers.append(handler)
        return lambda: self._handlers.remove(handler)

    def on_dispatch(self, event: str, data: Mapping[str, Any]) -> None:
        """Call this from your client for every dispatch (it never blocks)."""
        if event == "READY":
            self._user_id = int(data["user"]["id"])
        elif event == "VOICE_STATE_UPDATE":
            for handler in list(self._handlers):
                handler.on_voice_state_update(data)
        elif event == "VOICE_SERVER_UPDATE":
            for handler in list(self._handlers):
                handler.on_voice_server_update(data)


# usage:
#   adapter = MyGatewayAdapter(my_client.send_json)
#   my_client.add_listener(adapter.on_dispatch)
#   voice = dv.Voice(adapter)                      # checks nothing more: duck typing
#   conn = voice.join_channel(guild_id, channel_id)
assert isinstance(MyGatewayAdapter(lambda payload: None), dv.MainGateway)

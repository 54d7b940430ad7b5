"""One voice connection's membership in its channel's DAVE group (used by the voice gateway).

The connection's handler thread calls `DaveLink` for the DAVE ops it receives (JSON 23/31,
binary 26/28); what the group sends back goes through the connection's outbox, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from discord_voice.core.opcodes import VoiceCloseCode, VoiceOp
from discord_voice.testing.dave.hub import DaveHub
from discord_voice.testing.dave.members import ClientMember
from discord_voice.testing.gateways.ws import CloseWith

__all__ = ["DaveLink"]


class DaveLink:
    """Created after Session Description in a DAVE channel; `leave` when the websocket ends."""

    def __init__(
        self,
        hub: DaveHub,
        channel_id: int,
        user_id: int,
        where: str,
        post: Callable[[tuple[Any, ...]], object],
    ) -> None:
        self.hub = hub
        self.channel_id = channel_id
        self.member = ClientMember(user_id, where, post)
        hub.ensure_listener(channel_id)
        member = self.member
        hub.run(channel_id, lambda g: g.join(member))

    def on_json(self, op: int, d: Any) -> None:
        """Op 23 (ready for transition) or 31 (invalid commit/welcome)."""
        if not isinstance(d, dict) or type(d.get("transition_id")) is not int:
            raise CloseWith(
                VoiceCloseCode.BAD_REQUEST, f"bad request: op {op} d needs an integer transition_id"
            )
        member, tid = self.member, d["transition_id"]
        if op == VoiceOp.DAVE_TRANSITION_READY:
            self.hub.run(self.channel_id, lambda g: g.ready(member, tid))
        else:
            self.hub.run(self.channel_id, lambda g: g.invalid(member, tid))

    def on_binary(self, op: int, body: bytes) -> None:
        """Op 26 (key package) or 28 (commit and maybe welcome)."""
        member = self.member
        if op == VoiceOp.DAVE_MLS_KEY_PACKAGE:
            self.hub.run(self.channel_id, lambda g: g.key_package(member, body))
        else:
            self.hub.run(self.channel_id, lambda g: g.commit_welcome(member, body))

    def leave(self) -> None:
        self.hub.leave(self.channel_id, self.member)

"""Who is in each voice channel: the client sessions ready to hear, the members the fake plays.

Discord tells each client of a call who else is connected: op 11 Clients Connect
(``{"user_ids": [...]}``) and op 13 Client Disconnect (``{"user_id": ...}``). In a DAVE channel
the channel's DAVE group already does that for every member, clients and libdave members alike
(see `discord_voice.testing.dave.group`); for the members the fake plays in a channel without
DAVE, the `Roster` does it: to the clients already there when a member comes or goes, and to a
client when its session becomes ready (after its Session Description) for the members already
there. It also lists a channel's ready client sessions, to whom the members' audio is sent.
"""

from __future__ import annotations

import threading
from typing import Any

from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing.gateways.voice_live import LiveVoice

__all__ = ["Roster"]


class Roster:
    """Ready client sessions and played members, by channel id; every method is thread-safe.

    Messages go through each session's `LiveVoice.post` (in order with everything else the
    session is sent, kept for a resume while it is detached); `_lock` is held while posting so
    that a member and a client arriving at the same time meet exactly once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[int, list[LiveVoice]] = {}
        # channel id -> {user id: whether the roster announces it (False: its DAVE group does)}
        self._members: dict[int, dict[int, bool]] = {}

    def client_ready(self, live: LiveVoice, channel_id: int) -> None:
        """A client session got its Session Description: it hears the channel from now on and
        learns (op 11) of the members already there that the roster announces."""
        with self._lock:
            clients = self._clients.setdefault(channel_id, [])
            if live not in clients:
                clients.append(live)
            present = [u for u, own in self._members.get(channel_id, {}).items() if own]
            if present:
                live.post(
                    _message(VoiceOp.CLIENTS_CONNECT, {"user_ids": [str(u) for u in present]})
                )

    def clients(self, channel_id: int) -> list[LiveVoice]:
        """The channel's ready client sessions that have not ended, oldest first."""
        with self._lock:
            alive = [v for v in self._clients.get(channel_id, []) if not v.ended]
            self._clients[channel_id] = alive
            return list(alive)

    def add_member(self, channel_id: int, user_id: int, *, announce: bool) -> None:
        """A member the fake plays joins; with `announce`, ready clients get op 11 for it."""
        with self._lock:
            self._members.setdefault(channel_id, {})[user_id] = announce
            if announce:
                for live in self._clients.get(channel_id, []):
                    live.post(_message(VoiceOp.CLIENTS_CONNECT, {"user_ids": [str(user_id)]}))

    def remove_member(self, channel_id: int, user_id: int) -> None:
        """The member leaves; if the roster announced it, ready clients get op 13."""
        with self._lock:
            announced = self._members.get(channel_id, {}).pop(user_id, False)
            if announced:
                for live in self._clients.get(channel_id, []):
                    live.post(_message(VoiceOp.CLIENT_DISCONNECT, {"user_id": str(user_id)}))


def _message(op: int, d: dict[str, Any]) -> tuple[Any, ...]:
    """A posted JSON message with the session's next ``seq`` (see `LiveVoice.post`)."""
    return ("send", {"op": int(op), "d": d}, True)

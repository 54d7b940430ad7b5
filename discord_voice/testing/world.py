"""State shared by the fake's servers: configuration, scripted faults, issued voice credentials."""

from __future__ import annotations

import hmac
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "WITHHOLDABLE",
    "Config",
    "Credentials",
    "IssuedVoice",
    "Script",
    "is_snowflake",
    "voice_state",
]

#: Names accepted by `FakeDiscord.withhold` ("heartbeat_ack" is the voice gateway's op 6;
#: "main_heartbeat_ack" the main gateway's op 11; "ready" the voice gateway's op 2, while
#: "main_ready" and "main_resumed" are the main gateway's READY and RESUMED dispatches).
WITHHOLDABLE = frozenset(
    {
        "voice_state_update",
        "voice_server_update",
        "hello",
        "ready",
        "session_description",
        "ip_discovery",
        "heartbeat_ack",
        "main_heartbeat_ack",
        "main_ready",
        "main_resumed",
    }
)

_SNOWFLAKE = re.compile(r"[0-9]{1,20}")


def is_snowflake(value: object) -> bool:
    """A Discord id as it travels in JSON: a string of 1-20 ASCII digits."""
    return isinstance(value, str) and _SNOWFLAKE.fullmatch(value) is not None


@dataclass(frozen=True)
class Config:
    """The constructor arguments of `FakeDiscord`, checked."""

    token: str = field(repr=False)
    user_id: int
    modes: tuple[str, ...]
    main_heartbeat_ms: int
    voice_heartbeat_ms: int
    event_order: str
    voice_hello_first: bool
    endpoint_scheme: bool
    voice_resume_window: float = 5.0  # seconds a detached voice session stays resumable
    main_rate_limit: int = 120  # main gateway events per RATE_WINDOW before 4008
    shards: int = 1  # shards the bot needs (Get Gateway Bot's ``shards``; fewer: 4011)
    max_concurrency: int | None = None  # Identifies per 5 s bucket (more: op 9); None: no limit
    session_starts: int = 1000  # Identifies allowed a day (``session_start_limit.total``)


@dataclass(frozen=True)
class IssuedVoice:
    """What one op 4 join handed out; the voice gateway accepts an Identify that matches it."""

    guild_id: str
    channel_id: str
    user_id: str
    session_id: str
    token: str = field(repr=False)


def voice_state(
    guild_id: str,
    channel_id: str | None,
    user_id: str,
    session_id: str,
    *,
    self_mute: bool = False,
    self_deaf: bool = False,
) -> dict[str, Any]:
    """The ``d`` of a VOICE_STATE_UPDATE as Discord sends it (`channel_id` None: the user left
    voice); no server mute or deafen, no video."""
    return {
        "guild_id": guild_id,
        "channel_id": channel_id,
        "user_id": user_id,
        "session_id": session_id,
        "deaf": False,
        "mute": False,
        "self_deaf": self_deaf,
        "self_mute": self_mute,
        "self_video": False,
        "suppress": False,
        "request_to_speak_timestamp": None,
    }


class Credentials:
    """Voice sessions issued by the main gateway; the latest join per guild is the valid one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_guild: dict[str, IssuedVoice] = {}
        self._others: dict[tuple[str, str], IssuedVoice] = {}  # scripted users, by (guild, user)

    def issue(self, guild_id: str, channel_id: str, user_id: str) -> IssuedVoice:
        issued = IssuedVoice(
            guild_id, channel_id, user_id, secrets.token_hex(16), secrets.token_hex(8)
        )
        with self._lock:
            self._by_guild.pop(guild_id, None)  # re-insert: the dict is in order of last join
            self._by_guild[guild_id] = issued
        return issued

    def reissue(self, guild_id: str, channel_id: str) -> IssuedVoice:
        """A move (or a new server): same session id, new channel and token."""
        with self._lock:
            old = self._by_guild.get(guild_id)
            if old is None:
                raise RuntimeError(f"the bot has no voice session in guild {guild_id}")
            issued = IssuedVoice(
                guild_id, channel_id, old.user_id, old.session_id, secrets.token_hex(8)
            )
            self._by_guild[guild_id] = issued
        return issued

    def current(self, guild_id: str | None) -> IssuedVoice:
        """The bot's voice session in `guild_id` (the guild it joined last when None)."""
        with self._lock:
            if guild_id is None:
                if not self._by_guild:
                    raise RuntimeError("the bot has joined no voice channel")
                guild_id = next(reversed(self._by_guild))
            issued = self._by_guild.get(guild_id)
        if issued is None:
            raise RuntimeError(f"the bot has no voice session in guild {guild_id}")
        return issued

    def issue_other(self, guild_id: str, channel_id: str, user_id: str) -> IssuedVoice:
        """Voice credentials for a user other than the bot (a second client in a channel)."""
        issued = IssuedVoice(
            guild_id, channel_id, user_id, secrets.token_hex(16), secrets.token_hex(8)
        )
        with self._lock:
            self._others[(guild_id, user_id)] = issued
        return issued

    def revoke(self, guild_id: str) -> IssuedVoice | None:
        with self._lock:
            return self._by_guild.pop(guild_id, None)

    def match(
        self, server_id: str, user_id: str, session_id: str, token: str
    ) -> IssuedVoice | None:
        with self._lock:
            issued = self._by_guild.get(server_id)
            if issued is None or issued.user_id != user_id:
                issued = self._others.get((server_id, user_id), issued)
        if issued is None:
            return None
        ok = hmac.compare_digest(issued.token.encode(), token.encode())
        if ok and issued.user_id == user_id and issued.session_id == session_id:
            return issued
        return None


class Script:
    """Faults a test asked for: withheld messages and one-shot voice closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._withheld: set[str] = set()
        self._close_on: list[tuple[int, int, str]] = []

    def withhold(self, names: tuple[str, ...]) -> None:
        unknown = sorted(set(names) - WITHHOLDABLE)
        if unknown:
            raise ValueError(f"cannot withhold {unknown}; choose from {sorted(WITHHOLDABLE)}")
        with self._lock:
            self._withheld.update(names)

    def release(self, names: tuple[str, ...]) -> None:
        with self._lock:
            self._withheld.difference_update(names if names else tuple(self._withheld))

    def withheld(self, name: str) -> bool:
        with self._lock:
            return name in self._withheld

    def arm_close(self, op: int, code: int, reason: str) -> None:
        with self._lock:
            self._close_on.append((op, code, reason))

    def take_close(self, op: int) -> tuple[int, str] | None:
        """The armed close for client op `op`, consumed (first armed first)."""
        with self._lock:
            for position, (armed_op, code, reason) in enumerate(self._close_on):
                if armed_op == op:
                    del self._close_on[position]
                    return code, reason
        return None

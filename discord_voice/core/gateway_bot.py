"""Get Gateway Bot (``GET /gateway/bot``): what its answer means, without I/O.

The answer gives the gateway URL, the recommended shard count and the session start limit
(``reset_after`` in milliseconds, made a time on the caller's clock here). Everything is
checked: a malformed answer is a `RemoteProtocolError`, never a half-filled object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from discord_voice.core.sharding import SessionStartLimit
from discord_voice.errors import RemoteProtocolError

__all__ = ["DISCORD_API", "GatewayBot", "parse_gateway_bot"]

#: Discord's HTTP API (v10), to which routes are appended.
DISCORD_API: Final = "https://discord.com/api/v10"


@dataclass(frozen=True)
class GatewayBot:
    """Get Gateway Bot's answer: ``url``, ``shards`` (recommended) and ``session_start_limit``."""

    url: str
    shards: int
    session_start_limit: SessionStartLimit


def _int(data: Any, key: str, minimum: int) -> int:
    value = data.get(key) if isinstance(data, dict) else None
    if type(value) is not int or value < minimum:
        raise RemoteProtocolError(f"get gateway bot: {key!r} is not an integer >= {minimum}")
    return value


def parse_gateway_bot(body: bytes, now: float) -> GatewayBot:
    """The answer in `body` (JSON), its reset time counted from `now` (seconds)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RemoteProtocolError("get gateway bot: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise RemoteProtocolError("get gateway bot: the answer is not an object")
    url = data.get("url")
    if not isinstance(url, str) or not url.startswith(("wss://", "ws://")):
        raise RemoteProtocolError("get gateway bot: 'url' is not a websocket URL")
    limit = data.get("session_start_limit")
    return GatewayBot(
        url=url,
        shards=_int(data, "shards", 1),
        session_start_limit=SessionStartLimit(
            total=_int(limit, "total", 0),
            remaining=_int(limit, "remaining", 0),
            reset_at=now + _int(limit, "reset_after", 0) / 1000.0,
            max_concurrency=_int(limit, "max_concurrency", 1),
        ),
    )

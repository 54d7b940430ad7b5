"""Discord's HTTP API, the little a voice library needs of it: Get Gateway Bot, through the
standard library (`urllib.request`), bounded by a timeout, the token never in an error."""

from __future__ import annotations

import urllib.error
import urllib.request

from discord_voice._version import __version__
from discord_voice.clock import Clock, SystemClock
from discord_voice.core.gateway_bot import DISCORD_API, GatewayBot, parse_gateway_bot
from discord_voice.core.main_gateway import redact
from discord_voice.errors import ApiError, LocalProtocolError

__all__ = ["fetch_gateway_bot"]

_MAX_BODY = 1 << 16
_USER_AGENT = f"DiscordBot (https://pypi.org/project/discord-voice/, {__version__})"


def fetch_gateway_bot(
    token: str, *, api_url: str = DISCORD_API, timeout: float = 10.0, clock: Clock | None = None
) -> GatewayBot:
    """``GET {api_url}/gateway/bot`` with the bot token: the gateway URL, the recommended
    shard count and the session start limit (its reset as a time on `clock`).

    Raises `ApiError` (with ``status``) when Discord refuses (401: the token) or cannot be
    reached within `timeout` seconds; `RemoteProtocolError` for a malformed answer.
    """
    if not isinstance(token, str) or not token.strip():
        raise LocalProtocolError("the bot token must be a non-empty string")
    if not timeout > 0:
        raise LocalProtocolError("timeout must be positive")
    clock = clock or SystemClock()
    request = urllib.request.Request(
        api_url.rstrip("/") + "/gateway/bot",
        headers={"Authorization": f"Bot {token}", "User-Agent": _USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read(_MAX_BODY)
    except urllib.error.HTTPError as exc:
        exc.close()  # the answer's socket
        hint = ": the bot token was rejected" if exc.code == 401 else ""
        raise ApiError(f"get gateway bot failed with HTTP {exc.code}{hint}", exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = redact(str(getattr(exc, "reason", exc)), token)
        raise ApiError(f"get gateway bot: no answer from {api_url} ({reason})") from None
    return parse_gateway_bot(body, clock.monotonic())

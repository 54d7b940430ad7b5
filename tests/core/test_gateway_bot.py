"""Get Gateway Bot's answer, parsed (core/gateway_bot.py)."""

from __future__ import annotations

import json

import pytest

from discord_voice.core.gateway_bot import parse_gateway_bot
from discord_voice.errors import RemoteProtocolError

LIMIT = {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}
#: The gateway documentation's example response.
DOCS_EXAMPLE = {"url": "wss://gateway.discord.gg/", "shards": 9, "session_start_limit": LIMIT}


def test_the_documented_example_is_understood() -> None:
    bot = parse_gateway_bot(json.dumps(DOCS_EXAMPLE).encode(), now=100.0)
    assert bot.url == "wss://gateway.discord.gg/" and bot.shards == 9
    limit = bot.session_start_limit
    assert (limit.total, limit.remaining, limit.max_concurrency) == (1000, 999, 1)
    assert limit.reset_at == 100.0 + 14400.0  # reset_after is in milliseconds


@pytest.mark.parametrize(
    "change",
    [
        {"url": "https://gateway.discord.gg"},
        {"url": None},
        {"shards": 0},
        {"shards": "9"},
        {"session_start_limit": None},
        {"session_start_limit": {"total": 1000, "remaining": 1, "reset_after": 1}},
        {"session_start_limit": {**LIMIT, "remaining": -1}},
    ],
)
def test_malformed_answers_are_refused(change: dict[str, object]) -> None:
    body = json.dumps({**DOCS_EXAMPLE, **change}).encode()
    with pytest.raises(RemoteProtocolError, match="get gateway bot"):
        parse_gateway_bot(body, now=0.0)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b"\xff\xfe"])
def test_non_json_answers_are_refused(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="get gateway bot"):
        parse_gateway_bot(body, now=0.0)

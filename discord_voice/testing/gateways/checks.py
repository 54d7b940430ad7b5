"""Shape checks for what clients send: each raises `CloseWith` (Discord's code and a reason that
names the problem) or returns the validated fields. Pure functions, shared by both gateways."""

from __future__ import annotations

import hmac
import json
from typing import Any

from discord_voice.core.opcodes import GatewayCloseCode, VoiceCloseCode
from discord_voice.testing.gateways.ws import CloseWith
from discord_voice.testing.world import is_snowflake

__all__ = [
    "MAX_PAYLOAD",
    "decode_object",
    "main_heartbeat",
    "main_identify",
    "main_voice_state",
    "voice_heartbeat",
    "voice_identify",
    "voice_select",
    "voice_speaking",
]

#: Largest main-gateway payload Discord accepts from a client, in bytes.
MAX_PAYLOAD = 4096
_BAD = VoiceCloseCode.BAD_REQUEST


def decode_object(raw: str, code: int) -> dict[str, Any]:
    """A JSON object with an integer ``op``; closes with `code` (4002) otherwise."""
    try:
        payload = json.loads(raw)
    except ValueError:
        raise CloseWith(code, "payload is not valid json") from None
    if not isinstance(payload, dict) or type(payload.get("op")) is not int:
        raise CloseWith(code, "payload must be a json object with an integer op")
    return payload


# -- main gateway ------------------------------------------------------------------------------


def main_heartbeat(payload: dict[str, Any]) -> int | None:
    d = payload.get("d", ...)
    if not (d is None or type(d) is int):
        raise CloseWith(
            GatewayCloseCode.DECODE_ERROR,
            "heartbeat d must be the last sequence number received, or null",
        )
    return d


def main_identify(d: Any, token: str) -> int:
    """The intents of a valid Identify."""
    if not isinstance(d, dict):
        raise CloseWith(GatewayCloseCode.DECODE_ERROR, "identify d must be an object")
    sent = d.get("token")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), token.encode()):
        raise CloseWith(
            GatewayCloseCode.AUTHENTICATION_FAILED,
            "authentication failed: the token is not the fake's bot token",
        )
    intents = d.get("intents")
    if type(intents) is not int or intents < 0:
        raise CloseWith(
            GatewayCloseCode.INVALID_INTENTS,
            "invalid intents: identify needs a non-negative integer 'intents'",
        )
    props = d.get("properties")
    if not isinstance(props, dict) or not all(
        isinstance(props.get(k), str) for k in ("os", "browser", "device")
    ):
        raise CloseWith(
            GatewayCloseCode.DECODE_ERROR,
            "identify needs 'properties' with string os, browser and device",
        )
    return intents


def main_shard(d: dict[str, Any], required: int) -> tuple[int, int] | None:
    """The ``shard`` of a valid Identify as (id, count), or None without one: 4010 for a
    malformed shard, 4011 when the bot needs `required` shards and asked for fewer."""
    shard = d.get("shard")
    if shard is None:
        if required > 1:
            raise CloseWith(
                GatewayCloseCode.SHARDING_REQUIRED,
                f"sharding required: this bot needs at least {required} shards",
            )
        return None
    if (
        not isinstance(shard, list)
        or len(shard) != 2
        or not all(type(n) is int for n in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise CloseWith(
            GatewayCloseCode.INVALID_SHARD,
            f"invalid shard {shard!r}: [shard_id, shard_count] with 0 <= shard_id < shard_count",
        )
    if shard[1] < required:
        raise CloseWith(
            GatewayCloseCode.SHARDING_REQUIRED,
            f"sharding required: {shard[1]} shards, this bot needs at least {required}",
        )
    return shard[0], shard[1]


def main_voice_state(d: Any) -> tuple[str, str | None]:
    """(guild_id, channel_id) of a valid op 4 Voice State Update."""

    def bad(problem: str) -> CloseWith:
        return CloseWith(GatewayCloseCode.DECODE_ERROR, f"voice state update: {problem}")

    if not isinstance(d, dict):
        raise bad("d must be an object")
    if not is_snowflake(d.get("guild_id")):
        raise bad(f"guild_id must be a snowflake string, got {d.get('guild_id')!r:.30}")
    if "channel_id" not in d:
        raise bad("channel_id is missing (use null to leave)")
    if d["channel_id"] is not None and not is_snowflake(d["channel_id"]):
        raise bad(f"channel_id must be a snowflake string or null, got {d['channel_id']!r:.30}")
    for key in ("self_mute", "self_deaf"):
        if type(d.get(key)) is not bool:
            raise bad(f"{key} must be a boolean, got {d.get(key)!r:.30}")
    return d["guild_id"], d["channel_id"]


# -- voice gateway -----------------------------------------------------------------------------


def voice_heartbeat(d: Any) -> tuple[int, int]:
    """(t, seq_ack) of a v8 heartbeat."""
    if not isinstance(d, dict) or type(d.get("t")) is not int or type(d.get("seq_ack")) is not int:
        raise CloseWith(
            _BAD,
            f'bad request: a v8 heartbeat d must be {{"t": int, "seq_ack": int}}, got {d!r:.40}',
        )
    return d["t"], d["seq_ack"]


def voice_identify(d: Any) -> tuple[str, str, str, str]:
    """(server_id, user_id, session_id, token) as strings; the caller checks they were issued."""
    fields = ("server_id", "user_id", "session_id", "token")
    if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in fields):
        raise CloseWith(
            VoiceCloseCode.AUTHENTICATION_FAILED,
            "authentication failed: identify needs string server_id, user_id, session_id and token",
        )
    if type(d.get("max_dave_protocol_version")) is not int:
        raise CloseWith(_BAD, "bad request: identify needs an integer max_dave_protocol_version")
    return d["server_id"], d["user_id"], d["session_id"], d["token"]


def voice_select(d: Any, modes: tuple[str, ...]) -> tuple[str, int, str]:
    """(address, port, mode) of a Select Protocol choosing an offered mode."""
    if not isinstance(d, dict):
        raise CloseWith(_BAD, "bad request: select protocol d must be an object")
    if d.get("protocol") != "udp":
        raise CloseWith(
            VoiceCloseCode.UNKNOWN_PROTOCOL,
            f"unknown protocol {d.get('protocol')!r:.30} (only udp)",
        )
    data = d.get("data")
    if not isinstance(data, dict):
        data = {}
    address, port, mode = data.get("address"), data.get("port"), data.get("mode")
    if not isinstance(address, str) or type(port) is not int or not isinstance(mode, str):
        raise CloseWith(
            _BAD,
            "bad request: select protocol needs data with string address, integer port and "
            "string mode",
        )
    if mode not in modes:
        raise CloseWith(
            VoiceCloseCode.UNKNOWN_ENCRYPTION_MODE,
            f"unknown encryption mode {mode!r:.40}; offered {list(modes)}",
        )
    return address, port, mode


def voice_speaking(d: Any) -> int:
    """The ``speaking`` bitmask (v4+: an int, not a bool)."""
    if not isinstance(d, dict) or type(d.get("speaking")) is not int:
        raise CloseWith(_BAD, "bad request: speaking d needs an integer 'speaking' bitmask")
    mask: int = d["speaking"]
    return mask

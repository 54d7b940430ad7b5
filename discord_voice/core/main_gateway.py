"""The main (non-voice) gateway protocol, sans-I/O: payloads, events, session and close codes.

Discord gateway v10, JSON encoding, no compression (protocol-facts §1). `GatewaySession` turns
received text into typed events and keeps what a later Resume needs (``session_id``, ``seq``,
``resume_gateway_url``). Heartbeat timing and send pacing live in
`discord_voice.core.main_gateway_timing`. Nothing here touches a socket, a thread or a clock.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from discord_voice.core.opcodes import MAIN_GATEWAY_VERSION, GatewayCloseCode, GatewayOp
from discord_voice.core.sharding import Shard
from discord_voice.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_GATEWAY_URL",
    "MAX_PAYLOAD_BYTES",
    "Payload",
    "Hello",
    "HeartbeatRequest",
    "HeartbeatAck",
    "Reconnect",
    "InvalidSession",
    "Dispatch",
    "Ready",
    "UnknownOp",
    "GatewayEvent",
    "GatewaySession",
    "normalize_gateway_url",
    "encode_payload",
    "decode_payload",
    "parse_event",
    "identify_payload",
    "heartbeat_payload",
    "resume_payload",
    "voice_state_update_payload",
    "default_properties",
    "describe_gateway_close",
    "redact",
]

_QUERY: Final = f"v={MAIN_GATEWAY_VERSION}&encoding=json"
#: Where `Gateway` connects when no URL is given.
DEFAULT_GATEWAY_URL: Final = f"wss://gateway.discord.gg/?{_QUERY}"
#: Largest payload the gateway accepts; bigger ones get close code 4002 (GW §Sending Events).
MAX_PAYLOAD_BYTES: Final = 4096
_LIBRARY: Final = "discord-voice"
_REDACTED: Final = "[redacted]"


def normalize_gateway_url(url: str | None) -> str:
    """The URL to open: add ``?v=10&encoding=json`` (and a ``/`` path) unless a query is present."""
    if url is None:
        return DEFAULT_GATEWAY_URL
    try:
        parts = urlsplit(url)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"main gateway url is not a valid url: {url!r}") from exc
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise LocalProtocolError(f"main gateway url must be ws:// or wss:// with a host: {url!r}")
    if parts.query:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", _QUERY, parts.fragment))


def redact(text: str, secret: str) -> str:
    """`text` with every occurrence of `secret` replaced (for server-chosen strings in errors)."""
    return text.replace(secret, _REDACTED) if secret else text


# --- payloads ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    """One decoded gateway message: ``{op, d, s, t}``. `d` is left out of the repr (secrets)."""

    op: int
    d: Any = field(default=None, repr=False)
    s: int | None = None
    t: str | None = None


def encode_payload(op: int, data: Any) -> str:
    """Serialise ``{"op": op, "d": data}``; LocalProtocolError if it is not JSON or > 4096 bytes."""
    try:
        text = json.dumps(
            {"op": int(op), "d": data}, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:  # never echo the data: it may hold the token
        raise LocalProtocolError(f"op {int(op)} payload is not serialisable as JSON") from exc
    size = len(text.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        raise LocalProtocolError(
            f"op {int(op)} payload is {size} bytes; the gateway accepts at most {MAX_PAYLOAD_BYTES}"
        )
    return text


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_payload(data: str | bytes) -> Payload:
    """Parse one received message; RemoteProtocolError (never another exception) if malformed."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError("main gateway sent a message that is not UTF-8") from exc
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError("main gateway sent a message that is not JSON") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError("main gateway sent a JSON value that is not an object")
    op, seq, name = obj.get("op"), obj.get("s"), obj.get("t")
    if not isinstance(op, int) or isinstance(op, bool):
        raise RemoteProtocolError("main gateway payload has no integer 'op'")
    if seq is not None and not _is_int(seq):
        raise RemoteProtocolError(f"main gateway op {op} payload has a non-integer 's'")
    if name is not None and not isinstance(name, str):
        raise RemoteProtocolError(f"main gateway op {op} payload has a non-string 't'")
    if op == GatewayOp.DISPATCH and name is None:
        raise RemoteProtocolError("main gateway dispatch (op 0) has no event name 't'")
    return Payload(op=op, d=obj.get("d"), s=seq, t=name)


# --- received events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """op 10: start heartbeating every `heartbeat_interval` seconds (converted from ms)."""

    heartbeat_interval: float


@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    """op 1 from the server: send a heartbeat right away."""


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """op 11: the server received our heartbeat."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """op 7: the server wants the client to reconnect (and resume)."""


@dataclass(frozen=True, slots=True)
class InvalidSession:
    """op 9: the session is invalid; `resumable` is the payload's ``d``."""

    resumable: bool


@dataclass(frozen=True, slots=True)
class Dispatch:
    """op 0: event `name` with sequence `seq`; `data` stays out of the repr (it can hold tokens)."""

    name: str
    seq: int | None
    data: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Ready(Dispatch):
    """The READY dispatch, with the fields the client needs pulled out and checked."""

    user_id: int = 0
    session_id: str = ""
    resume_gateway_url: str | None = None


@dataclass(frozen=True, slots=True)
class UnknownOp:
    """An opcode this client does not handle; ignored, kept for logging."""

    op: int


GatewayEvent: TypeAlias = (
    Hello | HeartbeatRequest | HeartbeatAck | Reconnect | InvalidSession | Dispatch | UnknownOp
)


def _parse_ready(payload: Payload, data: Mapping[str, Any]) -> Ready:
    user = data.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, str) or not user_id.isdecimal():
        raise RemoteProtocolError("main gateway READY has no decimal 'user.id'")
    session_id = data.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise RemoteProtocolError("main gateway READY has no 'session_id'")
    resume_url = data.get("resume_gateway_url")
    if resume_url is not None and not isinstance(resume_url, str):
        raise RemoteProtocolError("main gateway READY has a non-string 'resume_gateway_url'")
    return Ready(
        name="READY",
        seq=payload.s,
        data=data,
        user_id=int(user_id),
        session_id=session_id,
        resume_gateway_url=resume_url,
    )


def parse_event(payload: Payload) -> GatewayEvent:
    """Turn a decoded payload into an event; RemoteProtocolError if a known op is malformed."""
    op, d = payload.op, payload.d
    if op == GatewayOp.HELLO:
        interval = d.get("heartbeat_interval") if isinstance(d, dict) else None
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise RemoteProtocolError("main gateway Hello has no positive 'heartbeat_interval'")
        return Hello(heartbeat_interval=interval / 1000.0)
    if op == GatewayOp.HEARTBEAT:
        return HeartbeatRequest()
    if op == GatewayOp.HEARTBEAT_ACK:
        return HeartbeatAck()
    if op == GatewayOp.RECONNECT:
        return Reconnect()
    if op == GatewayOp.INVALID_SESSION:
        return InvalidSession(resumable=d is True)
    if op == GatewayOp.DISPATCH:
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise RemoteProtocolError(f"main gateway dispatch {payload.t} has a non-object 'd'")
        assert payload.t is not None  # decode_payload guarantees it
        if payload.t == "READY":
            return _parse_ready(payload, d)
        return Dispatch(name=payload.t, seq=payload.s, data=d)
    return UnknownOp(op=op)


# --- sent payloads ----------------------------------------------------------------------------


def default_properties() -> dict[str, str]:
    """Identify ``properties``: this OS, and the library as browser and device."""
    return {"os": sys.platform, "browser": _LIBRARY, "device": _LIBRARY}


def identify_payload(
    token: str, intents: int, properties: Mapping[str, str], shard: Shard | None = None
) -> str:
    """op 2 Identify (with ``shard`` when sharded). Contains the token: never log it."""
    data: dict[str, Any] = {"token": token, "intents": int(intents), "properties": dict(properties)}
    if shard is not None:
        data["shard"] = shard.payload()
    return encode_payload(GatewayOp.IDENTIFY, data)


def resume_payload(token: str, session_id: str, seq: int | None) -> str:
    """op 6 Resume (reconnect to ``resume_gateway_url`` first). Contains the token: never log it."""
    return encode_payload(GatewayOp.RESUME, {"token": token, "session_id": session_id, "seq": seq})


def heartbeat_payload(seq: int | None) -> str:
    """op 1 Heartbeat carrying the last dispatch sequence number (null before any)."""
    return encode_payload(GatewayOp.HEARTBEAT, seq)


def _check_snowflake(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.isdecimal() or not value.isascii():
        raise LocalProtocolError(f"{name} must be a decimal id string, got {value!r}")


def voice_state_update_payload(
    guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
) -> str:
    """op 4 Voice State Update; ``channel_id=None`` leaves voice in the guild."""
    _check_snowflake("guild_id", guild_id)
    if channel_id is not None:
        _check_snowflake("channel_id", channel_id)
    if not isinstance(self_mute, bool) or not isinstance(self_deaf, bool):
        raise LocalProtocolError("self_mute and self_deaf must be bools")
    data = {
        "guild_id": guild_id,
        "channel_id": channel_id,
        "self_mute": self_mute,
        "self_deaf": self_deaf,
    }
    return encode_payload(GatewayOp.VOICE_STATE_UPDATE, data)


# --- session state ----------------------------------------------------------------------------


class GatewaySession:
    """What one gateway session knows: credentials, last ``seq``, and the READY fields.

    Kept apart from the socket so a later Resume can reuse it on a new connection. The token is
    never shown by ``repr``. Not thread-safe: the owner serialises access.
    """

    def __init__(
        self,
        token: str,
        intents: int,
        properties: Mapping[str, str] | None = None,
        shard: Shard | None = None,
    ):
        if not isinstance(token, str) or not token.strip():
            raise LocalProtocolError("the bot token must be a non-empty string")
        if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0:
            raise LocalProtocolError("intents must be a non-negative int (see Intents)")
        self._token = token
        self.intents = int(intents)
        self.properties = dict(default_properties() if properties is None else properties)
        #: The shard identified as (None: unsharded, Identify without ``shard``).
        self.shard = shard
        #: Last non-null dispatch sequence number (None before the first dispatch).
        self.seq: int | None = None
        self.user_id: int | None = None
        self.session_id: str | None = None
        self.resume_gateway_url: str | None = None

    def __repr__(self) -> str:
        return (
            f"<GatewaySession token={_REDACTED} intents={self.intents} seq={self.seq} "
            f"user_id={self.user_id} shard={self.shard}>"
        )

    def redact(self, text: str) -> str:
        """`text` with this session's token removed."""
        return redact(text, self._token)

    def receive(self, data: str | bytes) -> GatewayEvent:
        """Decode and parse one message, tracking ``s`` and the READY fields."""
        payload = decode_payload(data)
        event = parse_event(payload)
        if payload.op == GatewayOp.DISPATCH and payload.s is not None:
            self.seq = payload.s if self.seq is None else max(self.seq, payload.s)
        if isinstance(event, Ready):
            self.user_id = event.user_id
            self.session_id = event.session_id
            self.resume_gateway_url = event.resume_gateway_url
        return event

    def identify(self) -> str:
        return identify_payload(self._token, self.intents, self.properties, self.shard)

    def resume(self) -> str:
        """op 6 Resume for this session (LocalProtocolError before READY gave a session id)."""
        if self.session_id is None:
            raise LocalProtocolError("no main gateway session to resume")
        return resume_payload(self._token, self.session_id, self.seq)

    def forget(self) -> None:
        """Drop the session (for a fresh Identify); `user_id` stays."""
        self.seq = self.session_id = self.resume_gateway_url = None

    def heartbeat(self) -> str:
        return heartbeat_payload(self.seq)


# --- close codes ------------------------------------------------------------------------------


def describe_gateway_close(code: int | None) -> str:
    """A short description of a main gateway close code, for error messages."""
    if code is None:
        return "connection dropped without a close code"
    if code == GatewayCloseCode.AUTHENTICATION_FAILED:
        return "authentication failed: the bot token was rejected"
    if code in (1000, 1001):
        return "normal closure"
    try:
        return GatewayCloseCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "unknown close code"

"""Voice gateway messages: typed events for what the server sends, encoders for what we send.

Server messages are validated field by field; anything malformed raises `RemoteProtocolError`
with a message naming the field, never a KeyError or TypeError. Unknown opcodes (Discord sends
several undocumented ones: 12, 14, 15, 16, 18, 20) decode to `UnknownMessage` and are ignored by
the state machine. Binary frames (DAVE ops 25-30) decode to `BinaryMessage`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from discord_voice.core.opcodes import VoiceOp
from discord_voice.errors import RemoteProtocolError

__all__ = [
    "BinaryMessage",
    "ClientDisconnect",
    "ClientSsrcs",
    "ClientsConnect",
    "DaveMessage",
    "HeartbeatAck",
    "Hello",
    "Ready",
    "Resumed",
    "ServerMessage",
    "SessionDescription",
    "Speaking",
    "UnknownMessage",
    "decode_binary",
    "decode_text",
    "encode",
]

#: Largest text message we parse; Discord's voice messages are a few hundred bytes.
MAX_MESSAGE_SIZE: Final = 1 << 20


@dataclass(frozen=True)
class Hello:
    """Op 8: the heartbeat interval (the only trustworthy one; Ready's is bogus)."""

    heartbeat_interval: float  # seconds


@dataclass(frozen=True)
class Ready:
    """Op 2: our SSRC and the UDP server's address, plus the transport modes offered."""

    ssrc: int
    ip: str
    port: int
    modes: tuple[str, ...]


@dataclass(frozen=True)
class SessionDescription:
    """Op 4: the selected transport mode, the 32-byte key and the DAVE protocol version."""

    mode: str
    secret_key: bytes = field(repr=False)
    dave_protocol_version: int = 0


@dataclass(frozen=True)
class HeartbeatAck:
    """Op 6: the nonce of the heartbeat being acknowledged."""

    nonce: int


@dataclass(frozen=True)
class Speaking:
    """Op 5 from the server: another user's SSRC and speaking flags."""

    user_id: str | None
    ssrc: int
    speaking: int


@dataclass(frozen=True)
class Resumed:
    """Op 9: a resume succeeded."""


@dataclass(frozen=True)
class ClientsConnect:
    """Op 11: users that are (now) in the call."""

    user_ids: tuple[str, ...]


@dataclass(frozen=True)
class ClientSsrcs:
    """Op 12 (undocumented): a member's audio SSRC, as an op 5 would name it."""

    user_id: str
    audio_ssrc: int


@dataclass(frozen=True)
class ClientDisconnect:
    """Op 13: a user left the call."""

    user_id: str


@dataclass(frozen=True)
class DaveMessage:
    """A DAVE JSON op (21, 22, 24); handled by the DAVE layer."""

    op: int
    data: Mapping[str, Any]


@dataclass(frozen=True)
class BinaryMessage:
    """A server binary frame: ``seq (u16 BE) | op (u8) | payload`` (DAVE ops 25-30)."""

    seq: int
    op: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class UnknownMessage:
    """An opcode this library does not handle (ignored, counted)."""

    op: int


ServerMessage = (
    Hello
    | Ready
    | SessionDescription
    | HeartbeatAck
    | Speaking
    | Resumed
    | ClientsConnect
    | ClientSsrcs
    | ClientDisconnect
    | DaveMessage
    | BinaryMessage
    | UnknownMessage
)


def _int(d: Mapping[str, Any], key: str, op: int, *, lo: int = 0, hi: int = 2**64) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value < hi:
        raise RemoteProtocolError(f"voice op {op}: field {key!r} must be an integer, got {value!r}")
    return value


def _str(d: Mapping[str, Any], key: str, op: int) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise RemoteProtocolError(f"voice op {op}: field {key!r} must be a string")
    return value


def _snowflake(value: object, op: int, key: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.isdigit():
        return value
    raise RemoteProtocolError(f"voice op {op}: field {key!r} must be a snowflake")


def _mapping(d: object, op: int) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise RemoteProtocolError(f"voice op {op}: 'd' must be an object, got {type(d).__name__}")
    return d


def _decode_hello(d: Mapping[str, Any]) -> Hello:
    interval = d.get("heartbeat_interval")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise RemoteProtocolError("voice op 8: heartbeat_interval must be a positive number")
    return Hello(heartbeat_interval=float(interval) / 1000.0)


def _decode_ready(d: Mapping[str, Any]) -> Ready:
    modes = d.get("modes")
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        raise RemoteProtocolError("voice op 2: 'modes' must be a list of strings")
    return Ready(
        ssrc=_int(d, "ssrc", 2, hi=2**32),
        ip=_str(d, "ip", 2),
        port=_int(d, "port", 2, lo=1, hi=2**16),
        modes=tuple(modes),
    )


def _decode_session(d: Mapping[str, Any]) -> SessionDescription:
    key = d.get("secret_key")
    if (
        not isinstance(key, list)
        or len(key) != 32
        or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in key)
    ):
        raise RemoteProtocolError("voice op 4: secret_key must be a list of 32 byte values")
    version = d.get("dave_protocol_version", 0)
    if version is None:
        version = 0
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RemoteProtocolError("voice op 4: dave_protocol_version must be an integer")
    return SessionDescription(
        mode=_str(d, "mode", 4), secret_key=bytes(key), dave_protocol_version=version
    )


def _decode_ack(d: object) -> HeartbeatAck:
    if isinstance(d, Mapping):
        return HeartbeatAck(nonce=_int(d, "t", 6, lo=-(2**63), hi=2**64))
    if isinstance(d, int) and not isinstance(d, bool):  # pre-v8 servers sent the bare nonce
        return HeartbeatAck(nonce=d)
    raise RemoteProtocolError("voice op 6: heartbeat ack must carry the nonce 't'")


def _decode_speaking(d: Mapping[str, Any]) -> Speaking:
    user_id = d.get("user_id")
    return Speaking(
        user_id=None if user_id is None else _snowflake(user_id, 5, "user_id"),
        ssrc=_int(d, "ssrc", 5, hi=2**32),
        speaking=_int(d, "speaking", 5, hi=2**32),
    )


def _decode_clients_connect(d: Mapping[str, Any]) -> ClientsConnect:
    ids = d.get("user_ids")
    if not isinstance(ids, list):
        raise RemoteProtocolError("voice op 11: 'user_ids' must be a list")
    return ClientsConnect(user_ids=tuple(_snowflake(u, 11, "user_ids") for u in ids))


def decode_text(text: str | bytes) -> tuple[int | None, ServerMessage]:
    """Decode one text frame into ``(seq, message)``; `seq` is None when the frame has none.

    Raises:
        RemoteProtocolError: malformed JSON, a missing ``op``, or an invalid known payload.
    """
    if len(text) > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError(f"voice message of {len(text)} bytes exceeds the size limit")
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(
            f"voice message is not valid JSON: {exc.__class__.__name__}"
        ) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("voice message is not a JSON object")
    op = obj.get("op")
    if isinstance(op, bool) or not isinstance(op, int):
        raise RemoteProtocolError("voice message has no integer 'op'")
    seq = obj.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
        raise RemoteProtocolError("voice message has an invalid 'seq'")
    d = obj.get("d")
    message: ServerMessage
    if op == VoiceOp.HELLO:
        message = _decode_hello(_mapping(d, op))
    elif op == VoiceOp.READY:
        message = _decode_ready(_mapping(d, op))
    elif op == VoiceOp.SESSION_DESCRIPTION:
        message = _decode_session(_mapping(d, op))
    elif op == VoiceOp.HEARTBEAT_ACK:
        message = _decode_ack(d)
    elif op == VoiceOp.SPEAKING:
        message = _decode_speaking(_mapping(d, op))
    elif op == VoiceOp.RESUMED:
        message = Resumed()
    elif op == VoiceOp.CLIENTS_CONNECT:
        message = _decode_clients_connect(_mapping(d, op))
    elif op == VoiceOp.CLIENT_SSRCS:
        fields = _mapping(d, op)
        message = ClientSsrcs(
            user_id=_snowflake(fields.get("user_id"), op, "user_id"),
            audio_ssrc=_int(fields, "audio_ssrc", op, hi=2**32),
        )
    elif op == VoiceOp.CLIENT_DISCONNECT:
        user = _mapping(d, op).get("user_id")
        message = ClientDisconnect(user_id=_snowflake(user, op, "user_id"))
    elif op in (
        VoiceOp.DAVE_PREPARE_TRANSITION,
        VoiceOp.DAVE_EXECUTE_TRANSITION,
        VoiceOp.DAVE_PREPARE_EPOCH,
    ):
        message = DaveMessage(op=op, data=_mapping(d, op))
    else:
        message = UnknownMessage(op=op)
    return seq, message


def decode_binary(data: bytes) -> BinaryMessage:
    """Decode a server binary frame (``seq u16 BE | op u8 | payload``).

    Raises:
        RemoteProtocolError: a frame shorter than its 3-byte prefix.
    """
    if len(data) < 3:
        raise RemoteProtocolError(f"binary voice frame of {len(data)} bytes is shorter than 3")
    if len(data) > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError(f"binary voice frame of {len(data)} bytes exceeds the size limit")
    return BinaryMessage(seq=int.from_bytes(data[:2], "big"), op=data[2], payload=bytes(data[3:]))


def encode(op: VoiceOp, d: object) -> str:
    """Encode a client message as compact JSON text."""
    return json.dumps({"op": int(op), "d": d}, separators=(",", ":"))

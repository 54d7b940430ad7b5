"""DAVE gateway messages: typed events for what the server sends, encoders for what we send.

The voice gateway layer (`voice_payloads`) hands DAVE traffic over undecoded: JSON ops 21, 22
and 24 as `DaveMessage(op, data)`, binary frames as `BinaryMessage(seq, op, payload)`. `decode`
turns either into one of the events below, checking every field; anything malformed raises
`RemoteProtocolError` naming the op and the problem. MLS contents (key packages, proposals,
commits, welcomes) are passed on as opaque bytes: the MLS engine validates them.

Client frames: binary ops 26 and 28 are ``opcode (u8) | payload`` with no sequence number;
ops 23 and 31 are JSON text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from discord_voice.core.opcodes import VoiceOp
from discord_voice.core.voice_payloads import BinaryMessage, DaveMessage, encode
from discord_voice.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AnnounceCommit",
    "DaveEvent",
    "ExecuteTransition",
    "ExternalSenderPackage",
    "PrepareEpoch",
    "PrepareTransition",
    "Proposals",
    "Welcome",
    "commit_welcome",
    "decode",
    "invalid_commit_welcome",
    "key_package",
    "transition_ready",
]

_U16: Final = 0xFFFF
_PROPOSALS_APPEND: Final = 0
_PROPOSALS_REVOKE: Final = 1


@dataclass(frozen=True)
class ExternalSenderPackage:
    """Op 25: the voice gateway's MLS external sender (signature key and credential)."""

    package: bytes = field(repr=False)


@dataclass(frozen=True)
class Proposals:
    """Op 27: proposals to append (``revoke`` False) or proposal refs to revoke.

    ``data`` is the MLS vector as sent, its varint length prefix included (davey takes it so).
    """

    revoke: bool
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class AnnounceCommit:
    """Op 29: the commit that moves the group to the next epoch, under ``transition_id``."""

    transition_id: int
    commit: bytes = field(repr=False)


@dataclass(frozen=True)
class Welcome:
    """Op 30: the Welcome that adds us to the group, under ``transition_id``."""

    transition_id: int
    welcome: bytes = field(repr=False)


@dataclass(frozen=True)
class PrepareTransition:
    """Op 21: a transition to ``protocol_version`` is coming (0 means a downgrade)."""

    protocol_version: int
    transition_id: int


@dataclass(frozen=True)
class ExecuteTransition:
    """Op 22: switch to the context announced under ``transition_id`` now."""

    transition_id: int


@dataclass(frozen=True)
class PrepareEpoch:
    """Op 24: the next epoch; ``epoch == 1`` means a new group is being created."""

    protocol_version: int
    epoch: int


DaveEvent = (
    ExternalSenderPackage
    | Proposals
    | AnnounceCommit
    | Welcome
    | PrepareTransition
    | ExecuteTransition
    | PrepareEpoch
)


def _vector_length_matches(data: bytes) -> bool:
    """Whether ``data`` is exactly one MLS vector: a minimal varint size, then that many bytes."""
    if not data:
        return False
    prefix = data[0] >> 6
    size = 1 << prefix
    if prefix == 3 or len(data) < size:
        return False
    length = int.from_bytes(data[:size], "big") & ((1 << (8 * size - 2)) - 1)
    if size > 1 and length < (1 << (8 * (size // 2) - 2)):
        return False  # non-minimal encodings are invalid in MLS
    return len(data) == size + length


def _transition_payload(message: BinaryMessage) -> tuple[int, bytes]:
    if len(message.payload) < 3:
        raise RemoteProtocolError(
            f"dave op {message.op}: payload of {len(message.payload)} bytes is too short for a "
            "transition id and a message"
        )
    return int.from_bytes(message.payload[:2], "big"), message.payload[2:]


def _decode_binary(message: BinaryMessage) -> DaveEvent:
    op, payload = message.op, message.payload
    if op == VoiceOp.DAVE_MLS_EXTERNAL_SENDER:
        if not payload:
            raise RemoteProtocolError("dave op 25: empty external sender package")
        return ExternalSenderPackage(package=payload)
    if op == VoiceOp.DAVE_MLS_PROPOSALS:
        if not payload:
            raise RemoteProtocolError("dave op 27: empty payload, no operation type")
        if payload[0] not in (_PROPOSALS_APPEND, _PROPOSALS_REVOKE):
            raise RemoteProtocolError(f"dave op 27: unknown operation type {payload[0]}")
        if not _vector_length_matches(payload[1:]):
            raise RemoteProtocolError(
                f"dave op 27: the proposals vector's length does not match its "
                f"{len(payload) - 1} bytes"
            )
        return Proposals(revoke=payload[0] == _PROPOSALS_REVOKE, data=payload[1:])
    if op == VoiceOp.DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION:
        transition_id, commit = _transition_payload(message)
        return AnnounceCommit(transition_id=transition_id, commit=commit)
    if op == VoiceOp.DAVE_MLS_WELCOME:
        transition_id, welcome = _transition_payload(message)
        return Welcome(transition_id=transition_id, welcome=welcome)
    raise RemoteProtocolError(f"binary voice op {op} is not a server dave op")


def _int_field(data: Mapping[str, Any], key: str, op: int, maximum: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise RemoteProtocolError(
            f"dave op {op}: field {key!r} must be an integer in 0..{maximum}, got {value!r}"
        )
    return value


def _decode_json(message: DaveMessage) -> DaveEvent:
    op, data = message.op, message.data
    if not isinstance(data, Mapping):
        raise RemoteProtocolError(f"dave op {op}: 'd' must be an object")
    if op == VoiceOp.DAVE_PREPARE_TRANSITION:
        return PrepareTransition(
            protocol_version=_int_field(data, "protocol_version", op, _U16),
            transition_id=_int_field(data, "transition_id", op, _U16),
        )
    if op == VoiceOp.DAVE_EXECUTE_TRANSITION:
        return ExecuteTransition(transition_id=_int_field(data, "transition_id", op, _U16))
    if op == VoiceOp.DAVE_PREPARE_EPOCH:
        return PrepareEpoch(
            protocol_version=_int_field(data, "protocol_version", op, _U16),
            epoch=_int_field(data, "epoch", op, 2**64 - 1),
        )
    raise RemoteProtocolError(f"voice op {op} is not a server dave json op")


def decode(message: BinaryMessage | DaveMessage) -> DaveEvent:
    """Decode a DAVE message from the voice gateway layer into a typed event.

    Raises:
        RemoteProtocolError: an unknown or client-only op, a truncated payload, a proposals
            vector whose length is wrong, a bad operation type, or a JSON field of the wrong
            type or range.
    """
    if isinstance(message, BinaryMessage):
        return _decode_binary(message)
    return _decode_json(message)


def _check_transition_id(transition_id: int) -> int:
    if (
        isinstance(transition_id, bool)
        or not isinstance(transition_id, int)
        or not (0 <= transition_id <= _U16)
    ):
        raise LocalProtocolError(f"transition id must be in 0..{_U16}, got {transition_id!r}")
    return transition_id


def key_package(package: bytes) -> bytes:
    """The op 26 frame carrying our MLS key package."""
    return bytes([VoiceOp.DAVE_MLS_KEY_PACKAGE]) + package


def commit_welcome(commit: bytes, welcome: bytes | None) -> bytes:
    """The op 28 frame: our commit, followed directly by the Welcome when it adds members."""
    return bytes([VoiceOp.DAVE_MLS_COMMIT_WELCOME]) + commit + (welcome or b"")


def transition_ready(transition_id: int) -> str:
    """The op 23 JSON text: we are ready to execute ``transition_id``."""
    return encode(
        VoiceOp.DAVE_TRANSITION_READY, {"transition_id": _check_transition_id(transition_id)}
    )


def invalid_commit_welcome(transition_id: int) -> str:
    """The op 31 JSON text: the commit or welcome of ``transition_id`` could not be processed."""
    return encode(
        VoiceOp.DAVE_MLS_INVALID_COMMIT_WELCOME,
        {"transition_id": _check_transition_id(transition_id)},
    )

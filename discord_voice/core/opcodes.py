"""Wire constants: opcodes, close codes, flags and intents, each enum value equal to the wire value.

Sources: Discord's "Opcodes and Status Codes" and "Voice Connections" pages (shared/spec).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "VoiceOp",
    "GatewayOp",
    "SpeakingFlag",
    "Intents",
    "VoiceCloseCode",
    "GatewayCloseCode",
    "ClientCloseCode",
    "VOICE_GATEWAY_VERSION",
    "MAIN_GATEWAY_VERSION",
    "MODE_AES256_GCM",
    "MODE_XCHACHA20",
    "SUPPORTED_MODES",
]

#: Voice gateway version this library speaks (v8: buffered resume with ``seq_ack``).
VOICE_GATEWAY_VERSION: Final = 8
#: Main gateway API version.
MAIN_GATEWAY_VERSION: Final = 10

#: Preferred transport mode when the server offers it and the CPU has AES instructions.
MODE_AES256_GCM: Final = "aead_aes256_gcm_rtpsize"
#: The mode every server offers and every client must support.
MODE_XCHACHA20: Final = "aead_xchacha20_poly1305_rtpsize"
#: Every mode this library implements, in order of preference. The xsalsa20 modes were
#: switched off by Discord on 2024-11-18 and are deliberately absent.
SUPPORTED_MODES: Final = (MODE_AES256_GCM, MODE_XCHACHA20)


class VoiceOp(enum.IntEnum):
    """Voice gateway opcodes (JSON unless marked binary)."""

    IDENTIFY = 0
    SELECT_PROTOCOL = 1
    READY = 2
    HEARTBEAT = 3
    SESSION_DESCRIPTION = 4
    SPEAKING = 5
    HEARTBEAT_ACK = 6
    RESUME = 7
    HELLO = 8
    RESUMED = 9
    CLIENTS_CONNECT = 11
    #: Undocumented: a member's ``audio_ssrc`` (and video), sent by some voice servers.
    CLIENT_SSRCS = 12
    CLIENT_DISCONNECT = 13
    DAVE_PREPARE_TRANSITION = 21
    DAVE_EXECUTE_TRANSITION = 22
    DAVE_TRANSITION_READY = 23
    DAVE_PREPARE_EPOCH = 24
    DAVE_MLS_EXTERNAL_SENDER = 25  # binary
    DAVE_MLS_KEY_PACKAGE = 26  # binary, sent
    DAVE_MLS_PROPOSALS = 27  # binary
    DAVE_MLS_COMMIT_WELCOME = 28  # binary, sent
    DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION = 29  # binary
    DAVE_MLS_WELCOME = 30  # binary
    DAVE_MLS_INVALID_COMMIT_WELCOME = 31


class GatewayOp(enum.IntEnum):
    """Main gateway opcodes used by `discord_voice.Gateway`."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class SpeakingFlag(enum.IntFlag):
    """Speaking mode bits sent with voice op 5."""

    NONE = 0
    MICROPHONE = 1 << 0
    SOUNDSHARE = 1 << 1
    PRIORITY = 1 << 2


class Intents(enum.IntFlag):
    """The main gateway intents a voice bot needs (neither is privileged)."""

    GUILDS = 1 << 0
    GUILD_VOICE_STATES = 1 << 7


class VoiceCloseCode(enum.IntEnum):
    """Close codes of the voice websocket."""

    UNKNOWN_OPCODE = 4001
    FAILED_TO_DECODE = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    SESSION_NO_LONGER_VALID = 4006
    SESSION_TIMEOUT = 4009
    SERVER_NOT_FOUND = 4011
    UNKNOWN_PROTOCOL = 4012
    DISCONNECTED = 4014
    VOICE_SERVER_CRASHED = 4015
    UNKNOWN_ENCRYPTION_MODE = 4016
    E2EE_REQUIRED = 4017
    BAD_REQUEST = 4020
    RATE_LIMITED = 4021
    CALL_TERMINATED = 4022


class GatewayCloseCode(enum.IntEnum):
    """Close codes of the main gateway websocket."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


class ClientCloseCode(enum.IntEnum):
    """The close codes this library sends, on either gateway (named here once, used by both).

    What a close means for the session (resume, new session, stop) is decided by the
    `ClosePolicy` tables in `discord_voice.core.reconnect`, not here.
    """

    #: An intentional end: ``Gateway.close()`` logs out (Discord ends the session) and
    #: ``Connection.disconnect()`` leaves the voice websocket.
    NORMAL = 1000
    #: We closed the websocket to come back: a zombie (heartbeat ACKs overdue), a reconnect
    #: that got no READY/RESUMED in time, a failed connection. Not 1000/1001, so Discord keeps
    #: the session resumable (and the policies treat it as a close we made to recover).
    RECOVERING = 4000


def describe_voice_close(code: int | None) -> str:
    """A short human description of a voice close code (for error messages)."""
    if code is None:
        return "connection dropped without a close frame"
    try:
        return VoiceCloseCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "normal closure" if code in (1000, 1001) else "unknown close code"

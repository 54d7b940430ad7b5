"""The exception tree: everything the library raises on purpose derives from `VoiceError`.

Rules: third-party exceptions (websocket-client, PyNaCl, opuslib, davey) are wrapped at the
boundary and never reach users bare; messages are lowercase and concrete; no message, repr or
attribute ever contains the bot token, the voice token or the secret key.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "VoiceError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "InvalidPacket",
    "InvalidFrame",
    "ConnectionClosed",
    "GatewayClosed",
    "VoiceGatewayClosed",
    "MainGatewayClosed",
    "DaveRequired",
    "Disconnected",
    "HeartbeatTimeout",
    "JoinError",
    "JoinTimeout",
    "WrongShard",
    "ApiError",
    "GatewayTimeout",
    "EncryptionError",
    "UnsupportedEncryptionMode",
    "DaveNotReady",
    "ShutdownTimeout",
    "OpusError",
    "OpusNotAvailable",
    "AudioError",
    "AlreadyPlaying",
    "FFmpegNotFound",
    "FFmpegFailed",
]


class VoiceError(Exception):
    """Base of every exception this library raises on purpose."""


class ProtocolError(VoiceError):
    """A protocol rule was broken; raised as one of the two subclasses, never directly."""


class LocalProtocolError(ProtocolError):
    """The caller asked for something illegal in the current state (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """Discord (or the fake) sent malformed or out-of-order data."""


class InvalidPacket(RemoteProtocolError, ValueError):
    """Bytes from the network (RTP, IP discovery, binary frames) could not be parsed."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        #: The offending bytes, truncated to 64 bytes to keep errors small.
        self.data = bytes(data[:64])


class InvalidFrame(VoiceError, ValueError):
    """An item put on ``opus_send`` is not an Opus frame the library can send.

    Raised to the producer at ``put`` time; the frame is not queued and the connection goes on.
    """


class ConnectionClosed(VoiceError):
    """The connection can no longer carry audio; ``__cause__`` holds the underlying reason."""


class GatewayClosed(ConnectionClosed):
    """A websocket (voice or main gateway) was closed; carries the close code and reason."""

    def __init__(self, code: int | None, reason: str = "", *, message: str | None = None) -> None:
        self.code = code
        self.reason = reason
        if message is None:
            what = "closed without a close code" if code is None else f"closed with code {code}"
            message = f"{self._what} {what}" + (f": {reason}" if reason else "")
        super().__init__(message)

    _what = "gateway"


class VoiceGatewayClosed(GatewayClosed):
    """The voice websocket was closed by the server (see Discord's voice close codes)."""

    _what = "voice gateway"


class DaveRequired(VoiceGatewayClosed):
    """Close code 4017: the channel requires DAVE end-to-end encryption. Fatal, never retried."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(
            4017,
            reason,
            message="the voice server closed with 4017: this channel requires DAVE end-to-end "
            "encryption, which this client did not offer",
        )


class MainGatewayClosed(GatewayClosed):
    """The main gateway websocket was closed (see Discord's gateway close codes)."""

    _what = "main gateway"


class Disconnected(ConnectionClosed):
    """Discord ended the bot's presence in the voice channel and no move followed.

    ``why`` is ``"kicked"`` (our VOICE_STATE_UPDATE came with no channel: kicked, or the
    channel was deleted) or ``"not_moved"`` (the voice websocket was closed with 4014/4022, or
    the voice server went away, and no new VOICE_SERVER_UPDATE arrived in time); ``code`` is
    the close code behind it, if any.
    """

    def __init__(self, why: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.why = why
        self.code = code


class HeartbeatTimeout(ConnectionClosed, TimeoutError):
    """Heartbeat ACKs stopped arriving: the websocket is considered dead."""

    def __init__(self, message: str, interval: float) -> None:
        super().__init__(message)
        #: The heartbeat interval in seconds.
        self.interval = interval


class JoinError(VoiceError):
    """``join_channel`` failed; ``__cause__`` holds the reason when there is one."""


class JoinTimeout(JoinError, TimeoutError):
    """``join_channel`` ran out of time; ``stage`` names what did not arrive."""

    def __init__(self, stage: str, timeout: float, hint: str = "") -> None:
        self.stage = stage
        self.timeout = timeout
        message = f"join timed out after {timeout:g}s waiting for {stage}"
        super().__init__(message + (f" ({hint})" if hint else ""))


class WrongShard(JoinError):
    """``join_channel`` for a guild whose voice the gateway cannot carry: another shard owns
    it (``(guild_id >> 22) % shard_count``). Raised before anything is sent."""


class ApiError(VoiceError):
    """A request to Discord's HTTP API failed: ``status`` is the HTTP status (None when no
    answer came: refused, timed out, unreachable)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class GatewayTimeout(VoiceError, TimeoutError):
    """``Gateway.connect`` ran out of time; ``stage`` names what did not arrive."""

    def __init__(self, stage: str, timeout: float) -> None:
        self.stage = stage
        self.timeout = timeout
        super().__init__(f"main gateway connect timed out after {timeout:g}s waiting for {stage}")


class EncryptionError(VoiceError):
    """Transport or end-to-end encryption failed (bad key, nonce exhaustion, ...)."""


class DaveNotReady(EncryptionError):
    """DAVE end-to-end encryption is required but the group key is not there (yet).

    The sender holds frames until it is; they are never sent unencrypted.
    """


class UnsupportedEncryptionMode(EncryptionError):
    """The server offered no encryption mode this library (and this CPU) supports."""

    def __init__(self, offered: Sequence[str], supported: Sequence[str]) -> None:
        self.offered = tuple(offered)
        self.supported = tuple(supported)
        super().__init__(
            "no common encryption mode: server offered "
            f"{list(self.offered)}, this client supports {list(self.supported)}"
        )


class ShutdownTimeout(VoiceError, TimeoutError):
    """A close could not join every thread it owns before its deadline."""

    def __init__(self, thread_names: Sequence[str], timeout: float) -> None:
        self.thread_names = tuple(thread_names)
        self.timeout = timeout
        super().__init__(
            f"threads still alive {timeout:g}s after close: {', '.join(self.thread_names)}"
        )


class OpusError(VoiceError):
    """The Opus encoder failed."""


class OpusNotAvailable(OpusError, ImportError):
    """opuslib or the libopus shared library could not be loaded; the message says how to fix it."""


class AudioError(VoiceError):
    """An audio source or the player failed (reading, decoding, a subprocess)."""


class AlreadyPlaying(AudioError):
    """`Connection.play` was called while the connection's player is still playing."""


class FFmpegNotFound(AudioError, FileNotFoundError):
    """No ``ffmpeg`` binary was found; the message says how to get one."""


class FFmpegFailed(AudioError):
    """FFmpeg exited with an error; `stderr_tail` holds the last lines it printed."""

    def __init__(self, message: str, *, returncode: int | None, stderr_tail: str) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        detail = f"\n{stderr_tail}" if stderr_tail else ""
        super().__init__(f"{message}{detail}")

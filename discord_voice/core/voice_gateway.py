"""The voice gateway (v8) as a pure state machine: text in, events out; calls return frames to send.

Rules, in order of a fresh connection:

1. ``identify()`` is the first thing sent on a new socket (state NEW -> IDENTIFYING).
2. Hello (op 8) may arrive before or after Identify; it is accepted once, in any state but CLOSED.
3. Ready (op 2) is accepted only in IDENTIFYING (-> READY).
4. ``select_protocol()`` is legal only in READY (-> SELECTING); the mode must be one Ready offered.
5. Session Description (op 4) is accepted only in SELECTING (-> ACTIVE) and must name the mode
   that was selected.
6. ``speaking()`` is legal only in ACTIVE; ``heartbeat()`` in any state but NEW and CLOSED.
7. ``seq_ack`` is the last ``seq`` seen on a JSON message or binary frame (-1 before any).
8. ``receive_close()`` moves to CLOSED from anywhere; nothing is legal afterwards.
9. Resuming: `continue_from` makes a protocol for a new socket that carries the old one's Ready,
   Session Description and ``seq_ack``; ``resume()`` is its first frame (NEW -> RESUMING) and
   Resumed (op 9) makes it ACTIVE again. Replayed messages are then handled as usual.

Out-of-order input raises `RemoteProtocolError`; illegal calls raise `LocalProtocolError`. The
object holds no lock: the caller (one lock in the connection) serialises access.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from discord_voice.core import voice_payloads as vp
from discord_voice.core.opcodes import VOICE_GATEWAY_VERSION, SpeakingFlag, VoiceOp
from discord_voice.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["VoiceGatewayProtocol", "VoiceServerInfo", "VoiceState", "voice_url"]


def voice_url(endpoint: str) -> str:
    """The voice websocket URL for a VOICE_SERVER_UPDATE endpoint.

    An endpoint with a ``ws://`` or ``wss://`` scheme is used as given, otherwise ``wss://`` is
    prepended; the port is kept; the result is ``<endpoint>/?v=8``.

    Raises:
        RemoteProtocolError: an empty endpoint or one with another scheme.
    """
    endpoint = endpoint.strip()
    if not endpoint:
        raise RemoteProtocolError("voice endpoint is empty")
    if "://" not in endpoint:
        endpoint = "wss://" + endpoint
    parts = urlsplit(endpoint)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise RemoteProtocolError(f"voice endpoint {endpoint!r} is not a ws:// or wss:// address")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/?v={VOICE_GATEWAY_VERSION}"


@dataclass(frozen=True)
class VoiceServerInfo:
    """What the two main-gateway dispatches gave us: enough to identify on the voice gateway."""

    guild_id: str
    channel_id: str
    user_id: str
    session_id: str = field(repr=False)
    token: str = field(repr=False)
    endpoint: str

    @property
    def url(self) -> str:
        return voice_url(self.endpoint)


class VoiceState(enum.Enum):
    """Where a voice websocket is in its handshake."""

    NEW = "new"
    IDENTIFYING = "identifying"
    READY = "ready"
    SELECTING = "selecting"
    RESUMING = "resuming"
    ACTIVE = "active"
    CLOSED = "closed"


class VoiceGatewayProtocol:
    """One voice websocket's protocol state (see the module rules)."""

    def __init__(self, info: VoiceServerInfo, *, max_dave_protocol_version: int = 0) -> None:
        self.info = info
        self.max_dave_protocol_version = max_dave_protocol_version
        self.state = VoiceState.NEW
        self.seq_ack = -1
        self.hello: vp.Hello | None = None
        self.ready: vp.Ready | None = None
        self.session: vp.SessionDescription | None = None
        self._selected_mode: str | None = None
        #: Messages with opcodes this library ignores, by opcode (for diagnostics).
        self.ignored: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<VoiceGatewayProtocol guild={self.info.guild_id} state={self.state.value}>"

    @classmethod
    def continue_from(cls, old: VoiceGatewayProtocol) -> VoiceGatewayProtocol:
        """A protocol for a new socket that resumes `old`'s session (see rule 9)."""
        if old.session is None or old.ready is None:
            raise LocalProtocolError("only an established voice session can be resumed")
        new = cls(old.info, max_dave_protocol_version=old.max_dave_protocol_version)
        new.seq_ack = old.seq_ack
        new.ready = old.ready
        new.session = old.session
        new._selected_mode = old._selected_mode
        new._resuming = True
        return new

    _resuming = False

    def resume(self) -> str:
        """Op 7 Resume: the first frame on a socket made by `continue_from`."""
        self._require(VoiceState.NEW, "resume")
        if not self._resuming:
            raise LocalProtocolError("resume needs a protocol made by continue_from")
        self.state = VoiceState.RESUMING
        return vp.encode(
            VoiceOp.RESUME,
            {
                "server_id": self.info.guild_id,
                "session_id": self.info.session_id,
                "token": self.info.token,
                "seq_ack": self.seq_ack,
            },
        )

    # -- frames to send ---------------------------------------------------------------------

    def identify(self) -> str:
        self._require(VoiceState.NEW, "identify")
        self.state = VoiceState.IDENTIFYING
        return vp.encode(
            VoiceOp.IDENTIFY,
            {
                "server_id": self.info.guild_id,
                "user_id": self.info.user_id,
                "session_id": self.info.session_id,
                "token": self.info.token,
                "max_dave_protocol_version": self.max_dave_protocol_version,
            },
        )

    def select_protocol(self, address: str, port: int, mode: str) -> str:
        self._require(VoiceState.READY, "select_protocol")
        assert self.ready is not None
        if mode not in self.ready.modes:
            raise LocalProtocolError(f"mode {mode!r} was not offered by the server")
        self.state = VoiceState.SELECTING
        self._selected_mode = mode
        return vp.encode(
            VoiceOp.SELECT_PROTOCOL,
            {
                "protocol": "udp",
                "data": {"address": address, "port": port, "mode": mode},
            },
        )

    def heartbeat(self, nonce: int) -> str:
        if self.state in (VoiceState.NEW, VoiceState.CLOSED):
            raise LocalProtocolError(f"cannot heartbeat in state {self.state.value}")
        return vp.encode(VoiceOp.HEARTBEAT, {"t": nonce, "seq_ack": self.seq_ack})

    def speaking(self, flags: SpeakingFlag | int) -> str:
        self._require(VoiceState.ACTIVE, "speaking")
        assert self.ready is not None
        return vp.encode(
            VoiceOp.SPEAKING,
            {
                "speaking": int(flags),
                "delay": 0,
                "ssrc": self.ready.ssrc,
            },
        )

    # -- input ------------------------------------------------------------------------------

    def receive_text(self, text: str | bytes) -> vp.ServerMessage:
        """Apply one text frame and return its event."""
        if self.state is VoiceState.CLOSED:
            raise LocalProtocolError("voice gateway is closed")
        seq, message = vp.decode_text(text)
        if seq is not None:
            self.seq_ack = seq
        if isinstance(message, vp.Hello):
            self.hello = message
        elif isinstance(message, vp.Ready):
            self._expect(VoiceState.IDENTIFYING, "Ready (op 2)")
            self.ready = message
            self.state = VoiceState.READY
        elif isinstance(message, vp.SessionDescription):
            self._expect(VoiceState.SELECTING, "Session Description (op 4)")
            if message.mode != self._selected_mode:
                raise RemoteProtocolError(
                    f"session description names mode {message.mode!r}, "
                    f"but {self._selected_mode!r} was selected"
                )
            self.session = message
            self.state = VoiceState.ACTIVE
        elif isinstance(message, vp.Resumed):
            self._expect(VoiceState.RESUMING, "Resumed (op 9)")
            self.state = VoiceState.ACTIVE
        elif isinstance(message, vp.UnknownMessage):
            self.ignored[message.op] = self.ignored.get(message.op, 0) + 1
        return message

    def receive_binary(self, data: bytes) -> vp.BinaryMessage:
        """Apply one binary frame (its seq counts towards ``seq_ack``) and return it."""
        if self.state is VoiceState.CLOSED:
            raise LocalProtocolError("voice gateway is closed")
        message = vp.decode_binary(data)
        self.seq_ack = message.seq
        return message

    def receive_close(self) -> None:
        self.state = VoiceState.CLOSED

    # -- helpers ----------------------------------------------------------------------------

    def _require(self, state: VoiceState, action: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot {action} in state {self.state.value}")

    def _expect(self, state: VoiceState, what: str) -> None:
        if self.state is not state:
            raise RemoteProtocolError(f"unexpected {what} in state {self.state.value}")

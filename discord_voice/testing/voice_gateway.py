"""The fake voice gateway: Discord's voice websocket, v8, with DAVE when the fake has it on.

You normally use it through `FakeDiscord`: after a join on the fake main gateway, connect to the
VOICE_SERVER_UPDATE ``endpoint`` with ``/?v=8`` and run the usual flow — Identify (op 0), Hello
(op 8), Ready (op 2), IP discovery on UDP, Select Protocol (op 1), Session Description (op 4),
Speaking (op 5), then audio. Each connection appears in ``fake.voice_sessions``.

It is strict. Each of these closes the websocket with Discord's code and a reason naming the
problem, and adds a line to ``fake.violations``: no ``v=8`` in the URL (4006), bad JSON (4002),
an op before Identify (4003), credentials the main gateway did not issue (4004), a second
Identify (4005), no integer ``max_dave_protocol_version`` (4020), a protocol other than "udp"
(4012), a mode that was not offered (4016), a heartbeat not in v8 shape ``{"t", "seq_ack"}``
(4020), an unknown op (4001). Resume (op 7) is not implemented and gets 4006. Softer mistakes
(Select Protocol address differing from IP discovery, wrong Speaking ssrc, audio before Speaking)
are recorded as violations without closing. Server messages carry a top-level ``seq`` except
Hello and Heartbeat ACK, as on Discord; binary messages (``[uint16 seq][op][payload]``) count in
the same sequence.

DAVE (``FakeDiscord(dave=True)``; off by default): outside stage-like channels an Identify with
``max_dave_protocol_version`` < 1 is closed with 4017, Session Description carries
``dave_protocol_version: 1`` and the connection joins its channel's `DaveGroup` (the gateway
as MLS external sender: ops 11/13, 21-31; see `dave_group`). Without DAVE, DAVE ops from a
client are recorded as violations.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from discord_voice.core.opcodes import VoiceCloseCode, VoiceOp
from discord_voice.testing import _checks as checks
from discord_voice.testing._world import Config, Credentials, Script, is_snowflake
from discord_voice.testing._ws import (
    CloseWith,
    Delivery,
    Peer,
    PeerGone,
    ServedGateway,
    run_posted,
)
from discord_voice.testing.records import Recorder, VoiceSession
from discord_voice.testing.udp_server import FakeUdpServer

if TYPE_CHECKING:
    from discord_voice.testing.dave_hub import DaveHub
    from discord_voice.testing.dave_link import DaveLink

__all__ = ["FakeVoiceGateway"]

#: Ops a client may send; anything else is answered with 4001.
_CLIENT_OPS = frozenset(
    {
        VoiceOp.IDENTIFY,
        VoiceOp.SELECT_PROTOCOL,
        VoiceOp.HEARTBEAT,
        VoiceOp.SPEAKING,
        VoiceOp.RESUME,
        VoiceOp.DAVE_TRANSITION_READY,
        VoiceOp.DAVE_MLS_INVALID_COMMIT_WELCOME,
    }
)
_NO_DAVE_WHY = " (dave_protocol_version 0, or before Session Description)"
_CLIENT_BINARY_OPS = frozenset({VoiceOp.DAVE_MLS_KEY_PACKAGE, VoiceOp.DAVE_MLS_COMMIT_WELCOME})


class FakeVoiceGateway(ServedGateway):
    """A websocket server speaking the voice gateway; one `_VoiceConnection` per client."""

    def __init__(
        self,
        config: Config,
        recorder: Recorder,
        script: Script,
        credentials: Credentials,
        udp: FakeUdpServer,
        speaking_grace: Callable[[], float],
        dave: DaveHub | None = None,
    ) -> None:
        self.config = config
        self.dave = dave  # None: DAVE off (every session at dave_protocol_version 0)
        self.recorder = recorder
        self.script = script
        self.credentials = credentials
        self.udp = udp
        self.speaking_grace = speaking_grace
        super().__init__(
            "voice", lambda peer: _VoiceConnection(self, peer).run(), recorder.violation
        )


class _VoiceConnection:
    """The state of one voice websocket, driven by its handler thread only."""

    def __init__(self, gateway: FakeVoiceGateway, peer: Peer) -> None:
        self.gw = gateway
        self.config = gateway.config
        self.rec = gateway.recorder
        self.script = gateway.script
        self.peer = peer
        self.where = f"voice#{peer.number}"
        self.session = VoiceSession(peer.number, peer.path)
        with self.rec.changing():
            self.rec.voice_sessions.append(self.session)
        self.seq = 0  # seq of the last server message that carried one
        self.acked: int | None = None
        self.identified = False
        self.selected = False
        self.max_dave = 0
        self.dave_link: DaveLink | None = None  # set once it joined its channel's DAVE group

    def run(self) -> None:
        try:
            query = parse_qs(urlsplit(self.peer.path).query)
            if query.get("v") != ["8"]:
                raise CloseWith(
                    VoiceCloseCode.SESSION_NO_LONGER_VALID,
                    f"voice gateway version missing or unsupported (v={query.get('v')}; "
                    "this fake speaks v=8)",
                )
            if self.config.voice_hello_first:
                self._hello()
            while True:
                for item, delivery in self.peer.take_posted():
                    self._run_posted(item, delivery)
                raw = self.peer.recv()
                if raw is None:
                    if self.peer.stopping:
                        raise CloseWith(1001, "fake discord is shutting down", violation=False)
                    self._check_audio_rule(final=False)
                    continue
                self.rec.message("voice", "client", raw, self.peer.number)
                self._handle(raw)
        except CloseWith as close:
            if close.violation:
                self.rec.violation(f"{self.where}: {close.reason} (closed with {close.code})")
            self._closed(close.code, close.reason, "server")
            self.peer.close(close.code, close.reason)
        except PeerGone as gone:
            self._closed(gone.code, gone.reason, "client")
        finally:
            self._check_audio_rule(final=True)
            if self.dave_link is not None:
                self.dave_link.leave()

    def _closed(self, code: int | None, reason: str, by: str) -> None:
        with self.rec.changing():
            self.session.close_code = code
            self.session.close_reason = reason
            self.session.closed_by = "server" if by == "server" else "client"
            self.session.closed = True

    def _check_audio_rule(self, *, final: bool) -> None:
        with self.rec.lock:
            text = self.session._check_audio_rule(
                time.monotonic(), self.gw.speaking_grace(), final=final
            )
            if text:
                self.rec.violations.append(f"{self.where}: {text}")
                self.rec.cond.notify_all()

    def _violation(self, text: str) -> None:
        self.rec.violation(f"{self.where}: {text}")

    # -- sending -------------------------------------------------------------------------------

    def _send(self, op: int, d: Any, *, seq: bool = True) -> None:
        payload: dict[str, Any] = {"op": int(op), "d": d}
        if seq:
            self.seq += 1
            payload["seq"] = self.seq
        self._send_raw(json.dumps(payload, separators=(",", ":")))

    def _send_raw(self, raw: str | bytes) -> None:
        self.rec.message("voice", "server", raw, self.peer.number)
        self.peer.send(raw)

    def _hello(self) -> None:
        if not self.script.withheld("hello"):
            self._send(
                VoiceOp.HELLO,
                {"heartbeat_interval": self.config.voice_heartbeat_ms, "v": 8},
                seq=False,
            )

    def _run_posted(self, item: tuple[Any, ...], delivery: Delivery) -> None:
        """A scripted action from the test thread (`FakeDiscord.send_voice` and friends)."""
        run_posted(item, delivery, self.peer, self._send_posted)

    def _send_posted(self, item: tuple[Any, ...]) -> None:
        if item[0] == "binary":  # server binary frame: uint16 seq, then opcode and payload
            self.seq += 1
            self._send_raw((self.seq & 0xFFFF).to_bytes(2, "big") + item[1])
            return
        payload = dict(item[1])
        if item[2]:
            self.seq += 1
            payload["seq"] = self.seq
        self._send_raw(json.dumps(payload, separators=(",", ":")))

    # -- receiving -----------------------------------------------------------------------------

    def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self._handle_binary(raw)
            return
        payload = checks.decode_object(raw, VoiceCloseCode.FAILED_TO_DECODE)
        op: int = payload["op"]
        d = payload.get("d")
        armed = self.script.take_close(op)
        if armed is not None:
            raise CloseWith(armed[0], armed[1], violation=False)
        if op == VoiceOp.HEARTBEAT:
            self._on_heartbeat(d)
        elif op == VoiceOp.RESUME:
            raise CloseWith(
                VoiceCloseCode.SESSION_NO_LONGER_VALID,
                "session no longer valid: the fake does not implement resume",
                violation=False,
            )
        elif op not in _CLIENT_OPS:
            raise CloseWith(VoiceCloseCode.UNKNOWN_OPCODE, f"unknown opcode {op}")
        elif op == VoiceOp.IDENTIFY:
            self._on_identify(d)
        elif not self.identified:
            raise CloseWith(
                VoiceCloseCode.NOT_AUTHENTICATED, f"not authenticated: op {op} sent before identify"
            )
        elif op == VoiceOp.SELECT_PROTOCOL:
            self._on_select(d)
        elif op == VoiceOp.SPEAKING:
            self._on_speaking(d)
        elif self.dave_link is not None:
            self.dave_link.on_json(op, d)
        else:
            self._violation(f"DAVE op {op} sent but the session has no DAVE{_NO_DAVE_WHY}")

    def _handle_binary(self, raw: bytes) -> None:
        if not raw:
            raise CloseWith(VoiceCloseCode.FAILED_TO_DECODE, "empty binary message")
        op = raw[0]
        armed = self.script.take_close(op)
        if armed is not None:
            raise CloseWith(armed[0], armed[1], violation=False)
        if op not in _CLIENT_BINARY_OPS:
            raise CloseWith(VoiceCloseCode.UNKNOWN_OPCODE, f"unknown binary opcode {op}")
        if not self.identified:
            raise CloseWith(
                VoiceCloseCode.NOT_AUTHENTICATED,
                f"not authenticated: binary op {op} sent before identify",
            )
        if self.dave_link is not None:
            self.dave_link.on_binary(op, raw[1:])
            return
        self._violation(f"DAVE binary op {op} sent but the session has no DAVE{_NO_DAVE_WHY}")

    def _on_heartbeat(self, d: Any) -> None:
        t, seq_ack = checks.voice_heartbeat(d)
        if seq_ack > self.seq or seq_ack < -1:
            self._violation(f"heartbeat seq_ack={seq_ack} but the last seq sent was {self.seq}")
        elif self.acked is not None and seq_ack < self.acked:
            self._violation(f"heartbeat seq_ack went backwards: {seq_ack} after {self.acked}")
        self.acked = seq_ack
        with self.rec.changing():
            self.session.heartbeats += 1
        if not self.script.withheld("heartbeat_ack"):
            self._send(VoiceOp.HEARTBEAT_ACK, {"t": t}, seq=False)

    def _on_identify(self, d: Any) -> None:
        if self.identified:
            raise CloseWith(VoiceCloseCode.ALREADY_AUTHENTICATED, "already authenticated")
        issued = self.gw.credentials.match(*checks.voice_identify(d))
        if issued is None:
            raise CloseWith(
                VoiceCloseCode.AUTHENTICATION_FAILED,
                "authentication failed: server_id/user_id/session_id/token do not match "
                "a voice session issued by the main gateway",
            )
        self.max_dave = d["max_dave_protocol_version"]
        hub = self.gw.dave
        if hub is not None and hub.requires_dave(int(issued.channel_id)) and self.max_dave < 1:
            raise CloseWith(
                VoiceCloseCode.E2EE_REQUIRED,
                "E2EE/DAVE is required in this channel: identify with "
                f"max_dave_protocol_version >= 1 (got {self.max_dave})",
            )
        self.identified = True
        ssrc = self.gw.udp.add_session(self.session)
        with self.rec.changing():
            self.session.identify = d
            self.session.guild_id = int(issued.guild_id)
            self.session.channel_id = int(issued.channel_id)
            self.session.user_id = int(issued.user_id) if is_snowflake(issued.user_id) else None
            self.session.session_id = issued.session_id
            self.session.ssrc = ssrc
        if not self.config.voice_hello_first:
            self._hello()
        if not self.script.withheld("ready"):
            self._send(
                VoiceOp.READY,
                {
                    "ssrc": ssrc,
                    "ip": "127.0.0.1",
                    "port": self.gw.udp.port,
                    "modes": list(self.config.modes),
                    "experiments": [],
                    "heartbeat_interval": 1,  # bogus on purpose, as on Discord: use Hello's
                },
            )

    def _on_select(self, d: Any) -> None:
        address, port, mode = checks.voice_select(d, self.config.modes)
        if self.selected:
            self._violation("select protocol sent a second time (ignored)")
            return
        self.selected = True
        ssrc = self.session.ssrc
        assert ssrc is not None
        told = self.gw.udp.told_address(ssrc)
        if told is None:
            self._violation("select protocol sent before ip discovery was answered")
        elif (address, port) != told:
            self._violation(
                f"select protocol address {address}:{port} is not what ip discovery "
                f"told the client ({told[0]}:{told[1]})"
            )
        key = os.urandom(32)
        self.gw.udp.set_key(ssrc, mode, key)  # before the client can know the key
        channel = self.session.channel_id
        assert channel is not None
        hub = self.gw.dave
        in_dave = hub is not None and hub.requires_dave(channel)
        version = hub.group(channel).version if hub is not None and in_dave else 0
        with self.rec.changing():
            self.session.client_address = (address, port)
            self.session.mode = mode
            self.session.secret_key = key
            self.session.dave_protocol_version = version
        if not self.script.withheld("session_description"):
            self._send(
                VoiceOp.SESSION_DESCRIPTION,
                {
                    "mode": mode,
                    "secret_key": list(key),
                    "dave_protocol_version": version,
                    "audio_codec": "opus",
                    "video_codec": None,
                    "media_session_id": secrets.token_hex(16),
                },
            )
        if hub is not None and in_dave:
            from discord_voice.testing.dave_link import DaveLink  # needs dave-py

            user = self.session.user_id if self.session.user_id is not None else 0
            self.dave_link = DaveLink(hub, channel, user, self.where, self.peer.post)

    def _on_speaking(self, d: Any) -> None:
        mask = checks.voice_speaking(d)
        if not 0 <= mask <= 7:
            self._violation(f"speaking mask {mask} has bits outside microphone/soundshare/priority")
        if d.get("delay") != 0 or type(d.get("delay")) is not int:
            self._violation(f"speaking delay must be 0 for bots, got {d.get('delay')!r}")
        own = self.session.ssrc
        if d.get("ssrc") != own or type(d.get("ssrc")) is not int:
            self._violation(f"speaking ssrc {d.get('ssrc')!r} is not the session's ssrc {own}")
            mask = 0  # does not bind this session's ssrc
        with self.rec.changing():
            self.session.speaking.append(d)
            text = self.session._note_speaking(mask, time.monotonic(), self.gw.speaking_grace())
            if text:
                self.rec.violations.append(f"{self.where}: {text}")

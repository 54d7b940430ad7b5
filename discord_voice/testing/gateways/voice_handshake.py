"""The voice gateway's handshake handlers: Identify (op 0), Select Protocol (op 1), Speaking (op 5).

A base class of the voice connection (`voice_gateway`), kept apart so that each module stays
small. State that must survive a resume lives in the connection's `LiveVoice`.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from discord_voice.core.opcodes import VoiceCloseCode, VoiceOp
from discord_voice.testing.gateways import checks
from discord_voice.testing.gateways.voice_live import LiveVoice
from discord_voice.testing.gateways.ws import CloseWith, Peer
from discord_voice.testing.records import Recorder, VoiceSession
from discord_voice.testing.world import Config, Script, is_snowflake

if TYPE_CHECKING:
    from discord_voice.testing.gateways.voice import FakeVoiceGateway

__all__ = ["VoiceHandshake"]


class VoiceHandshake:
    """Handlers for the ops of the connect flow; `_send` and `_hello` come from the subclass."""

    gw: FakeVoiceGateway
    config: Config
    rec: Recorder
    script: Script
    peer: Peer
    where: str
    live: LiveVoice

    @property
    def session(self) -> VoiceSession:
        return self.live.session

    def _send(self, op: int, d: Any, *, seq: bool = True) -> None:
        raise NotImplementedError

    def _hello(self) -> None:
        raise NotImplementedError

    def _violation(self, text: str) -> None:
        self.rec.violation(f"{self.where}: {text}")

    def _on_identify(self, d: Any) -> None:
        live = self.live
        if live.identified:
            raise CloseWith(VoiceCloseCode.ALREADY_AUTHENTICATED, "already authenticated")
        issued = self.gw.credentials.match(*checks.voice_identify(d))
        if issued is None:
            raise CloseWith(
                VoiceCloseCode.AUTHENTICATION_FAILED,
                "authentication failed: server_id/user_id/session_id/token do not match "
                "a voice session issued by the main gateway",
            )
        live.max_dave = d["max_dave_protocol_version"]
        hub = self.gw.dave
        if hub is not None and hub.requires_dave(int(issued.channel_id)) and live.max_dave < 1:
            raise CloseWith(
                VoiceCloseCode.E2EE_REQUIRED,
                "E2EE/DAVE is required in this channel: identify with "
                f"max_dave_protocol_version >= 1 (got {live.max_dave})",
            )
        live.identified = True
        live.issued = issued
        self.gw.live.register(live, issued.session_id, issued.guild_id, issued.user_id)
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
        live = self.live
        if live.selected:
            self._violation("select protocol sent a second time (ignored)")
            return
        live.selected = True
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
            from discord_voice.testing.gateways.voice_dave import DaveLink  # needs dave-py

            user = self.session.user_id if self.session.user_id is not None else 0
            live.dave_link = DaveLink(hub, channel, user, self.where, live.post)

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

"""The voice gateway's connect-flow handlers: Identify (op 0), Select Protocol (op 1), Speaking
(op 5). After Session Description the session is ready to hear the channel (`voice_roster`).

`VoiceHandshake` belongs to one voice connection (`voice`), which hands it the session each op is
for (a resume swaps the session under the connection) and the two ways it answers (send an op,
send Hello). `VoiceServices` is what every voice connection of a fake shares. State that must
survive a resume lives in the session's `LiveVoice`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from discord_voice.core.opcodes import VoiceCloseCode, VoiceOp
from discord_voice.testing.gateways import checks
from discord_voice.testing.gateways.voice_live import LiveVoice, LiveVoices
from discord_voice.testing.gateways.voice_roster import Roster
from discord_voice.testing.gateways.ws import CloseWith
from discord_voice.testing.records import Recorder
from discord_voice.testing.udp.server import FakeUdpServer
from discord_voice.testing.world import Config, Credentials, Script, is_snowflake

if TYPE_CHECKING:
    from discord_voice.testing.dave.hub import DaveHub

__all__ = ["VoiceHandshake", "VoiceServices"]


@dataclass(frozen=True)
class VoiceServices:
    """What every voice connection of one fake uses, whichever voice gateway it came to."""

    config: Config
    recorder: Recorder
    script: Script
    credentials: Credentials  # issued by the main gateway, checked by Identify and Resume
    udp: FakeUdpServer
    speaking_grace: Callable[[], float]
    live: LiveVoices  # sessions by id (they move between voice gateways on a resume)
    dave: DaveHub | None  # None: DAVE off (every session at dave_protocol_version 0)
    roster: Roster  # ready sessions by channel; ops 11/13 for played members outside DAVE


class VoiceHandshake:
    """The handlers of one voice connection for the ops of the connect flow.

    `send(op, d)` sends an op with the next ``seq``; `hello()` sends Hello (op 8), which comes
    after Identify when the fake is configured so.
    """

    def __init__(
        self,
        services: VoiceServices,
        where: str,
        send: Callable[[int, Any], None],
        hello: Callable[[], None],
    ) -> None:
        self._services = services
        self._where = where
        self._send = send
        self._hello = hello

    def _violation(self, text: str) -> None:
        self._services.recorder.violation(f"{self._where}: {text}")

    def identify(self, live: LiveVoice, d: Any) -> None:
        """Op 0: check the credentials, register the session, answer Ready (op 2)."""
        services, session = self._services, live.session
        if live.identified:
            raise CloseWith(VoiceCloseCode.ALREADY_AUTHENTICATED, "already authenticated")
        issued = services.credentials.match(*checks.voice_identify(d))
        if issued is None:
            raise CloseWith(
                VoiceCloseCode.AUTHENTICATION_FAILED,
                "authentication failed: server_id/user_id/session_id/token do not match "
                "a voice session issued by the main gateway",
            )
        live.max_dave = d["max_dave_protocol_version"]
        hub = services.dave
        if hub is not None and hub.requires_dave(int(issued.channel_id)) and live.max_dave < 1:
            raise CloseWith(
                VoiceCloseCode.E2EE_REQUIRED,
                "E2EE/DAVE is required in this channel: identify with "
                f"max_dave_protocol_version >= 1 (got {live.max_dave})",
            )
        live.identified = True
        live.issued = issued
        services.live.register(live, issued.session_id, issued.guild_id, issued.user_id)
        ssrc = services.udp.add_session(session)
        with services.recorder.changing():
            session.identify = d
            session.guild_id = int(issued.guild_id)
            session.channel_id = int(issued.channel_id)
            session.user_id = int(issued.user_id) if is_snowflake(issued.user_id) else None
            session.session_id = issued.session_id
            session.ssrc = ssrc
        if not services.config.voice_hello_first:
            self._hello()
        if not services.script.withheld("ready"):
            self._send(
                VoiceOp.READY,
                {
                    "ssrc": ssrc,
                    "ip": "127.0.0.1",
                    "port": services.udp.port,
                    "modes": list(services.config.modes),
                    "experiments": [],
                    "heartbeat_interval": 1,  # bogus on purpose, as on Discord: use Hello's
                },
            )

    def select(self, live: LiveVoice, d: Any) -> None:
        """Op 1: check the address and mode, set the UDP key, answer Session Description."""
        services, session = self._services, live.session
        address, port, mode = checks.voice_select(d, services.config.modes)
        if live.selected:
            self._violation("select protocol sent a second time (ignored)")
            return
        live.selected = True
        ssrc = session.ssrc
        assert ssrc is not None
        told = services.udp.told_address(ssrc)
        if told is None:
            self._violation("select protocol sent before ip discovery was answered")
        elif (address, port) != told:
            self._violation(
                f"select protocol address {address}:{port} is not what ip discovery "
                f"told the client ({told[0]}:{told[1]})"
            )
        key = os.urandom(32)
        services.udp.set_key(ssrc, mode, key)  # before the client can know the key
        channel = session.channel_id
        assert channel is not None
        hub = services.dave
        in_dave = hub is not None and hub.requires_dave(channel)
        version = hub.group(channel).version if hub is not None and in_dave else 0
        with services.recorder.changing():
            session.client_address = (address, port)
            session.mode = mode
            session.secret_key = key
            session.dave_protocol_version = version
        # Ready to hear the channel before the client can know it (what the roster posts, op 11
        # for members already there, goes out after Session Description).
        services.roster.client_ready(live, channel)
        if not services.script.withheld("session_description"):
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

            user = session.user_id if session.user_id is not None else 0
            live.dave_link = DaveLink(hub, channel, user, self._where, live.post)

    def speaking(self, live: LiveVoice, d: Any) -> None:
        """Op 5: check the mask, delay and ssrc; record it (audio may follow)."""
        services, session = self._services, live.session
        mask = checks.voice_speaking(d)
        if not 0 <= mask <= 7:
            self._violation(f"speaking mask {mask} has bits outside microphone/soundshare/priority")
        if d.get("delay") != 0 or type(d.get("delay")) is not int:
            self._violation(f"speaking delay must be 0 for bots, got {d.get('delay')!r}")
        own = session.ssrc
        if d.get("ssrc") != own or type(d.get("ssrc")) is not int:
            self._violation(f"speaking ssrc {d.get('ssrc')!r} is not the session's ssrc {own}")
            mask = 0  # does not bind this session's ssrc
        with services.recorder.changing():
            session.speaking.append(d)
            text = session._note_speaking(mask, time.monotonic(), services.speaking_grace())
            if text:
                services.recorder.violations.append(f"{self._where}: {text}")

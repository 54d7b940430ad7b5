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
(4020), an unknown op (4001). Softer mistakes
(Select Protocol address differing from IP discovery, wrong Speaking ssrc, audio before Speaking)
are recorded as violations without closing. Server messages carry a top-level ``seq`` except
Hello and Heartbeat ACK, as on Discord; binary messages (``[uint16 seq][op][payload]``) count in
the same sequence.

Resume (op 7, v8 buffered resume; see `voice_live`): a new websocket that sends
``{server_id, session_id, token, seq_ack}`` for a session whose websocket ended resumably (a drop,
a client close other than 1000/1001, the fake's 4015) gets op 9 Resumed (``d: null``), then every
buffered message with seq > ``seq_ack`` again, byte for byte, then what the session was sent
while detached; SSRC, key, mode and DAVE membership are unchanged and ``VoiceSession.resumes``
counts it. An unknown or ended session, a wrong token, credentials the main gateway no longer
holds (moved, kicked), or a ``seq_ack`` the buffer cannot serve get 4006.

DAVE (``FakeDiscord(dave=True)``; off by default): outside stage-like channels an Identify with
``max_dave_protocol_version`` < 1 is closed with 4017, Session Description carries
``dave_protocol_version: 1`` and the connection joins its channel's `DaveGroup` (the gateway
as MLS external sender: ops 11/13, 21-31; see `dave_group`). Without DAVE, DAVE ops from a
client are recorded as violations.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from discord_voice.core.opcodes import VoiceCloseCode, VoiceOp
from discord_voice.testing import _checks as checks
from discord_voice.testing._world import Config, Credentials, Script
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
from discord_voice.testing.voice_handshake import VoiceHandshake
from discord_voice.testing.voice_live import LiveVoice, LiveVoices

if TYPE_CHECKING:
    from discord_voice.testing.dave_hub import DaveHub

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
        live: LiveVoices,
        dave: DaveHub | None = None,
    ) -> None:
        self.config = config
        self.dave = dave  # None: DAVE off (every session at dave_protocol_version 0)
        self.recorder = recorder
        self.script = script
        self.credentials = credentials
        self.udp = udp
        self.speaking_grace = speaking_grace
        self.live = live  # shared by every voice gateway of the fake (sessions move between them)
        super().__init__(
            "voice", lambda peer: _VoiceConnection(self, peer).run(), recorder.violation
        )



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
as MLS external sender: ops 11/13, 21-31; see `discord_voice.testing.dave.group`). Without
DAVE, DAVE ops from a client are recorded as violations.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from discord_voice.core.opcodes import VoiceCloseCode, VoiceOp
from discord_voice.testing.gateways import checks
from discord_voice.testing.gateways.served import next_client_message, run_posted
from discord_voice.testing.gateways.voice_handshake import VoiceHandshake, VoiceServices
from discord_voice.testing.gateways.voice_live import (
    RESUMABLE_SERVER_CLOSES,
    LiveVoice,
    resume_failed,
    take_over,
)
from discord_voice.testing.gateways.ws import (
    CloseWith,
    Delivery,
    Dropped,
    Peer,
    PeerGone,
    WsServer,
)
from discord_voice.testing.records import VoiceSession, record_close

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
#: Seconds a voice server started while the fake closes gets to close again.
_LATE_CLOSE_BUDGET = 0.6
_NO_DAVE_WHY = " (dave_protocol_version 0, or before Session Description)"
_CLIENT_BINARY_OPS = frozenset({VoiceOp.DAVE_MLS_KEY_PACKAGE, VoiceOp.DAVE_MLS_COMMIT_WELCOME})


class FakeVoiceGateway:
    """The fake's voice gateway: one websocket server from `start`, another per `add` (a move to
    a new voice server), all sharing the fake's UDP server and voice sessions.

    Joins are sent to the newest server (`endpoint`); scripted actions go to the newest open
    connection of any of them. `begin_close` / `finish_close` stop all of them; a server added
    meanwhile is closed at once. One `_VoiceConnection` per client websocket.
    """

    def __init__(self, services: VoiceServices, endpoint_scheme: bool) -> None:
        self._services = services
        self._scheme = endpoint_scheme
        self._numbers = itertools.count(1).__next__  # connection numbers, unique across servers
        self._lock = threading.Lock()
        self._servers: list[WsServer] = []
        self._endpoint = ""
        self._closing = False

    @property
    def endpoint(self) -> str:
        """The ``endpoint`` a VOICE_SERVER_UPDATE carries now ("" before `start`)."""
        with self._lock:
            return self._endpoint

    def start(self) -> str:
        """Start the first voice server; returns its endpoint."""
        return self.add()

    def add(self) -> str:
        """Start another voice server (same UDP server); later joins are sent there."""
        services = self._services
        server = WsServer(
            "voice",
            lambda peer: _VoiceConnection(services, peer).run(),
            services.recorder.violation,
            self._numbers,
        )
        server.start()
        port = server.port
        endpoint = f"ws://127.0.0.1:{port}" if self._scheme else f"127.0.0.1:{port}"
        with self._lock:
            closing = self._closing
            if not closing:
                self._servers.append(server)
                self._endpoint = endpoint
        if closing:
            server.begin_close()
            server.finish_close(time.monotonic() + _LATE_CLOSE_BUDGET)
            raise RuntimeError("FakeDiscord is not running")
        return endpoint

    def peers(self) -> list[Peer]:
        """Open connections of every voice server, oldest first."""
        with self._lock:
            servers = list(self._servers)
        peers = (p for server in servers for p in server.open_peers())
        return sorted(peers, key=lambda p: p.number)

    def post(self, item: tuple[Any, ...], connection: int | None) -> Delivery:
        """Hand a scripted action to the newest open voice connection (or number `connection`)."""
        peers = self.peers()
        if connection is not None:
            peers = [p for p in peers if p.number == connection]
        if not peers:
            number = "" if connection is None else f" number {connection}"
            raise RuntimeError(f"no open voice gateway connection{number}")
        return peers[-1].post(item)

    def begin_close(self) -> None:
        with self._lock:
            self._closing = True
            servers = list(self._servers)
        for server in servers:
            server.begin_close()

    def finish_close(self, deadline: float) -> None:
        with self._lock:
            servers = list(self._servers)
        for server in servers:
            server.finish_close(deadline)


class _VoiceConnection:
    """The state of one voice websocket, driven by its handler thread only."""

    def __init__(self, services: VoiceServices, peer: Peer) -> None:
        self.services = services
        self.config = services.config
        self.rec = services.recorder
        self.script = services.script
        self.peer = peer
        self.where = f"voice#{peer.number}"
        self.handshake = VoiceHandshake(services, self.where, self._send, self._hello)
        self.live = LiveVoice(VoiceSession(peer.number, peer.path))
        self.live.attach(peer)
        with self.rec.changing():
            self.rec.voice_sessions.append(self.live.session)

    @property
    def session(self) -> VoiceSession:
        return self.live.session

    def _violation(self, text: str) -> None:
        self.rec.violation(f"{self.where}: {text}")

    def run(self) -> None:
        final = True
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
                raw = next_client_message(self.peer, self._run_posted, self._idle)
                self.rec.message("voice", "client", raw, self.peer.number)
                self._handle(raw)
        except CloseWith as close:
            if close.violation:
                self.rec.violation(f"{self.where}: {close.reason} (closed with {close.code})")
            final = close.code not in RESUMABLE_SERVER_CLOSES
            self._closed(close.code, close.reason, "server")
            self.peer.close(close.code, close.reason)
        except Dropped:
            final = False
            self._closed(None, "dropped by the fake (no close frame)", "server")
            self.peer.abort()
        except PeerGone as gone:
            final = gone.code in (1000, 1001)
            self._closed(gone.code, gone.reason, "client")
        finally:
            if final:
                self._check_audio_rule(final=True)
            self.live.detach(self.peer, final=final)

    def _closed(self, code: int | None, reason: str, by: str) -> None:
        record_close(self.rec, self.session, code, reason, by)

    def _idle(self) -> None:
        """Between client messages: the Speaking-before-audio rule, expired sessions."""
        self._check_audio_rule(final=False)
        self.services.live.reap()

    def _check_audio_rule(self, *, final: bool) -> None:
        with self.rec.lock:
            text = self.session._check_audio_rule(
                time.monotonic(), self.services.speaking_grace(), final=final
            )
            if text:
                self.rec.violations.append(f"{self.where}: {text}")
                self.rec.cond.notify_all()

    # -- sending -------------------------------------------------------------------------------

    def _send(self, op: int, d: Any, *, seq: bool = True) -> None:
        payload: dict[str, Any] = {"op": int(op), "d": d}
        if seq:
            self.live.seq += 1
            payload["seq"] = self.live.seq
        self._send_raw(json.dumps(payload, separators=(",", ":")), seq)

    def _send_raw(self, raw: str | bytes, seq: bool = False) -> None:
        if seq:
            self.live.buffer.append((self.live.seq, raw))
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
        if item[0] == "kept":  # the session's own traffic (DAVE), routed through `LiveVoice`
            item = item[1]
        if item[0] == "raw":  # malformed on purpose: no seq, not buffered
            self._send_raw(item[1])
            return
        if item[0] == "binary":  # server binary frame: uint16 seq, then opcode and payload
            self.live.seq += 1
            self._send_raw((self.live.seq & 0xFFFF).to_bytes(2, "big") + item[1], True)
            return
        payload = dict(item[1])
        if item[2]:
            self.live.seq += 1
            payload["seq"] = self.live.seq
        self._send_raw(json.dumps(payload, separators=(",", ":")), bool(item[2]))

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
            self._on_resume(d)
        elif op not in _CLIENT_OPS:
            raise CloseWith(VoiceCloseCode.UNKNOWN_OPCODE, f"unknown opcode {op}")
        elif op == VoiceOp.IDENTIFY:
            self.handshake.identify(self.live, d)
        elif not self.live.identified:
            raise CloseWith(
                VoiceCloseCode.NOT_AUTHENTICATED, f"not authenticated: op {op} sent before identify"
            )
        elif op == VoiceOp.SELECT_PROTOCOL:
            self.handshake.select(self.live, d)
        elif op == VoiceOp.SPEAKING:
            self.handshake.speaking(self.live, d)
        elif self.live.dave_link is not None:
            self.live.dave_link.on_json(op, d)
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
        if not self.live.identified:
            raise CloseWith(
                VoiceCloseCode.NOT_AUTHENTICATED,
                f"not authenticated: binary op {op} sent before identify",
            )
        if self.live.dave_link is not None:
            self.live.dave_link.on_binary(op, raw[1:])
            return
        self._violation(f"DAVE binary op {op} sent but the session has no DAVE{_NO_DAVE_WHY}")

    def _on_heartbeat(self, d: Any) -> None:
        t, seq_ack = checks.voice_heartbeat(d)
        live = self.live
        if seq_ack > live.seq or seq_ack < -1:
            self._violation(f"heartbeat seq_ack={seq_ack} but the last seq sent was {live.seq}")
        elif live.acked is not None and seq_ack < live.acked:
            self._violation(f"heartbeat seq_ack went backwards: {seq_ack} after {live.acked}")
        live.acked = seq_ack
        with self.rec.changing():
            self.session.heartbeats += 1
        if not self.script.withheld("heartbeat_ack"):
            self._send(VoiceOp.HEARTBEAT_ACK, {"t": t}, seq=False)

    def _on_resume(self, d: Any) -> None:
        """Op 7: take over a detached session, answer op 9, replay what the client missed."""
        if self.live.identified:
            raise CloseWith(VoiceCloseCode.ALREADY_AUTHENTICATED, "already authenticated")
        fields = ("server_id", "session_id", "token")
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in fields):
            raise resume_failed("op 7 d needs string server_id, session_id and token")
        seq_ack = d.get("seq_ack", -1)
        if type(seq_ack) is not int:
            raise resume_failed(f"seq_ack must be an integer, got {seq_ack!r}")
        live = self.services.live.find(d["server_id"], d["session_id"], d["token"])
        issued = live.issued if live is not None else None
        current = issued and self.services.credentials.match(
            issued.guild_id, issued.user_id, issued.session_id, d["token"]
        )
        if live is None or issued is None or not current:
            raise resume_failed("unknown session, wrong token, or no longer valid")
        if not take_over(live, self.peer):
            raise resume_failed("the session did not let go of its old websocket")
        missed = live.replay_after(seq_ack)
        if missed is None:
            live.detach(self.peer, final=True)  # Discord forgets it: a full reconnect follows
            raise resume_failed(f"seq_ack {seq_ack} is not served by the buffer (seq {live.seq})")
        placeholder, self.live = self.live, live
        with self.rec.changing():
            if placeholder.session in self.rec.voice_sessions:
                self.rec.voice_sessions.remove(placeholder.session)
            live.session.resumes += 1
            live.session.connection = self.peer.number
            live.session.connections.append(self.peer.number)
            live.session.closed = False
            live.session.close_code, live.session.close_reason = None, ""
            live.session.closed_by = None
        if not self.config.voice_hello_first:
            self._hello()
        self._send(VoiceOp.RESUMED, None, seq=False)
        for raw in missed:
            self._send_raw(raw)
        for item in live.attach(self.peer):
            self._send_posted(item)

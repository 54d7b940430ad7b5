"""The fake main gateway: Discord's v10 JSON gateway, reduced to what a voice bot needs.

You normally use it through `FakeDiscord`: point your gateway client at ``fake.gateway_url``
(append ``/?v=10&encoding=json`` as for Discord), identify with ``fake.token``, then send op 4
Voice State Update; the fake answers with VOICE_STATE_UPDATE (only if your intents include
GUILD_VOICE_STATES, 1 << 7) and VOICE_SERVER_UPDATE pointing at the fake voice gateway.

It is strict: a wrong URL query (4012), bad token (4004), a payload over 4096 bytes or malformed
JSON or fields (4002), an op before Identify (4003), a second Identify (4005), an unknown op (4001)
or more than 120 events a minute (4008; heartbeats are not counted, so a test may shorten the
heartbeat interval) closes the websocket with Discord's code and a reason that
names the problem, and appends a line to ``fake.violations``.

Sharding: an Identify's ``shard`` must be ``[shard_id, shard_count]`` with ``0 <= shard_id <
shard_count`` (else 4010), with at least ``FakeDiscord(shards=N)`` shards when N > 1 (else, or
without ``shard``, 4011); a Voice State Update for a guild of another shard is ignored and is a
violation. With ``FakeDiscord(max_concurrency=N)``, Identifies are limited as Discord limits
them: one per bucket (``shard_id % N``) per 5 s on the fake's clock (``clock=``, a `FakeClock`
in tests); one over the limit is answered with op 9 ``d: false`` and is a violation.

READY carries ``resume_gateway_url`` (this same server); op 6 Resume replays the dispatches a
session missed and then dispatches RESUMED, or answers op 9 ``d: false`` (see `main_resume`).
``withhold("main_ready")`` / ``withhold("main_resumed")`` leave an Identify / Resume unanswered
(the session is made or taken over all the same); `FakeDiscord.send_main_raw` sends garbage.
"""

from __future__ import annotations

import collections
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from discord_voice.clock import Clock
from discord_voice.core.opcodes import GatewayCloseCode, GatewayOp, Intents
from discord_voice.core.sharding import IDENTIFY_INTERVAL
from discord_voice.testing.gateways import checks
from discord_voice.testing.gateways.main_resume import RESUMABLE_MAIN_CLOSES, MainLive, MainSessions
from discord_voice.testing.gateways.served import next_client_message, run_posted
from discord_voice.testing.gateways.ws import (
    CloseWith,
    Delivery,
    Dropped,
    Peer,
    PeerGone,
    WsServer,
)
from discord_voice.testing.records import MainSession, Recorder, record_close
from discord_voice.testing.world import Config, Credentials, Script, voice_state

__all__ = ["FakeMainGateway"]

#: Discord's send rate limit: events per window per connection (`Config.main_rate_limit`).
RATE_WINDOW = 60.0


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


class FakeMainGateway:
    """A websocket server speaking the main gateway (`server`); one `_MainConnection` per client."""

    def __init__(
        self,
        config: Config,
        recorder: Recorder,
        script: Script,
        credentials: Credentials,
        voice_endpoint: Callable[[], str],
        clock: Clock,
    ) -> None:
        self.config = config
        self.recorder = recorder
        self.script = script
        self.credentials = credentials
        self.voice_endpoint = voice_endpoint
        self.sessions = MainSessions()
        self.identifies = IdentifyBook(config.max_concurrency, clock)
        self.server = WsServer(
            "main", lambda peer: _MainConnection(self, peer).run(), recorder.violation
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"


class _MainConnection:
    """The state of one main-gateway websocket, driven by its handler thread only."""

    def __init__(self, gateway: FakeMainGateway, peer: Peer) -> None:
        self.gw = gateway
        self.config = gateway.config
        self.rec = gateway.recorder
        self.peer = peer
        self.session = MainSession(peer.number, peer.path)
        with self.rec.changing():
            self.rec.main_sessions.append(self.session)
        self.live = MainLive("", 0)  # replaced by the session it resumes, if it does
        self.live.peer = peer
        self.acked_seq: int | None = None  # `d` of the last heartbeat received
        self.identified = False
        self.events: collections.deque[float] = collections.deque()

    @property
    def seq(self) -> int:
        """`s` of the last dispatch sent in this session."""
        return self.live.seq

    @property
    def intents(self) -> int:
        return self.live.intents

    def run(self) -> None:
        resumable = False
        try:
            self._check_path()
            self._send(
                {
                    "op": GatewayOp.HELLO,
                    "d": {"heartbeat_interval": self.config.main_heartbeat_ms},
                    "s": None,
                    "t": None,
                }
            )
            while True:
                raw = next_client_message(self.peer, self._run_posted)
                self.rec.message("main", "client", raw, self.peer.number)
                self._handle(raw)
        except CloseWith as close:
            if close.violation:
                self.rec.violation(
                    f"main#{self.peer.number}: {close.reason} (closed with {close.code})"
                )
            self._closed(close.code, close.reason, "server")
            resumable = close.code in RESUMABLE_MAIN_CLOSES
            self.peer.close(close.code, close.reason)
        except Dropped:
            resumable = True
            self._closed(None, "dropped by the fake (no close frame)", "server")
            self.peer.abort()
        except PeerGone as gone:
            resumable = gone.code not in (1000, 1001)
            self._closed(gone.code, gone.reason, "client")
        finally:
            self.live.detach(self.peer, resumable=resumable)

    def _closed(self, code: int | None, reason: str, by: str) -> None:
        record_close(self.rec, self.session, code, reason, by)

    # -- sending -------------------------------------------------------------------------------

    def _send(self, payload: dict[str, Any]) -> None:
        raw = _dumps(payload)
        if payload.get("op") == GatewayOp.DISPATCH and type(payload.get("s")) is int:
            self.live.log.append((payload["s"], raw))
        self.rec.message("main", "server", raw, self.peer.number)
        self.peer.send(raw)

    def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.live.seq += 1
        self._send({"op": GatewayOp.DISPATCH, "d": data, "s": self.seq, "t": event})

    def _run_posted(self, item: tuple[Any, ...], delivery: Delivery) -> None:
        """A scripted action from the test thread (`FakeDiscord.send_voice` and friends)."""
        run_posted(item, delivery, self.peer, self._send_posted)

    def _send_posted(self, item: tuple[Any, ...]) -> None:
        if item[0] == "raw":  # malformed on purpose: no seq, not logged for resume
            self.rec.message("main", "server", item[1], self.peer.number)
            self.peer.send(item[1])
            return
        if item[0] == "invalid":  # op 9; not resumable: the session is gone
            if not item[1]:
                self.live.valid = False
            self._send({"op": GatewayOp.INVALID_SESSION, "d": item[1], "s": None, "t": None})
            return
        payload = dict(item[1])
        if payload.get("op") == GatewayOp.DISPATCH and payload.get("s") is None:
            self.live.seq += 1
            payload["s"] = self.seq
        self._send(payload)

    # -- receiving -----------------------------------------------------------------------------

    def _check_path(self) -> None:
        query = parse_qs(urlsplit(self.peer.path).query, keep_blank_values=True)
        if query.get("v") != ["10"]:
            raise CloseWith(
                GatewayCloseCode.INVALID_API_VERSION,
                f"invalid api version: expected v=10 in the url, got {query.get('v')}",
            )
        if query.get("encoding") != ["json"]:
            raise CloseWith(
                GatewayCloseCode.INVALID_API_VERSION,
                f"expected encoding=json in the url, got {query.get('encoding')}",
            )
        if "compress" in query:
            raise CloseWith(
                GatewayCloseCode.INVALID_API_VERSION,
                "the fake does not support transport compression (compress=...)",
            )

    def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            raise CloseWith(
                GatewayCloseCode.DECODE_ERROR, "binary message on an encoding=json gateway"
            )
        size = len(raw.encode("utf-8"))
        if size > checks.MAX_PAYLOAD:
            raise CloseWith(
                GatewayCloseCode.DECODE_ERROR,
                f"payload too large: {size} bytes > {checks.MAX_PAYLOAD}",
            )
        payload = checks.decode_object(raw, GatewayCloseCode.DECODE_ERROR)
        op = payload["op"]
        if op != GatewayOp.HEARTBEAT:  # not counted, so tests may use short heartbeat intervals
            now = time.monotonic()
            self.events.append(now)
            while self.events and self.events[0] <= now - RATE_WINDOW:
                self.events.popleft()
            limit = self.config.main_rate_limit
            if len(self.events) > limit:
                raise CloseWith(
                    GatewayCloseCode.RATE_LIMITED,
                    f"rate limited: more than {limit} events in {RATE_WINDOW:.0f} s",
                )
        if op == GatewayOp.HEARTBEAT:
            self._on_heartbeat(payload)
        elif op == GatewayOp.IDENTIFY:
            self._on_identify(payload.get("d"))
        elif op == GatewayOp.RESUME:
            self._on_resume(payload.get("d"))
        elif op in (
            GatewayOp.PRESENCE_UPDATE,
            GatewayOp.VOICE_STATE_UPDATE,
            GatewayOp.REQUEST_GUILD_MEMBERS,
        ):
            if not self.identified:
                raise CloseWith(
                    GatewayCloseCode.NOT_AUTHENTICATED,
                    f"not authenticated: op {op} sent before identify",
                )
            if op == GatewayOp.VOICE_STATE_UPDATE:
                self._on_voice_state(payload.get("d"))
        else:
            raise CloseWith(GatewayCloseCode.UNKNOWN_OPCODE, f"unknown opcode {op}")

    def _on_heartbeat(self, payload: dict[str, Any]) -> None:
        d = checks.main_heartbeat(payload)
        where = f"main#{self.peer.number}: heartbeat"
        if d is not None and d > self.seq:
            self.rec.violation(f"{where} d={d} but the last dispatch sent had s={self.seq}")
        elif d is None and self.acked_seq is not None:
            self.rec.violation(f"{where} d went back to null after d={self.acked_seq}")
        elif d is not None and self.acked_seq is not None and d < self.acked_seq:
            self.rec.violation(f"{where} d went backwards: {d} after {self.acked_seq}")
        self.acked_seq = d
        with self.rec.changing():
            self.session.heartbeats += 1
        if not self.gw.script.withheld("main_heartbeat_ack"):
            self._send({"op": GatewayOp.HEARTBEAT_ACK, "d": None, "s": None, "t": None})

    def _on_identify(self, d: Any) -> None:
        if self.identified:
            raise CloseWith(GatewayCloseCode.ALREADY_AUTHENTICATED, "already authenticated")
        intents = checks.main_identify(d, self.config.token)
        shard = checks.main_shard(d, self.config.shards)
        refused = self.gw.identifies.book(0 if shard is None else shard[0])
        if refused is not None:  # Discord answers an Identify over max_concurrency with op 9
            self.rec.violation(f"main#{self.peer.number}: {refused}")
            self._send({"op": GatewayOp.INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        self.identified = True
        session_id = secrets.token_hex(16)
        self.live.session_id, self.live.intents, self.live.shard = session_id, intents, shard
        self.gw.sessions.add(self.live)
        with self.rec.changing():
            self.session.identify = d
            self.session.intents = intents
            self.session.session_id = session_id
        user_id = str(self.config.user_id)
        ready: dict[str, Any] = {
            "v": 10,
            "user": {
                "id": user_id,
                "username": "fake-bot",
                "discriminator": "0",
                "global_name": None,
                "avatar": None,
                "bot": True,
                "flags": 0,
            },
            "guilds": [],
            "session_id": session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gw.url,
            "application": {"id": user_id, "flags": 0},
        }
        if isinstance(d.get("shard"), list):
            ready["shard"] = d["shard"]
        if not self.gw.script.withheld("main_ready"):
            self._dispatch("READY", ready)

    def _on_resume(self, d: Any) -> None:
        """Op 6: continue a session on this websocket, replaying the dispatches it missed."""
        if self.identified:
            raise CloseWith(GatewayCloseCode.ALREADY_AUTHENTICATED, "already authenticated")
        live, missed = self.gw.sessions.resumable(d, self.config.token)
        if live is None or missed is None or not live.take_over(self.peer):
            self._send({"op": GatewayOp.INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        self.live, self.identified = live, True
        with self.rec.changing():
            self.session.session_id = live.session_id
            self.session.intents = live.intents
            self.session.resumed = True
        for raw in missed:
            self.rec.message("main", "server", raw, self.peer.number)
            self.peer.send(raw)
        if not self.gw.script.withheld("main_resumed"):
            self._dispatch("RESUMED", {})

    def _on_voice_state(self, d: Any) -> None:
        guild_id, channel_id = checks.main_voice_state(d)
        shard = self.live.shard
        owner = None if shard is None else (int(guild_id) >> 22) % shard[1]  # Discord's formula
        if shard is not None and owner != shard[0]:
            self.rec.violation(
                f"main#{self.peer.number}: voice state update for guild {guild_id} on shard "
                f"{shard[0]}/{shard[1]}; its shard is {owner}/{shard[1]} (ignored)"
            )
            return
        user_id = str(self.config.user_id)
        if channel_id is None:
            revoked = self.gw.credentials.revoke(guild_id)
            session_id = revoked.session_id if revoked else secrets.token_hex(16)
            state = voice_state(guild_id, None, user_id, session_id, **_self_flags(d))
            events = [("VOICE_STATE_UPDATE", state)]
        else:
            issued = self.gw.credentials.issue(guild_id, channel_id, user_id)
            server = {
                "token": issued.token,
                "guild_id": guild_id,
                "endpoint": self.gw.voice_endpoint(),
            }
            state = voice_state(guild_id, channel_id, user_id, issued.session_id, **_self_flags(d))
            events = [("VOICE_STATE_UPDATE", state), ("VOICE_SERVER_UPDATE", server)]
            if self.config.event_order == "server_first":
                events.reverse()
        for event, data in events:
            if event == "VOICE_STATE_UPDATE" and not self.intents & Intents.GUILD_VOICE_STATES:
                continue  # like Discord: no intent, no event
            if not self.gw.script.withheld(event.lower()):
                self._dispatch(event, data)


class IdentifyBook:
    """Identifies across the fake's connections, as Discord limits them: one per
    ``max_concurrency`` bucket (``shard_id % max_concurrency``) per `IDENTIFY_INTERVAL` s on
    `clock` (the tests' `FakeClock` when they pass one), and their count (``booked``)."""

    def __init__(self, max_concurrency: int | None, clock: Clock) -> None:
        self._concurrency = max_concurrency
        self._clock = clock
        self._last: dict[int, tuple[float, int]] = {}  # bucket -> (time, shard id)
        self._lock = threading.Lock()
        self.booked = 0

    def book(self, shard_id: int) -> str | None:
        """Record an Identify of `shard_id` now; why it breaks the limit, or None."""
        if self._concurrency is None:  # not limited (the default: tests connect at will)
            with self._lock:
                self.booked += 1
            return None
        now = self._clock.monotonic()
        bucket = shard_id % self._concurrency
        with self._lock:
            last = self._last.get(bucket)
            if last is not None and now - last[0] < IDENTIFY_INTERVAL:
                return (
                    f"identify of shard {shard_id} {now - last[0]:.2f} s after shard {last[1]}'s "
                    f"in bucket {bucket} (max_concurrency {self._concurrency}: one per "
                    f"{IDENTIFY_INTERVAL:g} s); answered with op 9"
                )
            self._last[bucket] = (now, shard_id)
            self.booked += 1
        return None


def _self_flags(d: dict[str, Any]) -> dict[str, bool]:
    """The client's own mute and deafen from an op 4, echoed in its VOICE_STATE_UPDATE."""
    return {"self_mute": d["self_mute"], "self_deaf": d["self_deaf"]}

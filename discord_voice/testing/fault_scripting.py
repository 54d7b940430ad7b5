"""`FakeDiscord`'s scripted messages and faults, as a mixin (kept apart from `fake_discord`).

Every method may be called from the test thread while a client runs; each returns once the fake
has acted (the message was sent, the socket closed or cut) and appends a line to
``fake.faults`` first, so a test can show what it did next to what the client did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from discord_voice.core.opcodes import GatewayOp
from discord_voice.testing.gateways.ws import Delivery, Peer, valid_close_code
from discord_voice.testing.udp.impairment import ImpairmentStats, UdpImpairment

if TYPE_CHECKING:
    from discord_voice.testing.gateways.main import FakeMainGateway
    from discord_voice.testing.gateways.voice_live import LiveVoice, LiveVoices
    from discord_voice.testing.records import Recorder
    from discord_voice.testing.udp.server import FakeUdpServer
    from discord_voice.testing.world import Config, Credentials, IssuedVoice, Script

__all__ = ["FaultScripting"]

_DELIVERY_TIMEOUT = 5.0  # bound on waiting for a connection thread to act on a scripted item
_MOVED = 4014  # Discord's "disconnected" (kicked, moved, channel gone)


class FaultScripting:
    """Scripting methods of `FakeDiscord` (which sets the attributes below)."""

    _rec: Recorder
    _config: Config
    _script: Script
    _credentials: Credentials
    _udp: FakeUdpServer
    _main: FakeMainGateway
    _live: LiveVoices
    _impairment: UdpImpairment[Any] | None

    def _voice_peers(self) -> list[Peer]:
        raise NotImplementedError

    def _add_voice_server(self) -> str:
        raise NotImplementedError

    @property
    def faults(self) -> list[str]:
        """Every fault and scripted action so far, in order, as readable lines."""
        with self._rec.lock:
            return list(self._rec.faults)

    def withhold(self, *names: str) -> None:
        """Never send these from now on: "voice_state_update", "voice_server_update", "hello",
        "ready", "session_description", "ip_discovery", "heartbeat_ack" (voice op 6),
        "main_heartbeat_ack" (main op 11), "main_ready" (READY after op 2 Identify: the session
        is created all the same) or "main_resumed" (RESUMED after op 6 Resume: the session is
        taken over and the missed dispatches are replayed all the same)."""
        self._script.withhold(names)
        self._rec.fault(f"withhold{names}")

    def release(self, *names: str) -> None:
        """Undo `withhold` for `names` (all of them when called without names)."""
        self._script.release(names)
        self._rec.fault(f"release{names}")

    # -- voice websocket -----------------------------------------------------------------------

    def close_voice_on(self, op: int, code: int, reason: str = "") -> None:
        """When a voice connection next receives client op `op`, close it with `code` instead
        of answering (one-shot; arm several times for several closes)."""
        _check_code(code)
        self._rec.fault(f"close_voice_on(op={op}, code={code})")
        self._script.arm_close(int(op), code, reason)

    def send_voice(
        self, payload: dict[str, Any], *, seq: bool = True, connection: int | None = None
    ) -> None:
        """Send a JSON message on the newest open voice connection (or `connection`), with the
        next top-level ``seq`` unless `seq` is False. Returns once it has been sent (and
        recorded in `voice_messages`); RuntimeError if the connection closed first."""
        self._post_voice(("send", dict(payload), seq), connection, "voice message")

    def send_voice_binary(self, op: int, payload: bytes, *, connection: int | None = None) -> None:
        """Send a binary message ``[uint16 seq][op][payload]`` on a voice connection (as
        `send_voice`; the seq is the connection's next one)."""
        item = ("binary", bytes([op]) + bytes(payload))
        self._post_voice(item, connection, "voice binary message")

    def send_voice_raw(self, message: str | bytes, *, connection: int | None = None) -> None:
        """Send `message` as is (text or binary frame; no seq, not kept for resume): invalid
        JSON, unknown shapes, huge messages (up to 1 MiB)."""
        self._rec.fault(f"send_voice_raw({len(message)} {type(message).__name__})")
        self._post_voice(("raw", message), connection, "raw voice message")

    def close_voice(self, code: int, reason: str = "", *, connection: int | None = None) -> None:
        """Close the newest open voice connection (or `connection`) with `code`. Returns once
        its thread has started closing; wait for ``voice_sessions[i].closed`` if needed. 4015
        leaves the session resumable (op 7); any other code ends it."""
        _check_code(code)
        self._rec.fault(f"close_voice({code})")
        self._post_voice(("close", code, reason), connection, "voice close")

    def drop_voice(self, *, connection: int | None = None) -> None:
        """Cut the newest open voice connection's TCP socket without a close frame (a network
        failure). The session stays resumable for ``voice_resume_window`` seconds."""
        self._rec.fault("drop_voice()")
        self._post_voice(("drop",), connection, "voice drop")

    def _post_voice(self, item: tuple[Any, ...], connection: int | None, what: str) -> None:
        peers = self._voice_peers()
        if connection is not None:
            peers = [p for p in peers if p.number == connection]
        if not peers:
            number = "" if connection is None else f" number {connection}"
            raise RuntimeError(f"no open voice gateway connection{number}")
        _deliver(peers[-1].post(item), what)

    # -- main websocket ------------------------------------------------------------------------

    def send_main(self, payload: dict[str, Any], *, connection: int | None = None) -> None:
        """Send a message on the newest open main connection (or `connection`); a dispatch
        (op 0) without ``s`` gets the session's next sequence number. Returns once sent.
        ``send_main({"op": 7, "d": None})`` is Discord's Reconnect."""
        if payload.get("op") != GatewayOp.DISPATCH:
            self._rec.fault(f"send_main(op={payload.get('op')})")
        _deliver(self._main.post(("send", dict(payload)), connection), "main message")

    def send_main_raw(self, message: str | bytes, *, connection: int | None = None) -> None:
        """Send `message` as is on the newest open main connection (or `connection`): a text
        or binary frame, no ``s``, not kept for resume (invalid JSON, unknown shapes, huge
        messages up to 1 MiB). Returns once sent."""
        self._rec.fault(f"send_main_raw({len(message)} {type(message).__name__})")
        _deliver(self._main.post(("raw", message), connection), "raw main message")

    def close_main(self, code: int, reason: str = "", *, connection: int | None = None) -> None:
        """Close the newest open main gateway connection (or `connection`) with `code`."""
        _check_code(code)
        self._rec.fault(f"close_main({code})")
        _deliver(self._main.post(("close", code, reason), connection), "main close")

    def drop_main(self, *, connection: int | None = None) -> None:
        """Cut the main connection's TCP socket without a close frame; the session stays
        resumable (op 6)."""
        self._rec.fault("drop_main()")
        _deliver(self._main.post(("drop",), connection), "main drop")

    def invalid_session(self, resumable: bool, *, connection: int | None = None) -> None:
        """Send op 9 Invalid Session with ``d: resumable``; False also ends the session (a
        later op 6 for it gets op 9 ``d: false``)."""
        self._rec.fault(f"invalid_session({bool(resumable)})")
        item = ("invalid", bool(resumable))
        _deliver(self._main.post(item, connection), "invalid session")

    def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.send_main({"op": GatewayOp.DISPATCH, "t": event, "d": data, "s": None})

    def _voice_state(self, issued: IssuedVoice, channel_id: str | None) -> dict[str, Any]:
        return {
            "guild_id": issued.guild_id,
            "channel_id": channel_id,
            "user_id": issued.user_id,
            "session_id": issued.session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": False,
            "self_mute": False,
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }

    # -- moves, kicks, voice servers -----------------------------------------------------------

    def move_user(
        self, channel_id: int | None = None, *, new_server: bool = True, guild_id: int | None = None
    ) -> str:
        """Move the bot (in `guild_id`, default the guild it joined last) to `channel_id`
        (default: the same channel, i.e. only a voice-server change) as Discord does: a
        VOICE_STATE_UPDATE and a VOICE_SERVER_UPDATE with a new token (and, if `new_server`, a
        new endpoint: another fake voice gateway on its own port), then the old voice websocket
        is closed with 4014. Returns the endpoint sent."""
        old = self._credentials.current(None if guild_id is None else str(guild_id))
        channel = old.channel_id if channel_id is None else str(channel_id)
        self._rec.fault(f"move_user(channel_id={channel}, new_server={new_server})")
        endpoint = self._add_voice_server() if new_server else self._endpoint()
        before = self._bot_voice(old.guild_id)
        issued = self._credentials.reissue(old.guild_id, channel)
        self._dispatch("VOICE_STATE_UPDATE", self._voice_state(issued, channel))
        server = {"token": issued.token, "guild_id": issued.guild_id, "endpoint": endpoint}
        self._dispatch("VOICE_SERVER_UPDATE", server)
        self._disconnect_voice(before, "disconnected: moved to another channel/server")
        return endpoint

    def kick_user(self, *, guild_id: int | None = None) -> None:
        """Disconnect the bot from voice as a moderator would: its VOICE_STATE_UPDATE with
        ``channel_id: null``, then its voice websocket closed with 4014."""
        issued = self._credentials.current(None if guild_id is None else str(guild_id))
        self._rec.fault(f"kick_user(guild_id={issued.guild_id})")
        before = self._bot_voice(issued.guild_id)
        self._credentials.revoke(issued.guild_id)
        self._dispatch("VOICE_STATE_UPDATE", self._voice_state(issued, None))
        self._disconnect_voice(before, "disconnected: kicked from the channel")

    def null_endpoint(self, *, guild_id: int | None = None) -> None:
        """Send VOICE_SERVER_UPDATE with ``endpoint: null`` (the voice server went away; a new
        token is issued). The voice websocket is left alone: combine with `drop_voice`, or
        follow with `move_user` to give the next endpoint."""
        old = self._credentials.current(None if guild_id is None else str(guild_id))
        self._rec.fault(f"null_endpoint(guild_id={old.guild_id})")
        issued = self._credentials.reissue(old.guild_id, old.channel_id)
        server = {"token": issued.token, "guild_id": issued.guild_id, "endpoint": None}
        self._dispatch("VOICE_SERVER_UPDATE", server)

    def _endpoint(self) -> str:
        raise NotImplementedError

    def _bot_voice(self, guild_id: str) -> LiveVoice | None:
        return self._live.for_guild(guild_id, str(self._config.user_id))

    def _disconnect_voice(self, live: LiveVoice | None, reason: str) -> None:
        """Close `live` (the bot's voice session looked up before the dispatches, so that a
        client already on its new session keeps that one) with 4014."""
        if live is None:
            return
        with live.lock:
            peer = live.peer
        if peer is None:
            live.end()  # detached: no resume any more
            return
        # The client may close first (it follows the VOICE_SERVER_UPDATE at once): fine.
        peer.post(("close", _MOVED, reason)).wait(_DELIVERY_TIMEOUT)

    # -- UDP -----------------------------------------------------------------------------------

    def impair_udp(
        self,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        """Impair the UDP receive path from now on (see `discord_voice.testing.udp.impairment`):
        probabilities `drop`, `duplicate`, `reorder` (swap with the next packet), and `delay`
        milliseconds before recording, decided by ``random.Random(seed)``. All zero: none."""
        impairment: UdpImpairment[Any] | None = UdpImpairment(drop, duplicate, reorder, delay, seed)
        if not (drop or duplicate or reorder or delay):
            impairment = None
        self._rec.fault(f"impair_udp({impairment!r})")
        self._impairment = impairment
        self._udp.set_impairment(impairment)

    @property
    def udp_impairment(self) -> ImpairmentStats | None:
        """What the current UDP impairment did so far (None when there is none)."""
        impairment = self._impairment
        return None if impairment is None else impairment.stats


def _check_code(code: int) -> None:
    if not valid_close_code(code):
        raise ValueError(f"{code} cannot be sent in a close frame")


def _deliver(delivery: Delivery, what: str) -> None:
    if not delivery.wait(_DELIVERY_TIMEOUT):
        raise RuntimeError(f"the {what} was not sent: the connection closed first")

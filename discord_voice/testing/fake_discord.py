"""`FakeDiscord`: a main gateway, a voice gateway and a voice UDP server on 127.0.0.1, in-process.

Use it in tests of anything that talks to Discord voice::

    from discord_voice.testing import FakeDiscord

    with FakeDiscord() as fake:
        run_my_bot(gateway_url=fake.gateway_url, token=fake.token)  # joins, plays 50 frames
        frames = fake.wait_for_frames(50)
        assert [f.sequence for f in frames] == list(range(frames[0].sequence,
                                                          frames[0].sequence + 50))
        assert not fake.violations and not fake.udp_errors

Everything the fake sees is recorded (``main_messages``, ``voice_messages``, ``frames()``,
``voice_sessions``, ``violations``, ``udp_errors``); `FakeDiscord.wait_until` blocks until a
predicate over the fake holds, woken by every new record (no polling). Faults are scripted with
`withhold` (handshake stages; ``main_ready``/``main_resumed`` hold back the main gateway's
answer on a reconnect), `close_voice_on`, `close_voice`, `drop_voice`, `send_voice_raw`,
`send_main_raw`, `move_user`, `kick_user`, `null_endpoint`, `impair_udp`, `drop_main`,
`invalid_session` and friends, and listed in ``faults``. Voice sessions can be resumed (op 7,
see `gateways.voice_live`), main sessions too (op 6, see `gateways.main_resume`).

Members who speak: `add_speaker` puts a `FakeSpeaker` in a channel (op 11, op 5 per its
``announce`` mode, a libdave member of the DAVE group) whose `FakeSpeaker.send` sends RTP audio to
the clients exactly as Discord's voice server forwards another member's (see `speakers`); what
went out is in ``sent_audio``. `send_udp_raw`, `rtcp_packet` and `video_packet` send what a
receive path must drop.

DAVE: ``FakeDiscord(dave=True)`` plays Discord's E2EE role (4017 for clients without DAVE
outside stage channels; the voice gateway as MLS external sender; the UDP server DAVE-decrypts
with a libdave member of the channel). Script it with `add_member`, `remove_member`,
`send_invalid_commit`, `downgrade`, `upgrade`; inspect with `dave_state` (see `dave.group`).
``stage=True`` or `set_stage` makes channels stage-like (no DAVE). A client alone in a DAVE
channel stays a pending member (no one can commit its Add), as on Discord;
``dave_listener=True`` hosts a libdave member in every DAVE channel a client joins, so it is
never alone and its audio is always DAVE-decrypted. Needs ``dave-py``.

Every thread is named ``fake-...``, non-daemon and joined by `close` / ``__exit__``, which returns
within about a second even when clients are still connected (they get close code 1001).

`FakeDiscord` is the whole public surface; it owns and wires the parts, each of which knows
nothing of it: `gateways.main.FakeMainGateway`, `gateways.voice.FakeVoiceGateway` (one websocket
server, another per move to a new server), `udp.server.FakeUdpServer`, `dave.hub.DaveHub`,
`speakers.Speakers`, and the state they share (`records.Recorder`, `world`,
`gateways.voice_roster.Roster`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from discord_voice._shell.exit_hook import close_at_exit
from discord_voice.clock import Clock, SystemClock
from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20, GatewayOp
from discord_voice.testing.gateways.main import FakeMainGateway
from discord_voice.testing.gateways.voice import FakeVoiceGateway
from discord_voice.testing.gateways.voice_handshake import VoiceServices
from discord_voice.testing.gateways.voice_live import LiveVoice, LiveVoices
from discord_voice.testing.gateways.voice_roster import Roster
from discord_voice.testing.gateways.ws import Delivery, valid_close_code
from discord_voice.testing.http_api import FakeHttpApi
from discord_voice.testing.records import (
    MainSession,
    ReceivedFrame,
    RecordedMessage,
    Recorder,
    SentPacket,
    VoiceSession,
)
from discord_voice.testing.speakers import FakeSpeaker, Speakers
from discord_voice.testing.udp.impairment import ImpairmentStats, UdpImpairment
from discord_voice.testing.udp.server import FakeUdpServer
from discord_voice.testing.world import Config, Credentials, IssuedVoice, Script, voice_state

if TYPE_CHECKING:
    from discord_voice.testing.dave.group import DaveState
    from discord_voice.testing.dave.hub import DaveHub

__all__ = ["FakeDiscord"]

_CLOSE_BUDGET = 0.6  # seconds close() waits for handlers before cutting connections
_DELIVERY_TIMEOUT = 5.0  # bound on waiting for a connection thread to act on a scripted item
_MOVED = 4014  # Discord's "disconnected" (kicked, moved, channel gone)


class FakeDiscord:
    """A fake Discord for one test: start it (``with`` or `start`), point a client at it, assert.

    ``voice_resume_window``: seconds a voice session whose websocket ended resumably (drop,
    4015, a client close other than 1000/1001) can still be resumed with op 7.
    ``main_rate_limit``: events a client may send the main gateway per 60 s before it is closed
    with 4008 (Discord's 120; a benchmark joining hundreds of guilds on one connection may raise
    it, which real Discord would not allow).
    ``shards``: how many shards the bot needs (Get Gateway Bot recommends it; an Identify
    with fewer, or without ``shard`` when it is over 1, is closed with 4011; a malformed shard
    with 4010). ``max_concurrency``: None (default) leaves Identifies unlimited, so tests may
    connect at will; N limits them as Discord does, one per bucket (``shard_id % N``) per 5 s
    on `clock` (default the real one; a `FakeClock` for pacing tests), and answers an extra one
    with op 9. ``session_starts``: Get Gateway Bot's ``session_start_limit.total``.

    Thread safety: every public method may be called from any thread.
    """

    #: Seconds of slack for "audio before Speaking": the websocket and UDP are read by different
    #: threads, so a Speaking sent just before the first packet may be recorded just after it.
    speaking_grace: float = 0.3

    def __init__(
        self,
        token: str = "fake-bot-token",
        user_id: int = 100000000000000001,
        modes: Iterable[str] = (MODE_AES256_GCM, MODE_XCHACHA20),
        main_heartbeat_interval: float = 41.25,
        voice_heartbeat_interval: float = 13.75,
        event_order: str = "state_first",
        voice_hello_first: bool = True,
        endpoint_scheme: bool = True,
        dave: bool = True,
        stage: bool = False,
        dave_listener: bool = True,
        voice_resume_window: float = 5.0,
        main_rate_limit: int = 120,
        shards: int = 1,
        max_concurrency: int | None = None,
        session_starts: int = 1000,
        clock: Clock | None = None,
    ) -> None:
        modes = tuple(modes)
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string")
        if type(user_id) is not int or not 0 < user_id < 1 << 64:
            raise ValueError("user_id must be a positive 64-bit int")
        if not all(isinstance(m, str) for m in modes):
            raise ValueError("modes must be strings")
        if not (main_heartbeat_interval > 0 and voice_heartbeat_interval > 0):
            raise ValueError("heartbeat intervals must be positive (seconds)")
        if not voice_resume_window >= 0:
            raise ValueError("voice_resume_window must be >= 0 (seconds)")
        if type(main_rate_limit) is not int or main_rate_limit < 1:
            raise ValueError("main_rate_limit must be a positive int (events per 60 s)")
        if event_order not in ("state_first", "server_first"):
            raise ValueError("event_order must be 'state_first' or 'server_first'")
        if type(shards) is not int or shards < 1:
            raise ValueError("shards must be a positive int")
        if max_concurrency is not None and (
            type(max_concurrency) is not int or max_concurrency < 1
        ):
            raise ValueError("max_concurrency must be None or a positive int")
        if type(session_starts) is not int or session_starts < 0:
            raise ValueError("session_starts must be a non-negative int")
        self._config = Config(
            token=token,
            user_id=user_id,
            modes=modes,
            main_heartbeat_ms=round(main_heartbeat_interval * 1000),
            voice_heartbeat_ms=round(voice_heartbeat_interval * 1000),
            event_order=event_order,
            voice_hello_first=bool(voice_hello_first),
            endpoint_scheme=bool(endpoint_scheme),
            voice_resume_window=float(voice_resume_window),
            main_rate_limit=main_rate_limit,
            shards=shards,
            max_concurrency=max_concurrency,
            session_starts=session_starts,
        )
        self._rec = Recorder()
        self._script = Script()
        self._credentials = Credentials()
        grace: Callable[[], float] = lambda: self.speaking_grace  # noqa: E731
        self._dave: DaveHub | None = None
        if dave:
            from discord_voice.testing.dave.hub import DaveHub  # needs dave-py

            self._dave = DaveHub(
                self._rec, enabled=True, stage=bool(stage), listener=bool(dave_listener)
            )
        self._udp = FakeUdpServer(self._rec, self._script, grace, self._dave)
        self._impairment: UdpImpairment[Any] | None = None
        self._live = LiveVoices(lambda: self._config.voice_resume_window)
        roster = Roster()
        services = VoiceServices(
            self._config, self._rec, self._script, self._credentials, self._udp, grace,
            self._live, self._dave, roster,
        )  # fmt: skip
        self._speakers = Speakers(self._rec, self._udp, roster, self._dave)
        self._voice = FakeVoiceGateway(services, self._config.endpoint_scheme)
        self._clock: Clock = clock or SystemClock()
        self._main = FakeMainGateway(
            self._config,
            self._rec,
            self._script,
            self._credentials,
            lambda: self.voice_endpoint,
            self._clock,
        )
        identifies = self._main.identifies
        self._http = FakeHttpApi(
            self._config, lambda: self._gateway_url, lambda: identifies.booked, self._clock
        )
        self._state = "new"
        self._gateway_url = ""

    def __repr__(self) -> str:
        return (
            f"FakeDiscord(state={self._state!r}, gateway_url={self._gateway_url!r}, "
            f"voice_endpoint={self._voice.endpoint!r})"
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeDiscord:
        """Bind and start the three servers (127.0.0.1, ephemeral ports); returns self."""
        with self._rec.lock:
            if self._state != "new":
                raise RuntimeError(f"FakeDiscord cannot start: it is {self._state}")
            self._state = "starting"
        close_at_exit(self, FakeDiscord.close)  # a test that forgets close() must not hang
        try:
            self._udp.start()
            self._voice.start()
            self._main.server.start()
            self._http.start()
        except BaseException:
            self._shutdown()
            raise
        self._gateway_url = self._main.url
        with self._rec.lock:
            if self._state == "starting":  # not closed meanwhile by another thread
                self._state = "running"
        return self

    def close(self) -> None:
        """Close every connection (1001), stop the servers and join all threads. Idempotent."""
        with self._rec.lock:
            was, self._state = self._state, "closed"
        if was not in ("new", "closed"):
            self._shutdown()

    def _shutdown(self) -> None:
        with self._rec.lock:
            self._state = "closed"
        self._main.server.begin_close()
        self._voice.begin_close()
        self._udp.begin_close()
        deadline = time.monotonic() + _CLOSE_BUDGET
        self._main.server.finish_close(deadline)
        self._voice.finish_close(deadline)
        self._live.close()
        self._udp.finish_close(deadline)
        self._http.close(max(0.1, deadline - time.monotonic()))
        with self._rec.changing():
            pass  # wake any wait_until so it can see the fake is closed

    def __enter__(self) -> FakeDiscord:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The HTTP API's base (``http://127.0.0.1:<port>/api/v10``): Get Gateway Bot is
        ``api_url + "/gateway/bot"`` (see `discord_voice.testing.http_api`)."""
        return self._http.url

    @property
    def api_requests(self) -> list[tuple[str, str]]:
        """Every HTTP request the API got: (method, path), in order."""
        return self._http.requests

    @property
    def token(self) -> str:
        """The bot token the fake main gateway accepts."""
        return self._config.token

    @property
    def user_id(self) -> int:
        return self._config.user_id

    @property
    def modes(self) -> tuple[str, ...]:
        return self._config.modes

    @property
    def gateway_url(self) -> str:
        """``ws://127.0.0.1:PORT`` of the main gateway (add ``/?v=10&encoding=json``)."""
        if not self._gateway_url:
            raise RuntimeError("FakeDiscord is not started")
        return self._gateway_url

    @property
    def voice_endpoint(self) -> str:
        """The ``endpoint`` VOICE_SERVER_UPDATE carries."""
        endpoint = self._voice.endpoint
        if not endpoint:
            raise RuntimeError("FakeDiscord is not started")
        return endpoint

    @property
    def udp_address(self) -> tuple[str, int]:
        """Where the voice UDP server listens (also sent in voice Ready)."""
        return ("127.0.0.1", self._udp.port)

    # -- records -------------------------------------------------------------------------------

    @property
    def main_messages(self) -> list[RecordedMessage]:
        with self._rec.lock:
            return list(self._rec.main_messages)

    @property
    def voice_messages(self) -> list[RecordedMessage]:
        with self._rec.lock:
            return list(self._rec.voice_messages)

    def frames(self, ssrc: int | None = None) -> list[ReceivedFrame]:
        """Every decrypted RTP packet in arrival order (only those of `ssrc` if given)."""
        with self._rec.lock:
            if ssrc is None:
                return list(self._rec.frames)
            return list(self._rec.frames_by_ssrc.get(ssrc, ()))

    @property
    def udp_errors(self) -> list[str]:
        with self._rec.lock:
            return list(self._rec.udp_errors)

    @property
    def violations(self) -> list[str]:
        with self._rec.lock:
            return list(self._rec.violations)

    @property
    def voice_sessions(self) -> list[VoiceSession]:
        with self._rec.lock:
            return list(self._rec.voice_sessions)

    @property
    def main_sessions(self) -> list[MainSession]:
        with self._rec.lock:
            return list(self._rec.main_sessions)

    def wait_until(self, predicate: Callable[[FakeDiscord], object], timeout: float = 5.0) -> bool:
        """Block until `predicate(self)` is true; False after `timeout` seconds.

        The predicate runs with the record lock held and is re-evaluated whenever anything is
        recorded, so keep it quick and do no I/O in it.
        """
        with self._rec.cond:
            return bool(self._rec.cond.wait_for(lambda: predicate(self), timeout))

    def wait_for_frames(
        self, n: int, timeout: float = 5.0, ssrc: int | None = None
    ) -> list[ReceivedFrame]:
        """The first `n` frames (of `ssrc` if given); `TimeoutError` if fewer arrive in time."""
        rec = self._rec

        def source() -> list[ReceivedFrame]:
            return rec.frames if ssrc is None else rec.frames_by_ssrc.get(ssrc, [])

        with rec.cond:
            if rec.cond.wait_for(lambda: len(source()) >= n, timeout):
                return list(source()[:n])
            got, errors = len(source()), rec.udp_errors[-3:]
        which = "" if ssrc is None else f" of ssrc {ssrc}"
        raise TimeoutError(
            f"only {got} of {n} frames{which} arrived within {timeout} s; last udp errors: {errors}"
        )

    # -- scripting: what the fake sends, withholds or breaks (each listed in `faults`) --------

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
        _deliver(self._voice.post(item, connection), what)

    # -- main websocket ------------------------------------------------------------------------

    def send_main(self, payload: dict[str, Any], *, connection: int | None = None) -> None:
        """Send a message on the newest open main connection (or `connection`); a dispatch
        (op 0) without ``s`` gets the session's next sequence number. Returns once sent.
        ``send_main({"op": 7, "d": None})`` is Discord's Reconnect."""
        if payload.get("op") != GatewayOp.DISPATCH:
            self._rec.fault(f"send_main(op={payload.get('op')})")
        _deliver(self._main.server.post(("send", dict(payload)), connection), "main message")

    def send_main_raw(self, message: str | bytes, *, connection: int | None = None) -> None:
        """Send `message` as is on the newest open main connection (or `connection`): a text
        or binary frame, no ``s``, not kept for resume (invalid JSON, unknown shapes, huge
        messages up to 1 MiB). Returns once sent."""
        self._rec.fault(f"send_main_raw({len(message)} {type(message).__name__})")
        _deliver(self._main.server.post(("raw", message), connection), "raw main message")

    def close_main(self, code: int, reason: str = "", *, connection: int | None = None) -> None:
        """Close the newest open main gateway connection (or `connection`) with `code`."""
        _check_code(code)
        self._rec.fault(f"close_main({code})")
        _deliver(self._main.server.post(("close", code, reason), connection), "main close")

    def drop_main(self, *, connection: int | None = None) -> None:
        """Cut the main connection's TCP socket without a close frame; the session stays
        resumable (op 6)."""
        self._rec.fault("drop_main()")
        _deliver(self._main.server.post(("drop",), connection), "main drop")

    def invalid_session(self, resumable: bool, *, connection: int | None = None) -> None:
        """Send op 9 Invalid Session with ``d: resumable``; False also ends the session (a
        later op 6 for it gets op 9 ``d: false``)."""
        self._rec.fault(f"invalid_session({bool(resumable)})")
        item = ("invalid", bool(resumable))
        _deliver(self._main.server.post(item, connection), "invalid session")

    def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.send_main({"op": GatewayOp.DISPATCH, "t": event, "d": data, "s": None})

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
        endpoint = self._voice.add() if new_server else self.voice_endpoint
        before = self._bot_voice(old.guild_id)
        issued = self._credentials.reissue(old.guild_id, channel)
        self._dispatch("VOICE_STATE_UPDATE", _bot_state(issued, channel))
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
        self._dispatch("VOICE_STATE_UPDATE", _bot_state(issued, None))
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

    def _bot_voice(self, guild_id: str) -> LiveVoice | None:
        return self._live.for_guild(guild_id, str(self._config.user_id))

    def _disconnect_voice(self, live: LiveVoice | None, reason: str) -> None:
        """Close `live` (the bot's voice session looked up before the dispatches, so that a
        client already on its new session keeps that one) with 4014."""
        if live is not None:
            live.disconnect(_MOVED, reason, _DELIVERY_TIMEOUT)

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

    def capture_udp(self, on: bool = True) -> None:
        """Load tests: while on, voice packets are only stamped with their kernel arrival time
        and kept; turned off, they are decrypted (transport and DAVE) and recorded in arrival
        order, then `frames` and `wait_for_frames` see them. The receive thread then keeps up
        with tens of thousands of packets a second. Not checked for captured packets: the
        speaking-before-audio rule; and they are DAVE-decrypted with the keys known when the
        capture ends (a group change during the capture can make earlier frames fail)."""
        self._rec.fault(f"capture_udp({on})")
        self._udp.capture(on)

    @property
    def udp_impairment(self) -> ImpairmentStats | None:
        """What the current UDP impairment did so far (None when there is none)."""
        impairment = self._impairment
        return None if impairment is None else impairment.stats

    def issue_voice(self, guild_id: int, channel_id: int, user_id: int) -> IssuedVoice:
        """Voice credentials for another user (not the bot), as if Discord had sent that user's
        client VOICE_STATE_UPDATE/VOICE_SERVER_UPDATE: lets a test put several clients in one
        channel. Identify with ``server_id=str(guild_id)``, ``user_id``, ``.session_id``,
        ``.token`` at `voice_endpoint`."""
        return self._credentials.issue_other(str(guild_id), str(channel_id), str(user_id))

    # -- members who speak: audio to the clients (the receive path) ----------------------------

    def add_speaker(
        self,
        channel_id: int | None = None,
        user_id: int | None = None,
        *,
        announce: str = "before",
        sequence: int | None = None,
        timestamp: int | None = None,
        key_switch: str = "execute",
    ) -> FakeSpeaker:
        """Put a member who speaks into `channel_id` (default: the channel of the newest voice
        session, else of the bot's last join) with `user_id` (default: a fresh snowflake) and
        a random non-zero SSRC no one else has; returns its `FakeSpeaker` (see `speakers`).

        Clients of the channel get op 11 ``{"user_ids": [str(user_id)]}`` now; a client whose
        session becomes ready later gets it then. In a DAVE channel the speaker is a libdave
        member of the channel's group, added by the gateway's external proposal (op 27), so
        the clients' epoch changes (commit or welcome); it encrypts with its own key, switched
        on each transition's execution (op 22), or with `key_switch` "commit" as soon as it
        processed the commit/welcome (its frames then lead the clients' switch).

        `announce` says when a client gets op 5 ``{"user_id", "ssrc", "speaking": 1}`` for the
        speaker's SSRC: "before" its first packet, "after:N" right after its N-th packet (audio
        before Speaking, as happens on Discord), "never" (only `FakeSpeaker.announce`, which
        can also send op 12). `sequence` and `timestamp`: the first packet's values (default
        random)."""
        if channel_id is None:
            channel_id = self._speaker_channel()
        return self._speakers.add(
            channel_id, user_id, announce=announce, sequence=sequence, timestamp=timestamp,
            key_switch=key_switch,
        )  # fmt: skip

    def _speaker_channel(self) -> int:
        try:
            return self._channel(None)
        except RuntimeError:
            pass
        try:
            return int(self._credentials.current(None).channel_id)
        except (RuntimeError, ValueError):
            raise RuntimeError("no voice session or join yet: pass channel_id") from None

    @property
    def speakers(self) -> list[FakeSpeaker]:
        """Every speaker added so far (those that left too), in order."""
        return self._speakers.all()

    @property
    def sent_audio(self) -> list[SentPacket]:
        """Every packet speakers sent, in send order (see `SentPacket`)."""
        with self._rec.lock:
            return list(self._rec.sent_audio)

    def send_udp_raw(
        self, data: bytes, *, to_ssrc: int | None = None, from_foreign: bool = False
    ) -> int:
        """Send the datagram `data` as is to the client session whose SSRC is `to_ssrc` (default:
        the newest one that has an address), at the address it selected (or was told by IP
        discovery), from the voice server's socket, or with `from_foreign` from another local
        socket (not the voice server's address: a receive path must drop it). Returns the
        client's SSRC. Build packets with `rtcp_packet` and `video_packet`, or by hand."""
        return self._speakers.send_raw(data, to_ssrc, bool(from_foreign))

    def rtcp_packet(
        self, to_ssrc: int | None = None, *, sender_ssrc: int | None = None, seal: bool = True
    ) -> bytes:
        """An RTCP receiver report (first byte ``0x81``, PT 201, one report block about the
        client's SSRC) for the client session `to_ssrc` (default: the newest), sealed like
        Discord's RTCP with that client's mode and key (the 8-byte RTCP header as AAD, tag,
        4-byte nonce counter) unless `seal` is False. Send it with `send_udp_raw`."""
        return self._speakers.rtcp(to_ssrc, sender_ssrc, seal)

    def video_packet(
        self,
        to_ssrc: int | None = None,
        *,
        payload_type: int = 101,
        payload: bytes = b"\x90\x80\x00\x01video-frame",
        ssrc: int | None = None,
        sequence: int = 0,
        timestamp: int = 0,
    ) -> bytes:
        """An RTP packet of payload type `payload_type` (video: 101 to 105 on Discord) sealed
        for the client session `to_ssrc` (default: the newest) exactly like audio; `ssrc`
        default random. Send it with `send_udp_raw`."""
        return self._speakers.video(
            to_ssrc, payload_type=payload_type, payload=payload, ssrc=ssrc, sequence=sequence,
            timestamp=timestamp,
        )  # fmt: skip

    # -- DAVE (FakeDiscord(dave=True)): each method raises RuntimeError when DAVE is off -----

    @property
    def dave(self) -> bool:
        """Whether the fake plays Discord's DAVE role (E2EE required outside stage channels)."""
        return self._dave is not None

    @property
    def dave_listeners(self) -> dict[int, int]:
        """Channel id -> user id of the libdave listener hosted there (``dave_listener=True``)."""
        return self._hub().listeners()

    def _hub(self) -> DaveHub:
        if self._dave is None:
            raise RuntimeError("DAVE is off: create the fake with FakeDiscord(dave=True)")
        return self._dave

    def _channel(self, channel_id: int | None) -> int:
        if channel_id is not None:
            return channel_id
        with self._rec.lock:
            for session in reversed(self._rec.voice_sessions):
                if session.channel_id is not None:
                    return session.channel_id
        raise RuntimeError("no voice session yet: pass channel_id")

    def set_stage(self, channel_id: int, stage: bool = True) -> None:
        """Make `channel_id` stage-like (no DAVE: version 0, max 0 accepted) or not."""
        self._hub().set_stage(channel_id, stage)

    def add_member(
        self, channel_id: int | None = None, *, user_id: int | None = None, commits: bool = True
    ) -> int:
        """Put a libdave (dave-py) member with a fake user id into the channel (default: that
        of the newest voice session); returns its user id. Its joining changes the epoch.
        With `commits` False it never commits, so our clients' commits win."""
        return self._hub().add_member(self._channel(channel_id), user_id, commits)

    def remove_member(self, user_id: int) -> None:
        """Disconnect a member added by `add_member` (a Remove proposal follows)."""
        self._hub().remove_member(user_id)

    def send_invalid_commit(self, channel_id: int | None = None) -> None:
        """Corrupt the next commit announcement (op 29) sent to clients: they must answer op 31
        and get removed and re-added."""
        self._hub().run(self._channel(channel_id), lambda g: g.garbage_next_commit())

    def downgrade(self, channel_id: int | None = None) -> None:
        """Op 21 to protocol version 0; op 22 once every client sent op 23."""
        self._hub().run(self._channel(channel_id), lambda g: g.downgrade())

    def upgrade(self, channel_id: int | None = None) -> None:
        """Op 24 (version 1, epoch 1) after a downgrade: the group is created again."""
        self._hub().run(self._channel(channel_id), lambda g: g.upgrade())

    def dave_state(self, channel_id: int | None = None) -> DaveState:
        """The server's view of a channel's DAVE group (epoch, members, transitions)."""
        return self._hub().state(self._channel(channel_id))

    def member_epoch_authenticator(self, user_id: int) -> bytes | None:
        """A hosted libdave member's epoch authenticator (equal for all members of an epoch)."""
        hub = self._hub()
        member = hub.hosted(user_id)
        return hub.group(member.channel_id).call(member.epoch_authenticator)


def _check_code(code: int) -> None:
    if not valid_close_code(code):
        raise ValueError(f"{code} cannot be sent in a close frame")


def _deliver(delivery: Delivery, what: str) -> None:
    if not delivery.wait(_DELIVERY_TIMEOUT):
        raise RuntimeError(f"the {what} was not sent: the connection closed first")


def _bot_state(issued: IssuedVoice, channel_id: str | None) -> dict[str, Any]:
    return voice_state(issued.guild_id, channel_id, issued.user_id, issued.session_id)

"""`Gateway`: the built-in synchronous main-gateway client (v10, JSON, no compression).

Each connection is a `GatewayConnection` (`discord_voice._shell.gateway_connection`) around a
`WebSocketSession` (`discord_voice._shell.ws_session`, the voice websocket's too), given this
gateway's protocol by composition: its reader, ``dv-gateway-reader``, hands every message to
that connection's `GatewayEvents` (`discord_voice._shell.gateway_events`), which turns it into
an event through `discord_voice.core.main_gateway` and delivers dispatches to voice handlers
and listeners; ``dv-gateway-heartbeat`` (started on Hello) sends op 1 on the schedule and ends
a zombie connection; a third thread, ``dv-gateway-watchdog``, runs while a reconnect awaits
READY/RESUMED. All are joined by `Gateway.close`. All time goes through the injected `Clock`.

The heartbeat keeps its own thread rather than joining a `Voice`'s shared heartbeat loop: the
gateway lives before, after and apart from any `Voice` (one gateway may serve several or none),
and its schedule is not the voice one (a jittered first beat, a zombie judged on one missed
ACK, op 1 requests answered on the grid).

After READY the gateway survives its connection: op 7 Reconnect, op 9 Invalid Session, a close
the main `ClosePolicy` marks resumable, a dropped connection and a zombie close that websocket
and open another (`Gateway` here, with `discord_voice._shell.gateway_recovery` picking the
step): on ``resume_gateway_url`` with op 6 Resume, or on the original URL with a fresh Identify
when the session is gone. The old reader thread makes the attempts (bounded, with backoff) and
then hands over to the new connection's threads. Sends wait (bounded) until the gateway is back.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final

from discord_voice._shell.exit_hook import close_at_exit
from discord_voice._shell.gateway_connection import (
    CLOSE_HANDSHAKE_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    GatewayConnection,
    open_gateway_session,
)
from discord_voice._shell.gateway_dispatch import DispatchListener, DispatchRouter
from discord_voice._shell.gateway_events import GatewayEvents, MessageCounters
from discord_voice._shell.gateway_heartbeat import RandomSource
from discord_voice._shell.gateway_recovery import Recovery, default_plan
from discord_voice._shell.gateway_watchdog import DEFAULT_RECONNECT_TIMEOUT, run_reconnect_watchdog
from discord_voice._shell.identify_limiter import IdentifyLimiter
from discord_voice._shell.ws_session import WebSocketSession
from discord_voice.clock import Clock, Signal, SystemClock
from discord_voice.core.main_gateway import (
    GatewaySession,
    normalize_gateway_url,
    voice_state_update_payload,
)
from discord_voice.core.main_gateway_resume import resume_url
from discord_voice.core.main_gateway_timing import SendRateLimiter
from discord_voice.core.opcodes import ClientCloseCode, Intents
from discord_voice.core.reconnect import Attempt, AttemptKind, GatewayAction, ReconnectPlan
from discord_voice.core.sharding import Shard, shard_for
from discord_voice.errors import (
    ConnectionClosed,
    GatewayTimeout,
    LocalProtocolError,
    MainGatewayClosed,
    VoiceError,
)
from discord_voice.main_gateway import VoiceEventHandler

__all__ = ["Gateway", "DispatchListener", "RandomSource"]

_log = logging.getLogger(__name__)

#: Longest `update_voice_state` waits for a rate-limit slot before giving up.
_MAX_SEND_DELAY: Final = 30.0
#: Bound on opening the websocket of a resume or re-identify attempt.
_REOPEN_TIMEOUT: Final = 5.0


class Gateway:
    """A synchronous main-gateway connection that implements `MainGateway`.

    ``connect()`` blocks until READY. After that, connection failures are recovered from by
    `plan` (default: `default_plan()`); every attempt is logged at INFO. Each attempt has
    `reconnect_timeout` seconds (on `clock`, from opening its websocket) to get READY or
    RESUMED; otherwise it is closed with 4000 and counts as failed (its `GatewayTimeout` is
    the last failure if the attempts run out). The failure that ends the gateway (a fatal
    close code such as 4004, attempts exhausted, a malformed READY, or an exception raised by
    a handler or listener) is stored in `error`, re-raised by `wait()`, and chained as
    ``__cause__`` of the `ConnectionClosed` raised by the next `update_voice_state`.
    Other malformed or unknown messages are skipped and counted (`malformed_messages`,
    `ignored_messages`).

    Sharding: ``shard=(shard_id, shard_count)`` identifies as that shard (Discord then sends
    only its guilds' events; a resume keeps it), and `Voice.join_channel` refuses a guild of
    another shard (`WrongShard`) before sending anything. Every Identify (the first and any
    re-identify, not a resume) first waits for a slot of `identify_limiter`: one per
    ``max_concurrency`` bucket per 5 s; share one `IdentifyLimiter` between the gateways of a
    process (`ShardGroup` does), or each gateway spaces only its own.

    Thread safety: every method may be called from any thread, including from a callback.
    """

    def __init__(
        self,
        token: str,
        url: str | None = None,
        *,
        intents: int = Intents.GUILDS | Intents.GUILD_VOICE_STATES,
        clock: Clock | None = None,
        properties: Mapping[str, str] | None = None,
        rng: RandomSource | None = None,
        plan: ReconnectPlan[GatewayAction] | None = None,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        shard: Shard | tuple[int, int] | None = None,
        identify_limiter: IdentifyLimiter | None = None,
    ) -> None:
        if not reconnect_timeout > 0:
            raise LocalProtocolError("reconnect_timeout must be positive")
        self._reconnect_timeout = reconnect_timeout
        if isinstance(shard, tuple):
            shard = Shard(*shard)
        elif shard is not None and not isinstance(shard, Shard):
            raise LocalProtocolError(f"shard must be (shard_id, shard_count), got {shard!r}")
        self._session = GatewaySession(token, intents, properties, shard)
        self._identify_limiter = identify_limiter or IdentifyLimiter()
        #: The websocket URL, with ``v=10&encoding=json`` added when it had no query.
        self.url = normalize_gateway_url(url)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._limiter = SendRateLimiter()
        self._router = DispatchRouter()
        self._stopping = Signal()  # close() or a failure: wakes the heartbeat and senders
        self._settled = Signal()  # READY or the end: wakes connect()
        self._ended = threading.Event()  # the socket is released and every thread finished
        self._online = Signal()  # READY/RESUMED on this connection (or the end); new per loss
        self._recovery = Recovery(plan if plan is not None else default_plan())
        self._next: Attempt | None = None  # what to do once the current connection has ended
        self._connection: GatewayConnection | None = None
        self._retired: list[GatewayConnection] = []  # earlier connections, joined by close()
        self._events: GatewayEvents | None = None  # the current connection's messages
        self._counters = MessageCounters(self._session.redact)
        self._error: BaseException | None = None
        self._started = self._ready = self._closing = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "ready" if self._ready else "not ready"
        shard = "" if self.shard is None else f" shard={self.shard}"
        return f"<Gateway url={self.url!r} user_id={self.user_id}{shard} {state}>"

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- public state ---------------------------------------------------------------------

    @property
    def user_id(self) -> int | None:
        """The bot's user id from READY (None before)."""
        return self._session.user_id

    @property
    def shard(self) -> Shard | None:
        """The shard this gateway identifies as (None: unsharded, every guild)."""
        return self._session.shard

    def shard_mismatch(self, guild_id: str) -> str | None:
        """None if this gateway carries `guild_id`'s voice, else which shard does
        (`ShardedGateway`, asked by `Voice.join_channel`)."""
        shard = self._session.shard
        owner = None if shard is None else shard_for(guild_id, shard.shard_count)
        if shard is None or owner == shard.shard_id:
            return None
        return f"guild {guild_id} belongs to shard {owner}/{shard.shard_count}, not {shard}"

    @property
    def session_id(self) -> str | None:
        """The gateway session id from READY (None before)."""
        return self._session.session_id

    @property
    def latency(self) -> float | None:
        """Round trip of the last acknowledged heartbeat, in seconds."""
        events = self._events
        heartbeat = None if events is None else events.heartbeat
        return None if heartbeat is None else heartbeat.latency

    @property
    def malformed_messages(self) -> int:
        """Messages skipped as malformed: not JSON/UTF-8, not an object, a bad known op body."""
        return self._counters.malformed

    @property
    def ignored_messages(self) -> int:
        """Unknown opcodes, and dispatches that reached no voice handler or listener."""
        return self._counters.ignored

    @property
    def last_protocol_error(self) -> str | None:
        """Why the last malformed message was skipped (None before the first)."""
        return self._counters.last_protocol_error

    @property
    def error(self) -> BaseException | None:
        """The first background failure, or None."""
        with self._lock:
            return self._error

    @property
    def closed(self) -> bool:
        """True once the gateway has stopped (after `close()` or a failure)."""
        return self._stopping.is_set()

    # --- lifecycle ------------------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> None:
        """Wait for this shard's Identify slot (see the class), then open the websocket and
        block until READY (at most `timeout` seconds on the clock, from the slot on). An
        Identify answered with op 9 (another process used the slot) is retried after the
        plan's backoff and the next slot, within the same `timeout`.

        Raises `GatewayTimeout` naming the missing Hello or READY, `MainGatewayClosed` if the
        server closes meanwhile (4004: the token was rejected), `ConnectionClosed` if the
        websocket cannot be opened, `LocalProtocolError` if called twice.
        """
        if not timeout > 0:
            raise LocalProtocolError("connect timeout must be positive")
        self._claim_start()
        close_at_exit(self, Gateway._close_at_exit)
        if not self._identify_slot():
            self._ended.set()
            raise ConnectionClosed("the main gateway was closed while waiting to identify")
        deadline = self._clock.monotonic() + timeout
        try:
            self._open(timeout)
        except VoiceError as exc:
            with self._lock:
                if self._error is None and not self._closing:
                    self._error = exc
            self._stopping.set()
            self._ended.set()
            raise
        self._clock.wait_until(deadline, self._settled)
        with self._lock:
            ready, error, closing, events = self._ready, self._error, self._closing, self._events
        hello = events is not None and events.heartbeat is not None
        if ready and error is None and not closing:
            return
        if error is None and not closing:
            stage = "main gateway READY" if hello else "main gateway Hello"
            self._fail(GatewayTimeout(stage, timeout))
        self._shut_down(CLOSE_HANDSHAKE_TIMEOUT, SHUTDOWN_TIMEOUT)
        error = self.error
        if error is None:
            raise ConnectionClosed("the main gateway was closed while connecting")
        raise error

    def _identify_slot(self) -> bool:
        """Wait for this shard's Identify slot (before the websocket opens, so no connection
        idles meanwhile); False if the gateway was closed first."""
        shard = self._session.shard
        shard_id = 0 if shard is None else shard.shard_id
        return self._identify_limiter.wait(shard_id, self._clock, self._stopping)

    def _claim_start(self) -> None:
        with self._lock:
            if self._started or self._closing:
                raise LocalProtocolError("connect() runs once per Gateway; create a new one")
            self._started = True

    def _open(self, timeout: float) -> None:
        """Open the websocket and start the reader (unless `close()` ran meanwhile)."""
        ws = open_gateway_session(self.url, timeout, self._session.redact)
        if not self._start(ws, resume=False):
            ws.release()
            raise ConnectionClosed("the main gateway was closed while connecting")

    def _start(self, ws: WebSocketSession, *, resume: bool) -> bool:
        """Make `ws` the current connection and start its reader; False if closing."""

        def fail(error: VoiceError) -> None:
            self._connection_failed(connection, error)

        connection = GatewayConnection(ws, fail=fail)
        events = GatewayEvents(
            connection,
            session=self._session,
            router=self._router,
            counters=self._counters,
            clock=self._clock,
            rng=self._rng,
            resume=resume,
            stopping=self._stopping,
            send=lambda payload: self._send(payload, require_ready=False),
            on_settled=lambda name: self._back_online(connection, name),
            fail=fail,
        )
        with self._lock:
            if self._closing or self._stopping.is_set():
                return False
            if self._connection is not None:
                self._retired = [c for c in self._retired if c.is_alive()]
                self._retired.append(self._connection)
            self._connection, self._events = connection, events
            if self._ready:  # a reconnect: bound the wait for READY/RESUMED
                self._start_watchdog(connection, resume=resume)
            connection.start(
                events.handle,
                redact=self._session.redact,
                on_exit=lambda: self._connection_ended(connection),
                close_code=self._exit_close_code,
            )
        return True

    def _exit_close_code(self) -> int:
        """The code a connection's reader closes with: a logout after `close()`, else 4000."""
        return ClientCloseCode.NORMAL if self._closing else ClientCloseCode.RECOVERING

    def wait(self, timeout: float | None = None) -> None:
        """Block until the gateway has stopped; re-raise its failure (None after `close()`).

        Also returns None if `timeout` passes first; check `closed` to tell the two apart.
        """
        if not self._started and not self._closing:
            raise LocalProtocolError("wait() before connect()")
        if self._ended.wait(timeout):
            error = self.error
            if error is not None:
                raise error

    def _close_at_exit(self) -> None:
        if not self.closed:
            _log.warning("main gateway still open at interpreter exit: closing it")
        self.close(timeout=2.0)

    def close(self, timeout: float = 5.0) -> None:
        """Log out (close code 1000) and join every thread; idempotent, callable from any thread.

        Code 1000 invalidates the Discord session. Interrupts a resume in progress. Called
        from a callback it does not join the reader thread it runs on.
        Raises `ShutdownTimeout` if a thread is still alive after `timeout` seconds.
        """
        with self._lock:
            first, self._closing = not self._closing, True
            stopped_before = self._stopping.is_set()
            connection, started = self._connection, self._started
        self._stop_all()
        if first and not stopped_before and connection is not None:
            connection.session.close(ClientCloseCode.NORMAL)
        if not started:
            self._ended.set()
        self._shut_down(min(timeout, CLOSE_HANDSHAKE_TIMEOUT), timeout)

    # --- MainGateway ----------------------------------------------------------------------

    def update_voice_state(
        self, guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None:
        """Send op 4 Voice State Update (``channel_id=None`` leaves voice in the guild).

        May wait (bounded) for a rate-limit slot. Raises `LocalProtocolError` for bad ids or
        before READY, `ConnectionClosed` once the gateway has stopped.
        """
        payload = voice_state_update_payload(
            guild_id, channel_id, self_mute=self_mute, self_deaf=self_deaf
        )
        self._send(payload, require_ready=True)

    def add_voice_handler(self, handler: VoiceEventHandler) -> Callable[[], None]:
        """Deliver VOICE_STATE_UPDATE / VOICE_SERVER_UPDATE to `handler`; returns a remover."""
        return self._router.add_voice_handler(handler)

    def add_dispatch_listener(self, callback: DispatchListener) -> Callable[[], None]:
        """Call ``callback(t, d)`` for every dispatch (READY included); returns a remover."""
        return self._router.add_listener(callback)

    # --- sending --------------------------------------------------------------------------

    def _check_open(self, require_ready: bool) -> WebSocketSession:
        """The websocket to send on, or the right error; call with the lock held."""
        if self._error is not None:
            raise ConnectionClosed("the main gateway has failed (see __cause__)") from self._error
        if self._closing or self._stopping.is_set() or self._connection is None:
            if self._connection is None and not self._closing:
                raise LocalProtocolError("the main gateway is not connected; call connect()")
            raise ConnectionClosed("the main gateway is closed")
        if require_ready and not self._ready:
            raise LocalProtocolError("the main gateway is not READY yet")
        if require_ready and not self._online.is_set():
            raise ConnectionClosed("the main gateway is reconnecting (waited for it in vain)")
        return self._connection.session

    def _send(self, payload: str, *, require_ready: bool) -> None:
        """Send an ordinary (rate-limited) payload, waiting on the clock for a slot if needed."""
        deadline = self._clock.monotonic() + _MAX_SEND_DELAY
        while require_ready:  # while reconnecting, wait (bounded) for RESUMED/READY
            with self._lock:
                online = self._online
                back = not self._ready or self._stopping.is_set() or online.is_set()
            if back or not self._clock.wait_until(deadline, online):
                break
        with self._lock:
            ws = self._check_open(require_ready)
            now = self._clock.monotonic()
            send_at = self._limiter.reserve(now, _MAX_SEND_DELAY)
        if send_at > now and self._clock.wait_until(send_at, self._stopping):
            with self._lock:
                self._check_open(require_ready)
        ws.send_text(payload)

    # --- losing a connection and coming back ----------------------------------------------

    def _connection_failed(self, connection: GatewayConnection, error: VoiceError) -> None:
        """A connection's reader, handler or heartbeat failed: recover if the plan says so,
        else fail."""
        with self._lock:
            if connection.failure is not None:
                return  # the close that follows a failure is no news
            connection.failure = error
            if connection is not self._connection or self._closing:
                return
            step = self._recovery.next_step(error, ready=self._ready)
            if isinstance(step, Attempt):
                self._next, self._online = step, Signal()
        if not isinstance(step, Attempt):
            self._fail(error)
            return
        _log.info("main gateway connection lost (%s); next: %s", error, step.summary("main"))
        connection.session.close(ClientCloseCode.RECOVERING)  # stops it; keeps Discord's session
        connection.release()

    def _start_watchdog(self, connection: GatewayConnection, *, resume: bool) -> None:
        """Bound a reconnect's wait for READY/RESUMED; call before starting its reader."""
        deadline = self._clock.monotonic() + self._reconnect_timeout
        connection.start_watchdog(
            lambda: run_reconnect_watchdog(
                self._clock,
                deadline,
                self._reconnect_timeout,
                settled=connection.settled,
                stop=connection.stop,
                resume=resume,
            )
        )

    def _connection_ended(self, connection: GatewayConnection) -> None:
        """On the ending connection's reader thread: make the next attempt, or report the end."""
        with self._lock:
            if connection is not self._connection:
                return  # replaced already; the newer connection reports the end
            attempt, self._next = self._next, None
        if attempt is None or not self._recover(attempt):
            self._ended.set()

    def _recover(self, attempt: Attempt) -> bool:
        """Make attempts until one has a running connection (True) or none is left (False)."""
        while True:
            _log.info("main gateway %s", attempt.summary("main"))
            if self._clock.wait_until(self._clock.monotonic() + attempt.delay, self._stopping):
                return False
            fresh = attempt.kind is AttemptKind.REIDENTIFY or self._session.session_id is None
            if fresh:
                self._session.forget()  # no reader runs now: this thread may touch the session
                if not self._identify_slot():
                    return False
            url = self.url if fresh else resume_url(self._session.resume_gateway_url, self.url)
            try:
                ws = open_gateway_session(url, _REOPEN_TIMEOUT, self._session.redact)
            except VoiceError as exc:
                lost = MainGatewayClosed(None, message=f"main gateway reconnect failed: {exc}")
                lost.__cause__ = exc
                with self._lock:
                    step = self._recovery.next_step(lost)
                if not isinstance(step, Attempt):
                    self._fail(exc)
                    return False
                attempt = step
                continue
            if self._start(ws, resume=not fresh):
                return True
            ws.release()
            return False

    def _back_online(self, connection: GatewayConnection, name: str) -> None:
        """READY or RESUMED: the attempt in progress (if any) worked; senders may go on."""
        with self._lock:
            self._ready = True
            attempt, online = self._recovery.succeeded(), self._online
        if attempt is not None:
            _log.info("main gateway back after %s: %s", attempt.summary("main"), name)
        connection.settled.set()  # ends the reconnect watchdog
        online.set()
        self._settled.set()

    # --- failure and shutdown -------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        """Record the first failure, stop everything and close the socket with a non-1000 code."""
        with self._lock:
            first = self._error is None and not self._closing
            if first:
                self._error = error
            connection = self._connection
        if first:
            _log.warning("main gateway failed: %s", error)
        self._stop_all()
        if connection is not None:
            connection.session.close(ClientCloseCode.RECOVERING)
            connection.release()

    def _stop_all(self) -> None:
        """Stop the gateway: wake connect(), senders and the current connection's threads."""
        with self._lock:
            connection, online = self._connection, self._online
        self._stopping.set()
        self._settled.set()
        online.set()
        if connection is not None:
            connection.stop.set()

    def _shut_down(self, release_timeout: float, join_timeout: float) -> None:
        with self._lock:
            connections = [*self._retired, self._connection]
        for connection in connections:
            if connection is not None:
                connection.shut_down(release_timeout, join_timeout)

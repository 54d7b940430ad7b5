"""The half of `discord_voice.Gateway` that runs on its connections' threads, as a mixin.

`GatewayEvents` turns each received message into an event and acts on it (deliver a dispatch,
beat, Identify or Resume after Hello), and when a connection fails asks `Recovery` what next:
the ending connection's reader thread then makes the attempts (resume on
``resume_gateway_url``, or identify afresh on the original URL) until one has a running
connection, or ends the gateway with the failure. `Gateway` sets the attributes declared below.

Garbage is survived and counted, never fatal: a message that is not JSON, not an object or a
known op with a malformed body (``malformed_messages``; a second Hello too), and an unknown
opcode or a dispatch that reaches no handler or listener (``ignored_messages``). The one
exception is a malformed READY: it carries the session everything else needs, so the gateway
fails with `RemoteProtocolError` at once instead of waiting for a timeout. (A broken websocket
frame, such as text that is not UTF-8, still ends the connection: it is no longer usable.)
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from discord_voice._shell.gateway_connection import GatewayConnection, open_gateway_session
from discord_voice._shell.gateway_dispatch import DispatchRouter
from discord_voice._shell.gateway_heartbeat import GatewayHeartbeat, RandomSource
from discord_voice._shell.gateway_recovery import Recovery, invalid_session, reconnect_requested
from discord_voice._shell.gateway_watchdog import run_reconnect_watchdog
from discord_voice._shell.ws_session import WebSocketSession
from discord_voice.clock import Clock, Signal
from discord_voice.core.main_gateway import (
    Dispatch,
    GatewaySession,
    HeartbeatAck,
    HeartbeatRequest,
    Hello,
    InvalidSession,
    Ready,
    Reconnect,
    UnknownOp,
    decode_payload,
)
from discord_voice.core.main_gateway_resume import resume_url
from discord_voice.core.opcodes import ClientCloseCode, GatewayOp
from discord_voice.core.reconnect import Attempt, AttemptKind
from discord_voice.errors import MainGatewayClosed, RemoteProtocolError, VoiceError

__all__ = ["GatewayEvents"]

_log = logging.getLogger("discord_voice.gateway")

#: Bound on opening the websocket of a resume or re-identify attempt.
_REOPEN_TIMEOUT: Final = 5.0


class GatewayEvents:
    """Event handling and recovery for `Gateway` (which sets these attributes)."""

    url: str
    _session: GatewaySession
    _clock: Clock
    _rng: RandomSource
    _lock: threading.Lock
    _router: DispatchRouter
    _stopping: Signal
    _settled: Signal
    _ended: threading.Event
    _online: Signal
    _recovery: Recovery
    _next: Attempt | None
    _connection: GatewayConnection | None
    _heartbeat: GatewayHeartbeat | None
    _ready: bool
    _closing: bool
    _reconnect_timeout: float
    _malformed: int
    _ignored: int
    _last_protocol_error: str | None

    # --- counters ---------------------------------------------------------------------------

    @property
    def malformed_messages(self) -> int:
        """Messages skipped as malformed: not JSON/UTF-8, not an object, a bad known op body."""
        with self._lock:
            return self._malformed

    @property
    def ignored_messages(self) -> int:
        """Unknown opcodes, and dispatches that reached no voice handler or listener."""
        with self._lock:
            return self._ignored

    @property
    def last_protocol_error(self) -> str | None:
        """Why the last malformed message was skipped (None before the first)."""
        with self._lock:
            return self._last_protocol_error

    def _fail(self, error: BaseException) -> None:
        raise NotImplementedError

    def _start(self, ws: WebSocketSession, *, resume: bool) -> bool:
        raise NotImplementedError

    def _send(self, payload: str, *, require_ready: bool) -> None:
        raise NotImplementedError

    # --- losing a connection and coming back ----------------------------------------------

    def _connection_failed(self, connection: GatewayConnection, error: VoiceError) -> None:
        """A connection's reader or heartbeat failed: recover if the plan says so, else fail."""
        with self._lock:
            if connection.failure is not None:
                return  # the close that follows a failure is no news
            connection.failure = error
            if connection is not self._connection or self._closing:
                return
            step = None if not self._ready else self._recovery.next_step(error)
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
        connection.start_watchdog(lambda: run_reconnect_watchdog(
            self._clock, deadline, self._reconnect_timeout,
            settled=connection.settled, stop=connection.stop, resume=resume,
        ))

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

    # --- on the reader thread -------------------------------------------------------------

    def _handle(self, connection: GatewayConnection, message: str | bytes, *, resume: bool) -> None:
        last_seq = self._session.seq
        try:
            event = self._session.receive(message)  # only this thread mutates the session
        except RemoteProtocolError as exc:
            if _names_ready(message):
                raise  # no session without it: fail now rather than time out
            self._malformed_message(exc)
            return
        heartbeat = self._heartbeat
        if isinstance(event, HeartbeatAck):
            if heartbeat is not None:
                heartbeat.on_ack()
        elif isinstance(event, Dispatch):
            if event.seq is not None and last_seq is not None and event.seq <= last_seq:
                _log.debug("skipping %s s=%d: delivered already", event.name, event.seq)
                return
            settles = isinstance(event, Ready) or event.name == "RESUMED"
            if settles:
                self._back_online(connection, event.name)
            if not self._router.deliver(event) and not settles:
                self._ignored_message(f"dispatch {event.name!r} (no handler or listener)")
        elif isinstance(event, Hello):
            self._on_hello(connection, event, resume=resume)
        elif isinstance(event, HeartbeatRequest):
            if heartbeat is None:  # before Hello: answer without a schedule
                connection.session.send_text(self._session.heartbeat())
            else:
                heartbeat.beat(requested=True)
        elif isinstance(event, Reconnect):
            raise reconnect_requested()
        elif isinstance(event, InvalidSession):
            raise invalid_session(event.resumable)
        elif isinstance(event, UnknownOp):
            self._ignored_message(f"op {event.op}")

    def _malformed_message(self, error: RemoteProtocolError) -> None:
        text = self._session.redact(str(error))[:200]
        with self._lock:
            self._malformed += 1
            self._last_protocol_error = text
        _log.warning("main gateway: skipped a malformed message: %s", text)

    def _ignored_message(self, what: str) -> None:
        with self._lock:
            self._ignored += 1
        _log.debug("main gateway: ignored %s", self._session.redact(what)[:200])

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

    def _on_hello(self, connection: GatewayConnection, hello: Hello, *, resume: bool) -> None:
        with self._lock:
            second = self._heartbeat is not None
        if second:
            self._malformed_message(RemoteProtocolError("main gateway sent a second Hello"))
            return
        with self._lock:
            self._heartbeat = GatewayHeartbeat(
                hello.heartbeat_interval, self._rng.random(), clock=self._clock,
                stop=connection.stop, session=connection.session,
                payload=self._session.heartbeat,
            )
            if self._stopping.is_set():
                return
            connection.start_heartbeat(self._heartbeat.run)
        self._send(self._session.resume() if resume else self._session.identify(),
                   require_ready=False)


def _names_ready(message: str | bytes) -> bool:
    """True if `message` decodes to a READY dispatch (whose body, then, was malformed)."""
    try:
        payload = decode_payload(message)
    except RemoteProtocolError:
        return False
    return payload.op == GatewayOp.DISPATCH and payload.t == "READY"

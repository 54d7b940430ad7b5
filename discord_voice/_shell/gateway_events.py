"""The half of `discord_voice.Gateway` that runs on its connections' threads, as a mixin.

`GatewayEvents` turns each received message into an event and acts on it (deliver a dispatch,
beat, Identify or Resume after Hello), and when a connection fails asks `Recovery` what next:
the ending connection's reader thread then makes the attempts (resume on
``resume_gateway_url``, or identify afresh on the original URL) until one has a running
connection, or ends the gateway with the failure. `Gateway` sets the attributes declared below.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from discord_voice._shell.gateway_connection import GatewayConnection, open_gateway_channel
from discord_voice._shell.gateway_dispatch import DispatchRouter
from discord_voice._shell.gateway_heartbeat import GatewayHeartbeat, RandomSource
from discord_voice._shell.gateway_recovery import Recovery, invalid_session, reconnect_requested
from discord_voice._shell.websocket import WebSocketChannel
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
)
from discord_voice.core.main_gateway_resume import resume_url
from discord_voice.core.reconnect import Attempt, AttemptKind
from discord_voice.errors import MainGatewayClosed, RemoteProtocolError, VoiceError

__all__ = ["GatewayEvents", "FAILURE_CLOSE_CODE"]

_log = logging.getLogger("discord_voice.gateway")

#: Close code after a failure: not 1000/1001, so Discord keeps the session resumable.
FAILURE_CLOSE_CODE: Final = 4000
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

    def _fail(self, error: BaseException) -> None:
        raise NotImplementedError

    def _start(self, channel: WebSocketChannel, *, resume: bool) -> bool:
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
        connection.stop.set()
        connection.channel.close(FAILURE_CLOSE_CODE)  # not 1000: the session stays resumable
        connection.release()

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
                channel = open_gateway_channel(url, _REOPEN_TIMEOUT, self._session.redact)
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
            if self._start(channel, resume=not fresh):
                return True
            channel.release()
            return False

    # --- on the reader thread -------------------------------------------------------------

    def _handle(self, connection: GatewayConnection, message: str | bytes, *, resume: bool) -> None:
        last_seq = self._session.seq
        event = self._session.receive(message)  # only this thread mutates the session
        heartbeat = self._heartbeat
        if isinstance(event, HeartbeatAck):
            if heartbeat is not None:
                heartbeat.on_ack()
        elif isinstance(event, Dispatch):
            if event.seq is not None and last_seq is not None and event.seq <= last_seq:
                _log.debug("skipping %s s=%d: delivered already", event.name, event.seq)
                return
            if isinstance(event, Ready) or event.name == "RESUMED":
                self._back_online(event.name)
            self._router.deliver(event)
        elif isinstance(event, Hello):
            self._on_hello(connection, event, resume=resume)
        elif isinstance(event, HeartbeatRequest):
            if heartbeat is None:  # before Hello: answer without a schedule
                connection.channel.send_text(self._session.heartbeat())
            else:
                heartbeat.beat(requested=True)
        elif isinstance(event, Reconnect):
            raise reconnect_requested()
        elif isinstance(event, InvalidSession):
            raise invalid_session(event.resumable)
        else:
            _log.debug("ignoring main gateway event %r", event)

    def _back_online(self, name: str) -> None:
        """READY or RESUMED: the attempt in progress (if any) worked; senders may go on."""
        with self._lock:
            self._ready = True
            attempt, online = self._recovery.succeeded(), self._online
        if attempt is not None:
            _log.info("main gateway back after %s: %s", attempt.summary("main"), name)
        online.set()
        self._settled.set()

    def _on_hello(self, connection: GatewayConnection, hello: Hello, *, resume: bool) -> None:
        with self._lock:
            if self._heartbeat is not None:
                raise RemoteProtocolError("main gateway sent a second Hello")
            self._heartbeat = GatewayHeartbeat(
                hello.heartbeat_interval, self._rng.random(), clock=self._clock,
                stop=connection.stop, channel=connection.channel,
                payload=self._session.heartbeat,
            )
            if self._stopping.is_set():
                return
            connection.start_heartbeat(self._heartbeat.run)
        self._send(self._session.resume() if resume else self._session.identify(),
                   require_ready=False)

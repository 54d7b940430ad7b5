"""What the main gateway does with each message of one connection, on that connection's reader.

`GatewayEvents` is the protocol half that ``Gateway`` gives each connection's websocket session
(one per connection, composed, holding no reference to the ``Gateway``): it turns every message
into an event through the shared `GatewaySession` and acts on it — delivers a dispatch, answers
a heartbeat request, starts the heartbeat and sends Identify or Resume after Hello, reports
READY/RESUMED through ``on_settled`` — and reports op 7 Reconnect, op 9 Invalid Session and a
malformed READY through ``fail`` (the connection's failure path, which decides between a
recovery and the end), as values, not as exceptions.

Garbage is survived and counted in `MessageCounters`, never fatal: a message that is not JSON,
not an object or a known op with a malformed body (``malformed_messages``; a second Hello too),
and an unknown opcode or a dispatch that reaches no handler or listener (``ignored_messages``).
The one exception is a malformed READY: it carries the session everything else needs, so the
gateway fails with `RemoteProtocolError` at once instead of waiting for a timeout. (A broken
websocket frame, such as text that is not UTF-8, still ends the connection: it is no longer
usable.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from discord_voice._shell.gateway_connection import GatewayConnection
from discord_voice._shell.gateway_dispatch import DispatchRouter
from discord_voice._shell.gateway_heartbeat import GatewayHeartbeat, RandomSource
from discord_voice._shell.gateway_recovery import invalid_session, reconnect_requested
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
from discord_voice.core.opcodes import GatewayOp
from discord_voice.errors import RemoteProtocolError, VoiceError

__all__ = ["GatewayEvents", "MessageCounters"]

_log = logging.getLogger("discord_voice.gateway")


class MessageCounters:
    """Messages the main gateway skipped, over all its connections.

    Thread safety: written by the current reader, read from any thread (under a lock).
    """

    def __init__(self, redact: Callable[[str], str]) -> None:
        self._redact = redact
        self._lock = threading.Lock()
        self._malformed = self._ignored = 0
        self._last_protocol_error: str | None = None

    @property
    def malformed(self) -> int:
        with self._lock:
            return self._malformed

    @property
    def ignored(self) -> int:
        with self._lock:
            return self._ignored

    @property
    def last_protocol_error(self) -> str | None:
        with self._lock:
            return self._last_protocol_error

    def malformed_message(self, error: RemoteProtocolError) -> None:
        """Count a skipped malformed message and log why (redacted)."""
        text = self._redact(str(error))[:200]
        with self._lock:
            self._malformed += 1
            self._last_protocol_error = text
        _log.warning("main gateway: skipped a malformed message: %s", text)

    def ignored_message(self, what: str) -> None:
        """Count a message nobody wanted (an unknown op, a dispatch with no listener)."""
        with self._lock:
            self._ignored += 1
        _log.debug("main gateway: ignored %s", self._redact(what)[:200])


class GatewayEvents:
    """The messages of one connection (`handle`, on its reader thread only).

    Args:
        connection: the connection whose messages these are (its session sends, its
            heartbeat thread beats, its `stop` ends the heartbeat).
        session: the gateway's protocol state, shared by its connections; only the current
            connection's reader touches it.
        resume: after Hello, send Resume (else Identify).
        stopping: the gateway is stopping: no heartbeat is started then.
        send: sends Identify/Resume through the gateway's send path.
        on_settled: READY or RESUMED arrived (with its name), before it is delivered.
        fail: ends the connection with this error (op 7, op 9, a malformed READY).
    """

    def __init__(
        self,
        connection: GatewayConnection,
        *,
        session: GatewaySession,
        router: DispatchRouter,
        counters: MessageCounters,
        clock: Clock,
        rng: RandomSource,
        resume: bool,
        stopping: Signal,
        send: Callable[[str], None],
        on_settled: Callable[[str], None],
        fail: Callable[[VoiceError], None],
    ) -> None:
        self._connection = connection
        self._session = session
        self._router = router
        self._counters = counters
        self._clock = clock
        self._rng = rng
        self._resume = resume
        self._stopping = stopping
        self._send = send
        self._on_settled = on_settled
        self._fail = fail
        #: Created on Hello (by the reader; read from any thread for the latency).
        self.heartbeat: GatewayHeartbeat | None = None

    def handle(self, message: str | bytes) -> None:
        """Act on one message."""
        last_seq = self._session.seq
        try:
            event = self._session.receive(message)  # only this thread mutates the session
        except RemoteProtocolError as exc:
            if _names_ready(message):
                self._fail(exc)  # no session without it: fail now rather than time out
            else:
                self._counters.malformed_message(exc)
            return
        heartbeat = self.heartbeat
        if isinstance(event, HeartbeatAck):
            if heartbeat is not None:
                heartbeat.on_ack()
        elif isinstance(event, Dispatch):
            if event.seq is not None and last_seq is not None and event.seq <= last_seq:
                _log.debug("skipping %s s=%d: delivered already", event.name, event.seq)
                return
            settles = isinstance(event, Ready) or event.name == "RESUMED"
            if settles:
                self._on_settled(event.name)
            if not self._router.deliver(event) and not settles:
                self._counters.ignored_message(f"dispatch {event.name!r} (no handler or listener)")
        elif isinstance(event, Hello):
            self._on_hello(event)
        elif isinstance(event, HeartbeatRequest):
            if heartbeat is None:  # before Hello: answer without a schedule
                self._connection.session.send_text(self._session.heartbeat())
            else:
                heartbeat.beat(requested=True)
        elif isinstance(event, Reconnect):
            self._fail(reconnect_requested())
        elif isinstance(event, InvalidSession):
            self._fail(invalid_session(event.resumable))
        elif isinstance(event, UnknownOp):
            self._counters.ignored_message(f"op {event.op}")

    def _on_hello(self, hello: Hello) -> None:
        if self.heartbeat is not None:
            self._counters.malformed_message(
                RemoteProtocolError("main gateway sent a second Hello")
            )
            return
        connection = self._connection
        self.heartbeat = GatewayHeartbeat(
            hello.heartbeat_interval,
            self._rng.random(),
            clock=self._clock,
            stop=connection.stop,
            session=connection.session,
            payload=self._session.heartbeat,
        )
        if self._stopping.is_set():
            return
        connection.start_heartbeat(self.heartbeat.run)
        self._send(self._session.resume() if self._resume else self._session.identify())


def _names_ready(message: str | bytes) -> bool:
    """True if `message` decodes to a READY dispatch (whose body, then, was malformed)."""
    try:
        payload = decode_payload(message)
    except RemoteProtocolError:
        return False
    return payload.op == GatewayOp.DISPATCH and payload.t == "READY"

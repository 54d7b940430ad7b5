"""`Gateway`: the built-in synchronous main-gateway client (v10, JSON, no compression).

Two threads per connection, both named, non-daemon and joined by `Gateway.close`:
``dv-gateway-reader`` is the only caller of websocket recv; it turns frames into events through
`discord_voice.core.main_gateway` and delivers dispatches to voice handlers and listeners.
``dv-gateway-heartbeat`` (started on Hello) sends op 1 on the schedule and declares the
connection a zombie when an ACK is missing. All time goes through the injected `Clock`.

Resume and reconnect are not implemented yet: op 7, op 9 and any close end the gateway with a
typed error; the `GatewaySession` keeps what a Resume will need.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, Protocol, TypeVar

import websocket

from discord_voice.clock import Clock, Signal, SystemClock
from discord_voice.core.main_gateway import (
    Dispatch,
    GatewaySession,
    HeartbeatAck,
    HeartbeatRequest,
    HeartbeatSchedule,
    Hello,
    InvalidSession,
    Ready,
    Reconnect,
    SendRateLimiter,
    describe_gateway_close,
    normalize_gateway_url,
    parse_close_frame,
    voice_state_update_payload,
)
from discord_voice.core.opcodes import Intents
from discord_voice.errors import (
    ConnectionClosed,
    HeartbeatTimeout,
    GatewayTimeout,
    LocalProtocolError,
    MainGatewayClosed,
    RemoteProtocolError,
    ShutdownTimeout,
    VoiceError,
)
from discord_voice.main_gateway import VoiceEventHandler

__all__ = ["Gateway", "DispatchListener", "RandomSource"]

_log = logging.getLogger(__name__)

#: Bounds every socket send; the reader also wakes at this period to check for shutdown.
_IO_TIMEOUT: Final = 5.0
#: How long an intentional close waits for the server to echo the close frame.
_CLOSE_HANDSHAKE_TIMEOUT: Final = 1.0
#: Longest `update_voice_state` waits for a rate-limit slot before giving up.
_MAX_SEND_DELAY: Final = 30.0
#: Close code after a failure: not 1000/1001, so Discord keeps the session resumable.
_FAILURE_CLOSE_CODE: Final = 4000
#: Close code of `close()`: an intentional logout (we cannot resume yet).
_LOGOUT_CLOSE_CODE: Final = 1000

_DATA_OPCODES: Final = (
    websocket.ABNF.OPCODE_TEXT,
    websocket.ABNF.OPCODE_BINARY,
    websocket.ABNF.OPCODE_CONT,
)

DispatchListener = Callable[[str, Mapping[str, Any]], None]
_T = TypeVar("_T")


class RandomSource(Protocol):
    """Where the first-heartbeat jitter comes from (`random.Random` fits)."""

    def random(self) -> float: ...


class _ServerClosed(Exception):
    """Internal: the reader received a close frame."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def _caused(error: VoiceError, cause: BaseException) -> VoiceError:
    error.__cause__ = cause
    return error


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _without(items: tuple[_T, ...], item: _T) -> tuple[_T, ...]:
    for index, existing in enumerate(items):
        if existing is item:
            return items[:index] + items[index + 1 :]
    return items


class Gateway:
    """A synchronous main-gateway connection that implements `MainGateway`.

    ``connect()`` blocks until READY. The first background failure (a close, a zombie
    connection, malformed data, or an exception raised by a handler or listener, which is
    treated as a failure of the gateway) is stored in `error`, re-raised by `wait()`, and
    chained as ``__cause__`` of the `ConnectionClosed` raised by the next `update_voice_state`.

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
    ) -> None:
        self._session = GatewaySession(token, intents, properties)
        #: The websocket URL, with ``v=10&encoding=json`` added when it had no query.
        self.url = normalize_gateway_url(url)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._limiter = SendRateLimiter()
        self._stopping = Signal()  # close() or a failure: wakes the heartbeat and senders
        self._settled = Signal()  # READY or the end: wakes connect()
        self._released = threading.Event()  # the reader has closed the socket
        self._ended = threading.Event()  # ... and every thread has finished
        self._ws: websocket.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._schedule: HeartbeatSchedule | None = None
        self._error: BaseException | None = None
        self._started = self._ready = self._closing = False
        self._close_sent = self._close_received = False
        self._voice_handlers: tuple[VoiceEventHandler, ...] = ()
        self._listeners: tuple[DispatchListener, ...] = ()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "ready" if self._ready else "not ready"
        return f"<Gateway url={self.url!r} user_id={self.user_id} {state}>"

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
    def session_id(self) -> str | None:
        """The gateway session id from READY (None before)."""
        return self._session.session_id

    @property
    def latency(self) -> float | None:
        """Round trip of the last acknowledged heartbeat, in seconds."""
        with self._lock:
            return None if self._schedule is None else self._schedule.latency

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
        """Open the websocket and block until READY (at most `timeout` seconds on the clock).

        Raises `GatewayTimeout` naming the missing Hello or READY, `MainGatewayClosed` if the
        server closes meanwhile (4004: the token was rejected), `ConnectionClosed` if the
        websocket cannot be opened, `LocalProtocolError` if called twice.
        """
        if not timeout > 0:
            raise LocalProtocolError("connect timeout must be positive")
        self._claim_start()
        deadline = self._clock.monotonic() + timeout
        try:
            ws = self._open(timeout)
            with self._lock:  # close() may have run meanwhile: then start no thread
                closing = self._closing
                if not closing:
                    self._ws = ws
                    self._reader = threading.Thread(
                        target=self._read_loop, args=(ws,), name="dv-gateway-reader"
                    )
                    self._reader.start()
            if closing:
                ws.shutdown()  # type: ignore[no-untyped-call]
                raise ConnectionClosed("the main gateway was closed while connecting")
        except VoiceError as exc:
            with self._lock:
                if self._error is None and not self._closing:
                    self._error = exc
            self._stopping.set()
            self._released.set()
            self._ended.set()
            raise
        self._clock.wait_until(deadline, self._settled)
        with self._lock:
            ready, error, closing, hello = self._ready, self._error, self._closing, self._schedule
        if ready and error is None and not closing:
            return
        if error is None and not closing:
            stage = "main gateway READY" if hello is not None else "main gateway Hello"
            self._fail(GatewayTimeout(stage, timeout))
        self._release_socket(_CLOSE_HANDSHAKE_TIMEOUT)
        self._join(_IO_TIMEOUT + _CLOSE_HANDSHAKE_TIMEOUT)
        error = self.error
        if error is None:
            raise ConnectionClosed("the main gateway was closed while connecting")
        raise error

    def _claim_start(self) -> None:
        with self._lock:
            if self._started or self._closing:
                raise LocalProtocolError("connect() runs once per Gateway; create a new one")
            self._started = True

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

    def close(self, timeout: float = 5.0) -> None:
        """Log out (close code 1000) and join every thread; idempotent, callable from any thread.

        Code 1000 invalidates the Discord session, which is right while resuming is not
        implemented. Called from a callback it does not join the reader thread it runs on.
        Raises `ShutdownTimeout` if a thread is still alive after `timeout` seconds.
        """
        with self._lock:
            first, self._closing = not self._closing, True
            stopped_before = self._stopping.is_set()
            reader, started = self._reader, self._started
        self._stopping.set()
        self._settled.set()
        if first and not stopped_before and reader is not None:
            self._send_close_frame(_LOGOUT_CLOSE_CODE)
        self._release_socket(min(timeout, _CLOSE_HANDSHAKE_TIMEOUT))
        if not started:
            self._released.set()
            self._ended.set()
        self._join(timeout)

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
        if not isinstance(handler, VoiceEventHandler):
            raise LocalProtocolError("a voice handler needs on_voice_state/server_update methods")
        with self._lock:
            self._voice_handlers += (handler,)

        def remove() -> None:
            with self._lock:
                self._voice_handlers = _without(self._voice_handlers, handler)

        return remove

    def add_dispatch_listener(self, callback: DispatchListener) -> Callable[[], None]:
        """Call ``callback(t, d)`` for every dispatch (READY included); returns a remover."""
        if not callable(callback):
            raise LocalProtocolError("a dispatch listener must be callable")
        with self._lock:
            self._listeners += (callback,)

        def remove() -> None:
            with self._lock:
                self._listeners = _without(self._listeners, callback)

        return remove

    # --- sending --------------------------------------------------------------------------

    def _open(self, timeout: float) -> websocket.WebSocket:
        try:
            ws = websocket.create_connection(self.url, timeout=timeout, enable_multithread=True)
            ws.settimeout(_IO_TIMEOUT)
            return ws
        except (websocket.WebSocketTimeoutException, TimeoutError) as exc:
            raise GatewayTimeout("main gateway websocket handshake", timeout) from exc
        except (websocket.WebSocketException, OSError) as exc:
            detail = self._session.redact(str(exc))
            raise ConnectionClosed(f"could not open the main gateway websocket: {detail}") from exc

    def _check_open(self, require_ready: bool) -> websocket.WebSocket:
        """The socket to send on, or the right error; call with the lock held."""
        if self._error is not None:
            raise ConnectionClosed("the main gateway has failed (see __cause__)") from self._error
        if self._closing or self._stopping.is_set() or self._ws is None:
            if self._ws is None and not self._closing:
                raise LocalProtocolError("the main gateway is not connected; call connect()")
            raise ConnectionClosed("the main gateway is closed")
        if require_ready and not self._ready:
            raise LocalProtocolError("the main gateway is not READY yet")
        return self._ws

    def _send(self, payload: str, *, require_ready: bool) -> None:
        """Send an ordinary (rate-limited) payload, waiting on the clock for a slot if needed."""
        with self._lock:
            ws = self._check_open(require_ready)
            now = self._clock.monotonic()
            send_at = self._limiter.reserve(now, _MAX_SEND_DELAY)
        if send_at > now and self._clock.wait_until(send_at, self._stopping):
            with self._lock:
                self._check_open(require_ready)
        try:
            ws.send(payload)
        except (websocket.WebSocketException, OSError) as exc:
            raise ConnectionClosed("could not send to the main gateway") from exc

    def _beat(self, ws: websocket.WebSocket, *, requested: bool) -> None:
        """Send op 1 now (heartbeats bypass the rate limiter)."""
        with self._lock:
            if self._schedule is not None:
                self._schedule.on_sent(self._clock.monotonic(), requested=requested)
            payload = self._session.heartbeat()
        try:
            ws.send(payload)
        except (websocket.WebSocketException, OSError) as exc:
            raise ConnectionClosed("could not send a heartbeat to the main gateway") from exc

    def _send_close_frame(self, code: int) -> None:
        with self._lock:
            ws, already = self._ws, self._close_sent
            self._close_sent = True
        if ws is not None and not already:
            try:
                ws.send(code.to_bytes(2, "big"), websocket.ABNF.OPCODE_CLOSE)
            except (websocket.WebSocketException, OSError):
                pass  # the connection is going away anyway

    def _release_socket(self, timeout: float) -> None:
        """Give the reader `timeout` seconds to finish the close handshake, then cut the socket.

        The reader closes the socket itself once the server answers our close frame; shutting
        it down too early could reset the connection before the server has read that frame.
        """
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            self._released.wait(timeout)
            self._abort()

    def _abort(self) -> None:
        """Shut the socket down so a blocked recv in the reader returns at once."""
        ws = self._ws
        sock = ws.sock if ws is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    # --- failure and shutdown -------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        """Record the first failure, stop everything and close the socket with a non-1000 code."""
        with self._lock:
            first = self._error is None and not self._closing
            if first:
                self._error = error
        if first:
            _log.warning("main gateway failed: %s", error)
        self._stopping.set()
        self._settled.set()
        self._send_close_frame(_FAILURE_CLOSE_CODE)
        self._release_socket(_CLOSE_HANDSHAKE_TIMEOUT)

    def _join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [t for t in (self._heartbeat, self._reader) if t is not None]
        stuck = []
        for thread in threads:
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                stuck.append(thread.name)
        if stuck:
            raise ShutdownTimeout(stuck, timeout)

    # --- reader thread --------------------------------------------------------------------

    def _read_loop(self, ws: websocket.WebSocket) -> None:
        try:
            while not self._stopping.is_set():
                received = self._recv_message(ws)
                if received is not None:
                    self._handle(ws, received)
        except _ServerClosed as closed:
            description = describe_gateway_close(closed.code)
            reason = self._session.redact(closed.reason)
            message = f"main gateway closed with code {closed.code} ({description})"
            message += f": {reason}" if reason else ""
            self._fail(MainGatewayClosed(closed.code, reason, message=message))
        except (websocket.WebSocketProtocolException, websocket.WebSocketPayloadException) as exc:
            self._fail(_caused(RemoteProtocolError("main gateway sent an invalid frame"), exc))
        except (websocket.WebSocketException, OSError) as exc:
            message = "main gateway connection dropped without a close frame"
            self._fail(_caused(MainGatewayClosed(None, message=message), exc))
        except VoiceError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here: stored and re-raised, never lost
            self._fail(_caused(ConnectionClosed("main gateway reader failed unexpectedly"), exc))
        finally:
            self._finish_reader(ws)

    def _finish_reader(self, ws: websocket.WebSocket) -> None:
        self._stopping.set()
        self._settled.set()
        self._send_close_frame(_LOGOUT_CLOSE_CODE if self._closing else _FAILURE_CLOSE_CODE)
        self._drain(ws)
        try:
            ws.shutdown()  # type: ignore[no-untyped-call]
        except (websocket.WebSocketException, OSError):
            pass
        self._released.set()
        with self._lock:
            heartbeat = self._heartbeat
        if heartbeat is not None:
            heartbeat.join(_IO_TIMEOUT + _CLOSE_HANDSHAKE_TIMEOUT)
        self._ended.set()

    def _drain(self, ws: websocket.WebSocket) -> None:
        """After our close frame, read (bounded) until the server's close frame or EOF."""
        deadline = time.monotonic() + _CLOSE_HANDSHAKE_TIMEOUT
        while not self._close_received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                ws.settimeout(remaining)
                frame: websocket.ABNF = ws.recv_frame()  # type: ignore[no-untyped-call]
            except (websocket.WebSocketException, OSError):
                return
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                return

    def _recv_message(self, ws: websocket.WebSocket) -> bytes | None:
        """One complete data message, or None (control frame or poll timeout)."""
        try:
            frame: websocket.ABNF = ws.recv_frame()  # type: ignore[no-untyped-call]
        except websocket.WebSocketTimeoutException:
            return None
        if frame.opcode in _DATA_OPCODES:
            ws.cont_frame.validate(frame)
            ws.cont_frame.add(frame)
            if ws.cont_frame.is_fire(frame):
                _, whole = ws.cont_frame.extract(frame)
                return _as_bytes(whole.data)
        elif frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            data = _as_bytes(frame.data)
            code, reason = parse_close_frame(data)
            with self._lock:
                self._close_received = True
                echo, self._close_sent = not self._close_sent, True
            if echo:  # answer with the server's own close code
                try:
                    ws.send(data[:2], websocket.ABNF.OPCODE_CLOSE)
                except (websocket.WebSocketException, OSError):
                    pass
            raise _ServerClosed(code, reason)
        elif frame.opcode == websocket.ABNF.OPCODE_PING:
            ws.pong(frame.data)
        return None

    def _handle(self, ws: websocket.WebSocket, message: bytes) -> None:
        event = self._session.receive(message)  # only this thread mutates the session
        if isinstance(event, HeartbeatAck):
            with self._lock:
                if self._schedule is not None:
                    self._schedule.on_ack(self._clock.monotonic())
        elif isinstance(event, Dispatch):
            if isinstance(event, Ready):
                with self._lock:
                    self._ready = True
                self._settled.set()
            self._deliver(event)
        elif isinstance(event, Hello):
            self._on_hello(ws, event)
        elif isinstance(event, HeartbeatRequest):
            self._beat(ws, requested=True)
        elif isinstance(event, Reconnect):
            raise ConnectionClosed(
                "main gateway asked to reconnect (op 7); reconnect/resume is not supported yet"
            )
        elif isinstance(event, InvalidSession):
            raise ConnectionClosed(
                f"main gateway invalidated the session (op 9, resumable={event.resumable}); "
                "reconnecting is not supported yet"
            )
        else:
            _log.debug("ignoring main gateway event %r", event)

    def _on_hello(self, ws: websocket.WebSocket, hello: Hello) -> None:
        with self._lock:
            if self._schedule is not None:
                raise RemoteProtocolError("main gateway sent a second Hello")
            jitter = self._rng.random()
            schedule = HeartbeatSchedule(hello.heartbeat_interval, self._clock.monotonic(), jitter)
            self._schedule = schedule
            if self._stopping.is_set():
                return
            self._heartbeat = threading.Thread(
                target=self._heartbeat_loop, args=(ws, schedule), name="dv-gateway-heartbeat"
            )
            self._heartbeat.start()
        self._send(self._session.identify(), require_ready=False)

    def _deliver(self, event: Dispatch) -> None:
        with self._lock:
            handlers, listeners = self._voice_handlers, self._listeners
        try:
            if event.name == "VOICE_STATE_UPDATE":
                for handler in handlers:
                    handler.on_voice_state_update(event.data)
            elif event.name == "VOICE_SERVER_UPDATE":
                for handler in handlers:
                    handler.on_voice_server_update(event.data)
            for listener in listeners:
                listener(event.name, event.data)
        except Exception as exc:
            _log.error("a callback for %s raised; closing the gateway", event.name, exc_info=True)
            message = (
                f"a callback for the {event.name} dispatch raised {type(exc).__name__}; "
                "the main gateway was closed"
            )
            raise ConnectionClosed(message) from exc

    # --- heartbeat thread -----------------------------------------------------------------

    def _heartbeat_loop(self, ws: websocket.WebSocket, schedule: HeartbeatSchedule) -> None:
        try:
            while True:
                with self._lock:
                    due = schedule.next_due
                if self._clock.wait_until(due, self._stopping):
                    return
                now = self._clock.monotonic()
                with self._lock:
                    if now < schedule.next_due:
                        continue
                    zombie = schedule.is_zombie(now)
                if zombie:
                    message = (
                        f"no heartbeat ACK from the main gateway within {schedule.interval:g}s; "
                        "closed the zombie connection"
                    )
                    self._fail(HeartbeatTimeout(message, schedule.interval))
                    return
                try:
                    self._beat(ws, requested=False)
                except ConnectionClosed:
                    self._abort()  # wake the reader, which reports how the connection ended
                    return
        except Exception as exc:  # noqa: BLE001 - a bug here: stored and re-raised, never lost
            self._fail(_caused(ConnectionClosed("main gateway heartbeat failed unexpectedly"), exc))

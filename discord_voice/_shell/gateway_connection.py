"""One main gateway websocket (a `WebSocketSession`) and the threads that serve it.

The session's reader, ``dv-gateway-reader``, passes every message to the gateway's handler;
``dv-gateway-heartbeat`` (started on Hello) beats; on a reconnect, ``dv-gateway-watchdog``
(`..gateway_watchdog`) bounds the wait for READY/RESUMED. The reader also ends the connection:
after the close handshake it closes the socket, joins the other threads and only then reports
the end, so an owner that waits for that end finds every thread finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from discord_voice._shell.threads import ServiceThread, join_all
from discord_voice._shell.websocket import Close, timed_out
from discord_voice._shell.ws_session import CLOSE_HANDSHAKE_TIMEOUT, IO_TIMEOUT, WebSocketSession
from discord_voice.clock import Signal
from discord_voice.core.main_gateway import describe_gateway_close
from discord_voice.errors import (
    ConnectionClosed,
    GatewayTimeout,
    MainGatewayClosed,
    RemoteProtocolError,
    VoiceError,
)

__all__ = [
    "CLOSE_HANDSHAKE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "GatewayConnection",
    "close_error",
    "open_gateway_session",
]

#: Enough for the reader to notice a stop, finish the close handshake and exit.
SHUTDOWN_TIMEOUT: Final = IO_TIMEOUT + CLOSE_HANDSHAKE_TIMEOUT
#: Larger messages are a protocol violation; far above any real (uncompressed) dispatch.
_MAX_MESSAGE_BYTES: Final = 64 << 20


def open_gateway_session(
    url: str, timeout: float, redact: Callable[[str], str]
) -> WebSocketSession:
    """Open the main gateway websocket within `timeout` seconds; `redact` cleans error text.

    Raises `GatewayTimeout` (stage: the websocket handshake) or `ConnectionClosed`, with the
    underlying exception as ``__cause__``.
    """
    try:
        return WebSocketSession.connect(
            url,
            timeout=timeout,
            what="main gateway websocket",
            max_message_size=_MAX_MESSAGE_BYTES,
        )
    except ConnectionClosed as exc:
        if timed_out(exc.__cause__):
            raise GatewayTimeout("main gateway websocket handshake", timeout) from exc.__cause__
        raise ConnectionClosed(redact(str(exc))) from exc.__cause__


class GatewayConnection:
    """An open websocket (`session`) with its reader, heartbeat and (on a reconnect) watchdog.

    How the connection ended goes to `fail`: the server's close or a dropped connection
    (`close_error`), an error raised by the message handler or a failure of any of its
    threads (anything but a `VoiceError`, a bug, wrapped in `ConnectionClosed`). `stop` (the
    session's `stopped`) is set when the connection should end.

    Thread safety: every method from any thread; `start_heartbeat` from the reader only.
    """

    def __init__(self, session: WebSocketSession, *, fail: Callable[[VoiceError], None]) -> None:
        self.session = session
        self.stop = session.stopped  #: set to end this connection (not necessarily its owner)
        #: Set once READY/RESUMED arrived on this connection, and whenever `stop` is set.
        self.settled = Signal()
        if not self.stop.add_listener(self.settled.set):
            self.settled.set()
        #: The first failure that ended this connection (set by the owner).
        self.failure: BaseException | None = None
        self._fail = fail
        self._reader: ServiceThread | None = None
        self._heartbeat: ServiceThread | None = None
        self._watchdog: ServiceThread | None = None

    def start(
        self,
        handle: Callable[[str | bytes], None],
        *,
        redact: Callable[[str], str],
        close_code: Callable[[], int],
        on_exit: Callable[[], None],
    ) -> None:
        """Start the reader, which passes every message to `handle`.

        `redact` cleans the server's close reason, `close_code()` picks the code of the
        reader's own close frame, and `on_exit` runs once the socket is closed and every
        other thread of the connection is done.
        """

        def on_end(end: Close | Exception) -> None:
            if isinstance(end, Close):
                self._fail(close_error(end, redact))
            elif isinstance(end, VoiceError):
                self._fail(end)
            else:  # a bug in the handler: stored and re-raised by the owner, never lost
                error = ConnectionClosed("main gateway reader failed unexpectedly")
                error.__cause__ = end
                self._fail(error)

        def finish() -> None:
            for helper in (self._heartbeat, self._watchdog):
                if helper is not None:
                    helper.join(SHUTDOWN_TIMEOUT)
            on_exit()

        name = "dv-gateway-reader"
        self._reader = self.session.make_reader(
            name,
            on_message=lambda message: handle(message.data),
            on_end=on_end,
            on_failure=self._reporter(name),
            exit_code=close_code,
            on_exit=finish,
        )
        self._reader.start()

    def start_heartbeat(self, body: Callable[[], None]) -> None:
        """Run `body` on ``dv-gateway-heartbeat``; the reader joins it before it exits."""
        self._heartbeat = self._thread("dv-gateway-heartbeat", body)
        self._heartbeat.start()

    def start_watchdog(self, body: Callable[[], None]) -> None:
        """Run `body` on ``dv-gateway-watchdog``; call before `start` (the reader joins it)."""
        self._watchdog = self._thread("dv-gateway-watchdog", body)
        self._watchdog.start()

    def release(self, timeout: float = CLOSE_HANDSHAKE_TIMEOUT) -> None:
        """`WebSocketSession.release`: the reader gets `timeout` seconds for the close
        handshake, then the socket is cut (a no-op on the reader thread)."""
        self.session.release(timeout)

    def is_alive(self) -> bool:
        """True while the reader or heartbeat thread still runs."""
        return any(t is not None and t.is_alive() for t in self._threads())

    def shut_down(self, release_timeout: float, join_timeout: float) -> None:
        """`release`, then join every thread (not the calling one) within `join_timeout`.

        Raises `ShutdownTimeout` naming any thread still alive.
        """
        self.release(release_timeout)
        join_all([t for t in self._threads() if t is not None], join_timeout)

    def _threads(self) -> tuple[ServiceThread | None, ...]:
        return self._watchdog, self._heartbeat, self._reader

    def _thread(self, name: str, body: Callable[[], None]) -> ServiceThread:
        return ServiceThread(name, body, self._reporter(name))

    def _reporter(self, name: str) -> Callable[[BaseException], None]:
        def report(exc: BaseException) -> None:
            if isinstance(exc, VoiceError):
                self._fail(exc)
            else:  # a bug in the thread: stored and re-raised by the owner, never lost
                error = ConnectionClosed(f"main gateway thread {name} failed unexpectedly")
                error.__cause__ = exc
                self._fail(error)

        return report


def close_error(frame: Close, redact: Callable[[str], str]) -> VoiceError:
    """The error that reports how the connection ended; `redact` cleans the server's reason.

    A close frame gives `MainGatewayClosed` with the server's code (4004: the token was
    rejected), a dropped connection `MainGatewayClosed` without a code, and a broken websocket
    protocol `RemoteProtocolError`; the underlying exception, if any, is the ``__cause__``.
    """
    if frame.violation:
        error: VoiceError = RemoteProtocolError("main gateway sent an invalid frame")
    elif frame.error is not None:
        message = "main gateway connection dropped without a close frame"
        error = MainGatewayClosed(None, message=message)
    else:
        reason = redact(frame.reason)
        message = f"main gateway closed with code {frame.code} "
        message += f"({describe_gateway_close(frame.code)})" + (f": {reason}" if reason else "")
        return MainGatewayClosed(frame.code, reason, message=message)
    error.__cause__ = frame.error
    return error

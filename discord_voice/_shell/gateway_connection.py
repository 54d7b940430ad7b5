"""One main gateway websocket and the threads that serve it, from opening to release.

``dv-gateway-reader`` (`run_gateway_reader`) reads; ``dv-gateway-heartbeat`` (started on
Hello) beats; on a reconnect, ``dv-gateway-watchdog`` (`..gateway_watchdog`) bounds the wait
for READY/RESUMED. The reader also ends the connection: after the close handshake it releases
the socket, joins the other threads and only then reports the end, so an owner that waits for
that end finds every thread finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from discord_voice._shell.gateway_reader import run_gateway_reader
from discord_voice._shell.threads import ServiceThread, join_all
from discord_voice._shell.websocket import WebSocketChannel, timed_out
from discord_voice.clock import Signal
from discord_voice.errors import ConnectionClosed, GatewayTimeout, VoiceError

__all__ = [
    "CLOSE_HANDSHAKE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "GatewayConnection",
    "open_gateway_channel",
]

#: Bounds every socket send; the reader also wakes at this period to check for shutdown.
_IO_TIMEOUT: Final = 5.0
#: How long a close waits for the server to answer (or echo) the close frame.
CLOSE_HANDSHAKE_TIMEOUT: Final = 1.0
#: Enough for the reader to notice a stop, finish the close handshake and exit.
SHUTDOWN_TIMEOUT: Final = _IO_TIMEOUT + CLOSE_HANDSHAKE_TIMEOUT
#: Larger messages are a protocol violation; far above any real (uncompressed) dispatch.
_MAX_MESSAGE_BYTES: Final = 64 << 20


def open_gateway_channel(
    url: str, timeout: float, redact: Callable[[str], str]
) -> WebSocketChannel:
    """Open the main gateway websocket within `timeout` seconds; `redact` cleans error text.

    Raises `GatewayTimeout` (stage: the websocket handshake) or `ConnectionClosed`, with the
    underlying exception as ``__cause__``.
    """
    try:
        return WebSocketChannel.connect(
            url, timeout=timeout, io_timeout=_IO_TIMEOUT, what="main gateway websocket",
            max_message_size=_MAX_MESSAGE_BYTES,
        )
    except ConnectionClosed as exc:
        if timed_out(exc.__cause__):
            raise GatewayTimeout("main gateway websocket handshake", timeout) from exc.__cause__
        raise ConnectionClosed(redact(str(exc))) from exc.__cause__


class GatewayConnection:
    """An open websocket (`channel`) with its reader, heartbeat and (on a reconnect) watchdog.

    A failure of either thread goes to `fail` (a non-`VoiceError` one, a bug, wrapped in
    `ConnectionClosed`). `stop` is the owner's signal that the connection should end.

    Thread safety: every method from any thread; `start_heartbeat` from the reader only.
    """

    def __init__(
        self, channel: WebSocketChannel, *, stop: Signal, fail: Callable[[VoiceError], None]
    ) -> None:
        self.channel = channel
        self.stop = stop  #: set to end this connection (not necessarily its owner)
        self._stop = stop
        #: Set once READY/RESUMED arrived on this connection, and whenever `stop` is set.
        self.settled = Signal()
        if not stop.add_listener(self.settled.set):
            self.settled.set()
        #: The first failure that ended this connection (set by the owner).
        self.failure: BaseException | None = None
        self._fail = fail
        self._released = threading.Event()  # the reader has released the socket
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
        """Start the reader (`run_gateway_reader`), which passes every message to `handle`.

        `redact` cleans the server's close reason, `close_code()` picks the code of the
        reader's own close frame, and `on_exit` runs once the socket is released and both
        threads are done.
        """

        def read() -> None:
            try:
                run_gateway_reader(
                    self.channel, stop=self._stop, handle=handle, fail=self._fail,
                    redact=redact, close_code=close_code,
                    handshake_timeout=CLOSE_HANDSHAKE_TIMEOUT,
                )
            finally:
                self._released.set()
                for helper in (self._heartbeat, self._watchdog):
                    if helper is not None:
                        helper.join(SHUTDOWN_TIMEOUT)
                on_exit()

        self._reader = self._thread("dv-gateway-reader", read)
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
        """Give the reader `timeout` seconds to finish the close handshake, then cut the socket.

        The reader releases the socket itself once the server answers our close frame; cutting
        it earlier could reset the connection before the server has read that frame. A no-op
        on the reader thread, which releases the socket on its way out.
        """
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            self._released.wait(timeout)
            self.channel.abort()  # a blocked recv in the reader returns at once

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
        def report(exc: BaseException) -> None:
            if isinstance(exc, VoiceError):
                self._fail(exc)
            else:  # a bug in the thread: stored and re-raised by the owner, never lost
                error = ConnectionClosed(f"main gateway thread {name} failed unexpectedly")
                error.__cause__ = exc
                self._fail(error)

        return ServiceThread(name, body, report)

"""WebSocketSession: one websocket and its reader thread, the part both gateways share.

The main gateway (``Gateway``, through `..gateway_connection`) and every voice websocket
(`..voice_session`) hold one session per websocket and give it their protocol as a few
callables; neither inherits anything. The session opens the socket within a timeout, runs the
one reader thread (named by its owner: ``dv-gateway-reader``, ``dv-voice-reader:<guild>``),
sends, closes with a code, aborts and releases.

The reader, in order:

1. hands every complete message (`Text` or `Binary`) to ``on_message``, on the reader thread,
   in arrival order, until the session is stopped or the connection ends; after our own
   `close`, until the peer answers it (what the peer sent before its answer is still handled:
   a heartbeat ACK already on the wire is matched);
2. reports how the connection ended, as a value, to ``on_end``: the `Close` (the peer's close
   frame with its code, a dropped TCP connection, a broken frame), or the exception that
   ``on_message`` raised (which ends the connection: it is the protocol's verdict). Nothing is
   reported when the reader left because the session was stopped before anything ended;
3. stops the session, sends our close frame with ``exit_code()`` (once: not after an echo of
   the peer's close or an earlier `close`), waits (bounded, real time: a shutdown bound, see
   `discord_voice.clock`) for the peer's answer unless the connection is already over, and
   closes the socket;
4. runs ``on_exit`` last (the main gateway joins its other threads and recovers there).

An exception from ``on_end`` or ``on_exit`` goes to ``on_failure``, like any `ServiceThread`'s.

Stopping: `stopped` is set by `stop`, by `close` and by the reader's own end; a heartbeat
attached with `attach_heartbeat` is cancelled the moment it is set, whoever sets it. The main
gateway's heartbeat thread waits on `stopped` itself; a voice websocket's heartbeat lives in
its `Voice`'s shared ``HeartbeatLoop`` and is attached.

Sends take no lock of ours: websocket-client's own send lock (``enable_multithread``) keeps
frames whole, and every socket operation is bounded by the io timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from discord_voice._shell.threads import ServiceThread
from discord_voice._shell.websocket import Binary, Close, Text, Timeout, WebSocketChannel
from discord_voice.clock import Signal
from discord_voice.core.opcodes import ClientCloseCode
from discord_voice.trace import trace_enabled, trace_message

__all__ = ["CLOSE_HANDSHAKE_TIMEOUT", "IO_TIMEOUT", "Message", "WebSocketSession"]

#: Bounds every socket send; a reader also wakes at this period to check for a stop.
IO_TIMEOUT: Final = 5.0
#: How long a closing reader waits for the peer to answer (or echo) our close frame.
CLOSE_HANDSHAKE_TIMEOUT: Final = 1.0

Message = Text | Binary


class WebSocketSession:
    """One open websocket (see the module docstring).

    Thread safety: `send_*`, `stop`, `close`, `abort`, `attach_heartbeat` and `release` from
    any thread; `make_reader` once, from the owner.
    """

    def __init__(
        self, channel: WebSocketChannel, *, handshake_timeout: float = CLOSE_HANDSHAKE_TIMEOUT
    ) -> None:
        self._channel = channel
        self._handshake_timeout = handshake_timeout
        #: Set when the session stops: by `stop`/`close` or when the reader ends.
        self.stopped = Signal()
        self._released = threading.Event()  # the reader has closed the socket
        self._reader: ServiceThread | None = None  # written once, by make_reader
        self._closing = False  # `close` sent our close frame: read on until the peer answers

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        timeout: float,
        what: str,
        io_timeout: float = IO_TIMEOUT,
        max_message_size: int = 1 << 20,
        handshake_timeout: float = CLOSE_HANDSHAKE_TIMEOUT,
    ) -> WebSocketSession:
        """Open `url` within `timeout` seconds (no reader yet: see `make_reader`).

        Raises:
            ConnectionClosed: the connection or the handshake failed (cause attached;
                `..websocket.timed_out` tells a timeout).
        """
        channel = WebSocketChannel.connect(
            url,
            timeout=timeout,
            io_timeout=io_timeout,
            what=what,
            max_message_size=max_message_size,
        )
        return cls(channel, handshake_timeout=handshake_timeout)

    # -- the reader -------------------------------------------------------------------------

    def make_reader(
        self,
        name: str,
        *,
        on_message: Callable[[Message], None],
        on_end: Callable[[Close | Exception], None],
        on_failure: Callable[[BaseException], None],
        exit_code: Callable[[], int] = lambda: ClientCloseCode.RECOVERING,
        on_exit: Callable[[], None] = lambda: None,
    ) -> ServiceThread:
        """The reader thread, named `name`, not yet started (the owner registers it for its
        joins, then starts it). The callables are described in the module docstring."""
        if self._reader is not None:
            raise RuntimeError("a websocket session has one reader")

        def read() -> None:
            try:
                self._read(on_message, on_end, exit_code)
            finally:
                on_exit()

        self._reader = ServiceThread(name, read, on_failure)
        return self._reader

    def _read(
        self,
        on_message: Callable[[Message], None],
        on_end: Callable[[Close | Exception], None],
        exit_code: Callable[[], int],
    ) -> None:
        channel = self._channel
        over = False  # the connection is gone: no close handshake to wait for
        try:
            end: Close | Exception | None = None
            try:
                while True:
                    if self.stopped.is_set() and not self._closing:
                        break  # stopped without a close frame: the owner cuts the socket
                    frame = channel.recv()
                    if isinstance(frame, Timeout):
                        if self._closing:
                            break  # no answer to our close yet: the drain below waits, bounded
                        continue
                    if isinstance(frame, Close):
                        over = not frame.violation
                        if not self._closing:  # the peer's answer to our close is no news
                            end = frame
                        break
                    if trace_enabled():
                        trace_message(channel.what, "received", frame.data)
                    on_message(frame)
            except Exception as exc:  # noqa: BLE001 - the protocol's verdict: reported as the end
                end = exc
            if end is not None:
                on_end(end)
        finally:
            self.stopped.set()
            channel.close(exit_code())
            if not over:
                channel.drain_until_close(self._handshake_timeout)
            channel.release()
            self._released.set()

    # -- sending (any thread) ---------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send one text message. Raises `ConnectionClosed` if it cannot be sent."""
        if trace_enabled():
            trace_message(self._channel.what, "sent", text)
        self._channel.send_text(text)

    def send_binary(self, data: bytes) -> None:
        """Send one binary message. Raises `ConnectionClosed` if it cannot be sent."""
        if trace_enabled():
            trace_message(self._channel.what, "sent", data)
        self._channel.send_binary(data)

    # -- heartbeat hook ---------------------------------------------------------------------

    def attach_heartbeat(self, cancel: Callable[[], None]) -> None:
        """Run `cancel` (which must not block) when the session stops, at once if it has:
        a heartbeat kept elsewhere never beats a socket that is going away."""
        if not self.stopped.add_listener(cancel):
            cancel()

    # -- ending (any thread) ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading (the reader notices within the io timeout) and cancel the heartbeat."""
        self.stopped.set()

    def close(self, code: int) -> None:
        """`stop`, and send a close frame with `code` once (best effort; on failure the socket
        is aborted). The reader waits for the peer's answer, then closes the socket."""
        self._closing = True
        self.stop()
        self._channel.close(code)

    def abort(self) -> None:
        """Shut the TCP connection down so a blocked receive returns at once (the reader then
        reports a dropped connection, unless the session was stopped)."""
        self._channel.abort()

    def release(self, timeout: float = CLOSE_HANDSHAKE_TIMEOUT) -> None:
        """Give the reader `timeout` real seconds to finish the close handshake, then cut the
        socket; close it at once if no reader ever ran. A no-op on the reader thread, which
        closes the socket on its way out.

        Cutting earlier could reset the connection before the peer has read our close frame.
        """
        reader = self._reader
        if reader is threading.current_thread():
            return
        if reader is None or reader.ident is None:
            self._channel.release()
            return
        self._released.wait(timeout)
        self._channel.abort()  # a blocked receive in the reader returns at once

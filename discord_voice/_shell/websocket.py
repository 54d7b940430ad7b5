"""A websocket-client connection with typed errors, thread-safe sends and a prompt abort.

The frame layer under `..ws_session.WebSocketSession`, which both gateways hold: only one
thread (that session's reader) may call `recv`; any thread may send. Socket operations
carry a timeout (`io_timeout`), so a send to a dead peer fails instead of hanging; the reader
treats a receive timeout as "nothing yet" (websocket-client resumes a half-read frame).
websocket-client's own exceptions never leave this module: they become `ConnectionClosed` or a
`Close` frame that says what happened.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field

import websocket

from discord_voice.clock import SystemClock
from discord_voice.errors import ConnectionClosed

__all__ = ["Binary", "Close", "Text", "Timeout", "WebSocketChannel", "timed_out"]

_DATA_OPCODES = (
    websocket.ABNF.OPCODE_TEXT,
    websocket.ABNF.OPCODE_BINARY,
    websocket.ABNF.OPCODE_CONT,
)


@dataclass(frozen=True)
class Text:
    data: str


@dataclass(frozen=True)
class Binary:
    data: bytes


@dataclass(frozen=True)
class Close:
    """The connection ended: the peer's close frame (with its `code` and `reason`), or not.

    `code` is None when no close frame carried one; then `error` is the exception that ended
    the connection (a dropped TCP connection, for example), if there was one.
    """

    code: int | None
    reason: str
    #: True when the peer broke the websocket protocol (a malformed frame, text that is not
    #: UTF-8, a message over the size limit) rather than closing or dropping the connection.
    violation: bool = False
    error: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Timeout:
    """No complete frame arrived within the socket timeout."""


Frame = Text | Binary | Close | Timeout


class WebSocketChannel:
    """Owns one websocket-client `WebSocket`.

    Thread safety: `send_*`, `close` and `abort` from any thread; `recv` from one thread only.
    """

    def __init__(self, ws: websocket.WebSocket, what: str) -> None:
        self._ws = ws
        self._what = what
        self._close_lock = threading.Lock()
        self._close_sent = False

    @property
    def what(self) -> str:
        """What this websocket is, for messages ("voice websocket", ...)."""
        return self._what

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        timeout: float,
        io_timeout: float = 5.0,
        what: str = "websocket",
        max_message_size: int = 1 << 20,
    ) -> WebSocketChannel:
        """Open `url` within `timeout` seconds.

        Raises:
            ConnectionClosed: the connection or the handshake failed (cause attached).
        """
        try:
            ws = websocket.create_connection(
                url,
                timeout=max(timeout, 0.001),
                enable_multithread=True,
                skip_utf8_validation=False,
            )
        except (websocket.WebSocketException, OSError, ssl.SSLError, ValueError) as exc:
            detail = f"{exc.__class__.__name__}: {exc}"
            raise ConnectionClosed(f"could not open the {what}: {detail}") from exc
        ws.settimeout(io_timeout)
        channel = cls(ws, what)
        channel._max_message_size = max_message_size
        return channel

    _max_message_size = 1 << 20

    def send_text(self, text: str) -> None:
        self._send(text, websocket.ABNF.OPCODE_TEXT)

    def send_binary(self, data: bytes) -> None:
        self._send(data, websocket.ABNF.OPCODE_BINARY)

    def _send(self, data: str | bytes, opcode: int) -> None:
        try:
            self._ws.send(data, opcode)
        except (websocket.WebSocketException, OSError, AttributeError) as exc:
            # AttributeError: websocket-client dereferences a socket another thread just closed.
            message = f"could not send on the {self._what}: {exc.__class__.__name__}"
            raise ConnectionClosed(message) from exc

    def recv(self) -> Frame:
        """Block for the next complete message (bounded by the socket timeout).

        Frames are read one by one rather than through websocket-client's ``recv_data`` so that
        a server close frame is reported with its code even when our echo of it fails (the
        server may already have dropped TCP), and the echo carries the server's own code.
        """
        ws = self._ws
        while True:
            try:
                frame = ws.recv_frame()  # type: ignore[no-untyped-call]
            except websocket.WebSocketTimeoutException:
                return Timeout()
            except (websocket.WebSocketConnectionClosedException, OSError, AttributeError) as exc:
                return Close(None, "connection dropped", error=exc)
            except websocket.WebSocketException as exc:
                return _violation(exc)
            opcode = frame.opcode
            if opcode in _DATA_OPCODES:
                try:
                    ws.cont_frame.validate(frame)
                    ws.cont_frame.add(frame)
                    if not ws.cont_frame.is_fire(frame):
                        continue
                    opcode, whole = ws.cont_frame.extract(frame)  # checks text is UTF-8
                except websocket.WebSocketException as exc:
                    return _violation(exc)
                data = whole.data
                if len(data) > self._max_message_size:
                    size = f"message of {len(data)} bytes exceeds the size limit"
                    return Close(None, size, violation=True)
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    return Binary(bytes(data))
                if isinstance(data, bytes):
                    return Text(data.decode("utf-8", "replace"))
                return Text(data)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = bytes(frame.data)
                self._echo_close(data[:2])
                if len(data) >= 2:
                    return Close(
                        int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace")
                    )
                return Close(None, "close frame without a code")
            if opcode == websocket.ABNF.OPCODE_PING:
                try:
                    ws.pong(frame.data)
                except (websocket.WebSocketException, OSError, AttributeError) as exc:
                    return Close(None, "connection dropped", error=exc)

    def drain_until_close(self, timeout: float) -> Close | None:
        """After our close frame: drop messages until the peer's `Close`, at most `timeout` s.

        Returns that `Close` (also when the connection simply ended), or None if time ran out.
        Call it from the reader thread only, once it has stopped reading for itself. The bound
        is real time (a shutdown bound, see `discord_voice.clock`): no fake clock stalls a close.
        """
        real = SystemClock()
        deadline = real.monotonic() + timeout
        while (remaining := deadline - real.monotonic()) > 0:
            try:
                self._ws.settimeout(remaining)
            except (OSError, AttributeError) as exc:
                return Close(None, "connection dropped", error=exc)
            frame = self.recv()
            if isinstance(frame, Close):
                return frame
        return None

    def _echo_close(self, code: bytes) -> None:
        with self._close_lock:
            if self._close_sent:
                return
            self._close_sent = True
        try:
            self._ws.send(code, websocket.ABNF.OPCODE_CLOSE)
        except (websocket.WebSocketException, OSError, AttributeError):
            pass

    def close(self, code: int) -> None:
        """Send a close frame with `code` once (best effort; the reader sees the peer's answer).

        The codes we send are `discord_voice.core.opcodes.ClientCloseCode`."""
        with self._close_lock:
            if self._close_sent:
                return
            self._close_sent = True
        try:
            self._ws.send(code.to_bytes(2, "big"), websocket.ABNF.OPCODE_CLOSE)
        except (websocket.WebSocketException, OSError, AttributeError):
            self.abort()

    def abort(self) -> None:
        """Shut the TCP connection down so a blocked `recv` returns at once."""
        sock = self._ws.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self) -> None:
        """Close the socket file descriptor (after the reader has exited)."""
        try:
            self._ws.shutdown()  # type: ignore[no-untyped-call]
        except (OSError, AttributeError):
            pass


def timed_out(error: BaseException | None) -> bool:
    """True if `error` is a socket or websocket timeout (say, the ``__cause__`` of a failed
    `WebSocketChannel.connect`), so an owner can raise its own timeout error instead."""
    return isinstance(error, TimeoutError | websocket.WebSocketTimeoutException)


def _violation(exc: websocket.WebSocketException) -> Close:
    return Close(None, f"{exc.__class__.__name__}: {exc}", violation=True, error=exc)

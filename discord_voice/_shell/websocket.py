"""A websocket-client connection with typed errors, thread-safe sends and a prompt abort.

Only one thread (the owner's reader) may call `recv`; any thread may send. Socket operations
carry a timeout (`io_timeout`), so a send to a dead peer fails instead of hanging; the reader
treats a receive timeout as "nothing yet" (websocket-client resumes a half-read frame).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import websocket

from discord_voice.errors import ConnectionClosed

__all__ = ["Binary", "Close", "Text", "WebSocketChannel", "Timeout"]


@dataclass(frozen=True)
class Text:
    data: str


@dataclass(frozen=True)
class Binary:
    data: bytes


@dataclass(frozen=True)
class Close:
    """The peer closed (code None: no close frame, e.g. a dropped TCP connection)."""

    code: int | None
    reason: str


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

    @classmethod
    def connect(
        cls, url: str, *, timeout: float, io_timeout: float = 5.0, what: str = "websocket",
        max_message_size: int = 1 << 20,
    ) -> WebSocketChannel:
        """Open `url` within `timeout` seconds.

        Raises:
            ConnectionClosed: the connection or the handshake failed (cause attached).
        """
        try:
            ws = websocket.create_connection(
                url, timeout=max(timeout, 0.001), enable_multithread=True,
                skip_utf8_validation=False,
            )
        except (websocket.WebSocketException, OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectionClosed(f"could not open the {what}: {exc.__class__.__name__}: {exc}") from exc
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
            raise ConnectionClosed(f"could not send on the {self._what}: {exc.__class__.__name__}") from exc

    def recv(self) -> Frame:
        """Block for the next frame (bounded by the socket timeout)."""
        try:
            opcode, frame = self._ws.recv_data_frame(control_frame=False)
        except websocket.WebSocketTimeoutException:
            return Timeout()
        except (websocket.WebSocketConnectionClosedException, OSError, AttributeError):
            return Close(None, "connection dropped")
        except websocket.WebSocketException as exc:
            return Close(None, f"{exc.__class__.__name__}: {exc}")
        data = frame.data
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            if len(data) >= 2:
                code = int.from_bytes(data[:2], "big")
                return Close(code, data[2:].decode("utf-8", "replace"))
            return Close(None, "close frame without a code")
        if len(data) > self._max_message_size:
            return Close(None, f"message of {len(data)} bytes exceeds the size limit")
        if opcode == websocket.ABNF.OPCODE_BINARY:
            return Binary(bytes(data))
        if isinstance(data, bytes):
            return Text(data.decode("utf-8", "replace"))
        return Text(data)

    def close(self, code: int = 1000) -> None:
        """Send a close frame (best effort; the reader sees the peer's answer)."""
        try:
            self._ws.send_close(code)
        except (websocket.WebSocketException, OSError, AttributeError, ValueError):
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

"""The main gateway's reader thread body: the only caller of the websocket's `recv`."""

from __future__ import annotations

from collections.abc import Callable

from discord_voice._shell.websocket import Binary, Close, Text, WebSocketChannel
from discord_voice.clock import Signal
from discord_voice.core.main_gateway import describe_gateway_close
from discord_voice.errors import (
    ConnectionClosed,
    MainGatewayClosed,
    RemoteProtocolError,
    VoiceError,
)

__all__ = ["run_gateway_reader", "close_error"]


def run_gateway_reader(
    channel: WebSocketChannel,
    *,
    stop: Signal,
    handle: Callable[[str | bytes], None],
    fail: Callable[[VoiceError], None],
    redact: Callable[[str], str],
    close_code: Callable[[], int],
    handshake_timeout: float,
) -> None:
    """Pass every message to `handle` until `stop` is set or the connection ends.

    How it ended goes to `fail`: the server's close or a dropped connection (`close_error`),
    or an error raised by `handle` (anything but a `VoiceError` is wrapped in
    `ConnectionClosed`). Then sends our close frame with code ``close_code()`` (once: not if
    the close was echoed already), waits up to `handshake_timeout` seconds for the server's
    answer unless the connection is over, and releases the socket.
    """
    over = False
    try:
        while not stop.is_set():
            frame = channel.recv()
            if isinstance(frame, Close):
                over = not frame.violation  # closed or dropped: nothing more will come
                fail(close_error(frame, redact))
                return
            if isinstance(frame, Text | Binary):
                handle(frame.data)
    except VoiceError as exc:
        fail(exc)
    except Exception as exc:  # noqa: BLE001 - a bug here: stored and re-raised, never lost
        error = ConnectionClosed("main gateway reader failed unexpectedly")
        error.__cause__ = exc
        fail(error)
    finally:
        stop.set()
        channel.close(close_code())
        if not over:
            channel.drain_until_close(handshake_timeout)
        channel.release()


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

"""A redacted protocol trace, for bug reports: every gateway message both ways, and the RTP
headers of the first packets of each voice session.

The library reports them to the ``discord_voice.trace`` logger at DEBUG level, *already
redacted*: the bot token, voice tokens, session ids, the transport secret key and our external
address are replaced by ``"<redacted>"``, and binary (DAVE/MLS) messages are reduced to their
opcode and length. Nothing is traced unless that logger is enabled for DEBUG, so the cost is
one check per message when tracing is off. `JsonLinesTrace` writes the records to a file::

    with JsonLinesTrace("trace.jsonl"):
        ...  # connect, join, play: every message goes to trace.jsonl, one JSON object a line

``python -m discord_voice probe --trace FILE`` does this for you.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from types import TracebackType
from typing import IO, Any, Final

__all__ = [
    "REDACTED",
    "RTP_PACKETS_TRACED",
    "SECRET_KEYS",
    "TRACE_LOGGER",
    "JsonLinesTrace",
    "redact",
    "trace_enabled",
    "trace_message",
    "trace_rtp",
]

TRACE_LOGGER: Final = "discord_voice.trace"
REDACTED: Final = "<redacted>"
#: JSON keys whose values never leave the process in a trace (wherever they are nested).
SECRET_KEYS: Final = frozenset({"token", "session_id", "secret_key", "address", "ip_address"})
#: How many packets of each voice session have their RTP header traced.
RTP_PACKETS_TRACED: Final = 5

_log = logging.getLogger(TRACE_LOGGER)


def trace_enabled() -> bool:
    return _log.isEnabledFor(logging.DEBUG)


def redact(value: Any) -> Any:
    """A copy of a decoded JSON value with every `SECRET_KEYS` value replaced."""
    if isinstance(value, dict):
        return {
            key: REDACTED if key in SECRET_KEYS and item is not None else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def _describe(message: str | bytes) -> dict[str, Any]:
    if isinstance(message, bytes):  # DAVE binary opcodes: MLS material, never written out
        return {"binary": True, "bytes": len(message)}
    try:
        return {"json": redact(json.loads(message))}
    except ValueError:
        return {"text_bytes": len(message)}  # not JSON: its length only (it may hold anything)


def trace_message(channel: str, direction: str, message: str | bytes) -> None:
    """Trace one websocket message of `channel` ("main gateway websocket", "voice
    websocket"); `direction` is "sent" or "received". Call only when `trace_enabled()`."""
    record = {"channel": channel, "direction": direction, **_describe(message)}
    _log.debug("%s %s", channel, direction, extra={"dv_trace": record})


def trace_rtp(guild_id: str, index: int, packet: bytes) -> None:
    """Trace the RTP header (12 bytes: not secret) and size of a packet we sent."""
    header = packet[:12]
    record = {
        "channel": "voice udp",
        "direction": "sent",
        "guild_id": guild_id,
        "packet": index,
        "rtp_header": header.hex(),
        "version": header[0] >> 6 if header else None,
        "payload_type": header[1] & 0x7F if len(header) > 1 else None,
        "sequence": int.from_bytes(header[2:4], "big") if len(header) >= 4 else None,
        "timestamp": int.from_bytes(header[4:8], "big") if len(header) >= 8 else None,
        "ssrc": int.from_bytes(header[8:12], "big") if len(header) >= 12 else None,
        "bytes": len(packet),
    }
    _log.debug("rtp %s", index, extra={"dv_trace": record})


class JsonLinesTrace(logging.Handler):
    """Writes every trace record as one JSON line to `path` (or an open text file) while
    installed: as a context manager, or `install` / `close`."""

    def __init__(self, target: str | os.PathLike[str] | IO[str]) -> None:
        super().__init__(logging.DEBUG)
        if isinstance(target, str | os.PathLike):
            self._file: IO[str] = open(target, "w", encoding="utf-8")  # noqa: SIM115 - closed in close
            self._owned = True
        else:
            self._file, self._owned = target, False
        self._write_lock = threading.Lock()
        self._level: int | None = None
        self.records = 0

    def install(self) -> JsonLinesTrace:
        self._level = _log.level
        _log.setLevel(logging.DEBUG)
        _log.addHandler(self)
        return self

    def emit(self, record: logging.LogRecord) -> None:
        data = getattr(record, "dv_trace", None)
        if data is None:
            return
        line = json.dumps({"time": round(record.created, 6), **data}, sort_keys=True)
        with self._write_lock:
            self._file.write(line + "\n")
            self.records += 1

    def close(self) -> None:
        _log.removeHandler(self)
        if self._level is not None:
            _log.setLevel(self._level)
            self._level = None
        with self._write_lock:
            if self._owned and not self._file.closed:
                self._file.close()
            elif not self._file.closed:
                self._file.flush()
        super().close()

    def __enter__(self) -> JsonLinesTrace:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

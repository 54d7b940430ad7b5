"""Ogg Opus passthrough: the file's packets go to ``opus_send`` as they are (no libopus)."""

from __future__ import annotations

import os
from typing import IO

from discord_voice.audio.source import BinaryInput, OpusSource
from discord_voice.ogg import iter_opus_packets, stream_duration

__all__ = ["OggOpusSource"]


class OggOpusSource(OpusSource):
    """The Opus packets of an Ogg Opus file (``.opus``), or of a binary stream of one (a pipe).

    Malformed data raises `InvalidPacket` (with the offset) from `read`: the player ends with
    it. `duration` comes from the file's last page (a stream has none).
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryInput | IO[bytes]) -> None:
        self._name = os.fspath(source) if isinstance(source, str | os.PathLike) else None
        self._duration = stream_duration(source) if isinstance(source, str | os.PathLike) else None
        self._packets = iter_opus_packets(source)

    @property
    def duration(self) -> float | None:
        return self._duration

    def read(self) -> bytes | None:
        return next(self._packets, None)

    def close(self) -> None:
        self._packets.close()  # closes the file it opened

    def __repr__(self) -> str:
        return f"<OggOpusSource {self._name or 'stream'}>"

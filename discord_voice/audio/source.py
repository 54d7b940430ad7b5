"""What a `Player` plays: a source of Opus packets, or of raw PCM that the player encodes.

Two kinds, because the cheapest path differs: an `OpusSource` hands over packets ready for
``opus_send`` (an Ogg Opus file, FFmpeg remuxing Opus without decoding it), a `PCMSource`
hands over 48 kHz stereo s16le PCM that the player scales (``player.volume``) and encodes
with `opus.Encoder`. Both are read by one thread (the player's), except `interrupt`, which
`Player.stop` may call from any thread to unblock a read that waits for a slow producer.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from types import TracebackType
from typing import IO, ClassVar, Protocol, Self

from discord_voice.opus import Encoder

__all__ = [
    "PCM_BYTES_PER_SECOND",
    "PCM_CHANNELS",
    "PCM_SAMPLE_RATE",
    "BinaryInput",
    "OpusPacketSource",
    "OpusSource",
    "PCMSource",
    "Source",
]

#: The PCM every `PCMSource` yields: Discord's rate and channels, 16-bit little-endian.
PCM_SAMPLE_RATE = 48000
PCM_CHANNELS = 2
PCM_BYTES_PER_SECOND = PCM_SAMPLE_RATE * PCM_CHANNELS * 2


class BinaryInput(Protocol):
    """A binary file object to read from (``open(path, "rb")``, a pipe, ``io.BytesIO``)."""

    def read(self, size: int, /) -> bytes: ...


class Source(abc.ABC):
    """Audio for `Connection.play`. Use it once; `close` it (the player does) when done."""

    #: True for sources of Opus packets (`OpusSource`), False for PCM (`PCMSource`).
    is_opus: ClassVar[bool]

    @property
    def duration(self) -> float | None:
        """Seconds of audio in the source when known (a file's header, FFmpeg's report)."""
        return None

    def interrupt(self) -> None:
        """Make a read blocked on a slow producer return soon (any thread). The default does
        nothing: reading a file never blocks for long."""
        return None

    def close(self) -> None:
        """Release what the source holds (files, subprocesses); idempotent."""
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class OpusSource(Source):
    """A source of Opus packets (10-60 ms each), sent as they are: no libopus needed."""

    is_opus = True

    @abc.abstractmethod
    def read(self) -> bytes | None:
        """The next Opus packet, or None at the end."""


class OpusPacketSource(OpusSource):
    """Opus packets from any iterable (a list, a generator of your own encoder's output).

    `duration` is given by the caller when known. Closing the source closes a generator.
    """

    def __init__(self, packets: Iterable[bytes], *, duration: float | None = None) -> None:
        self._packets = iter(packets)
        self._iterable = packets
        self._duration = duration

    @property
    def duration(self) -> float | None:
        return self._duration

    def read(self) -> bytes | None:
        return next(self._packets, None)

    def close(self) -> None:
        close = getattr(self._iterable, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return "<OpusPacketSource>"


class PCMSource(Source):
    """Raw 48 kHz stereo s16le PCM from a binary file object (a TTS engine's output, a pipe).

    The player encodes it with `encoder` (a default `opus.Encoder`, 20 ms frames at 64 kbit/s,
    when None). The last, partial frame is padded with silence. `duration` is given by the
    caller when known (a pipe has no length). The file object is closed with the source when
    `close_input` is true.
    """

    is_opus = False

    def __init__(
        self,
        fileobj: BinaryInput | IO[bytes],
        *,
        encoder: Encoder | None = None,
        duration: float | None = None,
        close_input: bool = False,
    ) -> None:
        self._input = fileobj
        self.encoder = encoder
        self._duration = duration
        self._close_input = close_input
        self._closed = False

    @property
    def duration(self) -> float | None:
        return self._duration

    def read(self, size: int) -> bytes:
        """Up to `size` bytes of PCM (exactly `size` until the end); b"" at the end. `size`
        is a whole number of stereo samples (a multiple of 4)."""
        if size <= 0 or size % 4:
            raise ValueError(f"read size must be a positive multiple of 4 bytes, got {size}")
        chunks: list[bytes] = []
        wanted = size
        while wanted > 0:
            chunk = self._input.read(wanted)
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
        data = b"".join(chunks)
        if wanted > 0 and len(data) % 4:  # the end tears a sample: never half a stereo sample
            data = data[: len(data) - len(data) % 4]
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._close_input:
            close = getattr(self._input, "close", None)
            if close is not None:
                close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

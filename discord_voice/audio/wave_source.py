"""WAV files: read with the standard library when they hold Discord's format, else via FFmpeg."""

from __future__ import annotations

import os
import wave

from discord_voice.audio.ffmpeg import FFmpegSource
from discord_voice.audio.source import PCM_CHANNELS, PCM_SAMPLE_RATE, PCMSource
from discord_voice.opus import Encoder

__all__ = ["WaveSource"]


class _Frames:
    """A `wave` reader seen as a binary file of its PCM bytes."""

    def __init__(self, reader: wave.Wave_read) -> None:
        self._reader = reader

    def read(self, size: int = -1, /) -> bytes:
        count = self._reader.getnframes() if size < 0 else size // 4  # PCMSource: size % 4 == 0
        return self._reader.readframes(count)

    def close(self) -> None:
        self._reader.close()


class WaveSource(PCMSource):
    """A ``.wav`` file. 48 kHz stereo 16-bit PCM is read directly (no subprocess); any other
    rate, channel count, sample width or encoding (float, WAVE_FORMAT_EXTENSIBLE on Python
    3.11) is converted by FFmpeg (`FFmpegSource`, so FFmpeg is needed then)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        executable: str | None = None,
    ) -> None:
        self._path = os.fspath(path)
        self._ffmpeg: FFmpegSource | None = None
        reader: wave.Wave_read | None = None
        try:
            reader = wave.open(self._path, "rb")  # noqa: SIM115 - closed with the source
            rate, channels, width = (
                reader.getframerate(),
                reader.getnchannels(),
                reader.getsampwidth(),
            )
            duration = reader.getnframes() / rate if rate else None
        except (wave.Error, EOFError):  # a format the stdlib cannot read: FFmpeg can
            if reader is not None:
                reader.close()
            reader, duration = None, None
        if reader is not None and (rate, channels, width) != (PCM_SAMPLE_RATE, PCM_CHANNELS, 2):
            reader.close()
            reader = None
        if reader is None:
            self._ffmpeg = FFmpegSource(self._path, encoder=encoder, executable=executable)
            pcm: FFmpegSource | _Frames = self._ffmpeg
        else:
            pcm = _Frames(reader)
        super().__init__(pcm, encoder=encoder, duration=duration, close_input=True)

    @property
    def duration(self) -> float | None:
        if self._ffmpeg is not None and super().duration is None:
            return self._ffmpeg.duration
        return super().duration

    @property
    def converted(self) -> bool:
        """Whether FFmpeg converts the file (it is not 48 kHz stereo 16-bit PCM)."""
        return self._ffmpeg is not None

    def interrupt(self) -> None:
        if self._ffmpeg is not None:
            self._ffmpeg.interrupt()

    def __repr__(self) -> str:
        via = " via ffmpeg" if self._ffmpeg is not None else ""
        return f"<WaveSource {self._path!r}{via}>"

"""Sinks for `Connection.listen`: where each member's decoded audio goes."""

from __future__ import annotations

import os
import threading
import wave
from collections.abc import Callable
from pathlib import Path

from discord_voice.audio.listen import Sink
from discord_voice.audio.mixer import Mixer, MixerStats
from discord_voice.clock import Clock, SystemClock

__all__ = ["MixSink", "MultiSink", "WaveSink"]


def _open_wave(path: Path) -> wave.Wave_write:
    out = wave.open(str(path), "wb")  # noqa: SIM115 - closed by the sink's close()
    out.setnchannels(2)
    out.setsampwidth(2)
    out.setframerate(48000)
    return out


class WaveSink:
    """``<directory>/<user_id>.wav`` per member (48 kHz, 2 channels, 16-bit), from that member's
    first packet on; pauses are in the files as silence, so each file keeps its member's
    timeline. The directory is created if needed; files are finished at `close`.

    Thread safety: `write` from the listener thread; `close` once; `paths` from any thread.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[int, wave.Wave_write] = {}
        self._users: list[int] = []  # every member written, in order (kept after close)
        self._lock = threading.Lock()
        self._closed = False

    def write(self, user_id: int, pcm: bytes) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("the WaveSink is closed")
            out = self._files.get(user_id)
            if out is None:
                out = self._files[user_id] = _open_wave(self.directory / f"{user_id}.wav")
                self._users.append(user_id)
            out.writeframes(pcm)

    def paths(self) -> dict[int, Path]:
        """The file of each member written so far (also after `close`)."""
        with self._lock:
            return {user: self.directory / f"{user}.wav" for user in self._users}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            files, self._files = list(self._files.values()), {}
        for out in files:
            out.close()

    def __repr__(self) -> str:
        return f"<WaveSink {str(self.directory)!r}>"


class MixSink:
    """One stream of every member's audio mixed together: a WAV file (48 kHz, 2 channels,
    16-bit) when `target` is a path, else ``target(pcm)`` is called with each mixed 20 ms block.

    The mix runs on the wall clock from the first block heard: members are placed where they
    were heard, pauses of the whole channel are in it, samples are summed and clipped (the rules
    are in ``audio/mixer.py``). A block is mixed `latency` seconds after its time, so that the
    listener's late writes (its jitter buffer, the end of a talk spurt) still make it; `close`
    mixes what is left.

    Thread safety: `write` from the listener thread; `close` once; `stats` from any thread.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Callable[[bytes], object],
        *,
        latency: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        self._mixer = Mixer(latency=latency)
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._closed = False
        self._file: wave.Wave_write | None = None
        self._on_block: Callable[[bytes], object] | None = None
        self.path: Path | None = None  # the WAV file, if the target is one
        if callable(target):
            self._on_block = target
        else:
            self.path = Path(target)
            self._file = _open_wave(self.path)

    def write(self, user_id: int, pcm: bytes) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("the MixSink is closed")
            self._out(self._mixer.add(user_id, pcm, self._clock.monotonic()))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._out(self._mixer.finish())
            finally:
                if self._file is not None:
                    self._file.close()

    def stats(self) -> MixerStats:
        with self._lock:
            s = self._mixer.stats
            return MixerStats(s.blocks, s.members, s.moved_late, s.skipped_silence)

    def _out(self, blocks: list[bytes]) -> None:
        if not blocks:
            return
        if self._file is not None:
            self._file.writeframes(b"".join(blocks))
        else:
            assert self._on_block is not None
            for block in blocks:
                self._on_block(block)

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "callback"
        return f"<MixSink {where!r}>"


class MultiSink:
    """Every write goes to each of `sinks` in turn (one member's files and a mix, say);
    `close` closes them all, then raises the first error a close raised."""

    def __init__(self, *sinks: Sink) -> None:
        if not sinks:
            raise ValueError("MultiSink needs at least one sink")
        self.sinks = sinks

    def write(self, user_id: int, pcm: bytes) -> None:
        for sink in self.sinks:
            sink.write(user_id, pcm)

    def close(self) -> None:
        errors: list[Exception] = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - the others are still closed
                errors.append(exc)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"<MultiSink {list(self.sinks)!r}>"

"""Sinks for `Connection.listen`: where each member's decoded audio goes."""

from __future__ import annotations

import os
import threading
import wave
from pathlib import Path

__all__ = ["WaveSink"]


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
                out = wave.open(str(self.directory / f"{user_id}.wav"), "wb")  # noqa: SIM115
                out.setnchannels(2)
                out.setsampwidth(2)
                out.setframerate(48000)
                self._files[user_id] = out
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

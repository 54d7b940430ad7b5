"""FFmpeg as a source: any file or URL FFmpeg reads, as PCM to encode or as Opus to pass on.

The binary is looked up in this order: ``$DISCORD_VOICE_FFMPEG``, ``ffmpeg`` on ``PATH``, then
the one bundled with ``imageio-ffmpeg`` (``pip install "discord-voice[ffmpeg]"``); without any,
`FFmpegNotFound` says how to get one.

The subprocess is always reaped: at the end of the stream, on `close` (the player's stop, an
error, a connection that ends) and at interpreter exit, it is terminated, waited for (bounded),
killed if it has not exited, and waited for again; its pipes are closed. Its stderr is drained
by a named thread that keeps the last lines (attached to `FFmpegFailed`) and reads the
input's duration from FFmpeg's report.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence
from typing import IO

from discord_voice._shell.exit_hook import close_at_exit
from discord_voice.audio.source import OpusSource, PCMSource
from discord_voice.errors import FFmpegFailed, FFmpegNotFound, InvalidPacket
from discord_voice.ogg import iter_opus_packets
from discord_voice.opus import Encoder

__all__ = ["ENV_VAR", "FFmpegOpusSource", "FFmpegSource", "find_ffmpeg"]

#: Environment variable naming the ffmpeg binary to use instead of searching.
ENV_VAR = "DISCORD_VOICE_FFMPEG"
#: Lines of FFmpeg's stderr kept for the error message.
STDERR_LINES = 20
#: Seconds FFmpeg gets to exit after SIGTERM, then after SIGKILL.
EXIT_WAIT = 2.0

_INSTALL_HINT = (
    "no ffmpeg binary found: install FFmpeg (`apt-get install ffmpeg`, `brew install ffmpeg`, "
    'https://ffmpeg.org), or `pip install "discord-voice[ffmpeg]"` (a bundled ffmpeg from '
    f"imageio-ffmpeg), or set {ENV_VAR}=/path/to/ffmpeg"
)
_DURATION = re.compile(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_GLOBAL = ("-hide_banner", "-nostdin", "-nostats", "-loglevel", "info")

Options = str | Sequence[str] | None


def find_ffmpeg() -> str:
    """The ffmpeg binary to run (see the module docstring for the order)."""
    named = os.environ.get(ENV_VAR)
    if named:
        if not os.path.isfile(named):
            raise FFmpegNotFound(f"{ENV_VAR}={named!r} is not a file; {_INSTALL_HINT}")
        return named
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError:
        raise FFmpegNotFound(_INSTALL_HINT) from None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (RuntimeError, OSError) as exc:  # imageio-ffmpeg without a binary for this platform
        raise FFmpegNotFound(
            f"imageio-ffmpeg has no usable binary ({exc}); {_INSTALL_HINT}"
        ) from exc


def _split(options: Options) -> list[str]:
    if options is None:
        return []
    if isinstance(options, str):
        return shlex.split(options)
    return [str(option) for option in options]


class FFmpegProcess:
    """One running ffmpeg writing to a pipe we read, reaped by `close`.

    Thread safety: `stdout` is read by one thread; `interrupt` and `close` from any thread.
    """

    def __init__(self, argv: list[str], name: str) -> None:
        self.name = name
        try:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise FFmpegNotFound(f"could not run {argv[0]!r} ({exc}); {_INSTALL_HINT}") from exc
        assert self._process.stdout is not None and self._process.stderr is not None
        self.stdout: IO[bytes] = self._process.stdout
        self._stderr = self._process.stderr
        self._lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._lock = threading.Lock()
        self._closed = False
        self._interrupted = False
        #: Seconds of input, once FFmpeg has reported it (None for a live stream).
        self.duration: float | None = None
        self._drain = threading.Thread(
            target=self._drain_stderr, name=f"dv-ffmpeg-log:{self.pid}", daemon=False
        )
        self._drain.start()
        close_at_exit(self, FFmpegProcess.close)

    @property
    def pid(self) -> int:
        return self._process.pid

    def _drain_stderr(self) -> None:
        """Read stderr to its end (FFmpeg never blocks on a full pipe), keeping the tail."""
        for raw in self._stderr:
            if self.duration is None and (match := _DURATION.search(raw)):
                hours, minutes, seconds = match.groups()
                self.duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            with self._lock:
                self._lines.append(raw.decode("utf-8", "replace").rstrip())

    def stderr_tail(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    @property
    def interrupted(self) -> bool:
        """Whether `interrupt` or `close` was called (a torn output is then expected)."""
        with self._lock:
            return self._interrupted

    def interrupt(self) -> None:
        """Ask ffmpeg to stop (SIGTERM): the reader sees the end of the pipe soon."""
        with self._lock:
            self._interrupted = True
        if self._process.poll() is None:
            try:
                self._process.terminate()
            except ProcessLookupError:  # pragma: no cover - exited meanwhile
                pass

    def finish(self) -> None:
        """The pipe ended: wait for ffmpeg's exit (bounded) and raise `FFmpegFailed` if it
        failed on its own (not after `interrupt`)."""
        try:
            returncode = self._process.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            self.close()
            raise FFmpegFailed(
                f"ffmpeg closed its output but did not exit within {EXIT_WAIT:g}s",
                returncode=None,
                stderr_tail=self.stderr_tail(),
            ) from None
        self._drain.join(EXIT_WAIT)  # stderr ends with the process: the tail is complete
        with self._lock:
            interrupted = self._interrupted
        if returncode != 0 and not interrupted:
            raise FFmpegFailed(
                f"ffmpeg exited with code {returncode}",
                returncode=returncode,
                stderr_tail=self.stderr_tail(),
            )

    def close(self) -> None:
        """Terminate, wait, kill, wait; close the pipes; join the stderr thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._interrupted = True
        process = self._process
        if process.poll() is None:
            process.terminate()
        # ffmpeg blocked writing to a full pipe restarts the write after SIGTERM: closing our
        # end makes that write fail, and it exits at once
        self.stdout.close()
        if process.poll() is None:
            try:
                process.wait(EXIT_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(EXIT_WAIT)
        self._drain.join(EXIT_WAIT)
        self._stderr.close()

    def __repr__(self) -> str:
        return f"<FFmpegProcess {self.name} pid={self.pid}>"


class FFmpegSource(PCMSource):
    """Anything FFmpeg can read (a path or a URL), decoded to PCM and encoded with libopus.

    `before_options` go before ``-i`` (input options such as ``-ss 30`` or
    ``-reconnect 1``), `options` after it (output options such as ``-af loudnorm``); each is a
    string (split like a shell would) or a list. `encoder` sets the Opus encoding (bitrate,
    FEC, frame duration...). FFmpeg starts when the source is made: a missing binary raises
    `FFmpegNotFound` here, a file FFmpeg cannot read raises `FFmpegFailed` from the player.
    """

    def __init__(
        self,
        path_or_url: str | os.PathLike[str],
        *,
        before_options: Options = None,
        options: Options = None,
        encoder: Encoder | None = None,
        executable: str | None = None,
    ) -> None:
        source = os.fspath(path_or_url)
        argv = [
            executable or find_ffmpeg(),
            *_GLOBAL,
            *_split(before_options),
            "-i",
            source,
            "-vn",
            *_split(options),
            *("-f", "s16le", "-ar", "48000", "-ac", "2", "pipe:1"),
        ]
        self._ffmpeg = FFmpegProcess(argv, source)
        self._ended = False
        super().__init__(self._ffmpeg.stdout, encoder=encoder)

    @property
    def duration(self) -> float | None:
        return self._ffmpeg.duration

    @property
    def pid(self) -> int:
        return self._ffmpeg.pid

    def read(self, size: int) -> bytes:
        data = super().read(size)
        if len(data) < size and not self._ended:
            self._ended = True
            self._ffmpeg.finish()  # raises FFmpegFailed if ffmpeg failed
        return data

    def interrupt(self) -> None:
        self._ffmpeg.interrupt()

    def close(self) -> None:
        self._ffmpeg.close()

    def __repr__(self) -> str:
        return f"<FFmpegSource {self._ffmpeg.name!r} pid={self.pid}>"


class FFmpegOpusSource(OpusSource):
    """Opus audio that FFmpeg remuxes without decoding (``-c:a copy`` into Ogg): an ``.opus``
    URL, a WebM/Matroska file with Opus audio. Inputs whose audio is not Opus fail with
    `FFmpegFailed`; use `FFmpegSource` for them (`open_source` chooses)."""

    def __init__(
        self,
        path_or_url: str | os.PathLike[str],
        *,
        before_options: Options = None,
        executable: str | None = None,
    ) -> None:
        source = os.fspath(path_or_url)
        argv = [
            executable or find_ffmpeg(),
            *_GLOBAL,
            *_split(before_options),
            "-i",
            source,
            *("-map", "0:a:0", "-c:a", "copy", "-f", "ogg", "pipe:1"),
        ]
        self._ffmpeg = FFmpegProcess(argv, source)
        self._packets = iter_opus_packets(self._ffmpeg.stdout)
        self._ended = False

    @property
    def duration(self) -> float | None:
        return self._ffmpeg.duration

    @property
    def pid(self) -> int:
        return self._ffmpeg.pid

    def read(self) -> bytes | None:
        try:
            packet = next(self._packets, None)
        except InvalidPacket:
            self._end()  # a failure of ffmpeg's explains a torn stream better
            if self._ffmpeg.interrupted:
                return None  # stopped before (or while) ffmpeg wrote a page: just the end
            raise
        if packet is None:
            self._end()
        return packet

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._ffmpeg.finish()

    def interrupt(self) -> None:
        self._ffmpeg.interrupt()

    def close(self) -> None:
        self._packets.close()
        self._ffmpeg.close()

    def __repr__(self) -> str:
        return f"<FFmpegOpusSource {self._ffmpeg.name!r} pid={self.pid}>"

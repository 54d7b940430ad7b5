"""Player: plays one `Source` into a connection's ``opus_send`` on a ``dv-player`` thread.

States (written by the player thread only; the owner's calls are requests):

    PLAYING --pause()--> PAUSED --resume()--> PLAYING
    PLAYING / PAUSED --stop(), end of source, error--> ENDING --> DONE

- PLAYING: the thread reads the source (PCM is scaled by `volume`, then Opus-encoded) and puts
  each frame on ``opus_send``; the bounded queue is the backpressure, so memory stays flat
  whatever the length of the source.
- PAUSED: the frames still queued are taken back (`OpusQueue.withdraw`, kept for the resume:
  the timeline is intact), silence and Speaking 0 are sent as ``stop_speaking`` does, and the
  source is not read until `resume`. The next frame announces Speaking again.
- ENDING: after the source's end (or its failure) the queued frames are sent, then silence and
  Speaking 0; after `stop` the queued frames are taken back first, so the player stops at once.
  The source is closed (an FFmpeg process is reaped) whatever happened.
- DONE: `after(error)` has been called once, on the player thread; `wait` returns (or raises
  the error). A `stop` requested by the owner or by `Connection.disconnect` is not an error.

Thread safety: every public method from any thread.
"""

from __future__ import annotations

import collections
import enum
import logging
import queue
import sys
import threading
from array import array
from collections.abc import Callable
from typing import Protocol

from discord_voice.audio.source import PCM_SAMPLE_RATE, OpusSource, PCMSource, Source
from discord_voice.clock import Signal
from discord_voice.core.frames import frame_samples
from discord_voice.errors import AudioError, ConnectionClosed, VoiceError
from discord_voice.opus import Encoder

__all__ = ["FrameQueue", "PlayTarget", "Player", "PlayerState", "scale_pcm"]

log = logging.getLogger(__name__)

#: How long one blocking ``put`` waits before the thread looks at pause/stop requests again
#: (a full queue drains a frame every 10-60 ms while audio flows; this bounds the rest).
PUT_SLICE = 0.05
#: What ``stop_speaking`` may take at a pause or at the end (it sends what is queued first).
STOP_SPEAKING_TIMEOUT = 10.0

After = Callable[[BaseException | None], None]


class PlayerState(enum.Enum):
    PLAYING = "playing"
    PAUSED = "paused"
    ENDING = "ending"
    DONE = "done"


class FrameQueue(Protocol):
    """What the player needs of ``opus_send`` (`OpusQueue`)."""

    unfinished_tasks: int
    maxsize: int

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None: ...

    def withdraw(self) -> list[bytes]: ...

    @property
    def closed(self) -> bool: ...


class PlayTarget(Protocol):
    """What the player needs of a connection."""

    @property
    def opus_send(self) -> FrameQueue: ...

    @property
    def guild_id(self) -> str: ...

    def stop_speaking(self, timeout: float = 5.0) -> None: ...


def scale_pcm(pcm: bytes, volume: float) -> bytes:
    """s16le samples times `volume`, clipped to 16 bits (no-op at 1.0)."""
    if volume == 1.0:
        return pcm
    samples = array("h", pcm)
    if sys.byteorder == "big":  # pragma: no cover - PCM is little-endian on the wire
        samples.byteswap()
    if volume <= 1.0:
        scaled = array("h", [int(s * volume) for s in samples])
    else:
        scaled = array("h", [max(-32768, min(32767, int(s * volume))) for s in samples])
    if sys.byteorder == "big":  # pragma: no cover
        scaled.byteswap()
    return scaled.tobytes()


class Player:
    """Plays `source` into `target` (a `Connection`); made and started by `Connection.play`."""

    def __init__(
        self,
        target: PlayTarget,
        source: Source,
        *,
        after: After | None = None,
        volume: float = 1.0,
    ) -> None:
        if not isinstance(source, OpusSource | PCMSource):
            raise TypeError(f"expected an OpusSource or a PCMSource, got {source!r}")
        self._target = target
        self._source = source
        self._after = after
        self._check_volume(volume)
        self._volume = volume
        self._lock = threading.Lock()  # guards the requests and the counters below
        self._state_changed = threading.Condition(self._lock)
        self._wake = Signal()  # set when a request changes; replaced by the thread
        self._want_pause = False
        self._want_stop = False
        self._state = PlayerState.PLAYING  # the player thread writes it (under the lock)
        self._put_samples = 0  # samples of the frames put on opus_send, minus withdrawn ones
        self._sent_samples = 0  # the largest `position` reported, in samples
        # the samples of the latest frames put: the unsent ones are among them
        self._recent: collections.deque[int] = collections.deque(
            maxlen=max(1, target.opus_send.maxsize) + 2
        )
        self._held: collections.deque[bytes] = collections.deque()  # withdrawn at a pause
        self._speaking = False  # frames were queued since the last silence (player thread)
        self._ended_by: ConnectionClosed | None = None  # the connection's failure, if it ended
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dv-player:{target.guild_id}")

    def start(self) -> Player:
        self._thread.start()
        return self

    # -- the owner's side -------------------------------------------------------------------

    @property
    def state(self) -> PlayerState:
        with self._lock:
            return self._state

    @property
    def source(self) -> Source:
        return self._source

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def volume(self) -> float:
        """The gain applied to PCM sources before encoding (0.0-2.0; Opus passes through)."""
        with self._lock:
            return self._volume

    @volume.setter
    def volume(self, value: float) -> None:
        self._check_volume(value)
        with self._lock:
            self._volume = float(value)

    @property
    def position(self) -> float:
        """Seconds of the source's audio sent so far (within a frame)."""
        with self._lock:
            unsent = min(self._target.opus_send.unfinished_tasks, len(self._recent))
            pending = sum(list(self._recent)[len(self._recent) - unsent :]) if unsent else 0
            # never backwards: a frame the queue counts before `_put` has recorded it would
            # otherwise look unsent for a moment
            self._sent_samples = max(self._sent_samples, self._put_samples - pending)
            return self._sent_samples / PCM_SAMPLE_RATE

    @property
    def duration(self) -> float | None:
        """Seconds of audio in the source when known."""
        return self._source.duration

    def pause(self) -> None:
        """Stop reading the source and sending (the queued frames are kept for `resume`)."""
        self._request(pause=True)

    def resume(self) -> None:
        self._request(pause=False)

    def stop(self) -> None:
        """End now (queued frames are dropped, silence and Speaking 0 are sent); returns at
        once: `wait` for the end."""
        with self._lock:
            self._want_stop = True
        self._wake.set()
        self._source.interrupt()  # a read blocked on a slow producer returns soon

    def connection_ended(self, error: ConnectionClosed | None) -> None:
        """The connection ended (any thread, never blocks): stop; its failure, if any, becomes
        the player's error."""
        with self._lock:
            self._ended_by = error
        self.stop()

    def is_done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the player is done and return True, or raise the error it ended with;
        False if it is still playing after `timeout` seconds (never a `TimeoutError`, which
        could be mistaken for a failure such as a `HeartbeatTimeout`)."""
        if not self._done.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return True

    def wait_for_state(self, state: PlayerState, timeout: float) -> bool:
        """Block until the player is in `state` (or done); return whether it is."""
        with self._state_changed:
            self._state_changed.wait_for(
                lambda: self._state is state or self._state is PlayerState.DONE, timeout
            )
            return self._state is state

    def join(self, timeout: float) -> None:
        """Join the player thread (bounded); for the connection that owns it."""
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join(timeout)

    def __repr__(self) -> str:
        return f"<Player {self.state.value} {self._source!r}>"

    def _request(self, *, pause: bool) -> None:
        with self._lock:
            self._want_pause = pause
        self._wake.set()

    @staticmethod
    def _check_volume(value: float) -> None:
        if not 0.0 <= value <= 2.0:
            raise ValueError(f"volume must be between 0.0 and 2.0, got {value}")

    # -- the player thread ------------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        stopped = False
        try:
            stopped = self._play()
        except BaseException as exc:  # noqa: BLE001 - reported through wait() and after()
            error = exc
        with self._lock:
            self._set_state(PlayerState.ENDING)
            stopped = stopped or self._want_stop
            ended_by = self._ended_by
        error = self._end(error, stopped)
        if ended_by is not None and error is None:  # the connection failed: so did the player
            error = ended_by
        self._error = error
        self._done.set()
        with self._lock:
            self._set_state(PlayerState.DONE)
        if self._after is not None:
            try:
                self._after(error)
            except Exception:
                log.exception("the after callback of %r failed", self)

    def _play(self) -> bool:
        """Read and queue until the end (False) or a stop (True); pause in between."""
        encoder: Encoder | None = None
        paused = False
        while True:
            with self._lock:
                wake = self._wake = Signal()
                want_stop, want_pause = self._want_stop, self._want_pause
            if want_stop:
                return True
            if want_pause != paused:
                paused = want_pause
                if paused:
                    self._pause()
                with self._lock:
                    self._set_state(PlayerState.PAUSED if paused else PlayerState.PLAYING)
                continue
            if paused:
                wake.wait()  # until resume() or stop(): a wait for the user, not the network
                continue
            frame = self._held.popleft() if self._held else None
            if frame is None:
                if isinstance(self._source, PCMSource):
                    if encoder is None:
                        encoder = self._source.encoder or Encoder()
                    frame = self._next_pcm_frame(self._source, encoder)
                else:
                    frame = self._source.read()
                if frame is None:
                    return False
            if not self._put(frame, wake):
                self._held.appendleft(frame)  # a pause or stop came first: not queued

    def _set_state(self, state: PlayerState) -> None:
        """Under the lock (player thread)."""
        self._state = state
        self._state_changed.notify_all()

    def _next_pcm_frame(self, source: PCMSource, encoder: Encoder) -> bytes | None:
        pcm = source.read(encoder.frame_bytes)
        if not pcm:
            return None
        if len(pcm) < encoder.frame_bytes:  # the end: pad the last frame with silence
            pcm += bytes(encoder.frame_bytes - len(pcm))
        with self._lock:
            volume = self._volume
        return encoder.encode(scale_pcm(pcm, volume))

    def _put(self, frame: bytes, wake: Signal) -> bool:
        """Queue `frame` (blocking while the queue is full); False if a request came first."""
        frames = self._target.opus_send
        while True:
            try:
                frames.put(frame, timeout=PUT_SLICE)
            except queue.Full:
                if wake.is_set():
                    return False
                continue
            samples = frame_samples(frame)
            with self._lock:
                self._put_samples += samples
                self._recent.append(samples)
            self._speaking = True
            return True

    def _take_back(self) -> list[bytes]:
        """Withdraw the queued frames not sent yet; they no longer count as put."""
        taken = self._target.opus_send.withdraw()
        if taken:
            with self._lock:
                for _ in taken:
                    self._put_samples -= self._recent.pop() if self._recent else 0
        return taken

    def _pause(self) -> None:
        self._held.extendleft(reversed(self._take_back()))
        if not self._speaking:
            return
        self._speaking = False
        try:
            self._target.stop_speaking(STOP_SPEAKING_TIMEOUT)
        except TimeoutError:  # the connection is recovering: the silence goes out later
            log.info("%r: silence not sent within %gs of the pause", self, STOP_SPEAKING_TIMEOUT)

    def _end(self, error: BaseException | None, stopped: bool) -> BaseException | None:
        """Finish the run, close the source; the error the player ends with."""
        try:
            if stopped:
                self._take_back()
            if self._speaking and not self._target.opus_send.closed:  # also after a bad source
                self._speaking = False
                self._target.stop_speaking(STOP_SPEAKING_TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - becomes the player's error
            error = error or exc
        try:
            self._source.close()
        except BaseException as exc:  # noqa: BLE001 - becomes the player's error
            error = error or exc
        if stopped and isinstance(error, ConnectionClosed):
            return None  # stopped (or disconnected) on purpose: not a failure
        if error is not None and not isinstance(error, VoiceError):
            wrapped = AudioError(f"playing {self._source!r} failed: {error}")
            wrapped.__cause__ = error
            return wrapped
        return error

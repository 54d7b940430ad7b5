"""The UDP sender thread body: ``opus_send`` -> packetizer -> socket, on the pacer's schedule.

Per frame the hot path is: wait until due, take the frame, packetize (header + transport
encryption), one ``send`` syscall, record the send. Nothing else runs per frame.
"""

from __future__ import annotations

import logging
import queue
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from discord_voice.clock import Clock, Signal
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP
from discord_voice.core.pacing import Pacer
from discord_voice.core.packetizer import Packetizer
from discord_voice.errors import ConnectionClosed

from .opus_queue import STOP, OpusQueue

__all__ = ["StopSpeakingMarker", "UdpSender"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class StopSpeakingMarker:
    """Queued by ``stop_speaking``: after the frames before it, send silence, then set `done`."""

    done: Signal


@dataclass(eq=False)
class _Done:
    done: Signal


class UdpSender:
    """Owns the pacing state of one connection; `run` is the ``dv-udp-sender`` thread body.

    Thread safety: `run` on the sender thread only; `stats` and `announced` from any thread.
    """

    def __init__(
        self,
        *,
        sock: socket.socket,
        packetizer: Packetizer,
        frames: OpusQueue,
        clock: Clock,
        stop: Signal,
        announce: Callable[[], None],
        pacer: Pacer | None = None,
    ) -> None:
        self._sock = sock
        self._packetizer = packetizer
        self._frames = frames
        self._clock = clock
        self._stop = stop
        self._announce = announce
        self.pacer = pacer or Pacer()
        #: Whether Speaking (op 5) with a non-zero mask has been sent for the current run of
        #: audio; the sender announces it itself before the first frame if the user did not.
        self.announced = False
        self.bytes_sent = 0

    def run(self) -> None:
        pending: deque[Any] = deque()
        pacer, clock, stop, frames = self.pacer, self._clock, self._stop, self._frames
        while not stop.is_set():
            while pending and isinstance(pending[0], _Done):
                pacer.pause()
                self.announced = False
                pending.popleft().done.set()
            from_queue = False
            if pacer.running:
                if clock.wait_until(pacer.next_due(clock.monotonic()), stop):
                    return
                if pending:
                    item = pending.popleft()
                else:
                    try:
                        item = frames.get_nowait()
                    except queue.Empty:
                        pacer.underrun()
                        continue
                    from_queue = True
            else:
                if pending:
                    item = pending.popleft()
                else:
                    item = frames.get()  # woken by a frame, a marker or STOP
                    from_queue = True
                if item is STOP:
                    return
                pacer.start(clock.monotonic())
            if item is STOP:
                return
            if isinstance(item, StopSpeakingMarker):
                pending.extend([OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP)
                pending.append(_Done(item.done))
                if from_queue:
                    frames.task_done()
                continue
            self._send(item)
            if from_queue:
                frames.task_done()

    def _send(self, frame: bytes) -> None:
        if not self.announced:
            self._announce()
            self.announced = True
        packet = self._packetizer.packetize(frame)
        try:
            self._sock.send(packet)
        except OSError as exc:
            raise ConnectionClosed(f"udp send failed: {exc}") from exc
        self.pacer.sent(self._clock.monotonic())
        self.bytes_sent += len(packet)

"""The UDP sender thread body: ``opus_send`` -> packetizer -> socket, on the pacer's schedule.

Each frame is packetized (RTP header + transport encryption) right after the previous send,
while the thread is still running, and only the ``send`` syscall happens at the due time. On a
virtual machine the first instructions after a timed sleep run up to ten times slower than warm
ones, so this keeps both the CPU per packet and the wake-to-send delay (jitter) low.
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
from discord_voice.errors import ConnectionClosed, DaveNotReady

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


@dataclass(eq=False)
class _Packet:
    data: bytes
    from_queue: bool  # counts towards opus_send.join() once sent


class _Stopped(Exception):
    """STOP was taken from the queue."""


class UdpSender:
    """Owns the pacing state of one connection; `run` is the ``dv-udp-sender`` thread body.

    Thread safety: `run` on the sender thread only; `announced`, `held` and the counters may be
    read from any thread.
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
        wait_e2ee: Callable[[Signal], bool] | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._sock = sock
        self._packetizer = packetizer
        self._frames = frames
        self._clock = clock
        self._stop = stop
        self._announce = announce
        self._wait_e2ee = wait_e2ee
        # A frame the transform refused for want of a DAVE key: retried, never dropped.
        self._waiting: tuple[bytes, bool] | None = None
        self.pacer = pacer or Pacer()
        #: Whether Speaking (op 5) with a non-zero mask has been sent for the current run of
        #: audio; the sender announces it itself before the first frame if the user did not.
        self.announced = False
        self.bytes_sent = 0
        #: 1 while a frame taken from the queue is packetized but not yet sent.
        self.held = 0
        self._pending: deque[Any] = deque()  # silence frames and _Done after stop_speaking

    def run(self) -> None:
        try:
            self._run()
        except _Stopped:
            return

    def _run(self) -> None:
        pacer, clock, stop, pending = self.pacer, self._clock, self._stop, self._pending
        packet: _Packet | None = None
        while not stop.is_set():
            if self._waiting is not None:  # E2EE key missing: hold the stream, do not burst
                pacer.pause()
                if self._wait_e2ee is None or self._wait_e2ee(stop):
                    return
                frame, from_queue = self._waiting
                self._waiting = None
                packet = self._packetize(frame, from_queue=from_queue)
                continue
            # stop_speaking completes only once its last silence frame is sent, not just built
            while packet is None and pending and isinstance(pending[0], _Done):
                pacer.pause()
                self.announced = False
                pending.popleft().done.set()
            if pacer.running:
                if clock.wait_until(pacer.next_due(clock.monotonic()), stop):
                    return
                if packet is None:
                    packet = self._next_packet(block=False)
                    if packet is None:
                        if self._waiting is None and not pending:  # nothing queued when due
                            pacer.underrun()
                        continue
            else:
                if packet is None:
                    packet = self._next_packet(block=True)
                    if packet is None:
                        continue
                if clock.wait_until(pacer.start(clock.monotonic()), stop):
                    return
            self._transmit(packet)
            packet = self._next_packet(block=False)  # prepare the next one while warm

    def _next_packet(self, *, block: bool) -> _Packet | None:
        """Packetize the next frame, or None (nothing ready, or a marker was expanded)."""
        pending = self._pending
        if pending:
            if isinstance(pending[0], _Done):
                return None
            return self._packetize(pending.popleft(), from_queue=False)
        try:
            item = self._frames.get() if block else self._frames.get_nowait()
        except queue.Empty:
            return None
        if item is STOP:
            raise _Stopped
        if isinstance(item, StopSpeakingMarker):
            pending.extend([OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP)
            pending.append(_Done(item.done))
            self._frames.task_done()
            return None
        return self._packetize(item, from_queue=True)

    def _packetize(self, frame: bytes, *, from_queue: bool) -> _Packet | None:
        try:
            packet = _Packet(self._packetizer.packetize(frame), from_queue)
        except DaveNotReady:
            self._waiting = (frame, from_queue)
            self.held = int(from_queue)
            return None
        self.held = int(from_queue)
        return packet

    def _transmit(self, packet: _Packet) -> None:
        if not self.announced:
            self._announce()
            self.announced = True
        try:
            self._sock.send(packet.data)
        except OSError as exc:
            raise ConnectionClosed(f"udp send failed: {exc}") from exc
        self.held = 0
        self.pacer.sent(self._clock.monotonic())
        self.bytes_sent += len(packet.data)
        if packet.from_queue:
            self._frames.task_done()

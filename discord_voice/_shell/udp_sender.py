r"""The UDP sender thread body: ``opus_send`` -> packetizer -> socket, on the pacer's schedule.

One sender lives as long as its connection. A full reconnect gives the connection a new voice
session (new socket, SSRC, key, RTP counters and DAVE group): the connection `suspend`\ s the
sender, which then holds its frames (the one in hand included) and takes nothing more from the
queue, gives it the new `Transport` and `resume`\ s it; a frame already packetized for the
old session is packetized again for the new one. Producers block on the bounded queue meanwhile.

Each frame is packetized (RTP header + transport encryption) right after the previous send,
while the thread is still running, and only the ``send`` syscall happens at the due time. On a
virtual machine the first instructions after a timed sleep run up to ten times slower than warm
ones, so this keeps both the CPU per packet and the wake-to-send delay (jitter) low.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
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

__all__ = ["StopSpeakingMarker", "Transport", "UdpSender"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class StopSpeakingMarker:
    """Queued by ``stop_speaking``: after the frames before it, send silence, then set `done`."""

    done: Signal


@dataclass(frozen=True, eq=False)
class Transport:
    """Where and how one voice session's packets go."""

    sock: socket.socket
    packetizer: Packetizer
    #: Blocks until the DAVE key is back (or the signal is set; returns whether it is).
    wait_e2ee: Callable[[Signal], bool] | None = None


@dataclass(eq=False)
class _Done:
    done: Signal


@dataclass(eq=False)
class _Packet:
    data: bytes
    frame: bytes  # the Opus frame, to packetize again for a new transport
    from_queue: bool  # counts towards opus_send.join() once sent
    transport: Transport


class _Stopped(Exception):
    """STOP was taken from the queue."""


class UdpSender:
    """Owns the pacing state of one connection; `run` is the ``dv-udp-sender`` thread body.

    Thread safety: `run` on the sender thread only; `suspend`, `set_transport`, `resume`,
    `announced`, `held` and the counters from any thread.

    `announce()` sends Speaking before the first frame of a run; it returns False, having
    called `suspend`, when Speaking cannot be sent now (the websocket is being recovered): the
    frame is held until `resume`, so audio never precedes Speaking.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        frames: OpusQueue,
        clock: Clock,
        stop: Signal,
        announce: Callable[[], bool],
        pacer: Pacer | None = None,
    ) -> None:
        self._frames = frames
        self._clock = clock
        self._stop = stop
        self._announce = announce
        self._lock = threading.Lock()  # guards the transport, suspension and wake signal
        self._transport = transport
        self._suspended = False
        # Set by stop() or suspend(): every wait of the sender thread ends on it.
        self._wake = Signal()
        # Set by resume() or stop(): what a suspended sender waits for.
        self._resumed = Signal()
        stop.add_listener(self._on_stop)
        # A frame the transform refused for want of a DAVE key: retried, never dropped.
        self._waiting: tuple[bytes, bool] | None = None
        self.pacer = pacer or Pacer()
        #: Whether Speaking (op 5) with a non-zero mask has been sent for the current run of
        #: audio; the sender announces it itself before the first frame if the user did not.
        self.announced = False
        self.bytes_sent = 0
        #: 1 while a frame taken from the queue is packetized but not yet sent.
        self.held = 0
        #: How many times the sender was switched to a new transport.
        self.transports = 1
        self._pending: deque[Any] = deque()  # silence frames and _Done after stop_speaking

    # -- control (any thread) ---------------------------------------------------------------

    def suspend(self) -> None:
        """Hold every frame from now on (none is sent or dropped) until `resume`."""
        with self._lock:
            if not self._suspended:
                self._suspended = True
                self._resumed = Signal()
                if self._stop.is_set():
                    self._resumed.set()
            wake = self._wake
        wake.set()

    def set_transport(self, transport: Transport) -> None:
        """Send on `transport` (a new session) from now on; call while suspended."""
        with self._lock:
            if transport is not self._transport:
                self._transport = transport
                self.transports += 1

    def resume(self, *, announced: bool) -> None:
        """Send again after `suspend`; `announced`: Speaking was sent for this run already."""
        with self._lock:
            self._suspended = False
            self.announced = announced
            if self._wake.is_set() and not self._stop.is_set():
                self._wake = Signal()  # the suspension's wake-up is spent
            resumed = self._resumed
        resumed.set()  # a sender parked in suspension goes on

    def _on_stop(self) -> None:
        with self._lock:
            wake, resumed = self._wake, self._resumed
        wake.set()
        resumed.set()

    # -- the thread -------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except _Stopped:
            return

    def _run(self) -> None:
        pacer, clock, stop, pending = self.pacer, self._clock, self._stop, self._pending
        packet: _Packet | None = None
        while not stop.is_set():
            with self._lock:
                suspended, transport, wake = self._suspended, self._transport, self._wake
                resumed = self._resumed
            if suspended:  # a reconnect is under way: hold everything, do not burst after
                pacer.pause()
                resumed.wait()  # bounded by the connection: its end sets it
                continue
            if packet is not None and packet.transport is not transport:
                packet = self._packetize(packet.frame, from_queue=packet.from_queue)
                continue
            if self._waiting is not None:  # E2EE key missing: hold the stream, do not burst
                pacer.pause()
                if transport.wait_e2ee is not None and transport.wait_e2ee(wake):
                    continue  # stopped or suspended
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
                if clock.wait_until(pacer.next_due(clock.monotonic()), wake):
                    continue
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
                if clock.wait_until(pacer.start(clock.monotonic()), wake):
                    continue
            if not self._transmit(packet):
                continue  # suspended at the last moment: the packet stays in hand
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
        transport = self._transport  # one attribute read: `_transmit` re-checks it under the lock
        self.held = int(from_queue)
        try:
            data = transport.packetizer.packetize(frame)
        except DaveNotReady:
            self._waiting = (frame, from_queue)
            return None
        return _Packet(data, frame, from_queue, transport)

    def _transmit(self, packet: _Packet) -> bool:
        """Send `packet` unless the sender was suspended meanwhile; return whether sent."""
        with self._lock:
            if self._suspended or packet.transport is not self._transport:
                return False
        if not self.announced:
            if not self._announce():  # Speaking cannot be sent now: the owner suspended us
                return False
            self.announced = True
        try:
            packet.transport.sock.send(packet.data)
        except OSError as exc:
            with self._lock:
                replaced = self._suspended or packet.transport is not self._transport
            if replaced:  # the old session's socket was closed under us: send it anew
                return False
            raise ConnectionClosed(f"udp send failed: {exc}") from exc
        self.held = 0
        self.pacer.sent(self._clock.monotonic())
        self.bytes_sent += len(packet.data)
        if packet.from_queue:
            self._frames.task_done()
        return True

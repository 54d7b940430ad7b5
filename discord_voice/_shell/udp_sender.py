r"""The UDP sender: one ``dv-udp-sender`` thread per `Voice` paces every connection's audio.

Each connection attaches an `OutboundStream`: its own bounded ``opus_send`` queue, its own
schedule (`core.send_state.SendState` over a `Pacer`), its own counters. The thread keeps one
heap of due times over all streams and, at each wake-up:

1. sends every packet that is due, back to back, in a stable order (due time, then the order in
   which the streams were attached), so one connection's work never becomes another's jitter;
2. then, while the thread is still warm, prepares each of those streams' next packet (takes the
   frame, DAVE-encrypts it, builds the RTP packet and seals it), so only the ``send`` syscall
   happens at the due time;
3. then takes in new streams and the owners' requests (`hold`, a first frame after a pause...),
   going back to step 1 as soon as something falls due: a hundred streams started together take
   milliseconds to prepare, and the first of them must not wait for the last;
4. parks on the clock until the earliest due time or until woken.

Runs start on a shared 2.5 ms grid (`GRID`), so the streams of a busy bot share a few instants
and the thread wakes at most 400 times a second whatever the number of connections. Up to
`BURST` streams start on the same grid point; more go to the next ones of the 20 ms cycle
(`core.pacing.StartSlots`): a hundred streams go out in bursts of about 13 packets every
2.5 ms rather than 100 every 20 ms, so the last packet of a burst is not late by the time 99
others took. Packets are sent with `datagram.send_datagram`, which keeps the GIL and never
blocks (a full socket buffer retries the packet 1 ms later, like a busy DAVE lock).

The thread never blocks on anything it does not own: it takes frames with
`OpusQueue.take_nowait` (an idle stream is woken by the producer's ``put``; a sent frame's
``task_done`` rides on the next take, so one lock per packet), and it never waits for the DAVE
lock (a busy lock retries the packet 1 ms later; a missing key parks the stream until the key is
there).

Everything the owner asks (`OutboundStream.hold`, `release`, `set_transport`, `close`) is a
request: it is written under the stream's lock by the owner and read by the sender thread,
which alone changes the stream's sending state.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from discord_voice._shell.datagram import WOULD_BLOCK, send_datagram
from discord_voice._shell.opus_queue import STOP, OpusQueue
from discord_voice._shell.threads import SharedWorker
from discord_voice.clock import Clock, Signal
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP, frame_samples
from discord_voice.core.pacing import TOLERANCE, Pacer, PacingStats, StartSlots
from discord_voice.core.packetizer import Packetizer
from discord_voice.core.send_state import Phase, SendState
from discord_voice.errors import ConnectionClosed
from discord_voice.trace import RTP_PACKETS_TRACED, trace_enabled, trace_rtp

__all__ = [
    "BURST",
    "CYCLE",
    "GRID",
    "E2ee",
    "EncryptBlocked",
    "OutboundStream",
    "StopSpeakingMarker",
    "StreamStats",
    "Transport",
    "UdpSender",
]

log = logging.getLogger(__name__)

#: Runs start on multiples of this (seconds): every Opus frame duration (10-60 ms) keeps a
#: stream on it, so all streams' due times fall on a few shared instants.
GRID: Final = 0.0025
#: The start slots' cycle: a new run starts at one of the ``CYCLE / GRID`` grid points from
#: its earliest start (`core.pacing.StartSlots`).
CYCLE: Final = 0.020
#: How many streams' runs share a grid point before new runs go to the next ones: bursts of up
#: to about this many packets (~12 us each), whose last one is late by the time the others took.
BURST: Final = 16
#: How soon a packet is retried when the DAVE lock was busy (a commit being processed) or the
#: socket's send buffer was full.
BUSY_RETRY: Final = 0.001
#: How long the thread parks when no stream has anything due (it is woken before that).
_IDLE_WAIT: Final = 3600.0


class EncryptBlocked(enum.Enum):
    """Why a frame cannot be end-to-end encrypted right now."""

    NO_KEY = "no_key"  # DAVE is in effect but there is no group key yet
    BUSY = "busy"  # another thread is updating the DAVE state: try again very soon


class E2ee(Protocol):
    """The end-to-end encryption step of a session (`DaveChannel` implements it)."""

    def try_encrypt(self, frame: bytes) -> bytes | EncryptBlocked:
        """The frame to packetize, without ever blocking."""
        ...

    def on_media_ready(self, callback: Callable[[], None]) -> bool:
        """Call `callback` once frames can be encrypted; False (not registered) if they can now."""
        ...


@dataclass(frozen=True, eq=False)
class Transport:
    """Where and how one voice session's packets go."""

    sock: socket.socket
    packetizer: Packetizer
    e2ee: E2ee | None = None


@dataclass(eq=False)
class StopSpeakingMarker:
    """Queued by ``stop_speaking``: after the frames before it, send silence, then set `done`."""

    done: Signal


@dataclass(frozen=True)
class StreamStats:
    """A snapshot of one stream's counters (see `OutboundStream.stats`)."""

    pacing: PacingStats
    bytes_sent: int
    held: int  # 1 while a frame taken from the queue is in hand, not yet sent
    discarded: int  # frames in hand when the stream closed
    transports: int  # how many transports (voice sessions) it has sent on
    send_retries: int  # sends retried because the socket's send buffer was full


@dataclass(eq=False)
class _Done:
    done: Signal


@dataclass(eq=False, slots=True)
class _InHand:
    """The next frame of a stream, and its packet once prepared for `transport`."""

    frame: bytes
    samples: int
    from_queue: bool  # counts towards opus_send.join() once sent
    data: bytes | None = None
    transport: Transport | None = None


#: What a stream can take next: a frame (and whether it came from the queue), or a marker.
_Item = tuple[bytes, bool] | _Done | StopSpeakingMarker | object


class OutboundStream:
    """One connection's audio, paced by its `Voice`'s `UdpSender`.

    The owner (a `Connection`) calls `hold`, `release`, `set_transport`, `close`, `notify` and
    `stats`; the sender thread alone runs the rest. `on_failure(exc)` is called on the sender
    thread when sending fails; it must not block (hand the work to another thread).

    Thread safety: the owner's methods from any thread.
    """

    # slots: the sender touches every stream at every tick; fewer cache lines per stream
    __slots__ = (
        "_bytes_sent",
        "_discarded",
        "_finished",
        "_frames",
        "_in_hand",
        "_lock",
        "_on_failure",
        "_pending",
        "_post",
        "_released",
        "_requests",
        "_retry_at",
        "_send_retries",
        "_state",
        "_taken",
        "_token",
        "_traced",
        "_traced_on",
        "_transports",
        "_unacked",
        "idle",
        "name",
        "order",
    )

    def __init__(
        self,
        name: str,
        frames: OpusQueue,
        transport: Transport,
        on_failure: Callable[[BaseException], None],
        order: int,
        post: Callable[[OutboundStream], None],
        pacer: Pacer,
    ) -> None:
        self.name = name
        self.order = order
        self._frames = frames
        self._on_failure = on_failure
        self._post = post
        # The owner's requests (closing, hold, transport): replaced as a whole under `_lock`
        # by the owner, read without a lock by the sender thread (one attribute read).
        self._lock = threading.Lock()
        self._requests: tuple[bool, bool, Transport] = (False, False, transport)
        # Sending state: the sender thread only.
        self._state = SendState(pacer)
        self._in_hand: _InHand | None = None
        self._taken: object | None = None  # an item taken from the queue, not looked at yet
        self._unacked = 0  # frames sent whose `mark_sent` rides on the next take
        self._pending: deque[bytes | _Done] = deque()
        self._retry_at: float | None = None
        self._token = 0  # the live heap entry's token; bumping it cancels that entry
        self._finished = False
        #: Set by the sender thread once it has let go of the stream (`UdpSender.detach` waits).
        self._released = Signal()
        self._bytes_sent = 0
        self._discarded = 0
        self._transports = 1
        self._traced = 0  # packets of `_traced_on` whose RTP header was traced
        self._traced_on: Transport | None = None
        self._send_retries = 0
        #: True while the stream waits for a frame: the producer's ``put`` wakes the sender.
        self.idle = False

    def __repr__(self) -> str:
        return f"<OutboundStream {self.name} {self._state.phase.value}>"

    # -- the owner's side (any thread) ----------------------------------------------------------

    def hold(self) -> None:
        """Send nothing from now on (none is dropped) until `release`."""
        with self._lock:
            closing, _, transport = self._requests
            self._requests = (closing, True, transport)
        self._post(self)

    def release(self) -> None:
        with self._lock:
            closing, _, transport = self._requests
            self._requests = (closing, False, transport)
        self._post(self)

    def set_transport(self, transport: Transport) -> None:
        """Send on `transport` (a new voice session) from now on; a frame in hand is prepared
        again for it. Call while held."""
        with self._lock:
            closing, hold, _ = self._requests
            self._requests = (closing, hold, transport)
        self._post(self)

    def close(self) -> None:
        """Stop sending; the sender lets go of the stream (a frame in hand is discarded)."""
        with self._lock:
            _, hold, transport = self._requests
            self._requests = (True, hold, transport)
        self._post(self)

    def notify(self) -> None:
        """A frame was queued: wake the sender if the stream was waiting for one."""
        if self.idle:
            self._post(self)

    @property
    def phase(self) -> Phase:
        return self._state.phase

    def stats(self) -> StreamStats:
        """Counters (written by the sender thread; a consistent-enough snapshot)."""
        return StreamStats(
            pacing=self._state.stats(),
            bytes_sent=self._bytes_sent,
            held=int(self._in_hand is not None and self._in_hand.from_queue),
            discarded=self._discarded,
            transports=self._transports,
            send_retries=self._send_retries,
        )

    # -- the sender thread's side ---------------------------------------------------------------

    def _take(self) -> _Item | None:
        """The next item: silence and markers first, then the queue; None when empty."""
        taken = self._taken
        if taken is not None:
            self._taken = None
            return taken
        if self._pending:
            pending = self._pending.popleft()
            return pending if isinstance(pending, _Done) else (pending, False)
        sent, self._unacked = self._unacked, 0
        return self._frames.take_nowait(sent)


def _take_in_hand(stream: OutboundStream, frame: bytes, from_queue: bool, now: float) -> _InHand:
    """Make `frame` the stream's frame in hand and tell its state (sender thread only)."""
    in_hand = stream._in_hand = _InHand(frame, frame_samples(frame), from_queue)
    stream._state.frame_ready(now, in_hand.samples)
    return in_hand


class UdpSender:
    """The ``dv-udp-sender`` thread of one `Voice` and the streams it paces.

    The thread starts with the first attached stream and is stopped and joined when the last
    one is detached (`SharedWorker`).

    Thread safety: `attach`, `detach`, `close` from any thread but the sender's own.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        name: str = "dv-udp-sender",
        grid: float = GRID,
        burst: int | None = BURST,
    ) -> None:
        self._clock = clock
        self._grid = grid
        # Spreads the streams' runs over the cycle (None: every run on the next grid point).
        # Written by the sender thread only, through the streams' pacers.
        self._slots = StartSlots(grid, CYCLE, burst) if burst is not None else None
        self._worker = SharedWorker(name, self._run, self._on_thread_failure)
        self._inbox: deque[OutboundStream] = deque()
        self._wake = Signal()
        self._order = itertools.count()
        self._live: dict[OutboundStream, None] = {}  # the sender thread's streams

    def __repr__(self) -> str:
        return f"<UdpSender streams={self._worker.clients}>"

    @property
    def thread(self) -> threading.Thread | None:
        return self._worker.thread

    def attach(
        self,
        name: str,
        frames: OpusQueue,
        transport: Transport,
        on_failure: Callable[[BaseException], None],
    ) -> OutboundStream:
        """Start pacing `frames` onto `transport`; the first stream starts the thread."""
        pacer = Pacer(grid=self._grid, slots=self._slots)
        stream = OutboundStream(
            name, frames, transport, on_failure, next(self._order), self._post, pacer
        )
        frames.set_consumer(stream.notify)
        self._worker.acquire()
        self._post(stream)
        return stream

    def detach(self, stream: OutboundStream, timeout: float = 5.0) -> None:
        """Stop pacing `stream` and return once the thread has let go of it: its frame in hand
        discarded (``opus_send.join()`` no longer waits for it), nothing more sent on its socket
        or reported to its ``on_failure``. The last one stops and joins the thread
        (`ShutdownTimeout`)."""
        stream.close()
        thread = self._worker.thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            stream._released.wait(timeout)  # real seconds, bounded, like a join
        self._worker.release(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread whatever is attached (the `Voice` is closing)."""
        self._worker.close(timeout)

    def _post(self, stream: OutboundStream) -> None:
        # Append first, then read the wake signal: the thread replaces the signal before it
        # drains the inbox, so a stream posted after the drain always sets the new signal.
        self._inbox.append(stream)
        self._wake.set()

    # -- the thread -------------------------------------------------------------------------------

    def _run(self, stop: Signal) -> None:
        clock, inbox = self._clock, self._inbox
        heap: list[tuple[float, int, int, OutboundStream]] = []
        stop.add_listener(lambda: self._wake.set())
        while not stop.is_set():
            wake = Signal()
            self._wake = wake
            if stop.is_set():
                break
            now = clock.monotonic()
            due: list[OutboundStream] = []
            # within TOLERANCE: a retry at now + 1 ms may read back an ulp early on the clock,
            # and a deadline never counted as reached would be waited for again, forever
            while heap and heap[0][0] <= now + TOLERANCE:
                _, _, token, stream = heapq.heappop(heap)
                if token == stream._token and not stream._finished:
                    stream._token += 1
                    self._send_due(stream, now)
                    due.append(stream)
            if due:
                now = clock.monotonic()
                for stream in due:  # prepare each one's next packet while warm
                    self._attend(stream, now, heap)
            # New streams and requests, until something falls due: a hundred streams started
            # at once take milliseconds to prepare, and the first ones must not wait for that.
            while inbox:
                stream = inbox.popleft()
                self._live[stream] = None
                self._attend(stream, now, heap)
                now = clock.monotonic()
                if heap and heap[0][0] <= now + TOLERANCE:
                    break
            if inbox or (heap and heap[0][0] <= now + TOLERANCE):
                continue  # more to do at once (the signal is replaced first: no post is missed)
            clock.wait_until(heap[0][0] if heap else now + _IDLE_WAIT, wake)
        while inbox:  # attached and closed before the thread looked at them
            self._live[inbox.popleft()] = None
        for stream in list(self._live):
            self._finish(stream)

    def _attend(
        self,
        stream: OutboundStream,
        now: float,
        heap: list[tuple[float, int, int, OutboundStream]],
    ) -> None:
        """Apply the owner's requests, take and prepare the next frame, schedule the stream."""
        if stream._finished:
            return
        closing, hold, transport = stream._requests
        state = stream._state
        if (
            not closing
            and not hold
            and stream._in_hand is None
            and not stream._pending
            and stream._taken is None
            and state.phase is Phase.PLAYING
        ):
            # the steady case, once per packet: the next frame from the queue, prepared now
            item = stream._take()
            if type(item) is bytes:
                self._prepare(stream, _take_in_hand(stream, item, True, now), transport, now)
                self._schedule(stream, now, heap)
                return
            stream._taken = item  # a marker, the end, or nothing: the general path below
        if closing:
            self._finish(stream)
            return
        if hold:
            state.hold()
        elif state.phase is Phase.HELD:
            state.release(now)
        elif state.phase is Phase.NO_KEY:
            state.key_ready(now)  # posted by the key listener (or looked at again)
        self._fill(stream, transport, now)
        if stream._unacked:  # no take rode on it (held, idle, a marker): acknowledge now
            stream._frames.mark_sent(stream._unacked)
            stream._unacked = 0
        self._schedule(stream, now, heap)

    def _schedule(
        self,
        stream: OutboundStream,
        now: float,
        heap: list[tuple[float, int, int, OutboundStream]],
    ) -> None:
        """Put the stream's next due time (if any) on the heap, replacing its old entry."""
        wake_at = stream._state.wake_at(now)
        if wake_at is not None and stream._retry_at is not None:
            wake_at = max(wake_at, stream._retry_at)
        stream._token += 1
        if wake_at is not None:
            heapq.heappush(heap, (wake_at, stream.order, stream._token, stream))

    def _fill(self, stream: OutboundStream, transport: Transport, now: float) -> None:
        """Take the next frame if the stream wants one, and prepare its packet."""
        state = stream._state
        while True:
            in_hand = stream._in_hand
            if in_hand is None:
                if not state.wants_frame:
                    return
                item = stream._take()
                if item is None:
                    state.frame_missing(now)
                    if state.phase is not Phase.IDLE:
                        return  # not due yet: looked at again when it is
                    stream.idle = True  # before looking again: a put from now on wakes us
                    item = stream._take()
                    if item is None:
                        return
                stream.idle = False
                if type(item) is bytes:  # the common case: a frame from the queue
                    in_hand = _take_in_hand(stream, item, True, now)
                elif isinstance(item, tuple):  # a silence frame after stop_speaking
                    in_hand = _take_in_hand(stream, item[0], item[1], now)
                elif item is STOP:
                    self._finish(stream)
                    return
                elif isinstance(item, StopSpeakingMarker):
                    stream._pending.extend([OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP)
                    stream._pending.append(_Done(item.done))
                    stream._frames.mark_sent()
                    continue
                elif isinstance(item, _Done):  # the last silence frame has been sent
                    state.paused()
                    item.done.set()
                    continue
                else:
                    raise TypeError(f"unexpected item on opus_send: {item!r}")
            if state.phase not in (Phase.PLAYING, Phase.IDLE):
                return  # held (prepared on release, for the transport of then) or closed
            if in_hand.data is not None and in_hand.transport is transport:
                return
            self._prepare(stream, in_hand, transport, now)
            return

    def _prepare(
        self, stream: OutboundStream, in_hand: _InHand, transport: Transport, now: float
    ) -> None:
        """Encrypt and packetize the frame in hand for `transport` (never blocks)."""
        stream._retry_at = None
        try:
            payload: bytes | EncryptBlocked = in_hand.frame
            if transport.e2ee is not None:
                payload = transport.e2ee.try_encrypt(in_hand.frame)
            if payload is EncryptBlocked.NO_KEY:
                stream._state.no_key()
                if transport.e2ee is not None and transport.e2ee.on_media_ready(
                    lambda: self._post(stream)
                ):
                    return
                payload = EncryptBlocked.BUSY  # the key came meanwhile: look again very soon
                stream._state.key_ready(now)
            if payload is EncryptBlocked.BUSY:
                stream._retry_at = now + BUSY_RETRY
                return
            assert isinstance(payload, bytes)
            in_hand.data = transport.packetizer.packetize(payload, in_hand.samples)
        except Exception as exc:  # noqa: BLE001 - DAVE/cipher failure, nonces used up: reported
            self._fail(stream, exc)
            return
        if in_hand.transport is not None and in_hand.transport is not transport:
            stream._transports += 1
        in_hand.transport = transport

    def _send_due(self, stream: OutboundStream, now: float) -> None:
        """The stream's due time has come: send the packet in hand, or end the run."""
        closing, hold, transport = stream._requests
        if closing or hold:
            return  # `_attend` applies it right after
        state = stream._state
        in_hand = stream._in_hand
        if in_hand is None or in_hand.data is None or in_hand.transport is not transport:
            self._fill(stream, transport, now)  # late producer, or a busy retry: cold path
            in_hand = stream._in_hand
            if in_hand is None or in_hand.data is None:
                return
        if not state.send_now(now):
            return
        error = send_datagram(transport.sock, in_hand.data)
        if error:
            if error in WOULD_BLOCK:  # the socket's send buffer is full: same packet, soon
                stream._retry_at = now + BUSY_RETRY
                stream._send_retries += 1
            elif stream._requests[:2] == (False, False) and stream._requests[2] is transport:
                reason = os.strerror(error)
                self._fail(stream, ConnectionClosed(f"udp send failed: {reason}"))
            return  # else an old session's socket closed under us: sent anew on the new one
        state.sent(now)
        if transport is not stream._traced_on:  # a new voice session: trace its first packets
            stream._traced_on, stream._traced = transport, 0
        if stream._traced < RTP_PACKETS_TRACED:
            stream._traced += 1
            if trace_enabled():
                trace_rtp(stream.name, stream._traced, in_hand.data)
        if stream._retry_at is not None:
            stream._retry_at = None
        stream._in_hand = None
        stream._bytes_sent += len(in_hand.data)
        if in_hand.from_queue:
            stream._unacked += 1  # acknowledged with the next take (`_attend` runs next)

    def _finish(self, stream: OutboundStream, failure: BaseException | None = None) -> None:
        """Let go of a stream: discard the frame in hand, wake stop_speaking waiters, report
        `failure` to the owner; only then may `detach` return."""
        if stream._finished:
            return
        stream._finished = True
        stream._token += 1
        self._live.pop(stream, None)
        stream._state.close()
        in_hand, stream._in_hand = stream._in_hand, None
        unacked = stream._unacked
        stream._unacked = 0
        if in_hand is not None and in_hand.from_queue:
            stream._discarded += 1
            unacked += 1
        taken, stream._taken = stream._taken, None
        if isinstance(taken, (bytes, StopSpeakingMarker)):
            unacked += 1  # taken from the queue, never sent
        if isinstance(taken, StopSpeakingMarker):
            taken.done.set()
        if unacked:
            stream._frames.mark_sent(unacked)
        for item in stream._pending:
            if isinstance(item, _Done):
                item.done.set()
        stream._pending.clear()
        try:
            if failure is not None:
                stream._on_failure(failure)
        finally:
            stream._released.set()

    def _fail(self, stream: OutboundStream, exc: BaseException) -> None:
        self._finish(stream, exc)

    def _on_thread_failure(self, exc: BaseException) -> None:
        """The thread itself failed (a bug): every stream's owner learns it."""
        log.error("%s failed: %r", self._worker.name, exc)
        for stream in list(self._live):
            self._fail(stream, exc)

"""HeartbeatLoop: one ``dv-heartbeat`` thread keeps every voice websocket of a `Voice` beating.

Each voice websocket registers its `Pacemaker` (its own interval, on its own absolute grid), the
lock that guards the pacemaker and the protocol state, how to build a heartbeat frame and how to
send it. The loop keeps the registrations in a timer heap ordered by due time (ties in the order
they were pushed), waits on the injected clock until the earliest is due, then beats every due
registration in heap order:

1. under the registration's lock: if the pacemaker says the socket is dead (no ACK for
   ``dead_after`` intervals) the registration fails with `HeartbeatTimeout`; otherwise the beat
   is recorded and the frame built (it reads protocol state: ``seq_ack``);
2. with no lock held: the frame is sent; an error (`ConnectionClosed`) fails the registration;
3. it goes back into the heap at its pacemaker's next due time.

A failed registration leaves the heap and is reported to its own ``on_failure`` only (on this
thread); the others keep beating. Sends run one after another on this one thread, so a slow send
delays the other sockets' beats by at most that socket's bounded io timeout (`WebSocketChannel`:
5 s by default, against Discord intervals of about 14 s and a dead time of two intervals); a
late beat never makes another socket look dead, since death is judged from its own ACKs.

Lifetime: `add` takes a client of the shared thread (`SharedWorker`: the first one starts it);
`Heartbeat.release` gives it back (the last one stops the thread and joins it). `cancel` only
stops the beats and never blocks, so an owner calls it while stopping (from any thread, the
loop's own callbacks included) and calls `release` when it joins its threads anyway.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

from discord_voice._shell.threads import SharedWorker
from discord_voice.clock import Clock, Signal
from discord_voice.core.pacemaker import Pacemaker
from discord_voice.errors import ConnectionClosed, HeartbeatTimeout

__all__ = ["Heartbeat", "HeartbeatLoop"]

THREAD_NAME = "dv-heartbeat"


class Heartbeat:
    """One registered websocket's beats: the handle `HeartbeatLoop.add` returns.

    Thread safety: `cancel` and `release` from any thread, any number of times.
    """

    def __init__(
        self,
        loop: HeartbeatLoop,
        *,
        pacemaker: Pacemaker,
        lock: threading.Lock,
        make_frame: Callable[[int], str],
        send: Callable[[str], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.loop = loop
        self.pacemaker = pacemaker  # read and written under `lock` only
        self.lock = lock
        self.make_frame = make_frame
        self.send = send
        self.on_failure = on_failure
        self.cancelled = False  # written under the loop's lock: no beat, no report after it
        self.released = False  # written under the loop's lock: the worker client was given back

    def __repr__(self) -> str:
        return f"<Heartbeat interval={self.pacemaker.interval:g} cancelled={self.cancelled}>"

    def cancel(self) -> None:
        """Stop beating (never blocks). A beat already being sent is not reported."""
        self.loop.cancel(self)

    def release(self) -> None:
        """Cancel, then give back the shared thread: the last registration joins it
        (`ShutdownTimeout` if it does not end in the loop's join timeout)."""
        self.loop.release(self)


class HeartbeatLoop:
    """The heartbeat thread of one `Voice` (see the module docstring).

    Args:
        clock: every wait goes through it (tests pass a ``FakeClock``).
        join_timeout: real seconds the last `release` (or `close`) waits for the thread.

    Thread safety: every method from any thread. ``on_failure`` callbacks run on the loop
    thread, must not block, and may call `cancel` and `release` (for any registration).
    """

    def __init__(self, clock: Clock, *, join_timeout: float = 5.0) -> None:
        self._clock = clock
        self._join_timeout = join_timeout
        self._worker = SharedWorker(THREAD_NAME, self._run, self._crashed)
        self._lock = threading.Lock()  # guards the fields below; never held for I/O or callbacks
        self._heap: list[tuple[float, int, Heartbeat]] = []
        self._order = itertools.count()  # ties between equal due times: first pushed goes first
        self._live: set[Heartbeat] = set()  # added, not yet released: each holds a worker client
        self._wake = Signal()  # set to make the thread look at the heap again; then replaced
        self._crash: BaseException | None = None  # the thread died of it (a bug): refuse adds

    def __repr__(self) -> str:
        return f"<HeartbeatLoop beats={len(self._heap)} registered={len(self._live)}>"

    @property
    def thread(self) -> threading.Thread | None:
        """The loop's thread while it runs (for tests and diagnostics)."""
        return self._worker.thread

    def add(
        self,
        *,
        pacemaker: Pacemaker,
        lock: threading.Lock,
        make_frame: Callable[[int], str],
        send: Callable[[str], None],
        on_failure: Callable[[BaseException], None],
    ) -> Heartbeat:
        """Beat on `pacemaker`'s schedule from now on; start the thread if it is not running.

        `make_frame(nonce)` runs under `lock` (which must also guard `pacemaker`); `send`
        runs with no lock held. `on_failure` gets `HeartbeatTimeout` or the send's error, once.
        """
        beat = Heartbeat(
            self,
            pacemaker=pacemaker,
            lock=lock,
            make_frame=make_frame,
            send=send,
            on_failure=on_failure,
        )
        self._worker.acquire(self._join_timeout)
        with lock:
            due = pacemaker.next_due
        wake: Signal | None = None
        with self._lock:
            crash = self._crash
            if crash is None:
                self._live.add(beat)
                wake = self._push(beat, due)
        if crash is not None:
            self._worker.release(self._join_timeout)
            raise ConnectionClosed(f"the heartbeat thread failed: {crash!r}")
        if wake is not None:
            wake.set()  # due before what the thread waits for
        return beat

    def cancel(self, beat: Heartbeat) -> None:
        """Remove `beat` from the schedule (never blocks; idempotent)."""
        with self._lock:
            if beat.cancelled:
                return
            beat.cancelled = True
            head = bool(self._heap) and self._heap[0][2] is beat
            kept = [item for item in self._heap if item[2] is not beat]
            if len(kept) != len(self._heap):
                heapq.heapify(kept)
                self._heap = kept
            wake = self._wake if head else None
        if wake is not None:
            wake.set()  # the thread waits for a beat that is gone

    def release(self, beat: Heartbeat) -> None:
        """Cancel `beat` and give back its client of the thread (idempotent)."""
        self.cancel(beat)
        with self._lock:
            if beat.released or beat not in self._live:
                return
            beat.released = True
            self._live.discard(beat)
            if not self._live:
                self._crash = None  # a new thread may start for the next registration
        self._worker.release(self._join_timeout)

    def close(self) -> None:
        """Release every registration and make sure the thread has ended (the `Voice` closes)."""
        with self._lock:
            beats = list(self._live)
        for beat in beats:
            beat.release()
        if self._worker.clients == 0:  # a thread that released itself ends on its own: join it
            self._worker.close(self._join_timeout)

    # -- the thread -------------------------------------------------------------------------

    def _push(self, beat: Heartbeat, due: float) -> Signal | None:
        """Schedule `beat` at `due` (under the lock); return the wake signal to set if it is
        now the earliest, so that a thread waiting for a later one looks again."""
        earlier = not self._heap or due < self._heap[0][0]
        heapq.heappush(self._heap, (due, next(self._order), beat))
        return self._wake if earlier else None

    def _interrupt(self) -> None:
        with self._lock:
            wake = self._wake
        wake.set()

    def _run(self, stop: Signal) -> None:
        stop.add_listener(self._interrupt)
        try:
            while True:
                with self._lock:
                    if stop.is_set():
                        return
                    if self._wake.is_set():
                        self._wake = Signal()  # spent: the heap is read again below
                    wake = self._wake
                    due = self._heap[0][0] if self._heap else None
                if due is None:
                    wake.wait()  # nothing to beat: `add`, `cancel` or the stop sets it
                elif not self._clock.wait_until(due, wake):
                    self._beat_due()
        finally:
            stop.remove_listener(self._interrupt)

    def _beat_due(self) -> None:
        """Beat every registration that is due, earliest first."""
        while True:
            now = self._clock.monotonic()
            with self._lock:
                if not self._heap or self._heap[0][0] > now:
                    return
                beat = heapq.heappop(self._heap)[2]
            self._beat(beat, now)

    def _beat(self, beat: Heartbeat, now: float) -> None:
        failure: BaseException | None = None
        frame, due = "", 0.0
        try:
            with beat.lock:
                pacemaker = beat.pacemaker
                if pacemaker.is_dead(now):
                    failure = HeartbeatTimeout(
                        f"no heartbeat ACK for {pacemaker.dead_after:g} intervals "
                        f"({pacemaker.interval:g}s each)",
                        pacemaker.interval,
                    )
                else:
                    frame = beat.make_frame(pacemaker.beat(now))
                    due = pacemaker.next_due
            if failure is None:
                beat.send(frame)
        except Exception as exc:  # noqa: BLE001 - a failed send or frame: this socket's failure
            failure = exc
        with self._lock:
            if beat.cancelled:
                return  # its owner stopped it meanwhile: nothing to report, not rescheduled
            if failure is None:
                self._push(beat, due)  # no wake needed: this thread reads the heap next
                return
            beat.cancelled = True
        beat.on_failure(failure)

    def _crashed(self, exc: BaseException) -> None:
        """The thread itself died (a bug, or an ``on_failure`` that raised): every registration
        that was still beating is told, as its own thread's failure would be."""
        with self._lock:
            beats = [beat for beat in self._live if not beat.cancelled]
            for beat in beats:
                beat.cancelled = True
            self._heap.clear()
            self._crash = exc
        for beat in beats:
            beat.on_failure(exc)

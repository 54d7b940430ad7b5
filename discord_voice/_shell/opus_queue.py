"""OpusQueue: the ``opus_send`` queue — a checked, bounded, closable `queue.Queue`.

* ``put`` validates the item first (`check_opus_frame`) and raises `InvalidFrame` to the
  producer; a bad item never reaches the sender thread.
* Once the connection ends, ``put`` raises the connection's error (a `ConnectionClosed`), and
  producers blocked on a full queue wake up and raise it too. This is 3.13's
  ``Queue.shutdown(immediate=True)``, available on 3.11.
* ``join()`` returns when every frame put so far has been sent (or discarded at close).
* The consumer (the `Voice`'s sender thread) never blocks in ``get``: `set_consumer` gives the
  queue a callback run after each ``put``, and ``before_put`` runs on the producer's thread
  before a frame is queued (the connection sends Speaking there when a run of audio starts).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from discord_voice.core.frames import check_opus_frame
from discord_voice.errors import ConnectionClosed

__all__ = ["OpusQueue", "STOP"]


class _Stop:
    def __repr__(self) -> str:
        return "<STOP>"


#: Put by `close`: the sender that takes it lets go of the stream.
STOP: Any = _Stop()


class OpusQueue(queue.Queue[Any]):
    """A `queue.Queue` of Opus frames (bytes) with a checked ``put``.

    Thread safety: as `queue.Queue`; any number of producers, one consumer (the sender).
    """

    def __init__(self, maxsize: int, *, before_put: Callable[[], None] | None = None) -> None:
        super().__init__(maxsize)
        self._error: BaseException | None = None
        self._before_put = before_put
        self._consumer: Callable[[], None] | None = None
        self._producers_waiting = 0  # producers blocked on a full queue (under `mutex`)

    def set_consumer(self, notify: Callable[[], None]) -> None:
        """Call `notify` after every item queued (the sender, which never blocks in ``get``,
        learns that an idle stream has something to send)."""
        self._consumer = notify

    def take_nowait(self, sent: int = 0) -> object | None:
        """The next item, or None when the queue is empty: the sender's lean ``get_nowait``
        (one lock, no exception when empty; the sender calls it for every packet). `sent`
        frames taken earlier have been sent meanwhile: `mark_sent` in the same lock."""
        with self.mutex:
            if sent:
                self._done_locked(sent)
            queue = self.queue
            if not queue:
                return None
            item: object = queue.popleft()
            if self._producers_waiting:
                self.not_full.notify()
            return item

    def mark_sent(self, count: int = 1) -> None:
        """`task_done` for `count` frames the sender has sent (one lock, no Condition call)."""
        with self.mutex:
            self._done_locked(count)

    def _done_locked(self, count: int) -> None:
        """`count` tasks are done (sent, or discarded at close); `join` wakes at none left."""
        unfinished = self.unfinished_tasks - count
        self.unfinished_tasks = unfinished
        if unfinished <= 0:  # never below 0 here: the shared sender must not raise
            self.unfinished_tasks = 0
            self.all_tasks_done.notify_all()

    def withdraw(self) -> list[bytes]:
        """Take back the frames at the end of the queue that the sender has not taken yet, in
        order (a player pausing or stopping now rather than after them). Markers and what lies
        before them stay; withdrawn frames no longer count for `join`."""
        with self.mutex:
            queue = self.queue
            taken: list[bytes] = []
            while queue and type(queue[-1]) is bytes:
                taken.append(queue.pop())
            if taken:
                self._done_locked(len(taken))
                if self._producers_waiting:
                    self.not_full.notify_all()
        taken.reverse()
        return taken

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        """Queue one Opus frame; blocks while the queue is full (backpressure).

        Raises:
            InvalidFrame: `item` is not a sendable Opus frame (nothing is queued).
            ConnectionClosed: the connection has ended (also raised to blocked producers).
            queue.Full: no space within `timeout` (or at once with ``block=False``).
        """
        frame = check_opus_frame(item)
        if self._before_put is not None:
            self._raise_if_closed()
            self._before_put()  # Speaking before the first frame of a run (may send op 5)
        self.put_control(frame, block, timeout)

    def put_control(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        """Queue an item without checking it (the library's own markers)."""
        with self.not_full:
            self._raise_if_closed()
            if self.maxsize > 0 and self._qsize() >= self.maxsize:
                if not block:
                    raise queue.Full
                # `timeout` is real seconds, as for any queue.Queue (see discord_voice.clock)
                self._producers_waiting += 1
                try:
                    self.not_full.wait_for(
                        lambda: self._error is not None or self._qsize() < self.maxsize,
                        timeout,
                    )
                finally:
                    self._producers_waiting -= 1
                self._raise_if_closed()
                if self._qsize() >= self.maxsize:
                    raise queue.Full
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()
        consumer = self._consumer
        if consumer is not None:
            consumer()

    def close(self, error: BaseException | None) -> list[Any]:
        """End the queue: wake everyone, make producers raise `error`; return discarded items."""
        with self.mutex:
            if self._error is None:
                self._error = error or ConnectionClosed("the voice connection is closed")
            # a STOP left by an earlier close was never a task: counting it would steal the
            # frame in hand's count from the sender's `mark_sent`
            discarded = [item for item in self.queue if item is not STOP]
            self.queue.clear()
            if discarded:
                self._done_locked(len(discarded))
            self.queue.append(STOP)
            self.not_empty.notify_all()
            self.not_full.notify_all()
            consumer = self._consumer
        if consumer is not None:
            consumer()
        return discarded

    @property
    def closed(self) -> bool:
        with self.mutex:
            return self._error is not None

    def _raise_if_closed(self) -> None:
        if self._error is not None:
            error = self._error
            if isinstance(error, ConnectionClosed):
                raise error
            raise ConnectionClosed(f"the voice connection failed: {error}") from error

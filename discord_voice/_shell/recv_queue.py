"""RecvQueue: ``conn.opus_recv``, a bounded `queue.Queue` that never blocks its producer.

The receive thread serves every connection of a `Voice`; a consumer that does not keep up must
not slow it down (nor sending). So `offer` never waits: when the queue is full the oldest
packet is discarded and counted (`overflowed`), as a live stream wants (the newest audio
matters most). Consumers use the ordinary ``get`` / ``get_nowait`` / ``task_done`` / ``join``.
"""

from __future__ import annotations

import queue
from typing import Any

__all__ = ["RecvQueue"]


class RecvQueue(queue.Queue[Any]):
    """Thread safety: as `queue.Queue`; `offer` from the receive thread."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("the receive queue needs room for at least one packet")
        super().__init__(maxsize)
        #: Packets discarded because the queue was full (the oldest ones).
        self.overflowed = 0

    def offer(self, item: object) -> bool:
        """Queue `item`; if full, discard the oldest first. Returns False if one was discarded."""
        with self.mutex:
            room = self._qsize() < self.maxsize
            if not room:
                self.queue.popleft()
                self.overflowed += 1
                self.unfinished_tasks -= 1  # the discarded one will never be `task_done`
            self.queue.append(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()
        return room

"""ServiceThread: a named, non-daemon thread that reports how it ended to its owner."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from discord_voice.errors import ShutdownTimeout

__all__ = ["ServiceThread", "join_all"]


class ServiceThread(threading.Thread):
    """Runs `target`; any exception (even BaseException) goes to `on_failure`, never only a log.

    Thread safety: `start` once from the owner; `join` from any other thread.
    """

    def __init__(
        self,
        name: str,
        target: Callable[[], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        super().__init__(name=name, daemon=False)
        self._body = target
        self._on_failure = on_failure

    def run(self) -> None:
        try:
            self._body()
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the owner
            self._on_failure(exc)


def join_all(threads: Iterable[threading.Thread], timeout: float) -> None:
    """Join `threads` (skipping the current one) against one deadline.

    Raises:
        ShutdownTimeout: naming every thread still alive at the deadline.
    """
    deadline = time.monotonic() + timeout
    current = threading.current_thread()
    alive: list[str] = []
    for thread in threads:
        if thread is current or thread.ident is None:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            alive.append(thread.name)
    if alive:
        raise ShutdownTimeout(alive, timeout)


def joined_within(threads: Iterable[threading.Thread], timeout: float) -> bool:
    """Join `threads` against one deadline; False (nothing raised) if one is still alive."""
    try:
        join_all(threads, timeout)
    except ShutdownTimeout:
        return False
    return True

"""ServiceThread: a named, non-daemon thread that reports how it ended to its owner."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from discord_voice.clock import Signal
from discord_voice.errors import ShutdownTimeout

__all__ = ["ServiceThread", "SharedWorker", "join_all", "joined_within"]


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


class SharedWorker:
    """One named thread shared by many clients (a `Voice`'s connections).

    The first `acquire` starts the thread; the last `release` sets its stop signal and joins it
    (unless called on the thread itself, which then ends on its own and is joined by the next
    `acquire` or by `close`). So the thread lives exactly as long as it has clients, and no
    client outlives its `release` with the thread still running.

    `body(stop)` runs on the thread and must return promptly once `stop` is set (its waits go
    through a clock on a signal that `stop` also sets). An exception from it goes to
    `on_failure` (the owner tells every client), as with `ServiceThread`.

    Thread safety: every method from any thread.
    """

    def __init__(
        self,
        name: str,
        body: Callable[[Signal], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self._body = body
        self._on_failure = on_failure
        self._lock = threading.Lock()  # guards the fields below; never held while joining
        self._clients = 0
        self._thread: ServiceThread | None = None
        self._stop = Signal()
        self._closed = False  # `close` ran: a client's late `release` has nothing to do

    def __repr__(self) -> str:
        return f"<SharedWorker {self.name} clients={self._clients}>"

    @property
    def clients(self) -> int:
        return self._clients

    @property
    def thread(self) -> threading.Thread | None:
        """The running thread, if any (for tests and diagnostics)."""
        return self._thread

    def acquire(self, timeout: float = 5.0) -> None:
        """Add a client; start the thread if it is not running."""
        with self._lock:
            self._closed = False
            self._clients += 1
            if self._clients > 1:
                return
            previous, stop = self._thread, self._stop
            self._stop = new_stop = Signal()  # bound now: `self._stop` may be replaced before
            thread = ServiceThread(self.name, lambda: self._body(new_stop), self._on_failure)
            self._thread = thread
        stop.set()  # a previous thread that is still ending (released from itself)
        if previous is not None:
            join_all([previous], timeout)
        thread.start()

    def release(self, timeout: float = 5.0) -> None:
        """Remove a client; the last one stops the thread and joins it (`ShutdownTimeout`)."""
        with self._lock:
            if self._closed:
                return
            if self._clients <= 0:
                raise RuntimeError(f"{self.name}: release without acquire")
            self._clients -= 1
            if self._clients:
                return
            thread, stop = self._thread, self._stop
        stop.set()
        if thread is not None:
            join_all([thread], timeout)  # skips the current thread

    def close(self, timeout: float = 5.0) -> None:
        """Stop and join the thread whatever the clients (the owner is closing); the clients'
        later `release` calls do nothing."""
        with self._lock:
            self._clients = 0
            self._closed = True
            thread, stop = self._thread, self._stop
        stop.set()
        if thread is not None:
            join_all([thread], timeout)

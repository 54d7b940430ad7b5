"""SharedWorker: one thread for many clients, started by the first, joined by the last."""

from __future__ import annotations

import threading

import pytest

from discord_voice._shell.threads import SharedWorker
from discord_voice.clock import Signal
from tests.timeouts import LONG


def no_failure(exc: BaseException) -> None:
    pytest.fail(f"the worker reported a failure: {exc!r}")


class Body:
    """A worker body that records its runs and waits for its stop signal."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = threading.Event()

    def __call__(self, stop: Signal) -> None:
        self.runs += 1
        self.started.set()
        stop.wait(LONG)


def test_first_acquire_starts_the_thread_and_last_release_joins_it() -> None:
    body = Body()
    worker = SharedWorker("dv-test-worker", body, no_failure)
    worker.acquire()
    worker.acquire()
    assert body.started.wait(LONG)
    thread = worker.thread
    assert thread is not None and thread.name == "dv-test-worker" and not thread.daemon
    worker.release()
    assert thread.is_alive()  # one client left
    worker.release()
    assert not thread.is_alive()  # joined by the last release
    assert body.runs == 1


def test_a_new_client_after_the_last_starts_a_new_thread() -> None:
    body = Body()
    worker = SharedWorker("dv-test-worker", body, no_failure)
    worker.acquire()
    worker.release()
    worker.acquire()
    assert worker.thread is not None and worker.thread.is_alive()
    worker.release()
    assert body.runs == 2


def test_release_without_acquire_is_an_error() -> None:
    worker = SharedWorker("dv-test-worker", Body(), no_failure)
    with pytest.raises(RuntimeError, match="release without acquire"):
        worker.release()


def test_a_failing_body_reports_to_the_owner() -> None:
    failures: list[BaseException] = []
    reported = threading.Event()

    def body(stop: Signal) -> None:
        raise ValueError("broken")

    def on_failure(exc: BaseException) -> None:
        failures.append(exc)
        reported.set()

    worker = SharedWorker("dv-test-worker", body, on_failure)
    worker.acquire()
    assert reported.wait(LONG)
    worker.release()
    assert [str(f) for f in failures] == ["broken"]


def test_the_last_release_from_the_thread_itself_does_not_join_it() -> None:
    released = threading.Event()
    holder: list[SharedWorker] = []

    def body(stop: Signal) -> None:
        holder[0].release()  # e.g. the last connection ends on the worker's own thread
        released.set()
        stop.wait(LONG)

    worker = SharedWorker("dv-test-worker", body, no_failure)
    holder.append(worker)
    worker.acquire()
    assert released.wait(LONG)
    thread = worker.thread
    assert thread is not None
    thread.join(LONG)
    assert not thread.is_alive()  # its stop signal was set: it ended on its own
    worker.acquire()  # a later client gets a new thread
    worker.close()


def test_close_stops_the_thread_and_later_releases_do_nothing() -> None:
    body = Body()
    worker = SharedWorker("dv-test-worker", body, no_failure)
    worker.acquire()
    worker.acquire()
    thread = worker.thread
    worker.close()
    assert thread is not None and not thread.is_alive()
    worker.release()  # a client that ends after its owner closed: nothing left to do
    worker.release()

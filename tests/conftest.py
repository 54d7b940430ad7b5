"""Suite-wide checks: no test may leak a library or fake thread, or lose a thread's exception.

The autouse fixture `_thread_hygiene` wraps every test:

- before the test it notes which threads are alive and installs a `threading.excepthook` that
  records any exception escaping a thread's ``run()``;
- after the test (and after the test's own fixtures have been torn down) it joins, within
  `THREAD_EXIT` seconds in total, every thread started during the test whose name starts with
  ``dv-`` (library) or ``fake-`` (discord_voice.testing); any still alive fails the test, named;
- it then restores the previous hook and fails the test if any thread raised during it, with the
  thread's name and traceback, so an assertion inside a background thread cannot vanish.

Threads that were already running before the test (for example ones owned by a module-scoped
fixture) are not this test's responsibility and are ignored.

Timeout constants for tests live in `tests/timeouts.py` (`from tests.timeouts import LONG`).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator

import pytest

from tests.timeouts import THREAD_EXIT

CHECKED_THREAD_PREFIXES = ("dv-", "fake-")


def _format_thread_exception(args: threading.ExceptHookArgs) -> str:
    name = "<unknown>" if args.thread is None else args.thread.name
    details = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    return f"exception in thread {name!r}:\n{details}"


def _join_new_threads(before: set[threading.Thread], budget: float) -> list[str]:
    """Join the checked threads not in `before`; return the names of those still alive."""
    deadline = time.monotonic() + budget
    new = [
        thread
        for thread in threading.enumerate()
        if thread not in before
        and thread is not threading.current_thread()
        and thread.name.startswith(CHECKED_THREAD_PREFIXES)
    ]
    for thread in new:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return sorted(thread.name for thread in new if thread.is_alive())


@pytest.fixture(autouse=True)
def _thread_hygiene() -> Iterator[None]:
    before = set(threading.enumerate())
    caught: list[str] = []
    lock = threading.Lock()

    def record(args: threading.ExceptHookArgs) -> None:
        message = _format_thread_exception(args)
        with lock:
            caught.append(message)

    previous_hook = threading.excepthook
    threading.excepthook = record
    try:
        yield
        leaked = _join_new_threads(before, THREAD_EXIT)
    finally:
        threading.excepthook = previous_hook

    problems = []
    if leaked:
        problems.append(
            f"threads still alive {THREAD_EXIT} s after the test: {', '.join(leaked)} "
            "(every thread a test starts must be stopped and joined by it)"
        )
    with lock:
        problems.extend(caught)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)

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

Two more things make the suite behave the same on every host:

- **Hypothesis profiles.** ``ci`` (loaded when the ``CI`` environment variable is set, as
  ``.ci/run`` does) is derandomized, has no deadline, prints a reproduction blob on failure and
  does not fail on the ``too_slow`` health check; ``dev`` (loaded otherwise) keeps random search
  and its example database but has no deadline and no ``too_slow`` check either, because both
  measure the machine's load, not the code. ``pytest --hypothesis-profile NAME`` still wins.
  Tests may set ``max_examples`` locally; they must not set ``deadline`` or
  ``suppress_health_check``, which would defeat the profiles.
- **One libopus.** Unless ``$DISCORD_VOICE_LIBOPUS`` is already set, it is pointed at
  opuslib-next-bundled's copy (a test dependency) before any test runs, so opuslib loads the same
  library in this process and in every subprocess whether or not the host has a system libopus.
  Tests of the lookup itself (``tests/test_opus.py``) set or remove the variable and stub the
  system lookup explicitly; the fixtures `bundled_libopus` and `pyav_libopus` give them two known
  library files, found here without ``discord_voice.opus``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.timeouts import THREAD_EXIT

CHECKED_THREAD_PREFIXES = ("dv-", "fake-")
LIBOPUS_ENV_VAR = "DISCORD_VOICE_LIBOPUS"  # discord_voice.opus.ENV_VAR, checked in test_opus.py

# -- Hypothesis --------------------------------------------------------------------------------

_NOT_THE_CODE = [HealthCheck.too_slow]  # fails on a loaded machine, whatever the code does
settings.register_profile(
    "dev",
    parent=settings.get_profile("default"),
    deadline=None,
    suppress_health_check=_NOT_THE_CODE,
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_NOT_THE_CODE,
)


def _in_ci() -> bool:
    """True when ``$CI`` says so (CI services set it to ``true``; ``.ci/run`` does too)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


settings.load_profile("ci" if _in_ci() else "dev")

# -- libopus -----------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    """The folder of installed top-level package ``name`` (not imported), or ``None``."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _only_file(folder: Path, pattern: str) -> str | None:
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    return str(found[0]) if found else None


def _bundled_libopus() -> str | None:
    """opuslib-next-bundled's libopus file, if that package is installed."""
    package = _package_dir("opuslib_next")
    return None if package is None else _only_file(package / "_native", "libopus*")


def _pyav_libopus() -> str | None:
    """The libopus file in PyAV's wheel (``av.libs/`` beside the package), if there is one."""
    package = _package_dir("av")
    return None if package is None else _only_file(package.parent / "av.libs", "libopus*")


if not os.environ.get(LIBOPUS_ENV_VAR) and (_pinned := _bundled_libopus()) is not None:
    os.environ[LIBOPUS_ENV_VAR] = _pinned


@pytest.fixture(scope="session")
def bundled_libopus() -> str:
    """Path of opuslib-next-bundled's libopus (the test extra installs it)."""
    path = _bundled_libopus()
    if path is None:
        pytest.skip("opuslib-next-bundled is not installed")
    return path


@pytest.fixture(scope="session")
def pyav_libopus() -> str:
    """Path of the libopus copy in PyAV's wheel: a second known library, of another version."""
    path = _pyav_libopus()
    if path is None:
        pytest.skip("this PyAV has no separate libopus file")
    return path


# -- threads -----------------------------------------------------------------------------------


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

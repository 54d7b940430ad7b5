"""Close what is still open when the interpreter exits, so a forgotten close cannot hang it.

The library's threads are non-daemon (they are owned and joined), so a script that ends without
``conn.disconnect()`` / ``gw.close()`` would wait forever for them. A plain `atexit` hook cannot
help: CPython joins non-daemon threads *before* it runs atexit functions. CPython's
``threading._register_atexit`` (also used by `concurrent.futures`) runs before that join; it is
private, so it is looked up defensively and its absence only logs a warning.

Objects are closed newest first: connections before the gateway they use, the gateway before a
fake Discord created earlier.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["close_at_exit"]

log = logging.getLogger("discord_voice")

_lock = threading.Lock()
_registered = False
_open: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


def close_at_exit(obj: object, close: Callable[[Any], None]) -> None:
    """Call ``close(obj)`` at interpreter exit if `obj` is still alive then (idempotent close)."""
    global _registered
    with _lock:
        _open[obj] = close
        if _registered:
            return
        _registered = True
    register: Callable[[Callable[[], None]], None] | None = getattr(
        threading, "_register_atexit", None
    )
    if register is None:
        log.warning("this Python cannot close voice connections at exit: close them yourself")
        return
    try:
        register(_close_all)
    except RuntimeError:  # already shutting down
        pass


def _close_all() -> None:
    with _lock:
        items = list(_open.items())
        _open.clear()
    for obj, close in reversed(items):
        try:
            close(obj)
        except Exception as exc:  # noqa: BLE001 - exit must go on; the failure is reported
            log.warning("closing %r at interpreter exit failed: %s", obj, exc)

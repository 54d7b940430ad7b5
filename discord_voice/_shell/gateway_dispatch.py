"""Who hears the main gateway's dispatches: voice handlers and dispatch listeners.

`DispatchRouter` holds both and delivers one dispatch to them on the reader thread. A callback
that raises ends the gateway: the error is logged with its traceback (under the public
``discord_voice.gateway`` logger) and raised as `ConnectionClosed` for the owner to store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from discord_voice.core.main_gateway import Dispatch
from discord_voice.errors import ConnectionClosed, LocalProtocolError
from discord_voice.main_gateway import VoiceEventHandler

__all__ = ["DispatchListener", "DispatchRouter"]

_log = logging.getLogger("discord_voice.gateway")

DispatchListener = Callable[[str, Mapping[str, Any]], None]
_T = TypeVar("_T")


class DispatchRouter:
    """Voice handlers and dispatch listeners, each added with a remover.

    Thread safety: `add_*` and the removers from any thread, `deliver` from the reader only;
    callbacks run without a lock held, so they may add or remove callbacks themselves.
    """

    def __init__(self) -> None:
        self._voice_handlers = _Registry[VoiceEventHandler]()
        self._listeners = _Registry[DispatchListener]()

    def add_voice_handler(self, handler: VoiceEventHandler) -> Callable[[], None]:
        if not isinstance(handler, VoiceEventHandler):
            raise LocalProtocolError("a voice handler needs on_voice_state/server_update methods")
        return self._voice_handlers.add(handler)

    def add_listener(self, callback: DispatchListener) -> Callable[[], None]:
        if not callable(callback):
            raise LocalProtocolError("a dispatch listener must be callable")
        return self._listeners.add(callback)

    def deliver(self, event: Dispatch) -> bool:
        """Voice dispatches to every voice handler, then every dispatch to every listener.

        Returns whether any callback received it. Raises `ConnectionClosed` (caused by the
        callback's exception) if a callback raises.
        """
        handlers, listeners = self._voice_handlers.items, self._listeners.items
        voice = event.name in ("VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE")
        try:
            if event.name == "VOICE_STATE_UPDATE":
                for handler in handlers:
                    handler.on_voice_state_update(event.data)
            elif event.name == "VOICE_SERVER_UPDATE":
                for handler in handlers:
                    handler.on_voice_server_update(event.data)
            for listener in listeners:
                listener(event.name, event.data)
        except Exception as exc:
            _log.error("a callback for %s raised; closing the gateway", event.name, exc_info=True)
            message = (
                f"a callback for the {event.name} dispatch raised {type(exc).__name__}; "
                "the main gateway was closed"
            )
            raise ConnectionClosed(message) from exc
        return bool(listeners) or (voice and bool(handlers))


class _Registry(Generic[_T]):
    """An immutable snapshot of callbacks (`items`), replaced whole on every add or remove."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: tuple[_T, ...] = ()

    def add(self, item: _T) -> Callable[[], None]:
        """Append `item`; return an idempotent function that removes it again."""
        with self._lock:
            self.items += (item,)

        def remove() -> None:
            with self._lock:
                for index, existing in enumerate(self.items):
                    if existing is item:
                        self.items = self.items[:index] + self.items[index + 1 :]
                        return

        return remove

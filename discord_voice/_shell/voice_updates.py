"""VoiceUpdates: what the main gateway last said about one connection's voice session.

The main gateway's reader thread posts the bot's VOICE_STATE_UPDATEs and the guild's
VOICE_SERVER_UPDATEs here (never blocking); the connection's recovery thread waits for them
during a reconnect or a move. Each kind carries a generation number, so a waiter can tell an
update that arrived after it asked (a fresh op 4) or after its session began (a move) from one it
already used, whichever socket's news arrived first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ServerUpdate", "StateUpdate", "VoiceUpdates"]


@dataclass(frozen=True)
class StateUpdate:
    """The bot's own voice state: where Discord has it, and the voice session id."""

    channel_id: str | None
    session_id: str = field(repr=False)
    generation: int = 0


@dataclass(frozen=True)
class ServerUpdate:
    """A voice server assignment; ``endpoint`` None means "the server went away, wait"."""

    endpoint: str | None
    token: str = field(repr=False)
    generation: int = 0


class VoiceUpdates:
    """The latest state and server update of one guild, with generations, and a way to wait.

    Thread safety: every method may be called from any thread.
    """

    def __init__(self, state: StateUpdate, server: ServerUpdate) -> None:
        self._changed = threading.Condition()
        self._state = state
        self._server = server
        self._closed = False

    @property
    def state(self) -> StateUpdate:
        with self._changed:
            return self._state

    @property
    def server(self) -> ServerUpdate:
        with self._changed:
            return self._server

    def post_state(self, channel_id: str | None, session_id: str) -> StateUpdate:
        with self._changed:
            self._state = StateUpdate(channel_id, session_id, self._state.generation + 1)
            self._changed.notify_all()
            return self._state

    def post_server(self, endpoint: str | None, token: str) -> ServerUpdate:
        with self._changed:
            self._server = ServerUpdate(endpoint, token, self._server.generation + 1)
            self._changed.notify_all()
            return self._server

    def close(self) -> None:
        """Wake every waiter for good (the connection ended)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait(
        self, ready: Callable[[StateUpdate, ServerUpdate], bool], timeout: float
    ) -> tuple[StateUpdate, ServerUpdate] | None:
        """Block until ``ready(state, server)`` holds; None after `timeout` or on `close`."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self._closed or ready(self._state, self._server), max(0.0, timeout)
            )
            if not ok or self._closed:
                return None
            return self._state, self._server

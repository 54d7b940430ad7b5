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

from discord_voice.clock import Clock, Signal

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

    Waits run on the connection's clock (a fresh op 4 and a move are protocol waits): every
    change sets the current `Signal` and replaces it, so a waiter parks in
    ``clock.wait_until`` and wakes on the next change, on `close`, or at its deadline.

    Thread safety: every method may be called from any thread.
    """

    def __init__(self, state: StateUpdate, server: ServerUpdate, *, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._state = state
        self._server = server
        self._closed = False
        self._changed = Signal()  # set (and replaced) on every change

    @property
    def state(self) -> StateUpdate:
        with self._lock:
            return self._state

    @property
    def server(self) -> ServerUpdate:
        with self._lock:
            return self._server

    def post_state(self, channel_id: str | None, session_id: str) -> StateUpdate:
        with self._lock:
            self._state = state = StateUpdate(channel_id, session_id, self._state.generation + 1)
            changed, self._changed = self._changed, Signal()
        changed.set()
        return state

    def post_server(self, endpoint: str | None, token: str) -> ServerUpdate:
        with self._lock:
            self._server = server = ServerUpdate(endpoint, token, self._server.generation + 1)
            changed, self._changed = self._changed, Signal()
        changed.set()
        return server

    def close(self) -> None:
        """Wake every waiter for good (the connection ended)."""
        with self._lock:
            self._closed = True
            changed = self._changed  # not replaced: a later waiter returns at once
        changed.set()

    def wait(
        self, ready: Callable[[StateUpdate, ServerUpdate], bool], deadline: float
    ) -> tuple[StateUpdate, ServerUpdate] | None:
        """Block until ``ready(state, server)`` holds; None at `deadline` (on the clock) or on
        `close`."""
        while True:
            with self._lock:
                if self._closed:
                    return None
                if ready(self._state, self._server):
                    return self._state, self._server
                changed = self._changed
            if not self._clock.wait_until(deadline, changed):
                with self._lock:  # a change may have landed just at the deadline
                    if not self._closed and ready(self._state, self._server):
                        return self._state, self._server
                return None

"""VoiceSupervisor: feeds one connection's events to its `Lifecycle` and carries out its actions.

Events come from many threads: the voice reader (a lost websocket), the main gateway's reader
(server updates, a kick), the sender (a failure, handed to ``dv-voice-fail:<guild>`` because
the shared sender thread must not block), the user (close) and the recovery thread (how an
attempt ended). Each event is fed to the machine under the supervisor's lock, which is never
held for anything else. Its actions are then carried out in the order the machine emitted
them, one at a time, by whichever thread is not finding another one already at it (no lock
held meanwhile); `End` is carried out at once by the thread that ended the connection, so a
close never waits behind a listener. Blocking steps (a backoff on the clock, a resume, a new
session, the wait for a move) run on a ``dv-voice-recover:<guild>`` thread, one attempt per
thread, and answer with an event. A step's `VoiceError` is turned into ``attempt_failed`` at
this one boundary.

The `LifecycleSteps` carry out the rest (`discord_voice._shell.voice_sessions.VoiceSessions`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

from discord_voice._shell.threads import ServiceThread
from discord_voice.clock import Clock, Signal
from discord_voice.core.lifecycle import (
    ChangeState,
    ConnectionState,
    End,
    HoldFrames,
    Lifecycle,
    LifecycleAction,
    ReportAttempt,
    ResumeAudio,
    StartAttempt,
    StopLink,
)
from discord_voice.core.reconnect import Attempt, AttemptKind
from discord_voice.errors import VoiceError

__all__ = ["AttemptListener", "LifecycleSteps", "StateListener", "VoiceSupervisor"]

log = logging.getLogger("discord_voice.connection")

#: ``listener(old_state, new_state, reason)``; reason is the exception behind the change, if any.
StateListener = Callable[[ConnectionState, ConnectionState, "BaseException | None"], None]
#: ``listener(attempt)``: called before each recovery attempt (resume, reconnect, wait).
AttemptListener = Callable[[Attempt], None]
L = TypeVar("L", StateListener, AttemptListener)


class LifecycleSteps(Protocol):
    """What the supervisor asks of the voice sessions beneath a connection.

    The first four never block; the last four block (bounded) and raise a `VoiceError` when
    they fail. A successful step returns the number of the websocket audio now flows on and,
    for a new session, the server update it was made from.
    """

    def hold_frames(self) -> None: ...

    def stop_link(self, reason: str) -> None: ...

    def resume_audio(self) -> None: ...

    def end(self, error: BaseException | None) -> None: ...

    def resume(self) -> int: ...

    def reconnect(self) -> tuple[int, int]: ...

    def await_move(self, timeout: float) -> bool: ...

    def move(self) -> tuple[int, int]: ...


class VoiceSupervisor:
    """Runs one connection's `Lifecycle` (see the module docstring).

    `on_ended(error, leave)` is called once, on the thread that ended the connection, after
    the steps were told to `end`.

    Thread safety: every method from any thread. The machine, the action queue and the thread
    list are guarded by one lock; the listener lists by the same lock.
    """

    def __init__(
        self,
        machine: Lifecycle,
        steps: LifecycleSteps,
        *,
        clock: Clock,
        guild_id: str,
        on_ended: Callable[[BaseException | None, bool], None],
    ) -> None:
        self._machine = machine
        self._steps = steps
        self._clock = clock
        self._guild = guild_id
        self._on_ended = on_ended
        self._lock = threading.Lock()  # guards everything below; never held for I/O
        self.state_changed = threading.Condition(self._lock)
        self._queue: deque[LifecycleAction] = deque()
        self._draining = False
        self._threads: list[ServiceThread] = []  # recovery and failure threads
        self._listeners: list[StateListener] = []
        self._attempt_listeners: list[AttemptListener] = []
        #: Set once the connection has ended (after the steps were told to `end`).
        self.closed = Signal()

    def __repr__(self) -> str:
        return f"<VoiceSupervisor guild={self._guild} {self._machine!r}>"

    @property
    def state(self) -> ConnectionState:
        return self._machine.state

    @property
    def error(self) -> BaseException | None:
        return self._machine.error

    def wait_for(self, ready: Callable[[ConnectionState], bool], timeout: float) -> bool:
        """Block (real seconds) until ``ready(state)`` holds or the connection is closed."""
        with self.state_changed:
            return self.state_changed.wait_for(
                lambda: ready(self._machine.state) or self._machine.state is ConnectionState.CLOSED,
                timeout,
            )

    # -- listeners -------------------------------------------------------------------------------

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        return _add(self._lock, self._listeners, listener)

    def add_attempt_listener(self, listener: AttemptListener) -> Callable[[], None]:
        return _add(self._lock, self._attempt_listeners, listener)

    # -- events ----------------------------------------------------------------------------------

    def joined(self, socket: int) -> None:
        self._feed(lambda m: m.joined(socket))

    def link_lost(self, error: BaseException, socket: int) -> None:
        self._feed(lambda m: m.link_lost(error, socket))

    def server_update(self, generation: int) -> None:
        self._feed(lambda m: m.server_update(generation))

    def kicked(self) -> None:
        self._feed(lambda m: m.kicked())

    def fail(self, error: BaseException) -> None:
        self._feed(lambda m: m.fail(error))

    def close(self) -> None:
        self._feed(lambda m: m.close())

    def fail_elsewhere(self, error: BaseException) -> None:
        """`fail` on a ``dv-voice-fail:<guild>`` thread (from a thread that must not block)."""
        self._start(f"dv-voice-fail:{self._guild}", lambda: self.fail(error))

    def threads(self) -> list[ServiceThread]:
        """The recovery and failure threads started so far (for the owner to join)."""
        with self._lock:
            return list(self._threads)

    # -- carrying out ----------------------------------------------------------------------------

    def _feed(self, event: Callable[[Lifecycle], list[LifecycleAction]]) -> None:
        with self._lock:
            actions = event(self._machine)
            if actions:
                self.state_changed.notify_all()
            end = next((a for a in actions if isinstance(a, End)), None)
            self._queue.extend(a for a in actions if not isinstance(a, End))
            drain = bool(self._queue) and not self._draining
            self._draining = self._draining or drain
        if end is not None:
            self._end(end)
        if drain:
            self._drain()

    def _drain(self) -> None:
        """Carry out queued actions until none is left (on the thread that found it idle)."""
        action: LifecycleAction | None = None
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._draining = False
                        return
                    action = self._queue.popleft()
                    closed = self._machine.state is ConnectionState.CLOSED
                if not closed or isinstance(action, ChangeState):
                    self._carry_out(action)  # once closed, only the listeners are told
        except BaseException:
            with self._lock:
                self._draining = False  # a bug in a step: the next event drains the rest
            raise

    def _carry_out(self, action: LifecycleAction) -> None:
        if isinstance(action, ChangeState):
            self._tell_state(action)
        elif isinstance(action, HoldFrames):
            self._steps.hold_frames()
        elif isinstance(action, StopLink):
            log.info("voice connection (guild %s): %s", self._guild, action.reason)
            self._steps.stop_link(action.reason)
        elif isinstance(action, ReportAttempt):
            self._tell_attempt(action.attempt)
        elif isinstance(action, StartAttempt):
            attempt = action.attempt
            self._start(f"dv-voice-recover:{self._guild}", lambda: self._run(attempt))
        elif isinstance(action, ResumeAudio):
            self._steps.resume_audio()
        else:
            self._end(action)

    def _end(self, end: End) -> None:
        if end.error is not None:
            log.error("voice connection (guild %s) failed: %s", self._guild, end.error)
        self._steps.end(end.error)
        self.closed.set()
        self._on_ended(end.error, end.leave)

    def _tell_state(self, change: ChangeState) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(change.old, change.new, change.reason)
            except Exception as exc:
                log.exception("state listener of voice connection (guild %s) failed", self._guild)
                self.fail(exc)  # never only logged (absorbed once closed)

    def _tell_attempt(self, attempt: Attempt) -> None:
        with self._lock:
            listeners = list(self._attempt_listeners)
        for listener in listeners:
            try:
                listener(attempt)
            except Exception as exc:
                log.exception("attempt listener of voice connection (guild %s) failed", self._guild)
                self.fail(exc)

    def _start(self, name: str, body: Callable[[], None]) -> None:
        """Start a thread of ours unless the connection is closed (then its threads were
        listed for joining already)."""
        with self._lock:
            if self._machine.state is ConnectionState.CLOSED:
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = ServiceThread(name, body, self.fail)
            self._threads.append(thread)
            thread.start()

    def _run(self, attempt: Attempt) -> None:
        """One attempt, on the recovery thread: its wait, its step, and the answer."""
        steps, clock = self._steps, self._clock
        if attempt.kind is AttemptKind.WAIT_FOR_MOVE:
            if not steps.await_move(attempt.delay):
                self._feed(lambda m: m.move_expired())  # absorbed if we closed meanwhile
                return
            step: Callable[[], tuple[int, int | None]] = steps.move
        else:
            if clock.wait_until(clock.monotonic() + attempt.delay, self.closed):
                return  # closed during the backoff
            if attempt.kind is AttemptKind.RESUME:
                step = lambda: (steps.resume(), None)  # noqa: E731 - one line, one use
            else:
                step = steps.reconnect
        try:
            socket, generation = step()
        except VoiceError as exc:  # the boundary where a failed step becomes an event
            failure: VoiceError = exc
            self._feed(lambda m: m.attempt_failed(failure))
            return
        self._feed(lambda m: m.attempt_succeeded(socket, generation))


def _add(lock: threading.Lock, listeners: list[L], listener: L) -> Callable[[], None]:
    with lock:
        listeners.append(listener)

    def remove() -> None:
        with lock:
            if listener in listeners:
                listeners.remove(listener)

    return remove

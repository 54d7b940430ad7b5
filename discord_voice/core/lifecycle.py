"""One voice connection's lifecycle as a pure state machine: events in, actions out.

Rules (every decision about joining, recovering, moving and ending lives here):

1. A connection is in exactly one `Phase`:

   - ``JOINING``: the first voice handshake runs on the caller's thread.
   - ``READY``: audio flows.
   - ``RESUMING``: the voice websocket is being resumed (op 7); UDP audio goes on.
   - ``RECONNECTING``: a new voice session is being made (fresh op 4, or a move); frames held.
   - ``AWAITING_MOVE``: waiting (bounded) for the VOICE_SERVER_UPDATE of a move, then going
     there; frames held.
   - ``CLOSED``: ended; every event is absorbed from then on.

   The public `ConnectionState` is the phase, with JOINING shown as CONNECTING and
   AWAITING_MOVE as RECONNECTING.

2. Transitions (event: from -> to; an event in a phase not listed for it is a bug of the
   shell and raises `LocalProtocolError`; CLOSED absorbs every event):

   ====================  ==================  ==============================================
   event                 from                to
   ====================  ==================  ==============================================
   `joined`              JOINING             READY (then a move, if a server update came)
   `link_lost`           JOINING             CLOSED (the caller gets the error)
   `link_lost`           READY               the plan's first step (see 3), or CLOSED; a
                                             loss of a socket other than the current one
                                             (replaced, or stopped by us) is ignored
   `link_lost`           recovering          unchanged: remembered per socket until the
                                             attempt ends
   `attempt_succeeded`   recovering          READY, or the next recovery (a remembered loss
                                             of the socket it made; then a server update
                                             newer than the session)
   `attempt_failed`      recovering          the plan's next step, or CLOSED
   `move_expired`        AWAITING_MOVE       CLOSED (``Disconnected("not_moved")``)
   `server_update`       READY               AWAITING_MOVE (a move, or a server going away)
   `server_update`       JOINING, recovering unchanged: remembered for `joined`/success
   `kicked`              any but CLOSED      CLOSED (``Disconnected("kicked")``, no leave)
   `fail`                any but CLOSED      CLOSED with the error
   `close`               any but CLOSED      CLOSED, no error
   ====================  ==================  ==============================================

   "recovering" is RESUMING, RECONNECTING or AWAITING_MOVE.

3. Recovery follows the connection's `ReconnectPlan` (`core.reconnect`: the close-code policy
   and the retry budgets): `first_step` maps the error that ended the websocket to its first
   `Attempt`, `ReconnectPlan.after_failure` gives the next one. Entering an attempt emits, in
   order: `HoldFrames` (when a new session is needed and frames are not held yet), `StopLink`,
   `ReportAttempt`, `ChangeState` (when the public state changes) and `StartAttempt`, which the
   shell carries out on its recovery thread (backoff on the clock, then the blocking step) and
   answers with `attempt_succeeded`, `attempt_failed` or `move_expired`.

4. At most one attempt is outstanding: a `StartAttempt` is emitted only when none is, and the
   attempt ends with exactly one answer. Frames are held from entering RECONNECTING or
   AWAITING_MOVE until READY, where `ResumeAudio` (Speaking first, then the frames) releases
   them; they are never held in READY.

5. Ending emits `End` (the shell stops everything, and tells the owner, which sends the leave
   when ``leave`` is true) and then `ChangeState` to CLOSED. The first error is the one kept.

Pure: no I/O, threads or clocks; the object holds no lock (its shell serialises the events).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from discord_voice.core.opcodes import ClientCloseCode
from discord_voice.core.reconnect import (
    Action,
    Attempt,
    AttemptKind,
    ClosePolicy,
    GiveUp,
    ReconnectPlan,
    RetryBudget,
    StopCause,
)
from discord_voice.errors import (
    ConnectionClosed,
    Disconnected,
    HeartbeatTimeout,
    LocalProtocolError,
    VoiceGatewayClosed,
)

__all__ = [
    "ChangeState",
    "ConnectionState",
    "End",
    "HoldFrames",
    "Lifecycle",
    "LifecycleAction",
    "Phase",
    "ReportAttempt",
    "ResumeAudio",
    "StartAttempt",
    "StopLink",
    "default_voice_plan",
    "first_step",
    "move_attempt",
]

#: The code a client-side close stands for in the plan (we closed a zombie: not 1000/1001).
_OUR_RECOVERY_CLOSE = ClientCloseCode.RECOVERING


class ConnectionState(enum.Enum):
    """Lifecycle of a `Connection`, as its users see it."""

    CONNECTING = "connecting"
    READY = "ready"
    RESUMING = "resuming"  # the voice websocket is being resumed; UDP audio goes on
    RECONNECTING = "reconnecting"  # a new voice session is being made; frames are held
    CLOSED = "closed"


class Phase(enum.Enum):
    """Where a connection is in its lifecycle (see the module rules)."""

    JOINING = "joining"
    READY = "ready"
    RESUMING = "resuming"
    RECONNECTING = "reconnecting"
    AWAITING_MOVE = "awaiting_move"
    CLOSED = "closed"

    @property
    def public(self) -> ConnectionState:
        return _PUBLIC[self]


_PUBLIC = {
    Phase.JOINING: ConnectionState.CONNECTING,
    Phase.READY: ConnectionState.READY,
    Phase.RESUMING: ConnectionState.RESUMING,
    Phase.RECONNECTING: ConnectionState.RECONNECTING,
    Phase.AWAITING_MOVE: ConnectionState.RECONNECTING,
    Phase.CLOSED: ConnectionState.CLOSED,
}
_RECOVERING = frozenset({Phase.RESUMING, Phase.RECONNECTING, Phase.AWAITING_MOVE})


def default_voice_plan() -> ReconnectPlan[Action]:
    """The default recovery of a voice connection (see `discord_voice.core.reconnect`):
    `ClosePolicy.voice_default()`; up to 3 resumes (the first at once, then 0.25 s, 0.5 s);
    then up to 5 new sessions (at once, then 0.5 s doubling, capped at 8 s, 20 % jitter);
    a move is waited for 10 s."""
    return ReconnectPlan(
        ClosePolicy.voice_default(),
        resume=RetryBudget(max_attempts=3, base_delay=0.25, max_delay=5.0, immediate_first=True),
        new_session=RetryBudget(
            max_attempts=5, base_delay=0.5, max_delay=8.0, immediate_first=True
        ),
        move_timeout=10.0,
    )


def first_step(plan: ReconnectPlan[Action], error: BaseException) -> Attempt | GiveUp:
    """The plan's first step after the voice websocket was lost with `error`."""
    if isinstance(error, VoiceGatewayClosed):
        return plan.first(error.code, error.reason)
    if isinstance(error, HeartbeatTimeout):  # we closed a zombie socket ourselves
        return plan.first(_OUR_RECOVERY_CLOSE, str(error), we_closed=True)
    if isinstance(error, ConnectionClosed):  # dropped without a close frame
        return plan.first(None, str(error))
    return GiveUp(StopCause.FATAL_CODE, None, str(error))  # not a connection failure


def move_attempt(plan: ReconnectPlan[Action], reason: str) -> Attempt:
    """The step for a VOICE_SERVER_UPDATE that arrived while connected (a move)."""
    return Attempt(AttemptKind.WAIT_FOR_MOVE, 1, plan.move_timeout, None, reason)


# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeState:
    """Tell the state listeners: ``listener(old, new, reason)``."""

    old: ConnectionState
    new: ConnectionState
    reason: BaseException | None


@dataclass(frozen=True)
class HoldFrames:
    """The sender keeps every frame from now on (a new session is being made)."""


@dataclass(frozen=True)
class StopLink:
    """Stop the current voice session's websocket (it is gone or about to be replaced)."""

    reason: str


@dataclass(frozen=True)
class ReportAttempt:
    """Tell the attempt listeners what is tried next."""

    attempt: Attempt


@dataclass(frozen=True)
class StartAttempt:
    """Carry out `attempt` off the event's thread: wait its delay on the clock (for
    WAIT_FOR_MOVE: wait up to that long for the move), then resume, reconnect or move."""

    attempt: Attempt


@dataclass(frozen=True)
class ResumeAudio:
    """Audio may flow on the current session: send Speaking (if flags are set), then let the
    sender go on (at the join: hand it the stream)."""


@dataclass(frozen=True)
class End:
    """The connection ended with `error` (None: closed by the user); stop everything and tell
    the owner, which sends the leave when `leave` is set."""

    error: BaseException | None
    leave: bool


LifecycleAction = (
    ChangeState | HoldFrames | StopLink | ReportAttempt | StartAttempt | ResumeAudio | End
)


# -- the machine -------------------------------------------------------------------------------


class Lifecycle:
    """The lifecycle of one voice connection (see the module rules).

    Each event method returns the actions to carry out, in order.

    Thread safety: none; the shell feeds it under one lock.
    """

    def __init__(self, plan: ReconnectPlan[Action] | None = None) -> None:
        self.plan = plan if plan is not None else default_voice_plan()
        self._phase = Phase.JOINING
        self._attempt: Attempt | None = None  # the outstanding attempt, while recovering
        self._socket = 0  # the number of the websocket audio flows on (the shell's)
        self._lost: dict[int, BaseException] = {}  # socket -> its first loss, during an attempt
        self._held = False  # whether HoldFrames was emitted since the last ResumeAudio
        self._latest_server = 0  # generation of the newest VOICE_SERVER_UPDATE
        self._session_server = 0  # generation the current session was made from
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Lifecycle {self._phase.value} attempt={self._attempt}>"

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def state(self) -> ConnectionState:
        return self._phase.public

    @property
    def attempt(self) -> Attempt | None:
        """The outstanding recovery attempt, if any."""
        return self._attempt

    @property
    def held(self) -> bool:
        """Whether frames are held (HoldFrames emitted, no ResumeAudio since)."""
        return self._held

    @property
    def error(self) -> BaseException | None:
        """The error that ended the connection (the first one), if any."""
        return self._error

    # -- events --------------------------------------------------------------------------------

    def joined(self, socket: int = 0) -> list[LifecycleAction]:
        """The first handshake completed on websocket number `socket`: audio can flow."""
        if self._phase is Phase.CLOSED:
            return []
        self._require({Phase.JOINING}, "joined")
        self._socket = socket
        return self._ready(None)

    def link_lost(self, error: BaseException, socket: int = 0) -> list[LifecycleAction]:
        """Voice websocket number `socket` ended with `error`."""
        if self._phase is Phase.CLOSED:
            return []
        if self._phase is Phase.JOINING:
            return self._end(error, leave=True)
        if self._phase is Phase.READY:
            if socket != self._socket:
                return []  # a replaced socket ending late
            return self._step(first_step(self.plan, error), error)
        self._lost.setdefault(socket, error)  # the attempt under way learns of it at its end
        return []

    def attempt_succeeded(
        self, socket: int = 0, server_generation: int | None = None
    ) -> list[LifecycleAction]:
        """The outstanding attempt made websocket number `socket` work; `server_generation` is
        the server update a new session was made from (None: the same session, resumed)."""
        if self._phase is Phase.CLOSED:
            return []
        self._require(_RECOVERING, "attempt_succeeded")
        if server_generation is not None:
            self._session_server = server_generation
        self._attempt, self._socket = None, socket
        lost = self._lost.pop(socket, None)
        self._lost.clear()  # losses of other sockets: replaced ones
        if lost is not None:  # the new socket was lost meanwhile: recover from that in turn
            return self._step(first_step(self.plan, lost), lost)
        return self._ready(None)

    def attempt_failed(self, error: BaseException) -> list[LifecycleAction]:
        """The outstanding attempt failed with `error`."""
        if self._phase is Phase.CLOSED:
            return []
        self._require(_RECOVERING, "attempt_failed")
        attempt = self._attempt
        assert attempt is not None
        self._attempt = None
        self._lost.clear()  # the next attempt replaces that socket anyway
        code = error.code if isinstance(error, VoiceGatewayClosed) else None
        return self._step(self.plan.after_failure(attempt, code, str(error)), error)

    def move_expired(self) -> list[LifecycleAction]:
        """No VOICE_SERVER_UPDATE came while AWAITING_MOVE."""
        if self._phase is Phase.CLOSED:
            return []
        self._require({Phase.AWAITING_MOVE}, "move_expired")
        attempt = self._attempt
        assert attempt is not None
        self._attempt = None
        step = self.plan.wait_expired(attempt)
        return self._end(_give_up_error(step, ConnectionClosed(step.reason)), leave=True)

    def server_update(self, generation: int) -> list[LifecycleAction]:
        """A VOICE_SERVER_UPDATE (numbered `generation`, increasing) for the guild."""
        if self._phase is Phase.CLOSED:
            return []
        self._latest_server = max(self._latest_server, generation)
        if self._phase is not Phase.READY:
            return []  # looked at again by `joined` or when the attempt succeeds
        return self._move("new voice server assigned")

    def kicked(self) -> list[LifecycleAction]:
        """Our VOICE_STATE_UPDATE with no channel: kicked, or the channel was deleted."""
        if self._phase is Phase.CLOSED:
            return []
        return self._end(
            Disconnected(
                "kicked",
                "disconnected from the voice channel by Discord (kicked, or the "
                "channel was deleted)",
            ),
            leave=False,
        )  # Discord has removed us already

    def fail(self, error: BaseException) -> list[LifecycleAction]:
        """Something that cannot be recovered from (a failed join, sending, a listener)."""
        if self._phase is Phase.CLOSED:
            return []
        return self._end(error, leave=True)

    def close(self) -> list[LifecycleAction]:
        """The user disconnects."""
        if self._phase is Phase.CLOSED:
            return []
        return self._end(None, leave=True)

    # -- helpers -------------------------------------------------------------------------------

    def _ready(self, reason: BaseException | None) -> list[LifecycleAction]:
        old = self._phase
        self._phase, self._held = Phase.READY, False
        actions: list[LifecycleAction] = [
            ChangeState(old.public, Phase.READY.public, reason),
            ResumeAudio(),
        ]
        if self._latest_server > self._session_server:
            actions += self._move("a new voice server was assigned meanwhile")
        return actions

    def _move(self, reason: str) -> list[LifecycleAction]:
        return self._step(move_attempt(self.plan, reason), ConnectionClosed(reason))

    def _step(self, step: Attempt | GiveUp, error: BaseException) -> list[LifecycleAction]:
        """Enter `step` (an attempt), or end with the error it stands for."""
        if isinstance(step, GiveUp):
            return self._end(_give_up_error(step, error), leave=True)
        old = self._phase
        self._phase = _PHASE_OF[step.kind]
        self._attempt = step
        actions: list[LifecycleAction] = []
        if self._phase is not Phase.RESUMING and not self._held:
            self._held = True  # at once: not one more frame to a session that is gone
            actions.append(HoldFrames())
        actions += [StopLink(step.summary()), ReportAttempt(step)]
        if old.public is not self._phase.public:
            actions.append(ChangeState(old.public, self._phase.public, error))
        actions.append(StartAttempt(step))
        return actions

    def _end(self, error: BaseException | None, *, leave: bool) -> list[LifecycleAction]:
        old = self._phase
        self._phase, self._attempt, self._error = Phase.CLOSED, None, error
        self._lost.clear()
        return [End(error, leave), ChangeState(old.public, ConnectionState.CLOSED, error)]

    def _require(self, phases: set[Phase] | frozenset[Phase], event: str) -> None:
        if self._phase not in phases:
            raise LocalProtocolError(f"lifecycle: {event} in phase {self._phase.value}")


_PHASE_OF = {
    AttemptKind.RESUME: Phase.RESUMING,
    AttemptKind.RECONNECT: Phase.RECONNECTING,
    AttemptKind.REIDENTIFY: Phase.RECONNECTING,  # not a voice kind; a new session all the same
    AttemptKind.WAIT_FOR_MOVE: Phase.AWAITING_MOVE,
}


def _give_up_error(step: GiveUp, error: BaseException) -> BaseException:
    if step.cause is StopCause.NOT_MOVED:
        what = "no close code" if step.code is None else f"close code {step.code}"
        return Disconnected(
            "not_moved",
            f"disconnected from voice ({what}) and no new voice server was assigned in time",
            step.code,
        )
    return error

"""The connection lifecycle (`core.lifecycle`), in memory, against a table written here.

`TABLE` is written from the rules in the module docstring, not read from the code: every
(phase, event) pair is checked against it (the phase reached, the kinds of actions emitted in
order, or a `LocalProtocolError` for an event the shell must never send there). A Hypothesis
state machine then feeds random event sequences and checks the invariants: never two attempts
outstanding, frames held exactly while a new session is being made, CLOSED absorbs, the first
error wins, and the state changes reported form one unbroken chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from discord_voice.core.lifecycle import (
    ChangeState,
    ConnectionState,
    End,
    HoldFrames,
    Lifecycle,
    LifecycleAction,
    Phase,
    ReportAttempt,
    ResumeAudio,
    StartAttempt,
    StopLink,
)
from discord_voice.core.reconnect import (
    Action,
    AttemptKind,
    ClosePolicy,
    ReconnectPlan,
    RetryBudget,
)
from discord_voice.errors import (
    ConnectionClosed,
    DaveRequired,
    Disconnected,
    HeartbeatTimeout,
    LocalProtocolError,
    VoiceGatewayClosed,
)

J, R, RS, RC, AM, C = (
    Phase.JOINING,
    Phase.READY,
    Phase.RESUMING,
    Phase.RECONNECTING,
    Phase.AWAITING_MOVE,
    Phase.CLOSED,
)


def plan(resumes: int = 3, sessions: int = 5) -> ReconnectPlan[Action]:
    return ReconnectPlan(
        ClosePolicy.voice_default(),
        resume=RetryBudget(resumes, base_delay=0.25, jitter=0.0, immediate_first=True),
        new_session=RetryBudget(sessions, base_delay=0.5, jitter=0.0, immediate_first=True),
        move_timeout=10.0,
    )


# -- how to reach each phase, and the events --------------------------------------------------

SETUP: Final[dict[Phase, Callable[[Lifecycle], object]]] = {
    J: lambda m: None,
    R: lambda m: m.joined(),
    RS: lambda m: (m.joined(), m.link_lost(ConnectionClosed("dropped"))),
    RC: lambda m: (m.joined(), m.link_lost(VoiceGatewayClosed(4006, "session invalid"))),
    AM: lambda m: (m.joined(), m.link_lost(VoiceGatewayClosed(4014, "disconnected"))),
    C: lambda m: m.close(),
}

EVENTS: Final[dict[str, Callable[[Lifecycle], list[LifecycleAction]]]] = {
    "joined": lambda m: m.joined(),
    "lost_resumable": lambda m: m.link_lost(ConnectionClosed("dropped")),
    "lost_zombie": lambda m: m.link_lost(HeartbeatTimeout("no ack", 1.0)),
    "lost_4006": lambda m: m.link_lost(VoiceGatewayClosed(4006, "session invalid")),
    "lost_4014": lambda m: m.link_lost(VoiceGatewayClosed(4014, "disconnected")),
    "lost_fatal": lambda m: m.link_lost(DaveRequired()),
    "lost_bug": lambda m: m.link_lost(RuntimeError("not a connection failure")),
    "succeeded": lambda m: m.attempt_succeeded(),
    "failed": lambda m: m.attempt_failed(ConnectionClosed("again")),
    "failed_fatal": lambda m: m.attempt_failed(VoiceGatewayClosed(4021, "rate limited")),
    "move_expired": lambda m: m.move_expired(),
    "server_update": lambda m: m.server_update(1),
    "kicked": lambda m: m.kicked(),
    "fail": lambda m: m.fail(ConnectionClosed("sending failed")),
    "close": lambda m: m.close(),
}

# -- the table: (phase, event) -> (phase after, action kinds) or ERROR --------------------------

ERROR: Final = "error"
ENDS = (C, ("End", "ChangeState"))
BEGIN_HELD = ("HoldFrames", "StopLink", "ReportAttempt", "ChangeState", "StartAttempt")
BEGIN_RESUME = ("StopLink", "ReportAttempt", "ChangeState", "StartAttempt")
NEXT_SAME_STATE = ("StopLink", "ReportAttempt", "StartAttempt")
TO_READY = (R, ("ChangeState", "ResumeAudio"))
Outcome = tuple[Phase, tuple[str, ...]] | str

TABLE: Final[dict[tuple[Phase, str], Outcome]] = {
    # joining
    (J, "joined"): TO_READY,
    (J, "lost_resumable"): ENDS,
    (J, "lost_zombie"): ENDS,
    (J, "lost_4006"): ENDS,
    (J, "lost_4014"): ENDS,
    (J, "lost_fatal"): ENDS,
    (J, "lost_bug"): ENDS,
    (J, "succeeded"): ERROR,
    (J, "failed"): ERROR,
    (J, "failed_fatal"): ERROR,
    (J, "move_expired"): ERROR,
    (J, "server_update"): (J, ()),
    (J, "kicked"): ENDS,
    (J, "fail"): ENDS,
    (J, "close"): ENDS,
    # ready
    (R, "joined"): ERROR,
    (R, "lost_resumable"): (RS, BEGIN_RESUME),
    (R, "lost_zombie"): (RS, BEGIN_RESUME),
    (R, "lost_4006"): (RC, BEGIN_HELD),
    (R, "lost_4014"): (AM, BEGIN_HELD),
    (R, "lost_fatal"): ENDS,
    (R, "lost_bug"): ENDS,
    (R, "succeeded"): ERROR,
    (R, "failed"): ERROR,
    (R, "failed_fatal"): ERROR,
    (R, "move_expired"): ERROR,
    (R, "server_update"): (AM, BEGIN_HELD),
    (R, "kicked"): ENDS,
    (R, "fail"): ENDS,
    (R, "close"): ENDS,
}
for _phase, _hold in ((RS, ()), (RC, ()), (AM, ())):
    TABLE.update(
        {
            (_phase, "joined"): ERROR,
            **{
                (_phase, e): (_phase, _hold)
                for e in (
                    "lost_resumable",
                    "lost_zombie",
                    "lost_4006",
                    "lost_4014",
                    "lost_fatal",
                    "lost_bug",
                )
            },
            (_phase, "succeeded"): TO_READY,
            (_phase, "failed_fatal"): ENDS,
            (_phase, "server_update"): (_phase, ()),
            (_phase, "kicked"): ENDS,
            (_phase, "fail"): ENDS,
            (_phase, "close"): ENDS,
        }
    )
# a failed resume is resume 2/3; a failed reconnect is reconnect 2/5 (frames already held);
# a failed move falls back to a fresh session, which the public state already shows
TABLE[(RS, "failed")] = (RS, NEXT_SAME_STATE)
TABLE[(RC, "failed")] = (RC, NEXT_SAME_STATE)
TABLE[(AM, "failed")] = (RC, NEXT_SAME_STATE)
TABLE[(RS, "move_expired")] = ERROR
TABLE[(RC, "move_expired")] = ERROR
TABLE[(AM, "move_expired")] = ENDS
TABLE.update({(C, e): (C, ()) for e in EVENTS})  # CLOSED absorbs everything


def test_the_table_covers_every_pair() -> None:
    assert set(TABLE) == {(p, e) for p in Phase for e in EVENTS}


def by_name(pair: tuple[Phase, str]) -> tuple[str, str]:
    return pair[0].value, pair[1]


PAIRS: Final[list[tuple[Phase, str]]] = sorted(TABLE.keys(), key=by_name)


@pytest.mark.parametrize(("phase", "event"), PAIRS)
def test_every_phase_and_event_against_the_table(phase: Phase, event: str) -> None:
    machine = Lifecycle(plan())
    SETUP[phase](machine)
    assert machine.phase is phase
    expected = TABLE[(phase, event)]
    if isinstance(expected, str):
        with pytest.raises(LocalProtocolError):
            EVENTS[event](machine)
        assert machine.phase is phase  # a refused event changes nothing
        return
    target, kinds = expected
    actions = EVENTS[event](machine)
    assert (machine.phase, tuple(type(a).__name__ for a in actions)) == (target, kinds)


# -- particular rules ---------------------------------------------------------------------------


def kinds(actions: list[LifecycleAction]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_state_changes_name_the_public_states_and_the_cause() -> None:
    machine = Lifecycle(plan())
    assert machine.phase.public is ConnectionState.CONNECTING
    assert machine.joined()[0] == ChangeState(
        ConnectionState.CONNECTING, ConnectionState.READY, None
    )
    cause = VoiceGatewayClosed(4014, "disconnected")
    change = [a for a in machine.link_lost(cause) if isinstance(a, ChangeState)]
    assert change == [ChangeState(ConnectionState.READY, ConnectionState.RECONNECTING, cause)]
    assert machine.state is ConnectionState.RECONNECTING  # AWAITING_MOVE shows as RECONNECTING


def test_attempts_follow_the_plan_and_give_up_with_the_last_error() -> None:
    machine = Lifecycle(plan(resumes=2, sessions=2))
    machine.joined()
    started = [
        a.attempt
        for a in machine.link_lost(ConnectionClosed("dropped"))
        if isinstance(a, StartAttempt)
    ]
    last = VoiceGatewayClosed(4006, "still invalid")
    for error in (ConnectionClosed("a"), ConnectionClosed("b"), VoiceGatewayClosed(4006, "c")):
        started += [a.attempt for a in machine.attempt_failed(error) if isinstance(a, StartAttempt)]
    assert [(a.kind, a.number) for a in started] == [
        (AttemptKind.RESUME, 1),
        (AttemptKind.RESUME, 2),
        (AttemptKind.RECONNECT, 1),
        (AttemptKind.RECONNECT, 2),
    ]
    assert [a.delay for a in started] == [0.0, 0.25, 0.0, 0.5]
    actions = machine.attempt_failed(last)
    assert actions[0] == End(last, leave=True) and machine.error is last


def test_a_fatal_close_ends_at_once_with_its_error_and_the_leave() -> None:
    machine = Lifecycle(plan())
    machine.joined()
    error = DaveRequired()
    assert machine.link_lost(error)[0] == End(error, leave=True)


def test_kicked_ends_without_a_leave() -> None:
    machine = Lifecycle(plan())
    machine.joined()
    end = machine.kicked()[0]
    assert isinstance(end, End) and not end.leave
    assert isinstance(end.error, Disconnected) and end.error.why == "kicked"


def test_no_move_in_time_ends_as_not_moved_with_the_close_code() -> None:
    machine = Lifecycle(plan())
    machine.joined()
    machine.link_lost(VoiceGatewayClosed(4022, "call terminated"))
    end = machine.move_expired()[0]
    assert isinstance(end, End) and end.leave
    assert isinstance(end.error, Disconnected)
    assert (end.error.why, end.error.code) == ("not_moved", 4022)


def test_a_loss_during_an_attempt_starts_the_next_recovery_instead_of_ready() -> None:
    machine = Lifecycle(plan())
    machine.joined()
    machine.link_lost(VoiceGatewayClosed(4015, "crashed"))
    assert machine.link_lost(VoiceGatewayClosed(4006, "the resumed socket went too")) == []
    actions = machine.attempt_succeeded()
    assert kinds(actions) == list(BEGIN_HELD) and machine.phase is RC
    assert "ResumeAudio" not in kinds(actions)  # never READY in between


def test_a_failed_attempt_forgets_the_loss_of_its_own_socket() -> None:
    machine = Lifecycle(plan())
    machine.joined()
    machine.link_lost(ConnectionClosed("dropped"))
    machine.link_lost(VoiceGatewayClosed(4006, "the resume's socket"))
    machine.attempt_failed(VoiceGatewayClosed(4006, "the resume's socket"))
    assert kinds(machine.attempt_succeeded()) == ["ChangeState", "ResumeAudio"]


def test_losses_of_other_sockets_are_ignored_or_forgotten() -> None:
    machine = Lifecycle(plan())
    machine.joined(socket=1)
    assert machine.link_lost(ConnectionClosed("a replaced socket"), socket=7) == []
    assert machine.phase is R
    machine.link_lost(ConnectionClosed("dropped"), socket=1)
    machine.link_lost(ConnectionClosed("the stopped socket, late"), socket=1)
    assert kinds(machine.attempt_succeeded(socket=2)) == ["ChangeState", "ResumeAudio"]
    assert machine.link_lost(ConnectionClosed("socket 1 again"), socket=1) == []
    assert kinds(machine.link_lost(ConnectionClosed("dropped"), socket=2)) == list(BEGIN_RESUME)


def test_a_server_update_during_a_recovery_moves_once_it_succeeded() -> None:
    machine = Lifecycle(plan())
    machine.joined()
    machine.link_lost(VoiceGatewayClosed(4006, "invalid"))
    assert machine.server_update(1) == []  # the reconnect's own update, say
    assert machine.server_update(2) == []  # and a move after it
    assert kinds(machine.attempt_succeeded(server_generation=1))[:2] == [
        "ChangeState",
        "ResumeAudio",
    ]
    assert machine.phase is AM
    # the move's session is made from update 2: nothing newer, so READY and done
    assert kinds(machine.attempt_succeeded(server_generation=2)) == ["ChangeState", "ResumeAudio"]
    assert machine.phase is R


def test_a_server_update_during_the_join_moves_right_after_it() -> None:
    machine = Lifecycle(plan())
    machine.server_update(1)
    actions = machine.joined()
    assert kinds(actions) == ["ChangeState", "ResumeAudio", *BEGIN_HELD]
    start = actions[-1]
    assert isinstance(start, StartAttempt) and start.attempt.kind is AttemptKind.WAIT_FOR_MOVE


def test_the_first_error_wins() -> None:
    machine = Lifecycle(plan())
    first = ConnectionClosed("first")
    machine.fail(first)
    assert machine.fail(ConnectionClosed("second")) == [] and machine.kicked() == []
    assert machine.error is first


def test_frames_are_held_once_and_released_at_ready() -> None:
    machine = Lifecycle(plan())
    machine.joined()
    actions = machine.link_lost(VoiceGatewayClosed(4014, "moved"))
    assert isinstance(actions[0], HoldFrames) and machine.held
    actions = machine.attempt_failed(ConnectionClosed("new server unreachable"))
    assert not any(isinstance(a, HoldFrames) for a in actions)  # still held
    actions = machine.attempt_succeeded(server_generation=1)
    assert any(isinstance(a, ResumeAudio) for a in actions) and not machine.held


# -- random sequences against the invariants ----------------------------------------------------

ERRORS = st.sampled_from(
    [
        ConnectionClosed("dropped"),
        HeartbeatTimeout("no ack", 1.0),
        VoiceGatewayClosed(4006, "invalid"),
        VoiceGatewayClosed(4009, "timeout"),
        VoiceGatewayClosed(4014, "disconnected"),
        VoiceGatewayClosed(4015, "crashed"),
        VoiceGatewayClosed(4022, "terminated"),
        VoiceGatewayClosed(4021, "rate limited"),
        VoiceGatewayClosed(1006, "abnormal"),
        DaveRequired(),
    ]
)


class LifecycleMachine(RuleBasedStateMachine):
    """Feeds events the shell may send (the ones `Lifecycle` accepts in its phase) and checks
    the invariants on the actions, with its own bookkeeping."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = Lifecycle(plan(resumes=2, sessions=3))
        self.outstanding = 0  # StartAttempt emitted and not yet answered
        self.held = False  # from the actions: HoldFrames sets, ResumeAudio clears
        self.public = ConnectionState.CONNECTING  # from the ChangeState chain
        self.ends: list[End] = []
        self.generation = 0

    def feed(self, actions: list[LifecycleAction], *, answered: bool = False) -> None:
        if self.public is ConnectionState.CLOSED:
            assert actions == []  # CLOSED absorbs
            return
        if answered:
            self.outstanding -= 1
        for action in actions:
            if isinstance(action, StartAttempt):
                assert self.outstanding == 0, "two attempts at once"
                self.outstanding += 1
            elif isinstance(action, HoldFrames):
                assert not self.held, "held twice"
                self.held = True
            elif isinstance(action, ResumeAudio):
                assert self.public is ConnectionState.READY
                self.held = False
            elif isinstance(action, ChangeState):
                assert action.old is self.public and action.new is not action.old
                self.public = action.new
            elif isinstance(action, End):
                self.ends.append(action)
                self.outstanding = 0
            else:
                assert isinstance(action, (StopLink, ReportAttempt))

    @rule()
    def join(self) -> None:
        if self.machine.phase in (J, C):
            self.feed(self.machine.joined())

    @rule(error=ERRORS)
    def lose_the_link(self, error: BaseException) -> None:
        self.feed(self.machine.link_lost(error))

    @precondition(lambda self: self.machine.phase in (RS, RC, AM))
    @rule(new_session=st.booleans())
    def succeed(self, new_session: bool) -> None:
        generation = self.generation if new_session else None
        self.feed(self.machine.attempt_succeeded(0, generation), answered=True)

    @precondition(lambda self: self.machine.phase in (RS, RC, AM))
    @rule(error=ERRORS)
    def fail_the_attempt(self, error: BaseException) -> None:
        self.feed(self.machine.attempt_failed(error), answered=True)

    @precondition(lambda self: self.machine.phase is AM)
    @rule()
    def no_move(self) -> None:
        self.feed(self.machine.move_expired(), answered=True)

    @rule()
    def server_update(self) -> None:
        self.generation += 1
        self.feed(self.machine.server_update(self.generation))

    @rule(which=st.sampled_from(["kicked", "fail", "close"]))
    def end(self, which: str) -> None:
        if which == "kicked":
            self.feed(self.machine.kicked())
        elif which == "fail":
            self.feed(self.machine.fail(ConnectionClosed("sending failed")))
        else:
            self.feed(self.machine.close())

    @invariant()
    def one_attempt_at_a_time(self) -> None:
        assert self.outstanding == (1 if self.machine.phase in (RS, RC, AM) else 0)
        assert (self.machine.attempt is not None) == (self.outstanding == 1)

    @invariant()
    def frames_held_exactly_while_a_new_session_is_made(self) -> None:
        phase = self.machine.phase
        if phase in (RC, AM):
            assert self.held
        if phase in (J, R):
            assert not self.held
        assert self.machine.held == self.held or phase is C

    @invariant()
    def the_state_chain_is_the_machine_state(self) -> None:
        assert self.public is self.machine.state

    @invariant()
    def ended_once_with_the_first_error(self) -> None:
        assert len(self.ends) <= 1
        if self.ends:
            assert self.machine.phase is C and self.machine.error is self.ends[0].error
        else:
            assert self.machine.phase is not C


TestLifecycleSequences = LifecycleMachine.TestCase

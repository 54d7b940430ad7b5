"""The recovery loop on scripted steps: which attempts it makes, in which order, and how it ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest

from discord_voice._shell.voice_recovery import (
    RecoverySteps,
    first_step,
    move_attempt,
    run_recovery,
)
from discord_voice.clock import Signal, SystemClock
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
    DaveRequired,
    Disconnected,
    HeartbeatTimeout,
    JoinTimeout,
    VoiceGatewayClosed,
)
from discord_voice.testing import FakeClock
from tests.timeouts import LONG


def plan(resumes: int = 2, sessions: int = 2, move_timeout: float = 0.5) -> ReconnectPlan[Action]:
    return ReconnectPlan(
        ClosePolicy.voice_default(),
        resume=RetryBudget(resumes, base_delay=0.0, jitter=0.0, immediate_first=True),
        new_session=RetryBudget(sessions, base_delay=0.0, jitter=0.0, immediate_first=True),
        move_timeout=move_timeout,
    )


@dataclass
class Script:
    """Steps that fail with the queued outcomes, in order, and log every call."""

    outcomes: list[BaseException | None]
    moves: list[bool] = field(default_factory=list)
    losses: list[BaseException | None] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    gave_up: list[BaseException] = field(default_factory=list)
    closed: Signal = field(default_factory=Signal)

    def steps(self) -> RecoverySteps:
        return RecoverySteps(
            closed=self.closed, clock=SystemClock(), begin=self.begin,
            resume=lambda: self.act("resume"),
            reconnect=lambda: self.act("reconnect"), await_move=self.await_move,
            move=lambda: self.act("move"), recovered=self.recovered, give_up=self.gave_up.append,
        )

    def begin(self, attempt: Attempt, cause: BaseException) -> bool:
        self.calls.append(f"begin {attempt.kind.value} {attempt.number} ({type(cause).__name__})")
        return not self.closed.is_set()

    def act(self, what: str) -> None:
        self.calls.append(what)
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome

    def await_move(self, timeout: float) -> bool:
        self.calls.append(f"await_move {timeout:g}")
        return self.moves.pop(0)

    def recovered(self, attempt: Attempt) -> BaseException | None:
        self.calls.append("recovered")
        return self.losses.pop(0) if self.losses else None


def recover(script: Script, error: BaseException, p: ReconnectPlan[Action] | None = None,
            step: Attempt | GiveUp | None = None) -> Iterator[str]:
    p = p or plan()
    run_recovery(script.steps(), p, step if step is not None else first_step(p, error), error)
    return iter(script.calls)


def test_4015_resumes_once_and_is_done() -> None:
    script = Script([None])
    calls = list(recover(script, VoiceGatewayClosed(4015, "crash")))
    assert calls == ["begin resume 1 (VoiceGatewayClosed)", "resume", "recovered"]
    assert script.gave_up == []


def test_a_resume_refused_with_4006_becomes_a_reconnect() -> None:
    script = Script([VoiceGatewayClosed(4006, "invalid"), None])
    calls = list(recover(script, ConnectionClosed("dropped")))
    assert calls == ["begin resume 1 (ConnectionClosed)", "resume",
                     "begin reconnect 1 (VoiceGatewayClosed)", "reconnect", "recovered"]


def test_resumes_used_up_escalate_then_sessions_used_up_give_up_with_the_last_error() -> None:
    last = JoinTimeout("voice_server_update", 10)
    script = Script([ConnectionClosed("a"), ConnectionClosed("b"), JoinTimeout("hello", 1), last])
    list(recover(script, HeartbeatTimeout("zombie", 1.0)))
    assert [c for c in script.calls if not c.startswith("begin")] == [
        "resume", "resume", "reconnect", "reconnect"]
    assert script.gave_up == [last]


def test_a_fatal_code_during_a_reconnect_gives_up_at_once() -> None:
    fatal = DaveRequired()
    script = Script([fatal])
    list(recover(script, VoiceGatewayClosed(4009, "timeout")))
    assert script.calls == ["begin reconnect 1 (VoiceGatewayClosed)", "reconnect"]
    assert script.gave_up == [fatal]


def test_4014_waits_for_a_move_and_goes_there() -> None:
    script = Script([None], moves=[True])
    calls = list(recover(script, VoiceGatewayClosed(4014, "moved"), plan(move_timeout=2.0)))
    assert calls == ["begin wait 1 (VoiceGatewayClosed)", "await_move 2", "move", "recovered"]


def test_no_move_ends_as_not_moved_with_the_close_code() -> None:
    script = Script([], moves=[False])
    list(recover(script, VoiceGatewayClosed(4022, "terminated")))
    (error,) = script.gave_up
    assert isinstance(error, Disconnected) and (error.why, error.code) == ("not_moved", 4022)


def test_a_failed_move_falls_back_to_a_fresh_session() -> None:
    script = Script([ConnectionClosed("new server unreachable"), None], moves=[True])
    p = plan()
    list(recover(script, ConnectionClosed("server changed"), p, move_attempt(p, "new server")))
    assert [c for c in script.calls if not c.startswith("begin")] == [
        "await_move 0.5", "move", "reconnect", "recovered"]


def test_a_loss_during_the_recovery_starts_the_next_one() -> None:
    script = Script([None, None], losses=[VoiceGatewayClosed(4006, "again"), None])
    list(recover(script, VoiceGatewayClosed(4015, "crash")))
    assert [c for c in script.calls if not c.startswith("begin")] == [
        "resume", "recovered", "reconnect", "recovered"]


def test_closing_stops_the_loop_without_giving_up() -> None:
    script = Script([ConnectionClosed("x")])
    original = script.act

    def act_then_close(what: str) -> None:
        script.closed.set()
        original(what)

    script.act = act_then_close  # type: ignore[method-assign]
    list(recover(script, VoiceGatewayClosed(4015, "crash")))
    assert script.gave_up == []  # the connection is ending anyway: no second error
    assert script.calls == ["begin resume 1 (VoiceGatewayClosed)", "resume"]


@pytest.mark.parametrize(("error", "expected"), [
    (VoiceGatewayClosed(4015, ""), AttemptKind.RESUME),
    (VoiceGatewayClosed(1006, ""), AttemptKind.RESUME),
    (ConnectionClosed("dropped"), AttemptKind.RESUME),
    (HeartbeatTimeout("zombie", 1.0), AttemptKind.RESUME),
    (VoiceGatewayClosed(4006, ""), AttemptKind.RECONNECT),
    (VoiceGatewayClosed(4014, ""), AttemptKind.WAIT_FOR_MOVE),
])
def test_first_step_follows_the_policy(error: BaseException, expected: AttemptKind) -> None:
    step = first_step(plan(), error)
    assert isinstance(step, Attempt) and step.kind is expected


@pytest.mark.parametrize("error", [DaveRequired(), VoiceGatewayClosed(4021, ""),
                                   RuntimeError("a bug, not a connection failure")])
def test_first_step_gives_up_on_fatal_codes_and_non_connection_errors(
    error: BaseException,
) -> None:
    step = first_step(plan(), error)
    assert isinstance(step, GiveUp) and step.cause is StopCause.FATAL_CODE


# -- the backoff on a fake clock: attempts at the plan's logical instants, no real waiting ------


def capped_plan() -> ReconnectPlan[Action]:
    """The default voice plan's new-session ladder with its cap reached within the budget and
    a fixed jitter draw, so every delay is exact: 0, 0.45, 0.9, 1.35, 1.35 s."""
    budget = RetryBudget(max_attempts=5, base_delay=0.5, max_delay=1.5, jitter=0.2,
                         rng=lambda: 0.5, immediate_first=True)
    return ReconnectPlan(ClosePolicy.voice_default(), new_session=budget)


@dataclass
class ClockedScript(Script):
    """A Script whose attempts record the logical time at which they were made."""

    clock: FakeClock = field(default_factory=FakeClock)
    attempted_at: list[float] = field(default_factory=list)

    def steps(self) -> RecoverySteps:
        return replace(super().steps(), clock=self.clock)

    def act(self, what: str) -> None:
        self.attempted_at.append(self.clock.monotonic())
        super().act(what)


def run_in_thread(script: Script, error: BaseException,
                  p: ReconnectPlan[Action]) -> threading.Thread:
    thread = threading.Thread(
        target=run_recovery, args=(script.steps(), p, first_step(p, error), error),
        name="test-recovery",
    )
    thread.start()
    return thread


def test_five_failed_reconnects_back_off_on_the_clock_and_give_up_with_the_last_error() -> None:
    p = capped_plan()
    failures: list[BaseException | None] = [VoiceGatewayClosed(4006, f"no {n}") for n in range(5)]
    script = ClockedScript(list(failures), clock=FakeClock(start=100.0))
    thread = run_in_thread(script, VoiceGatewayClosed(4006, "session gone"), p)
    expected = [p.new_session.next_delay(n) for n in range(1, 6)]
    assert expected == pytest.approx([0.0, 0.45, 0.9, 1.35, 1.35])  # capped at 1.5 * 0.9
    for n, delay in enumerate(expected[1:], start=1):
        # attempt n failed at the current logical time; the next one waits exactly `delay`
        now = script.clock.monotonic()
        script.clock.wait_for_deadline(now + delay, LONG)
        assert len(script.attempted_at) == n  # not made before its time
        script.clock.advance(delay)
    thread.join(LONG)
    assert not thread.is_alive()
    assert script.attempted_at == pytest.approx([100.0, 100.45, 101.35, 102.7, 104.05])
    assert script.calls == [
        call for n in range(1, 6) for call in (f"begin reconnect {n} (VoiceGatewayClosed)",
                                               "reconnect")
    ]  # fmt: skip
    assert script.gave_up == [failures[-1]]  # the budget is spent: the last reason is raised


def test_closing_interrupts_the_backoff_at_once() -> None:
    p = capped_plan()
    script = ClockedScript([VoiceGatewayClosed(4006, "no")])
    thread = run_in_thread(script, VoiceGatewayClosed(4006, "session gone"), p)
    script.clock.wait_for_deadline(0.45, LONG)  # parked in the backoff before attempt 2
    script.closed.set()
    thread.join(LONG)
    assert not thread.is_alive() and script.clock.monotonic() == 0.0
    assert script.gave_up == [] and script.calls == [
        "begin reconnect 1 (VoiceGatewayClosed)", "reconnect",
        "begin reconnect 2 (VoiceGatewayClosed)",  # announced, then closed during its backoff
    ]  # fmt: skip

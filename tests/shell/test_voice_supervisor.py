"""The supervisor on scripted steps: which attempts it makes, in which order, how it ends, and
its backoff on a fake clock (the machine is `core.lifecycle`; the steps here are a script)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from discord_voice._shell.voice_supervisor import VoiceSupervisor
from discord_voice.clock import Clock, SystemClock
from discord_voice.core.lifecycle import ConnectionState, Lifecycle
from discord_voice.core.reconnect import (
    Action,
    Attempt,
    ClosePolicy,
    ReconnectPlan,
    RetryBudget,
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

READY, RESUMING, RECONNECTING, CLOSED = (
    ConnectionState.READY,
    ConnectionState.RESUMING,
    ConnectionState.RECONNECTING,
    ConnectionState.CLOSED,
)


def plan(resumes: int = 2, sessions: int = 2, move_timeout: float = 0.5) -> ReconnectPlan[Action]:
    return ReconnectPlan(
        ClosePolicy.voice_default(),
        resume=RetryBudget(resumes, base_delay=0.0, jitter=0.0, immediate_first=True),
        new_session=RetryBudget(sessions, base_delay=0.0, jitter=0.0, immediate_first=True),
        move_timeout=move_timeout,
    )


@dataclass
class Script:
    """`LifecycleSteps` whose blocking steps fail with the queued outcomes, in order; every call
    is logged. Socket numbers: the join's is 1, each successful step makes the next one."""

    outcomes: list[BaseException | None] = field(default_factory=list)
    moves: list[bool] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    clock: Clock = field(default_factory=SystemClock)
    attempted_at: list[float] = field(default_factory=list)
    socket: int = 1
    on_step: list[object] = field(default_factory=list)  # callables run before a step

    def hold_frames(self) -> None:
        self.calls.append("hold")

    def stop_link(self, reason: str) -> None:
        self.calls.append("stop")

    def resume_audio(self) -> None:
        self.calls.append("audio")

    def end(self, error: BaseException | None) -> None:
        self.calls.append("end")

    def _act(self, what: str) -> int:
        self.calls.append(what)
        self.attempted_at.append(self.clock.monotonic())
        for hook in self.on_step:
            assert callable(hook)
            hook()
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome
        self.socket += 1
        return self.socket

    def resume(self) -> int:
        return self._act("resume")

    def reconnect(self) -> tuple[int, int]:
        return self._act("reconnect"), 1

    def await_move(self, timeout: float) -> bool:
        self.calls.append(f"await_move {timeout:g}")
        return self.moves.pop(0)

    def move(self) -> tuple[int, int]:
        return self._act("move"), 1


@dataclass
class Run:
    script: Script
    supervisor: VoiceSupervisor
    ended: list[tuple[BaseException | None, bool]]
    states: list[tuple[ConnectionState, ConnectionState]]
    attempts: list[Attempt]

    def settled(self) -> ConnectionState:
        """Wait until READY or CLOSED with no recovery thread left."""
        self.supervisor.wait_for(lambda s: s is READY, LONG)
        for thread in self.supervisor.threads():
            thread.join(LONG)
        return self.supervisor.state


def start(script: Script, p: ReconnectPlan[Action] | None = None) -> Run:
    ended: list[tuple[BaseException | None, bool]] = []
    supervisor = VoiceSupervisor(
        Lifecycle(p or plan()),
        script,
        clock=script.clock,
        guild_id="1",
        on_ended=lambda e, leave: ended.append((e, leave)),
    )
    run = Run(script, supervisor, ended, [], [])
    supervisor.add_state_listener(lambda old, new, _: run.states.append((old, new)))
    supervisor.add_attempt_listener(run.attempts.append)
    supervisor.joined(1)
    return run


def steps(run: Run) -> list[str]:
    return [c for c in run.script.calls if c not in ("stop", "hold", "audio", "end")]


def test_4015_resumes_once_and_is_done() -> None:
    run = start(Script([None]))
    run.supervisor.link_lost(VoiceGatewayClosed(4015, "crash"), 1)
    assert run.settled() is READY
    assert run.script.calls == ["audio", "stop", "resume", "audio"]
    assert run.states == [(ConnectionState.CONNECTING, READY), (READY, RESUMING), (RESUMING, READY)]
    assert run.ended == []


def test_a_resume_refused_with_4006_becomes_a_reconnect_with_frames_held() -> None:
    run = start(Script([VoiceGatewayClosed(4006, "invalid"), None]))
    run.supervisor.link_lost(ConnectionClosed("dropped"), 1)
    assert run.settled() is READY
    assert run.script.calls == ["audio", "stop", "resume", "hold", "stop", "reconnect", "audio"]
    assert [(a.kind.value, a.number) for a in run.attempts] == [("resume", 1), ("reconnect", 1)]


def test_resumes_used_up_escalate_then_sessions_used_up_give_up_with_the_last_error() -> None:
    last = JoinTimeout("voice_server_update", 10)
    run = start(
        Script([ConnectionClosed("a"), ConnectionClosed("b"), JoinTimeout("hello", 1), last])
    )
    run.supervisor.link_lost(HeartbeatTimeout("zombie", 1.0), 1)
    assert run.settled() is CLOSED
    assert steps(run) == ["resume", "resume", "reconnect", "reconnect"]
    assert run.ended == [(last, True)] and run.supervisor.error is last


def test_a_fatal_code_during_a_reconnect_gives_up_at_once() -> None:
    fatal = DaveRequired()
    run = start(Script([fatal]))
    run.supervisor.link_lost(VoiceGatewayClosed(4009, "timeout"), 1)
    assert run.settled() is CLOSED
    assert steps(run) == ["reconnect"] and run.ended == [(fatal, True)]


def test_4014_waits_for_a_move_and_goes_there() -> None:
    run = start(Script([None], moves=[True]), plan(move_timeout=2.0))
    run.supervisor.link_lost(VoiceGatewayClosed(4014, "moved"), 1)
    assert run.settled() is READY
    assert steps(run) == ["await_move 2", "move"]


def test_no_move_ends_as_not_moved_with_the_close_code() -> None:
    run = start(Script(moves=[False]))
    run.supervisor.link_lost(VoiceGatewayClosed(4022, "terminated"), 1)
    assert run.settled() is CLOSED
    ((error, leave),) = run.ended
    assert isinstance(error, Disconnected) and (error.why, error.code) == ("not_moved", 4022)
    assert leave


def test_a_server_update_while_ready_moves() -> None:
    run = start(Script([None], moves=[True]))
    run.supervisor.server_update(1)
    assert run.settled() is READY
    assert run.script.calls == ["audio", "hold", "stop", "await_move 0.5", "move", "audio"]


def test_a_loss_of_the_new_socket_during_the_attempt_starts_the_next_one() -> None:
    script = Script([None, None])
    run = start(script)
    lost_once: list[bool] = []

    def lose_the_resumed_socket() -> None:  # during the first step: socket 2 is being made
        if not lost_once:
            lost_once.append(True)
            run.supervisor.link_lost(VoiceGatewayClosed(4006, "again"), 2)

    script.on_step.append(lose_the_resumed_socket)
    run.supervisor.link_lost(VoiceGatewayClosed(4015, "crash"), 1)
    assert run.settled() is READY
    assert steps(run) == ["resume", "reconnect"]
    assert run.states == [
        (ConnectionState.CONNECTING, READY),
        (READY, RESUMING),
        (RESUMING, RECONNECTING),
        (RECONNECTING, READY),
    ]


def test_closing_during_a_step_ends_without_a_second_error() -> None:
    script = Script([ConnectionClosed("the step sees the close")])
    run = start(script)
    script.on_step.append(lambda: run.supervisor.close())
    run.supervisor.link_lost(VoiceGatewayClosed(4015, "crash"), 1)
    assert run.settled() is CLOSED
    assert run.ended == [(None, True)] and run.supervisor.error is None
    assert steps(run) == ["resume"]


def test_a_raising_listener_ends_the_connection_with_its_exception() -> None:
    run = start(Script([None]))
    boom = RuntimeError("listener bug")

    def listener(attempt: Attempt) -> None:
        raise boom

    run.supervisor.add_attempt_listener(listener)
    run.supervisor.link_lost(VoiceGatewayClosed(4015, "crash"), 1)
    assert run.settled() is CLOSED
    assert run.ended == [(boom, True)]


def test_a_raising_state_listener_ends_the_connection_with_its_exception() -> None:
    run = start(Script([None]))
    boom = RuntimeError("listener bug")

    def listener(old: ConnectionState, new: ConnectionState, _: BaseException | None) -> None:
        if new is RESUMING:
            raise boom

    run.supervisor.add_state_listener(listener)
    run.supervisor.link_lost(VoiceGatewayClosed(4015, "crash"), 1)
    assert run.settled() is CLOSED
    assert run.ended == [(boom, True)]
    assert run.states[-1] == (RESUMING, CLOSED)  # told in order, CLOSED last


def test_a_stale_socket_is_not_a_loss() -> None:
    run = start(Script())
    run.supervisor.link_lost(ConnectionClosed("a replaced socket, late"), 7)
    assert run.supervisor.state is READY and run.script.calls == ["audio"]


# -- the backoff on a fake clock: attempts at the plan's logical instants, no real waiting ------


def capped_plan() -> ReconnectPlan[Action]:
    """The default voice plan's new-session ladder with its cap reached within the budget and
    a fixed jitter draw, so every delay is exact: 0, 0.45, 0.9, 1.35, 1.35 s."""
    budget = RetryBudget(
        max_attempts=5,
        base_delay=0.5,
        max_delay=1.5,
        jitter=0.2,
        rng=lambda: 0.5,
        immediate_first=True,
    )
    return ReconnectPlan(ClosePolicy.voice_default(), new_session=budget)


def test_five_failed_reconnects_back_off_on_the_clock_and_give_up_with_the_last_error() -> None:
    p = capped_plan()
    clock = FakeClock(start=100.0)
    failures: list[BaseException | None] = [VoiceGatewayClosed(4006, f"no {n}") for n in range(5)]
    run = start(Script(list(failures), clock=clock), p)
    run.supervisor.link_lost(VoiceGatewayClosed(4006, "session gone"), 1)
    expected = [p.new_session.next_delay(n) for n in range(1, 6)]
    assert expected == pytest.approx([0.0, 0.45, 0.9, 1.35, 1.35])  # capped at 1.5 * 0.9
    for n, delay in enumerate(expected[1:], start=1):
        # attempt n failed at the current logical time; the next one waits exactly `delay`
        now = clock.monotonic()
        clock.wait_for_deadline(now + delay, LONG)
        assert len(run.script.attempted_at) == n  # not made before its time
        clock.advance(delay)
    assert run.settled() is CLOSED
    assert run.script.attempted_at == pytest.approx([100.0, 100.45, 101.35, 102.7, 104.05])
    assert steps(run) == ["reconnect"] * 5
    assert [a.number for a in run.attempts] == [1, 2, 3, 4, 5]
    assert run.ended == [(failures[-1], True)]  # the budget is spent: the last reason


def test_closing_interrupts_the_backoff_at_once() -> None:
    clock = FakeClock()
    run = start(Script([VoiceGatewayClosed(4006, "no")], clock=clock), capped_plan())
    run.supervisor.link_lost(VoiceGatewayClosed(4006, "session gone"), 1)
    clock.wait_for_deadline(0.45, LONG)  # parked in the backoff before attempt 2
    closer = threading.Thread(target=run.supervisor.close, name="test-close")
    closer.start()
    closer.join(LONG)
    assert run.settled() is CLOSED and clock.monotonic() == 0.0
    assert run.ended == [(None, True)]
    assert steps(run) == ["reconnect"]  # attempt 2 was announced, then closed in its backoff
    assert [a.number for a in run.attempts] == [1, 2]

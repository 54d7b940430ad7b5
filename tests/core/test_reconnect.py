"""Close-code policy of both gateways, retry budgets and the recovery ladder (pure, no I/O)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core.opcodes import GatewayCloseCode, VoiceCloseCode
from discord_voice.core.reconnect import (
    Action,
    Attempt,
    AttemptKind,
    ClosePolicy,
    GatewayAction,
    GiveUp,
    ReconnectPlan,
    RetryBudget,
    StopCause,
    describe,
)

VOICE_TABLE = {
    4001: Action.FATAL,
    4002: Action.FATAL,
    4003: Action.FATAL,
    4004: Action.FATAL,
    4005: Action.FATAL,
    4006: Action.RECONNECT,
    4009: Action.RECONNECT,
    4011: Action.RECONNECT,
    4012: Action.FATAL,
    4014: Action.WAIT_FOR_MOVE,
    4015: Action.RESUME,
    4016: Action.FATAL,
    4017: Action.FATAL,
    4020: Action.FATAL,
    4021: Action.FATAL,
    4022: Action.WAIT_FOR_MOVE,
}
MAIN_TABLE = {
    4000: GatewayAction.RESUME,
    4001: GatewayAction.RESUME,
    4002: GatewayAction.RESUME,
    4003: GatewayAction.RESUME,
    4004: GatewayAction.FATAL,
    4005: GatewayAction.RESUME,
    4007: GatewayAction.REIDENTIFY,
    4008: GatewayAction.RESUME,
    4009: GatewayAction.REIDENTIFY,
    4010: GatewayAction.FATAL,
    4011: GatewayAction.FATAL,
    4012: GatewayAction.FATAL,
    4013: GatewayAction.FATAL,
    4014: GatewayAction.FATAL,
}


def fixed_rng(*values: float) -> Callable[[], float]:
    """An rng returning `values` in turn (and failing the test if asked for more)."""
    it: Iterator[float] = iter(values)
    return lambda: next(it)


# ------------------------------------------------------------------ the tables


def test_tables_cover_every_documented_close_code() -> None:
    assert set(VOICE_TABLE) == {int(c) for c in VoiceCloseCode}
    assert set(MAIN_TABLE) == {int(c) for c in GatewayCloseCode}


@pytest.mark.parametrize(("code", "action"), sorted(VOICE_TABLE.items()))
def test_voice_table(code: int, action: Action) -> None:
    policy = ClosePolicy.voice_default()
    assert policy.decide(code) is action
    assert policy.table[code] is action


@pytest.mark.parametrize(("code", "action"), sorted(MAIN_TABLE.items()))
def test_main_table(code: int, action: GatewayAction) -> None:
    policy = ClosePolicy.main_default()
    assert policy.decide(code) is action
    assert policy.table[code] is action


def test_main_fatal_codes_are_exactly_the_non_reconnect_ones() -> None:
    policy = ClosePolicy.main_default()
    fatal = {c for c in range(3990, 5000) if policy.decide(c) is GatewayAction.FATAL}
    assert fatal == {4004, 4010, 4011, 4012, 4013, 4014}


@pytest.mark.parametrize(
    ("code", "we_closed", "action"),
    [
        (None, False, Action.RESUME),  # TCP dropped, no close frame
        (None, True, Action.RESUME),
        (1000, False, Action.RESUME),  # the server's 1000 is not a verdict on the session
        (1000, True, Action.FATAL),  # our own normal close: stop
        (1001, True, Action.FATAL),
        (1006, False, Action.RESUME),
        (1006, True, Action.RESUME),
        (3000, False, Action.RESUME),
        (4000, True, Action.RESUME),  # we closed a zombie socket to resume
        (4015, False, Action.RESUME),
        (4006, False, Action.RECONNECT),
        (4014, False, Action.WAIT_FOR_MOVE),
        (4017, False, Action.FATAL),
        (4000, False, Action.RECONNECT),  # unknown 4xxx
        (4018, False, Action.RECONNECT),
        (4999, False, Action.RECONNECT),
        (-1, False, Action.RESUME),
    ],
)
def test_voice_decide_special_cases(code: int | None, we_closed: bool, action: Action) -> None:
    assert ClosePolicy.voice_default().decide(code, we_closed=we_closed) is action


@pytest.mark.parametrize(
    ("code", "we_closed", "action"),
    [
        (None, False, GatewayAction.RESUME),
        (1000, False, GatewayAction.RESUME),
        (1000, True, GatewayAction.FATAL),
        (1001, True, GatewayAction.FATAL),
        (1006, False, GatewayAction.RESUME),
        (4000, True, GatewayAction.RESUME),
        (4006, False, GatewayAction.RESUME),  # unknown to the main table
        (4999, False, GatewayAction.RESUME),
    ],
)
def test_main_decide_special_cases(
    code: int | None, we_closed: bool, action: GatewayAction
) -> None:
    assert ClosePolicy.main_default().decide(code, we_closed=we_closed) is action


def test_overrides_return_a_new_policy_and_leave_the_default_alone() -> None:
    default = ClosePolicy.voice_default()
    strict = default.with_overrides({4006: Action.FATAL, 4242: Action.RESUME})
    assert strict.decide(4006) is Action.FATAL
    assert strict.decide(4242) is Action.RESUME
    assert strict.decide(4015) is Action.RESUME  # the other rows are kept
    assert default.decide(4006) is Action.RECONNECT
    assert default.decide(4242) is Action.RECONNECT
    assert ClosePolicy.voice_default().decide(4006) is Action.RECONNECT
    assert strict is not default


def test_policy_table_is_read_only_and_copied() -> None:
    source = {4006: Action.FATAL}
    policy = ClosePolicy.voice_default().with_overrides(source)
    source[4006] = Action.RESUME
    assert policy.decide(4006) is Action.FATAL
    with pytest.raises(TypeError):
        policy.table[4006] = Action.RESUME  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.unknown = Action.FATAL  # type: ignore[misc]


def test_defaults_can_be_replaced() -> None:
    policy = dataclasses.replace(ClosePolicy.voice_default(), unknown=Action.FATAL)
    assert policy.decide(4999) is Action.FATAL
    assert ClosePolicy.voice_default().decide(4999) is Action.RECONNECT


def test_policy_rejects_the_other_gateways_actions() -> None:
    with pytest.raises(TypeError, match="GatewayAction"):
        ClosePolicy.main_default().with_overrides({4000: Action.FATAL})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="Action"):
        ClosePolicy.voice_default().with_overrides(
            {4000: GatewayAction.REIDENTIFY}  # type: ignore[dict-item]
        )
    with pytest.raises(TypeError, match="ints"):
        ClosePolicy.voice_default().with_overrides({"4000": Action.FATAL})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="gateway"):
        dataclasses.replace(ClosePolicy.voice_default(), gateway="other")  # type: ignore[arg-type]


@given(st.one_of(st.none(), st.integers()), st.booleans())
def test_decide_never_raises(code: int | None, we_closed: bool) -> None:
    assert isinstance(ClosePolicy.voice_default().decide(code, we_closed=we_closed), Action)
    assert isinstance(ClosePolicy.main_default().decide(code, we_closed=we_closed), GatewayAction)
    assert describe(code) and describe(code, gateway="main")


# ------------------------------------------------------------------ descriptions


@pytest.mark.parametrize(
    ("code", "gateway", "text"),
    [
        (None, "voice", "connection dropped without a close frame"),
        (1000, "voice", "normal closure"),
        (1006, "main", "abnormal closure"),
        (2999, "voice", "transport-level close"),
        (4015, "voice", "voice server crashed"),
        (4017, "voice", "e2ee required"),
        (4014, "main", "disallowed intents"),
        (4014, "voice", "disconnected"),
        (4007, "main", "invalid seq"),
        (4999, "voice", "unknown close code"),
        (4999, "main", "unknown close code"),
    ],
)
def test_describe(code: int | None, gateway: str, text: str) -> None:
    assert describe(code, gateway=gateway) == text  # type: ignore[arg-type]


def test_policy_describe_uses_its_gateway() -> None:
    assert ClosePolicy.voice_default().describe(4004) == "authentication failed"
    assert ClosePolicy.main_default().describe(4010) == "invalid shard"


# ------------------------------------------------------------------ retry budget


def test_backoff_sequence_is_exact_with_a_fixed_rng() -> None:
    budget = RetryBudget(
        max_attempts=5,
        base_delay=0.5,
        max_delay=30.0,
        jitter=0.2,
        rng=fixed_rng(0.0, 1.0, 0.5, 0.25, 0.0),
    )
    delays = [budget.next_delay(n) for n in range(1, 6)]
    assert delays == pytest.approx([0.5, 0.8, 1.8, 3.8, 8.0])


def test_backoff_reaches_the_cap_and_stays_there() -> None:
    budget = RetryBudget(max_attempts=100, base_delay=0.5, max_delay=30.0, jitter=0.0)
    delays = [budget.next_delay(n) for n in range(1, 101)]
    assert delays[:8] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert delays[-1] == 30.0
    assert budget.next_delay(10**9) == 30.0  # no overflow for absurd attempt numbers


@given(st.integers(min_value=1, max_value=2000), st.floats(min_value=0.0, max_value=1.0))
def test_jitter_bounds(attempt: int, spread: float) -> None:
    budget = RetryBudget(base_delay=0.5, max_delay=30.0, jitter=0.2, rng=lambda: spread)
    no_jitter = RetryBudget(base_delay=0.5, max_delay=30.0, jitter=0.0)
    ceiling = no_jitter.next_delay(attempt)
    assert 0.8 * ceiling - 1e-12 <= budget.next_delay(attempt) <= ceiling <= 30.0


def test_a_misbehaving_rng_cannot_break_the_bounds() -> None:
    assert RetryBudget(jitter=0.2, rng=lambda: 7.0).next_delay(1) == pytest.approx(0.4)
    assert RetryBudget(jitter=0.2, rng=lambda: -3.0).next_delay(1) == pytest.approx(0.5)


def test_default_rng_stays_within_jitter() -> None:
    budget = RetryBudget()
    assert all(0.4 <= budget.next_delay(1) <= 0.5 for _ in range(200))
    assert len({budget.next_delay(1) for _ in range(50)}) > 1  # it does jitter


def test_immediate_first_attempt() -> None:
    budget = RetryBudget(base_delay=0.5, jitter=0.0, immediate_first=True)
    assert [budget.next_delay(n) for n in range(1, 5)] == [0.0, 0.5, 1.0, 2.0]


def test_budget_exhaustion() -> None:
    budget = RetryBudget(max_attempts=3)
    assert [budget.exhausted(n) for n in range(1, 6)] == [False, False, False, True, True]
    assert RetryBudget(max_attempts=0).exhausted(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": -1},
        {"base_delay": -0.1},
        {"base_delay": 40.0},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_budget_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def test_next_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="from 1"):
        RetryBudget().next_delay(0)


# ------------------------------------------------------------------ the ladder


def voice_plan(resumes: int = 2, sessions: int = 2) -> ReconnectPlan[Action]:
    return ReconnectPlan(
        ClosePolicy.voice_default(),
        resume=RetryBudget(max_attempts=resumes, base_delay=0.1, jitter=0.0, immediate_first=True),
        new_session=RetryBudget(max_attempts=sessions, base_delay=1.0, jitter=0.0),
        move_timeout=7.0,
    )


def test_4015_resumes_at_once_then_backs_off_then_escalates_then_gives_up() -> None:
    plan = voice_plan()
    first = plan.first(4015, "crashed")
    assert first == Attempt(AttemptKind.RESUME, 1, 0.0, 4015, "crashed", 2)
    second = plan.after_failure(first, None)
    assert second == Attempt(AttemptKind.RESUME, 2, 0.1, None, "", 2)
    third = plan.after_failure(second, None)  # resumes used up
    assert third == Attempt(AttemptKind.RECONNECT, 1, 1.0, None, "", 2)
    fourth = plan.after_failure(third, None)  # no session to resume: another new session
    assert fourth == Attempt(AttemptKind.RECONNECT, 2, 2.0, None, "", 2)
    assert plan.after_failure(fourth, 4006, "again") == GiveUp(StopCause.EXHAUSTED, 4006, "again")


def test_a_resume_rejected_with_4006_escalates_at_once() -> None:
    plan = voice_plan(resumes=5)
    first = plan.first(None)
    assert isinstance(first, Attempt) and first.kind is AttemptKind.RESUME
    step = plan.after_failure(first, 4006)
    assert step == Attempt(AttemptKind.RECONNECT, 1, 1.0, 4006, "", 2)


def test_4006_reconnects_and_a_fatal_code_stops_the_ladder() -> None:
    plan = voice_plan()
    first = plan.first(4006)
    assert first == Attempt(AttemptKind.RECONNECT, 1, 1.0, 4006, "", 2)
    assert plan.after_failure(first, 4017) == GiveUp(StopCause.FATAL_CODE, 4017, "")


def test_4014_waits_for_a_move_and_the_wait_can_expire() -> None:
    plan = voice_plan()
    wait = plan.first(4014, "kicked?")
    assert wait == Attempt(AttemptKind.WAIT_FOR_MOVE, 1, 7.0, 4014, "kicked?", 1)
    assert plan.wait_expired(wait) == GiveUp(StopCause.NOT_MOVED, 4014, "kicked?")
    # moved, but the connection to the new server dropped: a new session, not a resume
    assert plan.after_failure(wait, None) == Attempt(AttemptKind.RECONNECT, 1, 1.0, None, "", 2)


def test_fatal_and_our_own_close_give_up_with_distinct_causes() -> None:
    plan = voice_plan()
    assert plan.first(4017) == GiveUp(StopCause.FATAL_CODE, 4017, "")
    assert plan.first(4021, "slow down") == GiveUp(StopCause.FATAL_CODE, 4021, "slow down")
    assert plan.first(1000, we_closed=True) == GiveUp(StopCause.CLOSED_BY_US, 1000, "")
    zombie = plan.first(4000, we_closed=True)
    assert isinstance(zombie, Attempt) and zombie.kind is AttemptKind.RESUME


def test_zero_budgets() -> None:
    plan = voice_plan(resumes=0, sessions=1)
    assert plan.first(4015) == Attempt(AttemptKind.RECONNECT, 1, 1.0, 4015, "", 1)
    assert voice_plan(resumes=0, sessions=0).first(4015) == GiveUp(StopCause.EXHAUSTED, 4015, "")


def test_main_gateway_ladder_reidentifies() -> None:
    plan = ReconnectPlan(
        ClosePolicy.main_default(),
        resume=RetryBudget(max_attempts=1, jitter=0.0, immediate_first=True),
        new_session=RetryBudget(max_attempts=1, base_delay=2.0, jitter=0.0),
    )
    first = plan.first(4000)
    assert first == Attempt(AttemptKind.RESUME, 1, 0.0, 4000, "", 1)
    second = plan.after_failure(first, None)
    assert second == Attempt(AttemptKind.REIDENTIFY, 1, 2.0, None, "", 1)
    assert plan.after_failure(second, 4009) == GiveUp(StopCause.EXHAUSTED, 4009, "")
    assert plan.first(4007) == Attempt(AttemptKind.REIDENTIFY, 1, 2.0, 4007, "", 1)
    assert plan.first(4004) == GiveUp(StopCause.FATAL_CODE, 4004, "")


def test_default_plan_resumes_without_delay() -> None:
    first = ReconnectPlan(ClosePolicy.voice_default()).first(4015)
    assert isinstance(first, Attempt)
    assert (first.kind, first.number, first.delay, first.max_attempts) == (
        AttemptKind.RESUME,
        1,
        0.0,
        3,
    )


def test_attempt_summary() -> None:
    attempt = Attempt(AttemptKind.RESUME, 2, 0.25, 4015, "oops", 3)
    assert attempt.summary() == "resume 2/3 in 0.25s after 4015 (voice server crashed): oops"
    dropped = Attempt(AttemptKind.REIDENTIFY, 1, 1.0, None, "", 5)
    assert dropped.summary("main") == (
        "reidentify 1/5 in 1.00s after no close frame (connection dropped without a close frame)"
    )

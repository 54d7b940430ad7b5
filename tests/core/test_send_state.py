"""The sender's state machine (`core.send_state`), in memory, against a table written here.

The expected transitions are data in this file (`TRANSITIONS`), written from the rules in the
module docstring, not read from the code: every (phase, frame in hand or not, due or not, input)
case is generated from it. A Hypothesis state machine then drives `SendState` with random
input sequences on random times and compares it, step by step, with `Model`, a small reference
written in integer microseconds (no floats, no grid arithmetic shared with `Pacer`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from discord_voice.core.pacing import Pacer
from discord_voice.core.send_state import Phase, SendState

IDLE, PLAYING, HELD, NO_KEY, CLOSED = (
    Phase.IDLE,
    Phase.PLAYING,
    Phase.HELD,
    Phase.NO_KEY,
    Phase.CLOSED,
)
ALL: Final = frozenset(Phase)
ANY: Final = None  # a condition that does not matter

T0: Final = 1000.0  # on the 10 ms grid
GRID: Final = 0.010
MS: Final = 0.001
SAMPLES_PER_MS: Final = 48

# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """`input` moves a stream in one of `sources` (frame in hand: `frame`; a frame due by now:
    `due`; None = either) to `target`."""

    input: str
    sources: frozenset[Phase]
    frame: bool | None
    due: bool | None
    target: Phase


def row(
    input: str,
    sources: Phase | frozenset[Phase],
    frame: bool | None,
    due: bool | None,
    target: Phase,
) -> Row:
    return Row(
        input,
        sources if isinstance(sources, frozenset) else frozenset({sources}),
        frame,
        due,
        target,
    )


#: Every transition the rules list; any other (input, case) leaves the phase as it is.
TRANSITIONS: Final = (
    row("frame_ready", IDLE, False, ANY, PLAYING),
    row("frame_missing", PLAYING, False, True, IDLE),
    row("sent", PLAYING, True, ANY, PLAYING),
    row("paused", PLAYING, False, ANY, IDLE),
    row("hold", frozenset({IDLE, PLAYING, NO_KEY}), ANY, ANY, HELD),
    row("release", HELD, True, ANY, PLAYING),
    row("release", HELD, False, ANY, IDLE),
    row("no_key", frozenset({IDLE, PLAYING}), ANY, ANY, NO_KEY),
    row("key_ready", NO_KEY, True, ANY, PLAYING),
    row("key_ready", NO_KEY, False, ANY, IDLE),
    row("close", ALL, ANY, ANY, CLOSED),
)

#: Misuses, which raise RuntimeError and change nothing: sending without a sendable frame,
#: and taking a second frame while one is in hand (the first would be lost).
MISUSES: Final = (
    row("sent", ALL - {PLAYING}, ANY, ANY, CLOSED),
    row("sent", PLAYING, False, ANY, CLOSED),
    row("frame_ready", ALL - {CLOSED}, True, ANY, CLOSED),
)

INPUTS: Final = (
    "frame_ready",
    "frame_missing",
    "sent",
    "paused",
    "hold",
    "release",
    "no_key",
    "key_ready",
    "close",
)


def _matches(r: Row, phase: Phase, frame: bool, due: bool) -> bool:
    return (
        phase in r.sources
        and (r.frame is None or r.frame == frame)
        and (r.due is None or r.due == due)
    )


def expected(input: str, phase: Phase, frame: bool, due: bool) -> Phase | None:
    """The phase after `input`, or None for a misuse (RuntimeError)."""
    if any(r.input == input and _matches(r, phase, frame, due) for r in MISUSES):
        return None
    found = [r.target for r in TRANSITIONS if r.input == input and _matches(r, phase, frame, due)]
    assert len(found) <= 1, f"the table is ambiguous for {input} in {phase}"
    return found[0] if found else phase


# -- reaching every case through inputs only ---------------------------------------------------

#: A reachable case: a phase, a frame in hand or not, and `now` at or after the due time of the
#: run's next frame or before it. IDLE and CLOSED never hold a frame (checked below).
CASES: Final = [
    (phase, frame, due)
    for phase, frame, due in itertools.product(Phase, (False, True), (False, True))
    if not (frame and phase in (IDLE, CLOSED))
]


def reach(phase: Phase, frame: bool, due: bool) -> tuple[SendState, float]:
    """A SendState in the case, built with public inputs, and the `now` to apply inputs at.

    The run started at T0 with a 20 ms frame, already sent; the next frame of the run is due at
    T0 + 20 ms; `now` is T0 + 20 ms if `due`, else T0 + 5 ms.
    """
    state = SendState(Pacer(grid=GRID))
    state.frame_ready(T0, 960)
    state.sent(T0)
    now = T0 + (20 if due else 5) * MS
    if frame:
        state.frame_ready(T0 + 5 * MS, 960)
    if phase is IDLE:
        state.paused()
    elif phase is HELD:
        state.hold()
    elif phase is NO_KEY:
        state.no_key()
    elif phase is CLOSED:
        state.close()
    assert (state.phase, state.has_frame) == (phase, frame)
    return state, now


def apply(state: SendState, input: str, now: float) -> None:
    calls: dict[str, Callable[[], None]] = {
        "frame_ready": lambda: state.frame_ready(now, 1920),
        "frame_missing": lambda: state.frame_missing(now),
        "sent": lambda: state.sent(now),
        "paused": state.paused,
        "hold": state.hold,
        "release": lambda: state.release(now),
        "no_key": state.no_key,
        "key_ready": lambda: state.key_ready(now),
        "close": state.close,
    }
    calls[input]()


def _id(case: tuple[object, ...]) -> str:
    return "-".join(v.value if isinstance(v, Phase) else str(v) for v in case)


ALL_CASES: Final = [(input, *case) for input in INPUTS for case in CASES]


@pytest.mark.parametrize(
    ("input", "phase", "frame", "due"), ALL_CASES, ids=[_id(c) for c in ALL_CASES]
)
def test_every_input_in_every_case_follows_the_table(
    input: str, phase: Phase, frame: bool, due: bool
) -> None:
    state, now = reach(phase, frame, due)
    before = state.stats()
    target = expected(input, phase, frame, due)
    if target is None:
        with pytest.raises(RuntimeError):
            apply(state, input, now)
        assert (state.phase, state.has_frame) == (phase, frame)  # a misuse changes nothing
        assert state.stats() == before
        return
    apply(state, input, now)
    assert state.phase is target
    # A frame in hand is let go only by `sent` or `close`; only `frame_ready` takes one.
    if input in ("sent", "close"):
        assert not state.has_frame
    elif input == "frame_ready":
        assert state.has_frame is (phase is not CLOSED)
    else:
        assert state.has_frame is frame
    # Underruns are counted only when the queue was empty while a frame was due.
    underrun = input == "frame_missing" and phase is PLAYING and not frame and due
    assert state.stats().underruns - before.underruns == int(underrun)
    assert state.stats().frames_sent - before.frames_sent == int(input == "sent")


@pytest.mark.parametrize(("phase", "frame", "due"), CASES, ids=[_id(c) for c in CASES])
def test_a_frame_is_sendable_only_in_playing_once_due(phase: Phase, frame: bool, due: bool) -> None:
    state, now = reach(phase, frame, due)
    assert state.send_now(now) is (phase is PLAYING and frame and due)
    assert state.wants_frame is (not frame and phase in (IDLE, PLAYING))
    wake_at = state.wake_at(now)
    if phase is PLAYING:
        assert wake_at == pytest.approx(T0 + 20 * MS)
    else:
        assert wake_at is None  # nothing to come back for: only woken


def test_closed_absorbs_every_input_in_any_order() -> None:
    for order in itertools.permutations(
        [
            "frame_ready",
            "frame_missing",
            "paused",
            "hold",
            "release",
            "no_key",
            "key_ready",
            "close",
        ],
        4,
    ):
        state, now = reach(CLOSED, False, True)
        for input in order:
            apply(state, input, now)
            assert state.phase is CLOSED and not state.has_frame
            assert not state.send_now(now) and state.wake_at(now) is None
        with pytest.raises(RuntimeError):
            state.sent(now)


def test_idle_and_closed_never_hold_a_frame() -> None:
    """The cases left out of CASES are unreachable: every way into IDLE lets go of nothing
    because none is taken with a frame in hand (paused/frame_missing need an empty hand)."""
    for phase, frame, due in CASES:
        for input in INPUTS:
            state, now = reach(phase, frame, due)
            try:
                apply(state, input, now)
            except RuntimeError:
                continue
            if state.phase in (IDLE, CLOSED):
                assert not state.has_frame, (phase, frame, due, input)


# -- schedule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("offset_ms", [0.0, 0.001, 3.0, 9.999, 10.0, 10.5])
def test_a_run_starts_at_the_grid_point_at_or_after_now(offset_ms: float) -> None:
    state = SendState(Pacer(grid=GRID))
    now = T0 + offset_ms * MS
    state.frame_ready(now, 960)
    first_due = T0 + 10 * MS * -(-offset_ms // 10)  # ceil to the 10 ms grid
    assert state.wake_at(now) == pytest.approx(first_due, abs=1e-9)
    assert state.send_now(now) is (offset_ms in (0.0, 10.0))
    assert state.send_now(first_due)


@pytest.mark.parametrize("resume", ["release", "key_ready"])
def test_a_resumed_run_starts_afresh_on_the_grid_without_a_burst(resume: str) -> None:
    state = SendState(Pacer(grid=GRID))
    state.frame_ready(T0, 960)
    state.sent(T0)
    state.frame_ready(T0 + 1 * MS, 960)  # due at T0 + 20 ms
    if resume == "release":
        state.hold()
    else:
        state.no_key()
    now = T0 + 500 * MS + 3 * MS  # held for half a second: no catching up afterwards
    apply(state, resume, now)
    assert state.phase is PLAYING
    assert state.wake_at(now) == pytest.approx(T0 + 510 * MS)
    state.sent(T0 + 510 * MS)
    state.frame_ready(T0 + 510 * MS, 960)
    assert state.wake_at(T0 + 510 * MS) == pytest.approx(T0 + 530 * MS)
    assert state.stats().underruns == 0 and state.stats().stalls == 0


@pytest.mark.parametrize("stop", ["paused", "release", "key_ready"])
def test_a_new_run_never_starts_before_the_last_frame_has_played_out(stop: str) -> None:
    """After stop_speaking's last silence frame (sent at T0, 20 ms long), a frame queued at once
    goes at T0 + 20 ms, not with the silence frame; likewise after a hold or a missing key that
    ended the run within a frame."""
    state = SendState(Pacer(grid=GRID))
    state.frame_ready(T0, 960)
    state.sent(T0)
    if stop == "paused":
        state.paused()
        state.frame_ready(T0, 960)
    else:
        state.frame_ready(T0, 960)
        if stop == "release":
            state.hold()
        else:
            state.no_key()
        apply(state, stop, T0)
    assert state.phase is PLAYING
    assert not state.send_now(T0)
    assert state.wake_at(T0) == pytest.approx(T0 + 20 * MS)


def test_after_an_underrun_the_next_run_starts_when_the_frame_arrives() -> None:
    state = SendState(Pacer(grid=GRID))
    state.frame_ready(T0, 960)
    state.sent(T0)
    state.frame_missing(T0 + 20 * MS)  # due and nothing queued: the run ends
    assert state.phase is IDLE and state.stats().underruns == 1
    state.frame_ready(T0 + 503 * MS, 960)  # the producer is back half a second later
    assert state.wake_at(T0 + 503 * MS) == pytest.approx(T0 + 510 * MS)


@pytest.mark.parametrize("ms", [10, 20, 40, 60])
def test_frames_are_scheduled_by_their_own_duration_without_drift(ms: int) -> None:
    """Thousands of frames, each sent 1.5 ms late: frame n is still due at T0 + n * duration."""
    state = SendState(Pacer(grid=GRID))
    now = T0
    for n in range(5000):
        state.frame_ready(now, ms * SAMPLES_PER_MS)
        due = state.wake_at(now)
        assert due is not None
        assert due == pytest.approx(T0 + n * ms * MS, abs=1e-9)
        now = due + 1.5 * MS if n else due
        assert state.send_now(now)
        state.sent(now)
    stats = state.stats()
    assert stats.frames_sent == 5000 and stats.stalls == 0 and stats.underruns == 0


def test_mixed_durations_follow_an_absolute_schedule() -> None:
    durations = [10, 20, 40, 60, 20, 10, 60, 40] * 500
    state = SendState(Pacer(grid=GRID))
    elapsed_ms = 0
    for n, ms in enumerate(durations):
        now = T0 + elapsed_ms * MS + (0.7 * MS if n % 3 else 0.0)  # asked on time or late
        state.frame_ready(now, ms * SAMPLES_PER_MS)
        assert state.wake_at(now) == pytest.approx(T0 + elapsed_ms * MS, abs=1e-9)
        assert state.send_now(now)
        state.sent(now)
        elapsed_ms += ms
    assert state.stats().frames_sent == len(durations)
    assert state.stats().late_frames == 0


def test_sending_exactly_at_the_due_instant_is_on_time() -> None:
    """A clock read equal to the due time (the fake clock's nanoseconds, or any float within a
    nanosecond of it) makes the frame sendable: otherwise a sender woken at its deadline would
    find nothing due and wait for that same deadline again, forever."""
    for start in (3.0, 100.0, 12345.678, T0 + 0.003):
        state = SendState(Pacer(grid=GRID))
        now = start
        for n in range(1000):
            state.frame_ready(now, 960)
            due = state.wake_at(now)
            assert due is not None
            now = round(due * 1e9) / 1e9  # what FakeClock.monotonic() reads at that deadline
            assert state.send_now(now), (start, n, due, now)
            state.sent(now)


def test_stall_restarts_the_run_at_the_grid_point_before_now() -> None:
    state = SendState(Pacer(grid=GRID))
    state.frame_ready(T0, 960)
    state.sent(T0)
    state.frame_ready(T0 + 1 * MS, 960)
    # the sender wakes 50 ms after the due time (2.5 frames): it catches up, no reset
    assert state.wake_at(T0 + 70 * MS) == pytest.approx(T0 + 20 * MS)
    state.sent(T0 + 70 * MS)
    state.frame_ready(T0 + 70 * MS, 960)
    # it wakes 207 ms late: more than 3 frames behind, the run restarts at T0 + 250 ms
    assert state.wake_at(T0 + 267 * MS) == pytest.approx(T0 + 260 * MS)
    assert state.send_now(T0 + 267 * MS)
    state.sent(T0 + 267 * MS)
    state.frame_ready(T0 + 267 * MS, 960)
    assert state.wake_at(T0 + 267 * MS) == pytest.approx(T0 + 280 * MS)
    stats = state.stats()
    assert stats.stalls == 1 and stats.underruns == 0 and stats.frames_sent == 3


# -- random sequences against a reference model -----------------------------------------------

US_PER_SAMPLE_NUM, US_PER_SAMPLE_DEN = 1000, 48  # 480 samples = 10 000 us
GRID_US: Final = 10_000
CATCH_UP_US: Final = 3 * 20_000
T0_US: Final = 1_000_000_000


class Model:
    """What the rules say, in integer microseconds: phase, frame in hand, schedule, counters."""

    def __init__(self) -> None:
        self.phase = IDLE
        self.frame: int | None = None  # samples
        self.origin: int | None = None
        self.elapsed = 0  # us of the run sent so far
        self.not_before = 0  # end of the last frame sent (a new run starts no earlier)
        self.sent = 0
        self.underruns = 0
        self.stalls = 0

    def next_due(self, now: int) -> int:
        if self.origin is None:
            self.start(now)
        assert self.origin is not None
        due = self.origin + self.elapsed
        if now - due > CATCH_UP_US:
            self.stalls += 1
            self.origin, self.elapsed = now // GRID_US * GRID_US, 0
            return self.origin
        return due

    def start(self, now: int) -> None:
        at = max(now, self.not_before)
        self.origin, self.elapsed = -(-at // GRID_US) * GRID_US, 0
        self.phase = PLAYING

    def end_run(self) -> None:
        if self.origin is not None:
            self.not_before = max(self.not_before, self.origin + self.elapsed)
        self.origin = None

    def wake_at(self, now: int) -> int | None:
        return self.next_due(now) if self.phase is PLAYING else None

    def send_now(self, now: int) -> bool:
        return self.phase is PLAYING and self.frame is not None and self.next_due(now) <= now

    def resume(self, now: int) -> None:
        if self.frame is None:
            self.phase = IDLE
        else:
            self.start(now)


def us(seconds: float) -> float:
    return seconds * 1e6


class SendStateMachine(RuleBasedStateMachine):
    """Random inputs at random (non-decreasing) times; `SendState` must agree with `Model`."""

    def __init__(self) -> None:
        super().__init__()
        self.state = SendState(Pacer(grid=GRID))
        self.model = Model()
        self.now = T0_US

    @property
    def t(self) -> float:
        return self.now / 1e6

    @rule(
        step=st.sampled_from(
            [
                0,
                1,
                999,
                5_000,
                9_999,
                10_000,
                10_001,
                20_000,
                40_000,
                60_000,
                60_001,
                80_000,
                500_000,
            ]
        )
        | st.integers(0, 100_000)
    )
    def advance(self, step: int) -> None:
        self.now += step

    @rule()
    def advance_to_due(self) -> None:
        """Land exactly on the due time, as a sender woken at its deadline does."""
        due = self.model.wake_at(self.now)
        wake_at = self.state.wake_at(self.t)
        if due is not None and due > self.now:
            self.now = due
            assert wake_at is not None and us(wake_at) == pytest.approx(due, abs=0.01)

    @rule(samples=st.sampled_from([480, 960, 1920, 2880]))
    def frame_ready(self, samples: int) -> None:
        m = self.model
        if m.phase is not CLOSED and m.frame is not None:
            with pytest.raises(RuntimeError):
                self.state.frame_ready(self.t, samples)
            return
        self.state.frame_ready(self.t, samples)
        if m.phase is CLOSED:
            return
        m.frame = samples
        if m.phase is IDLE:
            m.start(self.now)

    @rule()
    def frame_missing(self) -> None:
        self.state.frame_missing(self.t)
        m = self.model
        if m.phase is PLAYING and m.frame is None and m.next_due(self.now) <= self.now:
            m.underruns += 1
            m.end_run()
            m.phase = IDLE

    @rule()
    def send_if_due(self) -> None:
        """What the sender does: send the frame in hand if and only if it may go now."""
        m = self.model
        may = m.send_now(self.now)
        assert self.state.send_now(self.t) is may
        if not may:
            if m.phase is not PLAYING or m.frame is None:
                with pytest.raises(RuntimeError):
                    self.state.sent(self.t)
            return
        self.state.sent(self.t)
        assert m.frame is not None
        m.elapsed += m.frame * US_PER_SAMPLE_NUM // US_PER_SAMPLE_DEN
        m.frame = None
        m.sent += 1

    @rule()
    def paused(self) -> None:
        self.state.paused()
        m = self.model
        if m.phase is PLAYING and m.frame is None:
            m.end_run()
            m.phase = IDLE

    @rule()
    def hold(self) -> None:
        self.state.hold()
        m = self.model
        if m.phase in (IDLE, PLAYING, NO_KEY):
            m.end_run()
            m.phase = HELD

    @rule()
    def release(self) -> None:
        self.state.release(self.t)
        if self.model.phase is HELD:
            self.model.resume(self.now)

    @rule()
    def no_key(self) -> None:
        self.state.no_key()
        m = self.model
        if m.phase in (IDLE, PLAYING):
            m.end_run()
            m.phase = NO_KEY

    @rule()
    def key_ready(self) -> None:
        self.state.key_ready(self.t)
        if self.model.phase is NO_KEY:
            self.model.resume(self.now)

    @rule()
    def close(self) -> None:
        self.state.close()
        m = self.model
        m.end_run()
        m.phase, m.frame = CLOSED, None

    @invariant()
    def agrees_with_the_model(self) -> None:
        m, s = self.model, self.state
        assert s.phase is m.phase
        assert s.has_frame is (m.frame is not None)
        assert s.wants_frame is (m.frame is None and m.phase in (IDLE, PLAYING))
        due, wake_at = m.wake_at(self.now), s.wake_at(self.t)
        if due is None:
            assert wake_at is None
        else:
            assert wake_at is not None and us(wake_at) == pytest.approx(due, abs=0.01)
        stats = s.stats()
        assert (stats.frames_sent, stats.underruns, stats.stalls) == (m.sent, m.underruns, m.stalls)


SendStateMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60)
TestSendStateMachine = SendStateMachine.TestCase

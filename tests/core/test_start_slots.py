"""Start slots: how the runs of many streams spread over the 20 ms cycle (pure, no threads)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core.pacing import Pacer, StartSlots

GRID = 0.005  # 4 phases per 20 ms cycle


def test_a_run_takes_the_first_point_with_room_then_the_least_busy_earliest_on_a_tie() -> None:
    slots = StartSlots(GRID, 0.020, burst=2)
    origins = []
    for _ in range(12):
        origin = slots.choose(100.005)
        slots.occupy(origin)
        origins.append(round(origin, 9))
    # two per point from the earliest, then one more per point, least busy first
    assert origins[:8] == [100.005, 100.005, 100.01, 100.01, 100.015, 100.015, 100.02, 100.02]
    assert origins[8:] == [100.005, 100.01, 100.015, 100.02]
    assert slots.counts == (3, 3, 3, 3)  # phase 0 = multiples of 20 ms: 100.02


def test_the_window_is_one_cycle_from_the_earliest_start_and_wraps() -> None:
    slots = StartSlots(GRID, 0.020, burst=1)
    slots.occupy(100.015)  # phase 3
    slots.occupy(100.020)  # phase 0
    # from 100.015: phase 3 busy, then 100.02 (phase 0) busy, then 100.025 (phase 1) free
    assert round(slots.choose(100.015), 9) == 100.025
    slots.occupy(100.025)
    slots.occupy(100.030)
    assert round(slots.choose(100.015), 9) == 100.015  # all busy once: the earliest


def test_vacate_makes_room_again() -> None:
    slots = StartSlots(GRID, 0.020, burst=1)
    phase = slots.occupy(100.005)
    assert round(slots.choose(100.005), 9) == 100.01
    slots.vacate(phase)
    assert round(slots.choose(100.005), 9) == 100.005 and slots.counts == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("grid", "cycle", "burst"), [(0.003, 0.020, 16), (0.0, 0.020, 16), (0.005, 0.020, 0)]
)
def test_a_cycle_that_is_not_whole_grid_steps_or_no_burst_is_refused(
    grid: float, cycle: float, burst: int
) -> None:
    with pytest.raises(ValueError):
        StartSlots(grid, cycle, burst)


def test_a_pacer_must_use_the_grid_of_its_slots() -> None:
    with pytest.raises(ValueError, match="grid"):
        Pacer(grid=0.010, slots=StartSlots(GRID))


def test_a_pacer_occupies_its_phase_while_its_run_lasts() -> None:
    slots = StartSlots(GRID, 0.020, burst=1)
    a, b = Pacer(grid=GRID, slots=slots), Pacer(grid=GRID, slots=slots)
    assert a.start(100.001) == 100.005
    assert b.start(100.001) == 100.01  # a's point is full
    assert slots.counts == (0, 1, 1, 0)
    a.sent(100.005)
    a.underrun()  # a's run ends: its point is free
    assert slots.counts == (0, 0, 1, 0)
    b.pause()
    assert slots.counts == (0, 0, 0, 0)


def test_a_stall_moves_the_run_to_the_point_it_restarts_on() -> None:
    slots = StartSlots(GRID, 0.020, burst=16)
    pacer = Pacer(grid=GRID, slots=slots)
    pacer.start(100.0)
    assert slots.counts == (1, 0, 0, 0)
    pacer.sent(100.0)
    assert pacer.next_due(100.2071) == 100.205  # far behind: restarts at the point before now
    assert slots.counts == (0, 1, 0, 0) and pacer.stats().stalls == 1


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["start", "send", "underrun", "pause"])),
        max_size=60,
    )
)
def test_the_counts_are_the_running_pacers_per_phase(ops: list[tuple[int, str]]) -> None:
    """Whatever the pacers do (stalls included), each running one is counted once, on the
    phase of its run's origin; a stopped one is not counted."""
    slots = StartSlots(GRID, 0.020, burst=2)
    pacers = [Pacer(grid=GRID, slots=slots) for _ in range(6)]
    now = 100.0
    for index, op in ops:
        now = round(now + 0.0013, 9)
        pacer = pacers[index]
        if op == "start" and not pacer.running:
            pacer.start(now)
        elif op == "send" and pacer.running:
            due = pacer.next_due(now)
            pacer.sent(max(now, due))
        elif op == "underrun" and pacer.running:
            pacer.underrun()
        elif op == "pause":
            pacer.pause()
        expected = [0, 0, 0, 0]
        for each in pacers:
            if each.origin is not None:
                expected[slots.phase(each.origin)] += 1
        assert list(slots.counts) == expected

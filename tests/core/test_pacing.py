"""Pacing and heartbeat arithmetic with explicit `now` values (no clocks, no threads)."""

from __future__ import annotations

import pytest

from discord_voice.core.frames import MAX_OPUS_PACKET_SIZE, check_opus_frame
from discord_voice.core.pacemaker import Pacemaker
from discord_voice.core.pacing import Pacer
from discord_voice.errors import InvalidFrame


def test_schedule_is_absolute_and_does_not_drift() -> None:
    pacer = Pacer()
    assert pacer.next_due(100.0) == 100.0  # a run starts at once
    pacer.sent(100.0)
    dues = []
    for n in range(1, 1000):
        due = pacer.next_due(100.0 + n * 0.020 - 0.015)  # asked early each time
        dues.append(due)
        pacer.sent(due + 0.0015)  # and always sent 1.5 ms late
    assert dues[-1] == pytest.approx(100.0 + 999 * 0.020, abs=1e-9)
    stats = pacer.stats()
    assert stats.frames_sent == 1000 and stats.late_frames == 0
    assert stats.max_lateness == pytest.approx(0.0015)


def test_underrun_restarts_the_schedule_without_a_burst() -> None:
    pacer = Pacer()
    pacer.next_due(0.0)
    pacer.sent(0.0)
    assert pacer.next_due(0.0) == pytest.approx(0.020)
    pacer.underrun()  # nothing queued at 20 ms
    assert not pacer.running
    # the producer comes back 500 ms later: the next frame goes at once, then every 20 ms
    assert pacer.start(0.5) == 0.5
    pacer.sent(0.5)
    assert pacer.next_due(0.5) == pytest.approx(0.52)
    assert pacer.stats().underruns == 1 and pacer.stats().stalls == 0


def test_stall_catch_up_is_capped_at_three_frames() -> None:
    pacer = Pacer()
    pacer.next_due(0.0)
    pacer.sent(0.0)
    # the sender wakes 50 ms late (2.5 frames): catch up back to back, no reset
    due = pacer.next_due(0.070)
    assert due == pytest.approx(0.020)
    pacer.sent(0.070)
    assert pacer.next_due(0.070) == pytest.approx(0.040)
    pacer.sent(0.070)
    # now it wakes 200 ms late: more than 3 frames behind, the origin resets to now
    assert pacer.next_due(0.260) == pytest.approx(0.260)
    pacer.sent(0.260)
    assert pacer.next_due(0.260) == pytest.approx(0.280)
    stats = pacer.stats()
    assert stats.stalls == 1 and stats.late_frames == 2
    assert stats.max_lateness == pytest.approx(0.050)


def test_pause_is_not_an_underrun() -> None:
    pacer = Pacer()
    pacer.next_due(0.0)
    pacer.pause()
    assert not pacer.running and pacer.stats().underruns == 0


def test_a_run_starts_on_the_grid_point_at_or_after_now() -> None:
    pacer = Pacer(grid=0.010)
    assert pacer.start(100.0) == pytest.approx(100.0)  # on the grid: at once
    pacer.pause()
    assert pacer.start(100.0031) == pytest.approx(100.01)
    pacer.pause()
    assert pacer.start(100.010001) == pytest.approx(100.02)  # just past a point: the next
    assert pacer.next_due(100.0) == pytest.approx(100.02)


def test_no_grid_starts_at_now_and_a_negative_grid_is_refused() -> None:
    assert Pacer().start(100.0031) == 100.0031
    with pytest.raises(ValueError, match="grid"):
        Pacer(grid=-0.01)


@pytest.mark.parametrize("samples", [480, 960, 1920, 2880])
def test_each_frame_is_paced_by_its_samples(samples: int) -> None:
    pacer = Pacer(grid=0.010)
    origin = pacer.start(7.0)
    for n in range(1, 3001):
        pacer.sent(pacer.next_due(origin), samples)
        assert pacer.next_due(origin) == pytest.approx(7.0 + n * samples / 48_000, abs=1e-9)


def test_mixed_samples_accumulate_exactly() -> None:
    pacer = Pacer(grid=0.010)
    pacer.start(0.0)
    total = 0
    for samples in [480, 2880, 960, 1920] * 2500:  # 10 000 frames, 325 s of audio
        due = pacer.next_due(total / 48_000)
        assert due == pytest.approx(total / 48_000, abs=1e-9)
        pacer.sent(due, samples)
        total += samples
    assert pacer.stats().frames_sent == 10_000 and pacer.stats().stalls == 0


def test_a_stall_restarts_on_the_grid_point_at_or_before_now() -> None:
    pacer = Pacer(grid=0.010)
    pacer.start(0.0)
    pacer.sent(0.0)
    assert pacer.next_due(0.0857) == pytest.approx(0.080)  # 65.7 ms behind: restart
    assert pacer.due_by(0.0857)
    pacer.sent(0.0857)
    assert pacer.next_due(0.0857) == pytest.approx(0.100)
    assert pacer.stats().stalls == 1


def test_exactly_three_frames_behind_is_not_a_stall() -> None:
    pacer = Pacer(grid=0.010)
    pacer.start(1000.0)
    pacer.sent(1000.0)
    assert pacer.next_due(1000.08) == pytest.approx(1000.02)  # 60 ms late, float-rounded
    assert pacer.stats().stalls == 0


def test_a_due_time_read_back_from_nanoseconds_is_due() -> None:
    """A grid point computed as 100004 * 0.01 is 1000.0400000000001; a clock counting
    nanoseconds reads 1000.04 at that instant: the frame is due then, not one ulp later."""
    pacer = Pacer(grid=0.010)
    due = pacer.start(1000.04)
    assert pacer.due_by(1000.04)
    assert not pacer.due_by(due - 2e-9)


def test_one_instant_is_one_float_whatever_run_reached_it() -> None:
    """Two runs that started 10 ms apart, one of 60 ms and one of 10 ms frames: wherever their
    schedules meet, the due times are equal floats (a sender orders equal ones by attach order),
    though the plain sums differ in the last bit (1001.33 and 1001.3299999999999)."""
    a, b = Pacer(grid=0.010), Pacer(grid=0.010)
    a.start(1000.003)
    b.start(1000.013)
    met = 0
    for _ in range(2000):
        due_a = a.next_due(0.0)
        while b.next_due(0.0) < due_a - 0.005:
            b.sent(b.next_due(0.0), 480)
        if b.next_due(0.0) == pytest.approx(due_a, abs=1e-6):
            assert b.next_due(0.0) == due_a
            met += 1
        a.sent(due_a, 2880)
    assert met == 1999  # every due time of a from b's start on


@pytest.mark.parametrize("end", ["pause", "underrun"])
def test_a_new_run_waits_for_the_previous_runs_last_frame(end: str) -> None:
    pacer = Pacer(grid=0.010)
    pacer.start(0.0)
    pacer.sent(0.0, 2880)  # a 60 ms frame
    if end == "pause":
        pacer.pause()
    else:
        pacer.underrun()
    assert pacer.start(0.001) == pytest.approx(0.060)  # not with the frame still playing
    pacer.pause()
    assert pacer.start(0.2) == pytest.approx(0.2)  # long after it: at once


def test_pacemaker_schedule_nonces_and_latency() -> None:
    pm = Pacemaker(13.75, now=10.0)
    assert pm.next_due == pytest.approx(23.75)
    n1 = pm.beat(23.75)
    assert n1 == 23750 and pm.next_due == pytest.approx(37.5)
    assert pm.ack(n1, 23.80) == pytest.approx(0.05)
    assert pm.latency == pytest.approx(0.05)
    assert pm.ack(n1, 23.9) is None  # repeated ACK
    assert pm.ack(123, 24.0) is None  # unknown nonce
    # nonces rise strictly even when two beats fall in the same millisecond
    assert pm.beat(37.5) < pm.beat(37.5)


def test_pacemaker_restarts_grid_after_falling_behind() -> None:
    pm = Pacemaker(1.0, now=0.0)
    pm.beat(5.0)  # the thread was blocked for 4 intervals
    assert pm.next_due == pytest.approx(6.0)


def test_pacemaker_declares_death_after_two_unacked_intervals() -> None:
    pm = Pacemaker(1.0, now=0.0)
    first = pm.beat(1.0)
    assert not pm.is_dead(2.0)
    pm.beat(2.0)
    assert not pm.is_dead(3.0)  # exactly two intervals: not yet
    assert pm.is_dead(3.001)
    pm.ack(first, 3.001)  # an ACK for the old beat clears it; the second is 1 s old
    assert not pm.is_dead(3.001)


def test_pacemaker_ack_clears_older_beats() -> None:
    pm = Pacemaker(1.0, now=0.0)
    pm.beat(1.0)
    second = pm.beat(2.0)
    pm.ack(second, 2.1)
    assert not pm.is_dead(100.0)


def test_pacemaker_rejects_nonpositive_interval() -> None:
    with pytest.raises(ValueError):
        Pacemaker(0.0, now=0.0)


@pytest.mark.parametrize(
    "item", [b"\xf8\xff\xfe", bytearray(b"\x01" * 200), memoryview(b"\x02" * MAX_OPUS_PACKET_SIZE)]
)
def test_valid_frames_are_returned_as_immutable_bytes(item: bytes | bytearray | memoryview) -> None:
    frame = check_opus_frame(item)
    assert type(frame) is bytes and frame == bytes(item)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("text", "must be bytes.*str"),
        (None, "NoneType"),
        (123, "int"),
        (b"", "empty"),
        (b"\x00" * (MAX_OPUS_PACKET_SIZE + 1), "larger than any Opus packet"),
        ([b"\xf8"], "list"),
    ],
)
def test_invalid_frames_are_rejected_with_a_clear_message(item: object, match: str) -> None:
    with pytest.raises(InvalidFrame, match=match):
        check_opus_frame(item)


def test_invalid_frame_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_opus_frame(b"")

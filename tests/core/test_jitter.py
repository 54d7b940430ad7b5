"""core.jitter: ordering, loss (FEC / concealment), pauses, duplicates, wrap-around, resync."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core.jitter import MAX_SILENCE, Frame, Gap, JitterBuffer, Output, Silence


def feed(buffer: JitterBuffer, packets: list[tuple[int, int]], samples: int = 960) -> list[Output]:
    out: list[Output] = []
    for seq, ts in packets:
        out += buffer.push(seq, ts, b"p%d" % seq, samples)
    return out


def kinds(out: list[Output]) -> list[str]:
    return [
        f"F{o.sequence}" if isinstance(o, Frame)
        else f"G{o.sequence}{'+fec' if o.fec else ''}" if isinstance(o, Gap)
        else f"S{o.samples}"
        for o in out
    ]  # fmt: skip


def test_in_order_packets_come_out_at_once() -> None:
    buffer = JitterBuffer(delay=3)
    assert kinds(feed(buffer, [(10, 0), (11, 960), (12, 1920)])) == ["F10", "F11", "F12"]
    assert buffer.stats.frames == 3 and buffer.waiting == 0


def test_reordered_packets_are_put_back_in_order() -> None:
    buffer = JitterBuffer(delay=3)
    out = feed(buffer, [(10, 0), (12, 1920), (11, 960), (14, 3840), (13, 2880)])
    assert kinds(out) == ["F10", "F11", "F12", "F13", "F14"]
    assert buffer.stats.lost == 0


def test_a_lost_packet_is_a_gap_with_fec_from_the_next_once_delay_packets_wait() -> None:
    buffer = JitterBuffer(delay=3)
    out = feed(buffer, [(10, 0), (12, 1920), (13, 2880)])
    assert kinds(out) == ["F10"]  # 11 may still come
    out = feed(buffer, [(14, 3840)])
    assert kinds(out) == ["G11+fec", "F12", "F13", "F14"]
    gap = out[0]
    assert isinstance(gap, Gap) and gap.fec == b"p12" and gap.samples == 960
    assert buffer.stats.lost == 1


def test_two_lost_in_a_row_conceal_the_first_and_use_fec_for_the_second() -> None:
    buffer = JitterBuffer(delay=2)
    assert kinds(feed(buffer, [(1, 0), (4, 2880), (5, 3840)])) == ["F1", "G2", "G3+fec", "F4", "F5"]


def test_late_and_duplicate_packets_are_dropped_and_counted() -> None:
    buffer = JitterBuffer(delay=2)
    assert kinds(feed(buffer, [(1, 0), (3, 1920), (4, 2880)])) == ["F1", "G2+fec", "F3", "F4"]
    assert kinds(feed(buffer, [(2, 960)])) == []  # too late
    assert kinds(feed(buffer, [(6, 4800), (6, 4800)])) == []  # waiting for 5; then a copy
    assert buffer.stats.late == 1 and buffer.stats.duplicates == 1


def test_a_pause_becomes_silence_of_its_length() -> None:
    buffer = JitterBuffer(delay=3)
    out = feed(buffer, [(1, 0), (2, 960), (3, 960 * 2 + 48000)])  # 1 s pause, no sequence gap
    assert kinds(out) == ["F1", "F2", "S48000", "F3"]
    assert buffer.stats.silence_samples == 48000


def test_a_flush_releases_everything_and_the_next_talk_spurt_keeps_the_timeline() -> None:
    buffer = JitterBuffer(delay=4)
    assert kinds(feed(buffer, [(1, 0), (3, 1920)])) == ["F1"]
    assert kinds(buffer.flush()) == ["G2+fec", "F3"]
    assert kinds(feed(buffer, [(4, 2880 + 9600)])) == ["S9600", "F4"]  # 200 ms later
    assert kinds(feed(buffer, [(2, 960)])) == []  # a straggler from before the flush


def test_frames_of_other_durations_advance_the_timeline_by_their_own() -> None:
    buffer = JitterBuffer(delay=2)
    out = feed(buffer, [(1, 0), (2, 2880), (3, 5760)], samples=2880)  # 60 ms frames
    assert kinds(out) == ["F1", "F2", "F3"]
    out = feed(buffer, [(5, 11520), (6, 14400)], samples=2880)  # 4 lost: a 60 ms gap
    assert kinds(out) == ["G4+fec", "F5", "F6"]
    assert isinstance(out[0], Gap) and out[0].samples == 2880


def test_sequence_numbers_wrap() -> None:
    buffer = JitterBuffer(delay=2)
    start = 65533
    packets = [((start + n) & 0xFFFF, (0xFFFFF000 + 960 * n) & 0xFFFFFFFF) for n in range(6)]
    order = [packets[0], packets[2], packets[1], packets[4], packets[3], packets[5]]
    assert kinds(feed(buffer, order)) == [f"F{seq}" for seq, _ in packets]


def test_a_restarted_sequence_resynchronises_instead_of_a_thousand_gaps() -> None:
    buffer = JitterBuffer(delay=2, max_gap=10)
    feed(buffer, [(100, 0)])
    out = feed(buffer, [(5000, 960), (5001, 1920)])
    assert kinds(out) == ["F5000", "F5001"] and buffer.stats.resyncs == 1


def test_a_huge_timestamp_jump_is_clipped_silence() -> None:
    buffer = JitterBuffer(delay=1)
    out = feed(buffer, [(1, 0), (2, 960 + 2**30)])
    assert kinds(out) == ["F1", f"S{MAX_SILENCE}", "F2"]


@given(
    st.integers(0, 65535),
    st.lists(st.integers(0, 3), min_size=1, max_size=80),
    st.integers(0, 2**32 - 1),
)
def test_every_sequence_comes_out_once_in_order_as_a_frame_or_a_gap(
    start: int, fate: list[int], seed: int
) -> None:
    """fate per packet: 0 on time, 1 lost, 2 duplicated, 3 delayed by a few places."""
    rng = random.Random(seed)
    sent = [((start + n) & 0xFFFF, 960 * n) for n in range(len(fate))]
    arrivals: list[tuple[int, int]] = []
    delayed: list[tuple[int, tuple[int, int]]] = []
    for n, packet in enumerate(sent):
        if fate[n] != 1:
            if fate[n] == 3:
                delayed.append((n + rng.randint(1, 3), packet))
            else:
                arrivals.append(packet)
            if fate[n] == 2:
                arrivals.append(packet)
        for due, late in [d for d in delayed if d[0] <= n]:
            arrivals.append(late)
            delayed.remove((due, late))
    arrivals += [late for _, late in delayed]
    buffer = JitterBuffer(delay=4)
    out = feed(buffer, arrivals) + buffer.flush()
    released = [o.sequence for o in out if isinstance(o, (Frame, Gap))]
    assert len(released) == len(set(released))  # never twice
    frames = {o.sequence for o in out if isinstance(o, Frame)}
    assert frames <= {seq for seq, _ in arrivals}  # only what arrived is a frame
    if arrivals:  # from the first arrival on, every sequence is accounted for, in order
        first = arrivals[0][0]
        ahead = [((seq - first + 0x8000) & 0xFFFF) - 0x8000 for seq, _ in arrivals]
        expected = [(first + k) & 0xFFFF for k in range(max(ahead) + 1)]
        assert released == expected
    assert not any(isinstance(o, Silence) for o in out)  # no pause was made

"""core.ssrc_map: the SSRC -> user map with the hold for early audio (receive.md §3)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core.ssrc_map import Deliver, Expired, Reset, SsrcMap

ALICE, BOB = 1001, 1002


def delivered(actions: Sequence[object]) -> list[tuple[int, object]]:
    return [(a.user_id, a.packet) for a in actions if isinstance(a, Deliver)]


def test_a_mapped_ssrc_is_delivered_to_its_user() -> None:
    m: SsrcMap[str] = SsrcMap()
    assert m.speaking(ALICE, 11, 0.0) == []
    assert m.packet(11, "a1", 0.1) == [Deliver(ALICE, "a1")]
    assert m.user_of(11) == ALICE and m.ssrc_of(ALICE) == 11


def test_early_audio_is_held_and_released_in_order_when_named() -> None:
    m: SsrcMap[str] = SsrcMap()
    for n in range(5):
        assert m.packet(11, f"a{n}", 0.02 * n) == []
    assert m.held == 5
    assert delivered(m.speaking(ALICE, 11, 0.5)) == [(ALICE, f"a{n}") for n in range(5)]
    assert m.held == 0
    assert m.packet(11, "a5", 0.6) == [Deliver(ALICE, "a5")]


def test_the_hold_is_bounded_by_count_and_time_and_drops_are_counted() -> None:
    m: SsrcMap[int] = SsrcMap(hold_packets=3, hold_seconds=2.0)
    assert m.packet(7, 0, 0.0) == [] and m.packet(7, 1, 0.1) == [] and m.packet(7, 2, 0.2) == []
    assert m.packet(7, 3, 0.3) == [Expired(7, 1)]  # the oldest goes
    assert delivered(m.speaking(BOB, 7, 0.4)) == [(BOB, 1), (BOB, 2), (BOB, 3)]
    assert m.packet(9, 0, 1.0) == [] and m.packet(9, 1, 1.5) == []
    assert m.expire(2.99) == []
    assert m.expire(3.0) == [Expired(9, 2)]  # two seconds after its first held packet
    assert m.held == 0
    assert m.packet(9, 2, 3.1) == []  # a new hold starts


def test_an_ssrc_that_changes_owner_resets_the_old_owner() -> None:
    m: SsrcMap[str] = SsrcMap()
    m.speaking(ALICE, 11, 0.0)
    assert m.speaking(BOB, 11, 1.0) == [Reset(ALICE)]
    assert m.ssrc_of(ALICE) is None and m.packet(11, "x", 1.1) == [Deliver(BOB, "x")]


def test_a_user_with_a_new_ssrc_starts_over_and_the_old_one_is_unknown() -> None:
    m: SsrcMap[str] = SsrcMap()
    m.speaking(ALICE, 11, 0.0)
    assert m.speaking(ALICE, 12, 1.0) == [Reset(ALICE)]
    assert m.packet(12, "new", 1.1) == [Deliver(ALICE, "new")]
    assert m.packet(11, "old", 1.2) == [] and m.held == 1  # held like any unknown SSRC


def test_repeated_speaking_for_the_same_mapping_changes_nothing() -> None:
    m: SsrcMap[str] = SsrcMap()
    m.speaking(ALICE, 11, 0.0)
    assert m.speaking(ALICE, 11, 5.0) == []


def test_a_departed_user_is_reset_at_once_and_forgotten_after_the_in_flight_window() -> None:
    m: SsrcMap[str] = SsrcMap(forget_after=1.0)
    m.speaking(ALICE, 11, 0.0)
    assert m.disconnected(ALICE, 10.0) == [Reset(ALICE)]
    assert m.packet(11, "in flight", 10.5) == [Deliver(ALICE, "in flight")]
    assert m.packet(11, "after", 11.0) == []  # unmapped: held as unknown
    assert m.user_of(11) is None and m.ssrc_of(ALICE) is None


def test_speaking_again_inside_the_window_keeps_the_mapping() -> None:
    m: SsrcMap[str] = SsrcMap(forget_after=1.0)
    m.speaking(ALICE, 11, 0.0)
    m.disconnected(ALICE, 10.0)
    assert m.speaking(ALICE, 11, 10.2) == []
    assert m.packet(11, "back", 12.0) == [Deliver(ALICE, "back")]


def test_clear_ends_every_mapping_and_hold() -> None:
    m: SsrcMap[str] = SsrcMap()
    m.speaking(ALICE, 11, 0.0)
    m.packet(12, "held", 0.1)
    actions = m.clear()
    assert Expired(12, 1) in actions and Reset(ALICE) in actions
    assert m.user_of(11) is None and m.held == 0


Event = tuple[str, int, int] | tuple[str, float]

events = st.lists(
    st.one_of(
        st.tuples(st.just("packet"), st.integers(1, 4), st.just(0)),
        st.tuples(st.just("speaking"), st.integers(1, 3), st.integers(1, 4)),
        st.tuples(st.just("left"), st.integers(1, 3), st.just(0)),
        st.tuples(st.just("tick"), st.floats(0, 1.5)),
    ),
    max_size=60,
)


@given(events)
def test_every_packet_is_delivered_once_or_counted_as_dropped(script: list[Event]) -> None:
    m: SsrcMap[int] = SsrcMap(hold_packets=4, hold_seconds=1.0, forget_after=0.5)
    now, sent, dropped = 0.0, 0, 0
    seen: list[int] = []
    for event in script:
        if len(event) == 2:
            now += event[1]
            actions = m.expire(now)
        elif event[0] == "packet":
            actions = m.packet(event[1], sent, now)
            sent += 1
        elif event[0] == "speaking":
            actions = m.speaking(event[1], event[2], now)
        else:
            actions = m.disconnected(event[1], now)
        for action in actions:
            if isinstance(action, Deliver):
                seen.append(action.packet)
            elif isinstance(action, Expired):
                dropped += action.count
        for ssrc in range(1, 5):  # the two maps are each other's inverse
            user = m.user_of(ssrc)
            if user is not None:
                assert m.ssrc_of(user) == ssrc
    assert len(seen) == len(set(seen))  # never twice
    assert len(seen) + dropped + m.held == sent  # and never lost uncounted

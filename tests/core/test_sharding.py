"""Shard math and identify slots (core/sharding.py), in memory."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core.sharding import (
    MAX_SNOWFLAKE,
    WINDOW,
    IdentifySlots,
    SessionStartLimit,
    Shard,
    parse_shard,
    shard_for,
)
from discord_voice.errors import LocalProtocolError

snowflakes = st.integers(0, MAX_SNOWFLAKE)
counts = st.integers(1, 5000)


@given(snowflakes, counts)
def test_shard_for_is_discords_formula_across_the_64_bit_range(guild: int, count: int) -> None:
    expected = (guild >> 22) % count  # the formula of the gateway documentation
    assert shard_for(guild, count) == expected == shard_for(str(guild), count)
    assert Shard(expected, count).owns(guild)
    assert not Shard((expected + 1) % count, count).owns(guild) or count == 1


def test_known_guilds_land_where_discord_says() -> None:
    # the documentation's example guild id: (id >> 22) is its creation in ms since 2015
    guild = 41771983423143937
    assert guild >> 22 == 9959216934  # 2015-04-26
    assert [shard_for(guild, n) for n in (1, 2, 3, 16, 1000)] == [0, 0, 0, 6, 934]
    assert shard_for(MAX_SNOWFLAKE, 1000) == ((1 << 42) - 1) % 1000


@pytest.mark.parametrize("guild", [-1, MAX_SNOWFLAKE + 1, "12a", "", " 1", "١٢", True, 1.0, None])
def test_bad_guild_ids_are_refused(guild: object) -> None:
    with pytest.raises(LocalProtocolError, match="guild_id"):
        shard_for(guild, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize(("shard_id", "count"), [(0, 0), (1, 1), (-1, 4), (4, 4), (True, 2)])
def test_bad_shards_are_refused(shard_id: int, count: int) -> None:
    with pytest.raises(LocalProtocolError, match="shard"):
        Shard(shard_id, count)


def test_shard_text_and_payload() -> None:
    shard = parse_shard("3/16")
    assert shard == Shard(3, 16) and shard.payload() == [3, 16] and str(shard) == "3/16"
    for bad in ("3", "3/", "/16", "a/b", "3-16", "16/16", "-1/4"):
        with pytest.raises(LocalProtocolError):
            parse_shard(bad)


def test_sixteen_shards_with_max_concurrency_1_start_5_s_apart() -> None:
    slots = IdentifySlots(1)
    assert [slots.reserve(n, 0.0) for n in range(16)] == [5.0 * n for n in range(16)]


def test_buckets_of_max_concurrency_start_together_in_order() -> None:
    slots = IdentifySlots(16)
    times = [slots.reserve(n, 0.0) for n in range(32)]
    assert times == [0.0] * 16 + [5.0] * 16  # shards 0-15 at once, then 16-31


def test_a_slot_is_never_before_now_nor_reused() -> None:
    slots = IdentifySlots(2)
    assert slots.reserve(0, 10.0) == 10.0
    assert slots.reserve(2, 11.0) == 15.0  # same bucket (2 % 2 == 0)
    assert slots.reserve(1, 11.0) == 11.0  # the other bucket is free
    assert slots.reserve(0, 30.0) == 30.0  # long after: at once
    assert slots.booked == 4


@given(
    st.integers(1, 4),
    st.lists(st.tuples(st.integers(0, 40), st.floats(0, 20)), max_size=60),
)
def test_one_identify_per_bucket_per_5_s_whatever_the_order(
    concurrency: int, steps: list[tuple[int, float]]
) -> None:
    slots = IdentifySlots(concurrency)
    now = 0.0
    booked: dict[int, list[float]] = {}
    for shard_id, later in steps:
        now += later
        at = slots.reserve(shard_id, now)
        assert at >= now
        booked.setdefault(shard_id % concurrency, []).append(at)
    for times in booked.values():
        assert all(b - a >= 5.0 - 1e-9 for a, b in itertools.pairwise(times))


def test_the_session_start_limit_is_never_exceeded() -> None:
    slots = IdentifySlots()
    slots.apply(SessionStartLimit(total=1000, remaining=2, reset_at=100.0, max_concurrency=1))
    assert slots.reserve(0, 0.0) == 0.0
    assert slots.reserve(1, 0.0) == 5.0
    assert slots.reserve(2, 0.0) == 100.0  # none left: the next waits for the reset
    assert slots.reserve(3, 0.0) == 105.0  # a new day's 1000
    for n in range(998):  # the rest of them: 1000 in that window
        assert slots.reserve(n, 0.0) < 100.0 + WINDOW
    assert slots.reserve(0, 0.0) == 100.0 + WINDOW  # the 1001st waits for the next day


def test_new_limits_keep_the_slots_already_booked() -> None:
    slots = IdentifySlots(1)
    slots.reserve(0, 0.0)
    slots.reserve(1, 0.0)  # at 5.0
    slots.apply(SessionStartLimit(total=1000, remaining=1000, reset_at=1e9, max_concurrency=4))
    assert slots.max_concurrency == 4
    assert [slots.reserve(n, 0.0) for n in range(4)] == [10.0] * 4  # after the latest, at once


def test_bad_limits_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        IdentifySlots(0)
    with pytest.raises(LocalProtocolError):
        SessionStartLimit(total=10, remaining=-1, reset_at=0.0, max_concurrency=1)
    slots = IdentifySlots()
    slots.apply(SessionStartLimit(total=0, remaining=0, reset_at=1.0, max_concurrency=1))
    with pytest.raises(LocalProtocolError, match="no Identify"):
        slots.reserve(0, 0.0)

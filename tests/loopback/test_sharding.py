"""Sharded main gateways against the fake Discord: Identify carries the shard and keeps it
across a resume and a re-identify, a join on the wrong shard is refused before anything is
sent, the fake's 4010/4011, and sixteen shards identifying 5 s apart on a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from discord_voice import (
    ClosePolicy,
    Gateway,
    IdentifyLimiter,
    MainGatewayClosed,
    ReconnectPlan,
    RetryBudget,
    Shard,
    Voice,
    WrongShard,
    shard_for,
)
from discord_voice.core.opcodes import GatewayOp
from discord_voice.testing import FakeClock, FakeDiscord
from tests.loopback.conftest import CHANNEL, UNSPACED
from tests.timeouts import LONG

COUNT = 4


def guild_of(shard_id: int, count: int = COUNT) -> int:
    """A guild id that `shard_id` of `count` owns ((id >> 22) % count == shard_id)."""
    guild = ((1_000_000 + shard_id) << 22) | 12345
    assert shard_for(guild, count) == shard_id
    return guild


def client_ops(fake: FakeDiscord, op: int) -> list[Any]:
    return [
        m.data["d"]
        for m in fake.main_messages
        if m.direction == "client" and m.op == op and m.data is not None
    ]


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(dave=False, shards=COUNT) as fake:
        yield fake


def test_identify_carries_the_shard_and_ready_echoes_it(fake: FakeDiscord) -> None:
    with Gateway(fake.token, url=fake.gateway_url, shard=(1, COUNT)) as gw:
        gw.connect(timeout=LONG)
        assert gw.shard == Shard(1, COUNT) and "shard=1/4" in repr(gw)
        (identify,) = client_ops(fake, GatewayOp.IDENTIFY)
        assert identify["shard"] == [1, COUNT]
        (ready,) = [
            m.data["d"] for m in fake.main_messages if m.data and m.data.get("t") == "READY"
        ]
        assert ready["shard"] == [1, COUNT]


def test_a_join_on_the_wrong_shard_is_refused_before_anything_is_sent(fake: FakeDiscord) -> None:
    with Gateway(fake.token, url=fake.gateway_url, shard=(1, COUNT)) as gw:
        gw.connect(timeout=LONG)
        voice = Voice(gw)
        try:
            with pytest.raises(WrongShard, match=r"belongs to shard 2/4, not 1/4"):
                voice.join_channel(guild_of(2), CHANNEL, timeout=LONG)
            assert client_ops(fake, GatewayOp.VOICE_STATE_UPDATE) == []  # nothing sent
            conn = voice.join_channel(guild_of(1), CHANNEL, timeout=LONG)  # its own guild
            assert conn.guild_id == str(guild_of(1))
            conn.disconnect()
        finally:
            voice.close()
        assert fake.violations == []


def test_resume_and_reidentify_keep_the_shard(fake: FakeDiscord) -> None:
    with Gateway(
        fake.token, url=fake.gateway_url, shard=(3, COUNT), identify_limiter=UNSPACED()
    ) as gw:
        gw.connect(timeout=LONG)
        fake.drop_main()  # resumable: op 6, which has no shard; the session keeps it
        assert fake.wait_until(lambda f: bool(client_ops(f, GatewayOp.RESUME)), LONG)
        voice = Voice(gw)
        try:
            conn = voice.join_channel(guild_of(3), CHANNEL, timeout=LONG)
            conn.disconnect()
            fake.invalid_session(False)  # the session is gone: a fresh Identify
            assert fake.wait_until(lambda f: len(client_ops(f, GatewayOp.IDENTIFY)) == 2, LONG)
            assert [d["shard"] for d in client_ops(fake, GatewayOp.IDENTIFY)] == [[3, 4]] * 2
            conn = voice.join_channel(guild_of(3), CHANNEL + 1, timeout=LONG)
            conn.disconnect()
        finally:
            voice.close()
        assert fake.violations == []  # no op 4 went to a shard that does not own the guild


def test_the_fake_refuses_an_unsharded_bot_that_needs_shards(fake: FakeDiscord) -> None:
    gw = Gateway(fake.token, url=fake.gateway_url)
    with pytest.raises(MainGatewayClosed) as info:
        gw.connect(timeout=LONG)
    assert info.value.code == 4011
    gw.close()
    gw = Gateway(fake.token, url=fake.gateway_url, shard=(0, 2))  # fewer than it needs
    with pytest.raises(MainGatewayClosed) as info:
        gw.connect(timeout=LONG)
    assert info.value.code == 4011
    gw.close()


def test_sixteen_shards_identify_5_s_apart_on_the_fake_clock() -> None:
    clock = FakeClock(start=100.0)
    count = 16
    limiter = IdentifyLimiter(max_concurrency=1)
    with FakeDiscord(dave=False, shards=count, max_concurrency=1, clock=clock) as fake:
        gateways = [
            Gateway(
                fake.token, url=fake.gateway_url, shard=(n, count), clock=clock,
                identify_limiter=limiter,
            )
            for n in range(count)
        ]  # fmt: skip
        ready = [threading.Event() for _ in gateways]
        failures: list[BaseException] = []

        def start(n: int) -> None:
            try:
                gateways[n].connect(timeout=LONG)
                ready[n].set()
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                failures.append(exc)
                ready[n].set()

        threads = [
            threading.Thread(target=start, args=(n,), name=f"test-shard-{n}") for n in range(count)
        ]
        try:
            for thread in threads:
                thread.start()
            for n in range(count):
                if n:  # the next slot is 5 s later: nobody else may identify before it
                    clock.wait_for_deadline(100.0 + 5.0 * n, LONG)
                    assert sum(event.is_set() for event in ready) == n
                    clock.advance(5.0)
                assert ready[n].wait(LONG) and not failures, failures
            assert clock.monotonic() - 100.0 == 75.0  # 15 intervals of 5 s
            assert all(gw.session_id is not None for gw in gateways)
            shards = [d["shard"] for d in client_ops(fake, GatewayOp.IDENTIFY)]
            assert sorted(shards) == [[n, count] for n in range(count)]
            assert fake.violations == []  # none answered with op 9, none closed (4008/4009)
            assert len(fake.main_sessions) == count and not any(
                s.closed for s in fake.main_sessions
            )
        finally:
            for gw in gateways:
                gw.close()
            for thread in threads:
                thread.join(LONG)


def test_an_identify_refused_with_op_9_is_retried_in_the_next_slot() -> None:
    clock = FakeClock()
    with FakeDiscord(dave=False, shards=2, max_concurrency=1, clock=clock) as fake:
        first = Gateway(fake.token, url=fake.gateway_url, shard=(0, 2), clock=clock)
        at_once = RetryBudget(max_attempts=2, base_delay=0, max_delay=0, immediate_first=True)
        second = Gateway(  # its own limiter, as in another process: it knows nothing of the first
            fake.token,
            url=fake.gateway_url,
            shard=(1, 2),
            clock=clock,
            plan=ReconnectPlan(ClosePolicy.main_default(), new_session=at_once),
        )
        failures: list[BaseException] = []

        def connect() -> None:
            try:
                second.connect(timeout=60.0)
            except BaseException as exc:  # noqa: BLE001 - checked by the test thread
                failures.append(exc)

        thread = threading.Thread(target=connect, name="test-second-shard")
        try:
            first.connect(timeout=LONG)
            thread.start()
            assert fake.wait_until(lambda f: bool(f.violations), LONG)  # op 9: over the limit
            assert "identify of shard 1 0.00 s after shard 0's in bucket 0" in fake.violations[0]
            clock.wait_for_deadline(5.0, LONG)  # its next slot: 5 s after its first Identify
            clock.advance(5.0)
            thread.join(LONG)
            assert not failures and second.session_id is not None
            assert len(fake.violations) == 1  # the retry kept to the limit
        finally:
            first.close()
            second.close()
            thread.join(LONG)


def test_a_reidentify_waits_for_its_slot_too() -> None:
    clock = FakeClock()
    at_once = RetryBudget(max_attempts=2, base_delay=0, max_delay=0, immediate_first=True)
    with FakeDiscord(dave=False, max_concurrency=1, clock=clock) as fake:
        gw = Gateway(
            fake.token,
            url=fake.gateway_url,
            clock=clock,
            plan=ReconnectPlan(ClosePolicy.main_default(), new_session=at_once),
        )
        try:
            gw.connect(timeout=LONG)  # Identify at 0.0
            fake.invalid_session(False)  # the session is gone: identify afresh, but not before 5.0
            clock.wait_for_deadline(5.0, LONG)
            assert len(client_ops(fake, GatewayOp.IDENTIFY)) == 1
            clock.advance(5.0)
            assert fake.wait_until(lambda f: len(client_ops(f, GatewayOp.IDENTIFY)) == 2, LONG)
            assert fake.violations == []  # no op 9 for going too early
        finally:
            gw.close()

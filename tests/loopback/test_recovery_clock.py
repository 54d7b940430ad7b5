"""Recovery at CPU speed: the reconnect backoff of a voice connection and of the main gateway runs
on the injected clock, so a `FakeClock` drives a whole five-attempt recovery end to end against
the fake Discord without waiting for one real backoff second (or watchdog timeout)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from discord_voice import (
    AttemptKind,
    Gateway,
    GatewayTimeout,
    VoiceGatewayClosed,
    default_voice_plan,
)
from discord_voice.core.opcodes import GatewayOp, VoiceOp
from discord_voice.core.reconnect import Attempt, ClosePolicy, ReconnectPlan, RetryBudget
from discord_voice.testing import FakeClock, FakeDiscord
from tests.loopback.conftest import CHANNEL, GUILD, UNSPACED, World
from tests.timeouts import LONG

MakeWorld = Callable[..., World]


def client_ops(fake: FakeDiscord, op: int) -> list[dict[str, object]]:
    """The ``d`` of every main-gateway message the client sent with opcode `op`."""
    return [
        m.data["d"]
        for m in fake.main_messages
        if m.direction == "client" and m.op == op and m.data is not None
    ]


def identifies(count: int) -> Callable[[FakeDiscord], bool]:
    return lambda fake: len(client_ops(fake, GatewayOp.IDENTIFY)) == count


def op4_channels(fake: FakeDiscord) -> list[object]:
    return [d["channel_id"] for d in client_ops(fake, GatewayOp.VOICE_STATE_UPDATE)]


def test_five_failed_reconnects_back_off_on_the_fake_clock_then_end_with_the_last_close(
    make_world: MakeWorld,
) -> None:
    plan = default_voice_plan()  # new sessions: at once, then 0.5 s doubling, jitter up to 20 %
    ladder = replace(plan.new_session, max_delay=1.5, rng=lambda: 0.5)  # the cap is reached
    plan = replace(plan, new_session=ladder)
    delays = [ladder.next_delay(n) for n in range(1, 6)]
    assert delays == pytest.approx([0.0, 0.45, 0.9, 1.35, 1.35])
    clock = FakeClock(start=1000.0)
    # voice_heartbeat_interval: no heartbeat falls due while the backoff moves the clock
    world = make_world(
        voice_options={"clock": clock, "reconnect_plan": plan}, voice_heartbeat_interval=1000.0
    )
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)  # on the fake clock too
    attempts: list[Attempt] = []
    conn.add_attempt_listener(attempts.append)
    for _ in range(5):  # every new session is refused at Identify
        world.fake.close_voice_on(VoiceOp.IDENTIFY, 4006, "no session for you")
    start = clock.monotonic()
    world.fake.close_voice(4006, "session gone")
    for n, delay in enumerate(delays[1:], start=1):
        # attempt n was refused; attempt n+1 waits exactly its delay from now, on the clock
        clock.wait_for_deadline(clock.monotonic() + delay, LONG)
        assert len(op4_channels(world.fake)) == 1 + n  # the join's op 4, then one per attempt
        clock.advance(delay)
    with pytest.raises(VoiceGatewayClosed) as info:
        conn.wait(timeout=LONG)
    assert info.value.code == 4006  # the budget is spent: the last refusal is the error
    assert clock.monotonic() - start == pytest.approx(sum(delays))  # only backoff moved time
    assert [(a.kind, a.number, a.code) for a in attempts] == [
        (AttemptKind.RECONNECT, n, 4006) for n in range(1, 6)
    ]
    assert [a.delay for a in attempts] == pytest.approx(delays)
    assert world.fake.wait_until(  # the join, five fresh op 4s, then the leave
        lambda f: op4_channels(f) == [str(CHANNEL)] * 6 + [None], LONG
    )


class FixedRandom:
    """The main gateway's heartbeat jitter: the first beat after ``interval * value``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_five_unanswered_reidentifies_back_off_on_the_fake_clock_then_time_out() -> None:
    ladder = RetryBudget(
        max_attempts=5,
        base_delay=1.0,
        max_delay=3.0,
        jitter=0.2,
        rng=lambda: 0.5,
        immediate_first=True,
    )
    delays = [ladder.next_delay(n) for n in range(1, 6)]
    assert delays == pytest.approx([0.0, 0.9, 1.8, 2.7, 2.7])  # capped at 3.0 * 0.9
    watchdog = 15.0  # each attempt's wait for READY, on the clock too
    clock = FakeClock(start=50.0)
    with FakeDiscord() as fake:
        gateway = Gateway(
            fake.token,
            url=fake.gateway_url,
            clock=clock,
            reconnect_timeout=watchdog,
            plan=ReconnectPlan(ClosePolicy.main_default(), new_session=ladder),
            rng=FixedRandom(0.99),  # the first beat after 0.99 * 41.25 s: none in an attempt
            identify_limiter=UNSPACED(),  # the backoff ladder here, not identify pacing
        )
        try:
            gateway.connect(timeout=LONG)
            fake.withhold("main_ready")  # no new session gets READY
            start = clock.monotonic()
            fake.invalid_session(False)  # not resumable: identify afresh, at once
            for n in range(1, 6):
                clock.wait_for_deadline(clock.monotonic() + watchdog, LONG)  # attempt n's
                assert fake.wait_until(identifies(1 + n), LONG)
                clock.advance(watchdog)  # no READY: closed with 4000, counted as failed
                if n < 5:  # then attempt n+1 waits exactly its delay
                    clock.wait_for_deadline(clock.monotonic() + delays[n], LONG)
                    assert len(client_ops(fake, GatewayOp.IDENTIFY)) == 1 + n
                    clock.advance(delays[n])
            with pytest.raises(GatewayTimeout):
                gateway.wait(timeout=LONG)  # the budget is spent: the last failure is raised
            assert clock.monotonic() - start == pytest.approx(5 * watchdog + sum(delays))
            assert len(client_ops(fake, GatewayOp.IDENTIFY)) == 6
            assert client_ops(fake, GatewayOp.RESUME) == []
        finally:
            gateway.close()

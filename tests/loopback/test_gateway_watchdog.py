"""The main gateway's bounds against a server that stops answering, and against garbage.

A reconnect whose op 6 Resume or op 2 Identify gets no RESUMED/READY (the fake withholds them)
is closed by the reconnect watchdog and retried by the plan, heartbeats and ACKs
notwithstanding; when every attempt goes unanswered the gateway ends with `GatewayTimeout`. A
healthy gateway never trips the watchdog. Seeded garbage from the fake main gateway is skipped
and counted while a voice connection streams on.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from discord_voice import Gateway, GatewayTimeout, LocalProtocolError, SpeakingFlag, Voice
from discord_voice.core.opcodes import GatewayOp
from discord_voice.core.reconnect import ClosePolicy, ReconnectPlan, RetryBudget
from discord_voice.testing import FakeClock, FakeDiscord
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, UNSPACED, World
from tests.timeouts import LONG

TIMEOUT = 15.0  #: the reconnect timeout of the FakeClock tests (logical seconds)
#: Attempt 1 at once, later ones after 1 logical second: the recovering thread then parks on
#: the FakeClock, so a test can change the fake's script before the next attempt.
STEPPED = RetryBudget(
    max_attempts=3, base_delay=1.0, max_delay=1.0, jitter=0.0, immediate_first=True
)


class FixedRandom:
    """Heartbeat jitter: the first beat after ``interval * value``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class Seen:
    """A dispatch listener (or voice handler) with a waitable log of event names."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._cond = threading.Condition()

    def _record(self, name: str) -> None:
        with self._cond:
            self.names.append(name)
            self._cond.notify_all()

    def __call__(self, name: str, data: Mapping[str, Any]) -> None:
        self._record(name)

    def on_voice_state_update(self, data: Mapping[str, Any]) -> None:
        self._record(f"VOICE_STATE_UPDATE channel={data.get('channel_id')}")

    def on_voice_server_update(self, data: Mapping[str, Any]) -> None:
        self._record("VOICE_SERVER_UPDATE")

    def wait_for(self, name: str) -> None:
        end = time.monotonic() + LONG
        with self._cond:
            while name not in self.names:
                left = end - time.monotonic()
                assert left > 0, f"{name} never delivered: {self.names}"
                self._cond.wait(left)


MakeWorld = Callable[..., World]


@pytest.fixture
def open_world() -> Iterator[MakeWorld]:
    """``open_world(fake_options=..., **gateway_options)``: a fake, a READY Gateway, a Voice."""
    worlds: list[World] = []

    def make(fake_options: dict[str, Any] | None = None, **gateway_options: Any) -> World:
        fake = FakeDiscord(**(fake_options or {})).start()
        gateway = Gateway(fake.token, url=fake.gateway_url, **gateway_options)
        world = World(fake, gateway, Voice(gateway))
        worlds.append(world)
        gateway.connect(timeout=LONG)
        return world

    yield make
    for world in worlds:
        world.voice.close()
        world.gateway.close()
        world.fake.close()


def main_ops(fake: FakeDiscord, op: int) -> list[dict[str, Any]]:
    """The ``d`` of every main-gateway message the client sent with opcode `op`."""
    return [
        m.data["d"]
        for m in fake.main_messages
        if m.direction == "client" and m.op == op and m.data is not None
    ]


def sent(op: int, count: int) -> Callable[[FakeDiscord], bool]:
    return lambda fake: len(main_ops(fake, op)) >= count


def closed(number: int) -> Callable[[FakeDiscord], bool]:
    return lambda fake: len(fake.main_sessions) > number and fake.main_sessions[number].closed


def beats(number: int, count: int) -> Callable[[FakeDiscord], bool]:
    return lambda fake: fake.main_sessions[number].heartbeats == count


def library_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dv-")]


def assert_still_usable(w: World) -> None:
    """A join and a leave (op 4 answered by dispatches) work on the current socket."""
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    conn.disconnect()
    assert w.gateway.error is None and not w.gateway.closed
    assert not w.fake.violations


def fake_clock_world(open_world: MakeWorld, plan: ReconnectPlan[Any]) -> tuple[World, FakeClock]:
    clock = FakeClock()
    # Heartbeats fall due after 0.99 * 41.25 s, long after the 15 s watchdog deadlines.
    w = open_world(
        clock=clock,
        plan=plan,
        reconnect_timeout=TIMEOUT,
        rng=FixedRandom(0.99),
        identify_limiter=UNSPACED(),  # recovery ladders here, not identify pacing
    )
    return w, clock


def test_an_unanswered_resume_is_closed_and_retried(
    open_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="discord_voice.gateway")
    plan = ReconnectPlan(ClosePolicy.main_default(), resume=STEPPED, new_session=STEPPED)
    w, clock = fake_clock_world(open_world, plan)
    seen = Seen()
    w.gateway.add_dispatch_listener(seen)
    first_session = w.gateway.session_id
    w.fake.withhold("main_resumed")
    w.fake.send_main({"op": GatewayOp.RECONNECT, "d": None})
    assert w.fake.wait_until(sent(GatewayOp.RESUME, 1), LONG)
    start = clock.monotonic()
    # Parked: the new connection's heartbeat and its watchdog, 15 s after the websocket opened.
    deadlines = clock.wait_for_sleepers(2, LONG)
    assert deadlines[0] == pytest.approx(start + TIMEOUT, abs=0.01)
    clock.advance(TIMEOUT - 0.01)
    assert not closed(1)(w.fake) and w.gateway.error is None  # not a moment too early
    clock.advance_to_next()
    assert w.fake.wait_until(closed(1), LONG)  # the watchdog closed the unanswered resume...
    session = w.fake.main_sessions[1]
    assert (session.close_code, session.closed_by, session.resumed) == (4000, "client", True)
    w.fake.release("main_resumed")
    assert clock.wait_for_sleepers(1, LONG) == [clock.monotonic() + 1.0]  # ...and backs off
    clock.advance(1.0)
    seen.wait_for("RESUMED")  # the second resume is answered
    resumes = main_ops(w.fake, GatewayOp.RESUME)
    assert [r["session_id"] for r in resumes] == [first_session, first_session]
    assert len(main_ops(w.fake, GatewayOp.IDENTIFY)) == 1
    assert [s.resumed for s in w.fake.main_sessions] == [False, True, True]
    assert w.gateway.session_id == first_session
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("resume 2/3" in m and "no main gateway RESUMED" in m for m in messages), messages
    assert_still_usable(w)


def test_an_unanswered_identify_after_op9_is_closed_and_retried(open_world: MakeWorld) -> None:
    plan = ReconnectPlan(ClosePolicy.main_default(), resume=STEPPED, new_session=STEPPED)
    w, clock = fake_clock_world(open_world, plan)
    seen = Seen()
    w.gateway.add_dispatch_listener(seen)
    first_session = w.gateway.session_id
    w.fake.withhold("main_ready")
    w.fake.invalid_session(False)  # not resumable: identify afresh
    assert w.fake.wait_until(sent(GatewayOp.IDENTIFY, 2), LONG)
    clock.wait_for_sleepers(2, LONG)
    clock.advance_to_next()
    assert w.fake.wait_until(closed(1), LONG)
    assert w.fake.main_sessions[1].close_code == 4000
    assert w.fake.main_sessions[1].closed_by == "client"
    w.fake.release("main_ready")
    clock.wait_for_sleepers(1, LONG)
    clock.advance_to_next()  # the backoff before the second fresh identify
    assert w.fake.wait_until(sent(GatewayOp.IDENTIFY, 3), LONG)
    seen.wait_for("READY")
    assert main_ops(w.fake, GatewayOp.RESUME) == []
    newest = w.fake.main_sessions[-1].session_id
    assert len(w.fake.main_sessions) == 3 and w.gateway.session_id == newest != first_session
    assert_still_usable(w)


def test_heartbeats_do_not_keep_an_unanswered_resume_alive(open_world: MakeWorld) -> None:
    """ACKed heartbeats on the new connection neither reset nor extend the watchdog."""
    plan = ReconnectPlan(ClosePolicy.main_default(), resume=STEPPED, new_session=STEPPED)
    clock = FakeClock()
    w = open_world(
        fake_options={"main_heartbeat_interval": 4.0},
        clock=clock,
        plan=plan,
        reconnect_timeout=TIMEOUT,
        rng=FixedRandom(0.5),
    )
    seen = Seen()
    w.gateway.add_dispatch_listener(seen)
    w.fake.withhold("main_resumed")
    w.fake.drop_main()
    assert w.fake.wait_until(sent(GatewayOp.RESUME, 1), LONG)
    start = clock.monotonic()
    for beat in range(4):  # at +2, +6, +10 and +14 s: each one ACKed before the next is due
        clock.wait_for_sleepers(2, LONG)
        clock.advance_to_next()
        assert w.fake.wait_until(beats(1, beat + 1), LONG)
        tick = f"TICK_{beat}"  # sent after the ACK: once delivered, the ACK was read
        w.fake.send_main({"op": GatewayOp.DISPATCH, "t": tick, "d": {}})
        seen.wait_for(tick)
    assert clock.monotonic() == pytest.approx(start + 14.0, abs=0.01)
    assert not w.fake.main_sessions[1].closed and w.gateway.latency == 0.0
    assert clock.wait_for_sleepers(2, LONG) == pytest.approx(
        [start + TIMEOUT, start + 18.0], abs=0.01
    )
    clock.advance_to_next()  # the watchdog's deadline, unmoved by four ACKed beats
    assert w.fake.wait_until(closed(1), LONG)
    assert w.fake.main_sessions[1].close_code == 4000
    assert w.fake.main_sessions[1].heartbeats == 4
    w.fake.release("main_resumed")
    clock.wait_for_sleepers(1, LONG)
    clock.advance_to_next()
    seen.wait_for("RESUMED")
    assert w.gateway.error is None


def test_every_attempt_unanswered_ends_with_gateway_timeout() -> None:
    """On the real clock: bounded attempts, a typed error, no library thread left."""
    quick = RetryBudget(max_attempts=1, base_delay=0.0, max_delay=0.0, immediate_first=True)
    plan = ReconnectPlan(ClosePolicy.main_default(), resume=quick, new_session=quick)
    with FakeDiscord() as fake:
        gw = Gateway(
            fake.token,
            url=fake.gateway_url,
            plan=plan,
            reconnect_timeout=0.2,
            identify_limiter=UNSPACED(),  # attempts, not identify pacing
        )
        try:
            gw.connect(timeout=LONG)
            fake.withhold("main_ready", "main_resumed")
            started = time.monotonic()
            fake.send_main({"op": GatewayOp.RECONNECT, "d": None})
            with pytest.raises(GatewayTimeout) as info:
                gw.wait(timeout=LONG)
            assert time.monotonic() - started < LONG
            assert gw.closed and gw.error is info.value
            assert "READY" in info.value.stage and info.value.timeout == 0.2
            assert fake.wait_until(closed(2), LONG)
            assert len(main_ops(fake, GatewayOp.RESUME)) == 1  # one resume, then
            assert len(main_ops(fake, GatewayOp.IDENTIFY)) == 2  # one fresh identify
            assert [(s.close_code, s.closed_by) for s in fake.main_sessions[1:]] == [
                (4000, "client"),
                (4000, "client"),
            ]
        finally:
            gw.close(timeout=LONG)
        assert library_threads() == []


def test_a_healthy_gateway_never_trips_the_watchdog(open_world: MakeWorld) -> None:
    """After a resume, heartbeats stream for twice the reconnect timeout: no reconnect."""
    clock = FakeClock()
    w = open_world(
        fake_options={"main_heartbeat_interval": 5.0},
        clock=clock,
        reconnect_timeout=TIMEOUT,
        rng=FixedRandom(0.5),
    )
    seen = Seen()
    w.gateway.add_dispatch_listener(seen)
    w.fake.send_main({"op": GatewayOp.RECONNECT, "d": None})
    seen.wait_for("RESUMED")
    for thread in threading.enumerate():  # RESUMED ended the watchdog; no time has passed
        if thread.name == "dv-gateway-watchdog":
            thread.join(LONG)
    assert "dv-gateway-watchdog" not in library_threads()
    start = clock.monotonic()
    for beat in range(6):  # 2.5 s, then every 5 s: 27.5 s of logical time
        assert len(clock.wait_for_sleepers(1, LONG)) == 1  # the heartbeat only: no watchdog
        clock.advance_to_next()
        assert w.fake.wait_until(beats(1, beat + 1), LONG)
        tick = f"TICK_{beat}"
        w.fake.send_main({"op": GatewayOp.DISPATCH, "t": tick, "d": {}})
        seen.wait_for(tick)
    elapsed = clock.monotonic() - start
    assert elapsed == pytest.approx(27.5, abs=0.01) and elapsed > 1.5 * TIMEOUT
    assert len(w.fake.main_sessions) == 2 and not w.fake.main_sessions[1].closed
    assert w.gateway.error is None and not w.gateway.closed
    assert "dv-gateway-watchdog" not in library_threads()
    assert_still_usable(w)


def test_reconnect_timeout_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(LocalProtocolError, match="reconnect_timeout"):
            Gateway("token", reconnect_timeout=bad)


def garbage(rng: random.Random) -> tuple[str | bytes, str]:
    """One seeded garbage message for the main gateway and how the client must count it."""
    values: list[Any] = [None, True, -1, 2**70, 1.5, "x", [], {}, [1, 2], "\u2603"]
    kind = rng.randrange(7)
    if kind == 0:  # an opcode the client does not know or never receives
        op = rng.choice([2, 3, 4, 5, 6, 8, 12, 13, 99, -1, 2**40])
        return json.dumps({"op": op, "d": rng.choice(values)}), "ignored"
    if kind == 1:  # a dispatch nobody listens to
        name = "".join(rng.choice("ABCXYZ_") for _ in range(8))
        return json.dumps(
            {"op": 0, "t": f"GARBAGE_{name}", "d": {"k": rng.choice(values)}}
        ), "ignored"
    if kind == 2:  # not JSON
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(20)), "malformed"
    if kind == 3:  # random binary frames, any length
        return rng.randbytes(rng.randrange(0, 40)), "malformed"
    if kind == 4:  # JSON that is not an object, or an object without an integer op
        return json.dumps(rng.choice([*values, {"op": "1"}, {"op": True}])), "malformed"
    if kind == 5:  # a dispatch with a bad name or body
        bad = rng.choice(
            [
                {"op": 0, "t": 5, "d": {}},
                {"op": 0, "d": {}},
                {"op": 0, "t": "GARBAGE", "d": rng.choice([1, "x", [1]])},
                {"op": 0, "t": "GARBAGE", "s": "1", "d": {}},
            ]
        )
        return json.dumps(bad), "malformed"
    return json.dumps(
        {"op": 10, "d": rng.choice([{"heartbeat_interval": 5}, None])}
    ), "malformed"  # a second (or broken) Hello


@pytest.mark.parametrize("seed", [7, 2024])
def test_garbage_from_the_main_gateway_is_survived_and_counted(
    make_world: MakeWorld, seed: int
) -> None:
    w = make_world()
    voice_events = Seen()
    w.gateway.add_voice_handler(voice_events)  # the only callback besides the Voice
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    conn.speaking(SpeakingFlag.MICROPHONE)
    rng = random.Random(seed)
    frames = [opus_frame(os.urandom((i * 37) % 400)) for i in range(40)]
    expected = {"ignored": 0, "malformed": 0}
    for frame in frames:
        message, counted = garbage(rng)
        w.fake.send_main_raw(message)
        expected[counted] += 1
        conn.opus_send.put(frame, timeout=LONG)  # voice streams on meanwhile
    big = json.dumps({"op": 0, "t": "BIG", "d": {"x": "y" * 300_000}})  # under the size limit
    w.fake.send_main_raw(big)
    w.fake.send_main_raw(b"[" * 200_000)  # big, binary, and nested too deep for a parser
    expected["ignored"] += 1
    expected["malformed"] += 1
    got = w.fake.wait_for_frames(len(frames), timeout=LONG, ssrc=conn.ssrc)
    assert [f.opus for f in got] == frames
    conn.disconnect()  # its VOICE_STATE_UPDATE comes after all the garbage on the same socket
    voice_events.wait_for("VOICE_STATE_UPDATE channel=None")
    assert w.gateway.malformed_messages == expected["malformed"] > 5
    assert w.gateway.ignored_messages == expected["ignored"] > 5
    assert w.gateway.last_protocol_error is not None
    assert w.gateway.error is None and not w.gateway.closed
    assert len(w.fake.main_sessions) == 1 and not w.fake.main_sessions[0].closed
    assert conn.error is None and not w.fake.violations
    assert_still_usable(w)

"""The main gateway (`dv.Gateway`) survives its connection, against the fake Discord.

Each test breaks the main websocket the way Discord can (a dropped TCP connection, op 7
Reconnect, op 9 Invalid Session, a close code, withheld heartbeat ACKs) and checks on the fake's
records that the client came back the right way (op 6 Resume on the resume URL, or a fresh
Identify) and that listeners, voice handlers and a streaming voice connection noticed nothing
but the replayed dispatches, delivered once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from discord_voice import ConnectionClosed, Gateway, MainGatewayClosed, SpeakingFlag
from discord_voice.core.opcodes import GatewayOp
from discord_voice.core.reconnect import ClosePolicy, ReconnectPlan, RetryBudget
from discord_voice.testing import FakeDiscord
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, UNSPACED, World
from tests.timeouts import LONG

MakeWorld = Callable[..., World]


def main_ops(fake: FakeDiscord, op: int) -> list[dict[str, Any]]:
    """The ``d`` of every main-gateway message the client sent with opcode `op`."""
    return [
        m.data["d"]
        for m in fake.main_messages
        if m.direction == "client" and m.op == op and m.data is not None
    ]


def leaves(fake: FakeDiscord) -> list[int]:
    """The main connection numbers that carried a Voice State Update leaving voice."""
    return [
        m.connection
        for m in fake.main_messages
        if m.direction == "client"
        and m.op == GatewayOp.VOICE_STATE_UPDATE
        and m.data is not None
        and m.data["d"]["channel_id"] is None
    ]


def left(fake: FakeDiscord) -> bool:
    return bool(leaves(fake))


class Seen:
    """A dispatch listener with a waitable log of event names."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, name: str, data: Mapping[str, Any]) -> None:
        with self._cond:
            self.names.append(name)
            self._cond.notify_all()

    def wait_for(self, name: str) -> None:
        end = time.monotonic() + LONG
        with self._cond:
            while name not in self.names:
                left_s = end - time.monotonic()
                assert left_s > 0, f"{name} never delivered: {self.names}"
                self._cond.wait(left_s)


def resumed(fake: FakeDiscord, count: int = 1) -> bool:
    return sum(s.resumed for s in fake.main_sessions) >= count


def dispatch(fake: FakeDiscord, name: str) -> None:
    fake.send_main({"op": GatewayOp.DISPATCH, "t": name, "d": {}})


def assert_still_usable(w: World) -> None:
    """The gateway carries a join and a leave (op 4 answered by dispatches) on the new socket."""
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    conn.disconnect()
    assert w.fake.wait_until(left, LONG)
    assert w.gateway.error is None and not w.gateway.closed
    assert not w.fake.violations


def test_dropped_connection_resumes_and_missed_dispatches_arrive_once(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="discord_voice.gateway")
    w = make_world()
    seen = Seen()
    w.gateway.add_dispatch_listener(seen)
    user_id, first_session = w.gateway.user_id, w.gateway.session_id
    for i in range(3):
        dispatch(w.fake, f"BEFORE_DROP_{i}")  # some may be read only as replays after the resume
    w.fake.drop_main()
    assert w.fake.wait_until(resumed, LONG)
    seen.wait_for("RESUMED")
    dispatch(w.fake, "AFTER_RESUME")
    seen.wait_for("AFTER_RESUME")
    assert [n for n in seen.names if n != "RESUMED"] == [
        "BEFORE_DROP_0",
        "BEFORE_DROP_1",
        "BEFORE_DROP_2",
        "AFTER_RESUME",
    ]
    session = w.fake.main_sessions[-1]
    assert session.session_id == first_session and session.identify is None
    assert session.path.endswith("?v=10&encoding=json")
    resume = main_ops(w.fake, GatewayOp.RESUME)
    assert len(resume) == 1 and resume[0]["session_id"] == first_session
    assert resume[0]["token"] == w.fake.token and isinstance(resume[0]["seq"], int)
    assert len(main_ops(w.fake, GatewayOp.IDENTIFY)) == 1
    assert (w.gateway.user_id, w.gateway.session_id) == (user_id, first_session)
    assert any("resume 1/" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert_still_usable(w)


@pytest.mark.parametrize(
    "breaks",
    [
        lambda fake: fake.send_main({"op": GatewayOp.RECONNECT, "d": None}),
        lambda fake: fake.invalid_session(True),
        lambda fake: fake.close_main(4000, "unknown error"),
    ],
    ids=["op7", "op9-resumable", "close-4000"],
)
def test_reconnect_requests_and_resumable_closes_resume(
    make_world: MakeWorld, breaks: Callable[[FakeDiscord], None]
) -> None:
    w = make_world()
    first_session = w.gateway.session_id
    breaks(w.fake)
    assert w.fake.wait_until(resumed, LONG)
    assert w.fake.main_sessions[0].closed
    assert w.fake.main_sessions[-1].session_id == first_session
    assert len(main_ops(w.fake, GatewayOp.IDENTIFY)) == 1
    assert_still_usable(w)


def test_invalid_session_not_resumable_identifies_afresh(make_world: MakeWorld) -> None:
    w = make_world()
    seen = Seen()
    w.gateway.add_dispatch_listener(seen)
    first_session, user_id = w.gateway.session_id, w.gateway.user_id
    w.fake.invalid_session(False)
    seen.wait_for("READY")
    new = w.fake.main_sessions[-1]
    assert len(main_ops(w.fake, GatewayOp.IDENTIFY)) == 2
    assert main_ops(w.fake, GatewayOp.RESUME) == [] and not new.resumed
    assert new.session_id != first_session and w.gateway.session_id == new.session_id
    assert w.gateway.user_id == user_id
    assert_still_usable(w)


def test_a_failed_resume_identifies_afresh(make_world: MakeWorld) -> None:
    w = make_world()
    seen = Seen()
    w.gateway.add_dispatch_listener(seen)
    first_session = w.gateway.session_id
    w.fake.close_main(4006, "a code the fake does not keep the session for")  # policy: resume
    seen.wait_for("READY")
    resume = main_ops(w.fake, GatewayOp.RESUME)
    assert len(resume) == 1 and resume[0]["session_id"] == first_session  # answered op 9 false
    assert [s.resumed for s in w.fake.main_sessions] == [False, False, False]
    assert len(main_ops(w.fake, GatewayOp.IDENTIFY)) == 2
    assert w.gateway.session_id == w.fake.main_sessions[-1].session_id != first_session
    assert_still_usable(w)


def test_fatal_close_code_ends_the_gateway(make_world: MakeWorld) -> None:
    w = make_world()
    w.fake.close_main(4004, "authentication failed")
    with pytest.raises(MainGatewayClosed) as info:
        w.gateway.wait(timeout=LONG)
    assert info.value.code == 4004
    assert len(w.fake.main_sessions) == 1  # no attempt to come back


def test_zombie_connection_is_closed_and_resumed(make_world: MakeWorld) -> None:
    w = make_world(main_heartbeat_interval=0.05)
    w.fake.withhold("main_heartbeat_ack")
    assert w.fake.wait_until(lambda f: f.main_sessions[0].closed, LONG)
    w.fake.release("main_heartbeat_ack")
    assert w.fake.main_sessions[0].close_code == 4000
    assert w.fake.main_sessions[0].closed_by == "client"
    assert w.fake.wait_until(resumed, LONG)
    assert_still_usable(w)


def test_voice_keeps_streaming_while_the_main_gateway_resumes(make_world: MakeWorld) -> None:
    w = make_world()
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    conn.speaking(SpeakingFlag.MICROPHONE)
    sent = [opus_frame(os.urandom((i * 37) % 400)) for i in range(40)]
    for frame in sent[:10]:
        conn.opus_send.put(frame)
    w.fake.drop_main()
    for frame in sent[10:]:
        conn.opus_send.put(frame, timeout=LONG)
    got = w.fake.wait_for_frames(len(sent), timeout=LONG, ssrc=conn.ssrc)
    assert [f.opus for f in got] == sent
    assert w.fake.wait_until(resumed, LONG)
    conn.disconnect()
    assert w.fake.wait_until(left, LONG)
    assert leaves(w.fake) == [w.fake.main_sessions[-1].connection]  # on the resumed socket
    assert w.gateway.error is None and not w.fake.violations


def test_close_leaves_no_library_threads(make_world: MakeWorld) -> None:
    w = make_world()
    w.fake.drop_main()
    assert w.fake.wait_until(resumed, LONG)
    w.voice.close()
    w.gateway.close()
    assert [t.name for t in threading.enumerate() if t.name.startswith("dv-")] == []


def test_close_during_a_resume_is_prompt() -> None:
    with FakeDiscord() as fake:
        gw = Gateway(fake.token, url=fake.gateway_url)
        gw.connect(timeout=LONG)
        fake.close()  # nothing to come back to: every attempt fails
        started = time.monotonic()
        gw.close(timeout=LONG)
        assert time.monotonic() - started < LONG
        assert [t.name for t in threading.enumerate() if t.name.startswith("dv-")] == []


def test_attempts_are_bounded_logged_and_the_last_failure_is_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="discord_voice.gateway")
    budget = RetryBudget(max_attempts=2, base_delay=0.01, max_delay=0.01, immediate_first=True)
    plan = ReconnectPlan(ClosePolicy.main_default(), resume=budget, new_session=budget)
    with FakeDiscord() as fake:
        # attempts, not identify pacing: re-identify at once
        gw = Gateway(fake.token, url=fake.gateway_url, plan=plan, identify_limiter=UNSPACED())
        try:
            gw.connect(timeout=LONG)
            fake.close()  # the server is gone: every attempt fails to connect
            with pytest.raises(ConnectionClosed) as info:
                gw.wait(timeout=LONG)
            assert gw.closed and not isinstance(info.value, MainGatewayClosed)
        finally:
            gw.close(timeout=LONG)
    attempts = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO
        and r.getMessage().startswith("main gateway ")
        and " in " in r.getMessage()
        and "lost" not in r.getMessage()
    ]
    kinds = [m.split()[2] for m in attempts]
    assert kinds == ["resume", "resume", "reidentify", "reidentify"], attempts
    assert all(fake.token not in r.getMessage() for r in caplog.records)

"""Full reconnects and moves, end to end on the fake Discord: a new voice session (fresh op 4 or
a new VOICE_SERVER_UPDATE), nothing lost, RTP restarting cleanly, Speaking sent again."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from discord_voice import (
    Attempt,
    AttemptKind,
    Connection,
    Disconnected,
    JoinTimeout,
    VoiceGatewayClosed,
    default_voice_plan,
)
from discord_voice.core.opcodes import GatewayOp, VoiceOp
from discord_voice.testing import FakeDiscord
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, World
from tests.timeouts import LONG

MakeWorld = Callable[..., World]


def frames_of(count: int) -> list[bytes]:
    return [opus_frame(os.urandom((i * 53) % 300)) for i in range(count)]


def op4_channels(fake: FakeDiscord) -> list[object]:
    return [
        m.data["d"]["channel_id"]
        for m in fake.main_messages
        if m.direction == "client" and m.op == GatewayOp.VOICE_STATE_UPDATE and m.data is not None
    ]


def watch(conn: Connection) -> tuple[list[tuple[str, str]], list[Attempt]]:
    changes: list[tuple[str, str]] = []
    attempts: list[Attempt] = []
    conn.add_state_listener(lambda old, new, why: changes.append((old.value, new.value)))
    conn.add_attempt_listener(attempts.append)
    return changes, attempts


def stream_across(
    world: World, conn: Connection, fault: Callable[[], object], count: int = 40
) -> list[bytes]:
    """Put half the frames, cause `fault`, put the rest (blocking while the connection
    recovers); return what was sent."""
    sent = frames_of(count)
    for frame in sent[: count // 4]:
        conn.opus_send.put(frame, timeout=LONG)
    session = world.fake.voice_sessions[-1]  # let its Speaking arrive before the fault
    assert world.fake.wait_until(lambda f: bool(session.speaking), LONG)
    world.fake.wait_for_frames(1, timeout=LONG)  # and audio: the fault comes mid-stream
    fault()
    for frame in sent[count // 4 :]:
        conn.opus_send.put(frame, timeout=LONG)
    conn.opus_send.join()  # every frame handed to the socket
    return sent


def assert_sessions_carried(fake: FakeDiscord, sent: list[bytes], ssrcs: list[int]) -> None:
    """Every frame arrived exactly once, in order, over the sessions `ssrcs` one after the
    other; within each, RTP sequence and timestamp are continuous."""
    got = fake.wait_for_frames(len(sent), timeout=LONG)
    assert [f.opus for f in got] == sent
    assert [ssrc for ssrc, _ in itertools.groupby(f.ssrc for f in got)] == ssrcs
    for ssrc in ssrcs:
        mine = fake.frames(ssrc)
        for a, b in itertools.pairwise(mine):
            assert b.sequence == (a.sequence + 1) % 2**16
            assert b.timestamp == (a.timestamp + 960) % 2**32


@pytest.mark.parametrize("code", [4006, 4009, 4011, 4999])
def test_codes_that_need_a_new_session_reconnect_with_a_fresh_op_4(world: World, code: int) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    changes, attempts = watch(conn)
    old_ssrc = conn.ssrc
    assert old_ssrc is not None
    sent = stream_across(world, conn, lambda: world.fake.close_voice(code, "gone"))
    assert conn.reconnects == 1 and conn.resumes == 0 and conn.ssrc != old_ssrc
    assert conn.ssrc is not None
    assert_sessions_carried(world.fake, sent, [old_ssrc, conn.ssrc])
    assert op4_channels(world.fake) == [str(CHANNEL), str(CHANNEL)]  # fresh op 4, same channel
    assert changes == [("ready", "reconnecting"), ("reconnecting", "ready")]
    assert [(a.kind, a.number, a.code) for a in attempts] == [(AttemptKind.RECONNECT, 1, code)]
    new = world.fake.voice_sessions[-1]
    assert new.ssrc == conn.ssrc and new.speaking and new.speaking[0]["speaking"] == 1
    assert conn.error is None and not world.fake.violations  # Speaking before audio, too
    conn.disconnect()


def test_a_failed_resume_becomes_a_full_reconnect(make_world: MakeWorld) -> None:
    world = make_world(voice_resume_window=0.0)  # no session can be resumed: op 7 gets 4006
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    changes, attempts = watch(conn)
    old_ssrc = conn.ssrc
    assert old_ssrc is not None
    sent = stream_across(world, conn, world.fake.drop_voice)
    assert conn.ssrc is not None
    assert_sessions_carried(world.fake, sent, [old_ssrc, conn.ssrc])
    assert [(a.kind, a.code) for a in attempts] == [
        (AttemptKind.RESUME, None),
        (AttemptKind.RECONNECT, 4006),
    ]
    assert changes == [
        ("ready", "resuming"),
        ("resuming", "reconnecting"),
        ("reconnecting", "ready"),
    ]
    assert (conn.resumes, conn.reconnects) == (0, 1)
    conn.disconnect()


def test_a_move_to_another_voice_server_mid_stream_loses_nothing(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    changes, _ = watch(conn)
    old_ssrc, old_endpoint = conn.ssrc, conn.endpoint
    assert old_ssrc is not None
    endpoint: list[str] = []
    sent = stream_across(world, conn, lambda: endpoint.append(world.fake.move_user()))
    assert conn.endpoint == endpoint[0] != old_endpoint and conn.reconnects == 1
    assert conn.ssrc is not None
    assert_sessions_carried(world.fake, sent, [old_ssrc, conn.ssrc])
    assert op4_channels(world.fake) == [str(CHANNEL)]  # Discord moved us: no op 4 from us
    assert changes == [("ready", "reconnecting"), ("reconnecting", "ready")]
    assert conn.error is None and not world.fake.violations
    conn.disconnect()


def test_a_moderator_moving_the_bot_to_another_channel_is_followed(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    old_ssrc = conn.ssrc
    assert old_ssrc is not None
    sent = stream_across(world, conn, lambda: world.fake.move_user(CHANNEL + 7, new_server=False))
    assert conn.channel_id == str(CHANNEL + 7) and conn.ssrc is not None
    assert_sessions_carried(world.fake, sent, [old_ssrc, conn.ssrc])
    assert world.fake.voice_sessions[-1].channel_id == CHANNEL + 7
    conn.disconnect()


def test_a_kick_ends_the_connection_at_once_with_a_typed_reason(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)  # the move wait is 10 s
    world.fake.kick_user()
    with pytest.raises(Disconnected) as info:
        conn.wait(timeout=LONG)
    assert info.value.why == "kicked"
    with pytest.raises(Disconnected):
        conn.opus_send.put(opus_frame(b"after the kick"))
    assert world.voice.connection(GUILD) is None
    again = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)  # no "already connected"
    assert again is not conn
    again.disconnect()


def test_a_null_endpoint_holds_the_frames_until_the_next_server(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    old_ssrc = conn.ssrc
    assert old_ssrc is not None
    before, held = opus_frame(b"before"), [opus_frame(b"held-1"), opus_frame(b"held-2")]
    conn.opus_send.put(before)
    world.fake.wait_for_frames(1, timeout=LONG)
    world.fake.null_endpoint()
    assert conn.wait_for_state(conn.state.RECONNECTING, LONG)
    for frame in held:
        conn.opus_send.put(frame)  # held, neither sent to the old server nor dropped
    world.fake.move_user(new_server=True)
    conn.opus_send.join()
    assert conn.ssrc is not None
    assert_sessions_carried(world.fake, [before, *held], [old_ssrc, conn.ssrc])
    conn.disconnect()


def test_no_new_server_after_4014_ends_as_not_moved(make_world: MakeWorld) -> None:
    plan = replace(default_voice_plan(), move_timeout=0.3)
    world = make_world(voice_options={"reconnect_plan": plan})
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    _, attempts = watch(conn)
    world.fake.close_voice(4022, "call terminated")
    with pytest.raises(Disconnected) as info:
        conn.wait(timeout=LONG)
    assert (info.value.why, info.value.code) == ("not_moved", 4022)
    assert [(a.kind, a.delay) for a in attempts] == [(AttemptKind.WAIT_FOR_MOVE, 0.3)]


def test_reconnect_attempts_are_bounded_and_the_last_reason_is_raised(
    make_world: MakeWorld,
) -> None:
    plan = default_voice_plan()
    plan = replace(plan, new_session=replace(plan.new_session, max_attempts=3, base_delay=0.01))
    world = make_world(voice_options={"reconnect_plan": plan})
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    _, attempts = watch(conn)
    for _ in range(3):  # every new session is refused at Identify
        world.fake.close_voice_on(VoiceOp.IDENTIFY, 4006, "no")
    world.fake.close_voice(4006, "session gone")
    with pytest.raises(VoiceGatewayClosed) as info:
        conn.wait(timeout=LONG)
    assert info.value.code == 4006
    assert [(a.kind, a.number) for a in attempts] == [
        (AttemptKind.RECONNECT, 1),
        (AttemptKind.RECONNECT, 2),
        (AttemptKind.RECONNECT, 3),
    ]
    assert all(0 < a.delay <= 0.02 for a in attempts[1:])  # backoff, capped, with jitter
    assert world.fake.wait_until(  # 4 joins, then the leave
        lambda f: op4_channels(f) == [str(CHANNEL)] * 4 + [None], LONG
    )


@pytest.mark.parametrize("code", [4017, 4021, 4004])
def test_fatal_codes_end_the_connection_without_a_retry(world: World, code: int) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    _, attempts = watch(conn)
    world.fake.close_voice(code, "no")
    with pytest.raises(VoiceGatewayClosed) as info:
        conn.wait(timeout=LONG)
    assert info.value.code == code and attempts == []
    assert world.fake.wait_until(lambda f: op4_channels(f) == [str(CHANNEL), None], LONG)


def test_disconnect_during_a_reconnect_is_prompt_and_leaves_no_thread(
    world: World,
) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    world.fake.withhold("voice_server_update")  # the fresh op 4 gets no server: we wait
    world.fake.close_voice(4006, "gone")
    assert conn.wait_for_state(conn.state.RECONNECTING, LONG)
    conn.opus_send.put(opus_frame(b"held"))
    conn.disconnect(timeout=LONG)  # wakes the recovery thread at once; the frame is counted
    assert conn.stats.frames_discarded == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
def test_repeated_reconnects_leave_no_threads_or_sockets_behind(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)

    def reconnect(n: int) -> tuple[int, int]:
        world.fake.close_voice(4006, "again")
        assert world.fake.wait_until(lambda f: conn.reconnects == n, LONG)
        conn.opus_send.put(opus_frame(bytes([n])))
        conn.opus_send.join()
        live = [t for t in threading.enumerate() if t.name.startswith("dv-voice")]
        # the recovery thread of this round may still be on its way out
        assert all(t.name.startswith(("dv-voice-reader", "dv-voice-recover")) for t in live)
        # the old websocket's heartbeat was handed back, the new one's registered: one thread
        assert [
            t.name
            for t in threading.enumerate()
            if "heartbeat" in t.name and not t.name.startswith("dv-gateway")
        ] == ["dv-heartbeat"]
        return len(os.listdir("/proc/self/fd")), len(conn._supervisor.threads())

    reconnect(1)
    fds, _ = reconnect(2)
    for n in range(3, 7):
        now, own = reconnect(n)
    # old links' websockets and UDP sockets were closed (4 leaked links would add 8 or more;
    # the slack is for the fake's own server-side sockets, closed on its threads)
    assert now <= fds + 2
    assert own <= 3  # the sender plus at most the latest recovery threads are kept
    link = conn._sessions.link
    assert [t.name for t in link.threads() if t.is_alive()] == [f"dv-voice-reader:{GUILD}"]
    conn.disconnect()


def test_joining_the_same_channel_while_reconnecting_waits_for_the_connection(
    make_world: MakeWorld,
) -> None:
    world = make_world(voice_options={"reconnect_timeout": 0.5})
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    world.fake.withhold("voice_server_update")  # the fresh op 4 gets no server for now
    world.fake.close_voice(4006, "gone")
    assert conn.wait_for_state(conn.state.RECONNECTING, LONG)
    with pytest.raises(JoinTimeout) as info:
        world.voice.join_channel(GUILD, CHANNEL, timeout=0.2)
    assert info.value.stage == "ready" and conn.error is None  # still recovering
    world.fake.release("voice_server_update")  # the next attempt's op 4 gets both updates
    assert world.voice.join_channel(GUILD, CHANNEL, timeout=LONG) is conn
    assert conn.reconnects == 1
    conn.disconnect()


def test_a_4014_first_and_the_new_server_later_is_still_a_move(world: World) -> None:
    """Discord may close the old socket before it sends the new VOICE_SERVER_UPDATE."""
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    _, attempts = watch(conn)
    old_ssrc = conn.ssrc
    assert old_ssrc is not None
    before, held = opus_frame(b"before"), opus_frame(b"held")
    conn.opus_send.put(before)
    world.fake.wait_for_frames(1, timeout=LONG)
    world.fake.close_voice(4014, "disconnected")
    assert conn.wait_for_state(conn.state.RECONNECTING, LONG)
    conn.opus_send.put(held)  # waits in the queue while no server is known
    endpoint = world.fake.move_user(new_server=True)
    conn.opus_send.join()
    assert conn.endpoint == endpoint and conn.ssrc is not None
    assert_sessions_carried(world.fake, [before, held], [old_ssrc, conn.ssrc])
    assert [(a.kind, a.code) for a in attempts] == [(AttemptKind.WAIT_FOR_MOVE, 4014)]
    assert conn.error is None and not world.fake.violations
    conn.disconnect()

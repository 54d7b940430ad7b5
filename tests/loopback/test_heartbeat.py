"""Voice heartbeats end to end, driven by a fake clock (no waiting for real intervals)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator

import pytest

from discord_voice import (
    Action,
    ClosePolicy,
    Gateway,
    HeartbeatTimeout,
    ReconnectPlan,
    Voice,
)
from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing import FakeClock, FakeDiscord, RecordedMessage
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD
from tests.timeouts import LONG

Rig = tuple[FakeDiscord, Voice, FakeClock]


@pytest.fixture
def rig() -> Iterator[Rig]:
    clock = FakeClock(start=500.0)
    with FakeDiscord(voice_heartbeat_interval=2.0) as fake:
        gateway = Gateway(fake.token, url=fake.gateway_url)
        gateway.connect(timeout=LONG)
        voice = Voice(gateway, clock=clock)
        try:
            yield fake, voice, clock
        finally:
            voice.close()
            gateway.close()


def heartbeats(fake: FakeDiscord) -> list[dict[str, int]]:
    return [
        m.data["d"]
        for m in fake.voice_messages
        if m.direction == "client" and m.op == VoiceOp.HEARTBEAT and m.data
    ]


def heartbeats_sent(count: int) -> Callable[[FakeDiscord], bool]:
    """A `wait_until` predicate: the client has sent `count` heartbeats."""
    return lambda fake: len(heartbeats(fake)) == count


def acks(fake: FakeDiscord) -> list[dict[str, int]]:
    return [
        m.data["d"]
        for m in fake.voice_messages
        if m.direction == "server" and m.op == VoiceOp.HEARTBEAT_ACK and m.data
    ]


def server_seq(message: RecordedMessage) -> int | None:
    """The sequence number of a server message: JSON ``seq``, or a binary frame's uint16."""
    if isinstance(message.raw, bytes):
        return int.from_bytes(message.raw[:2], "big")
    return message.data.get("seq") if message.data else None


def test_heartbeats_follow_the_hello_interval_and_carry_seq_ack(rig: Rig) -> None:
    fake, voice, clock = rig
    conn = voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert conn.latency is None
    clock.wait_for_deadline(502.0, LONG)  # first beat one interval after Hello
    clock.advance(2.0)
    assert fake.wait_until(lambda f: len(heartbeats(f)) == 1, LONG)
    beat = next(m for m in fake.voice_messages if m.direction == "client" and m.op == 3)
    sent_before = [
        seq
        for m in fake.voice_messages
        if m.direction == "server" and m.index < beat.index and (seq := server_seq(m)) is not None
    ]
    session_seq = next(
        m.data["seq"]
        for m in fake.voice_messages
        if m.direction == "server" and m.op == VoiceOp.SESSION_DESCRIPTION and m.data
    )
    assert heartbeats(fake)[0]["t"] == 502000
    # seq_ack: at least what join_channel waited for, at most what the server had sent
    assert session_seq <= heartbeats(fake)[0]["seq_ack"] <= max(sent_before)
    clock.wait_for_deadline(504.0, LONG)
    clock.advance(2.0)
    assert fake.wait_until(lambda f: len(heartbeats(f)) == 2 and len(acks(f)) == 2, LONG)
    assert heartbeats(fake)[1]["t"] == 504000
    assert [a["t"] for a in acks(fake)] == [502000, 504000]
    conn.disconnect()  # the reader handles every message before the close: both ACKs matched
    assert conn.stats.heartbeats_sent == 2 and conn.stats.heartbeat_acks == 2
    assert conn.latency == 0.0  # logical time did not move between beat and ACK


def test_missing_acks_make_the_client_resume_on_a_new_socket(rig: Rig) -> None:
    fake, voice, clock = rig
    fake.withhold("heartbeat_ack")
    conn = voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    before, after = opus_frame(b"before"), opus_frame(b"after")
    conn.opus_send.put(before)  # announces Speaking: it must be sent again after the resume
    fake.wait_for_frames(1, timeout=LONG, ssrc=conn.ssrc)
    for beat in range(3):  # beats at +2, +4, +6 s: the first is 4 s old at +6, not yet dead
        clock.wait_for_deadline(502.0 + 2 * beat, LONG)
        clock.advance(2.0)
        assert fake.wait_until(heartbeats_sent(beat + 1), LONG)
    fake.release("heartbeat_ack")
    clock.wait_for_deadline(508.0, LONG)
    clock.advance(2.0)  # +8 s: the first beat is 6 s (3 intervals) old: dead -> resume
    session = fake.voice_sessions[-1]
    assert fake.wait_until(lambda f: session.resumes == 1 and len(session.speaking) == 2, LONG)
    resume = [
        m.data["d"] for m in fake.voice_messages if m.direction == "client" and m.op == 7 and m.data
    ]
    assert len(resume) == 1 and resume[0]["session_id"] == session.session_id
    conn.opus_send.put(after)  # same SSRC and key on the same UDP socket
    assert [f.opus for f in fake.wait_for_frames(2, timeout=LONG, ssrc=conn.ssrc)] == [
        before,
        after,
    ]
    assert conn.error is None
    conn.disconnect()
    assert conn.resumes == 1


def library_threads() -> list[str]:
    """Names of the library's voice threads alive now (the main gateway's are not counted)."""
    return sorted(
        t.name
        for t in threading.enumerate()
        if t.name.startswith("dv-") and not t.name.startswith("dv-gateway")
    )


def test_connections_of_one_voice_share_one_heartbeat_thread(rig: Rig) -> None:
    fake, voice, clock = rig
    first = voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    second = voice.join_channel(GUILD + 1, CHANNEL + 1, timeout=LONG)
    # the thread model: per Voice one heartbeat and one sender thread, per connection a reader
    assert library_threads() == sorted(
        [
            "dv-heartbeat",
            "dv-udp-sender",
            f"dv-voice-reader:{GUILD}",
            f"dv-voice-reader:{GUILD + 1}",
        ]
    )
    clock.advance(2.0)  # both websockets are due: one thread beats both
    assert fake.wait_until(lambda f: [s.heartbeats for s in f.voice_sessions] == [1, 1], LONG)
    assert [beat["t"] for beat in heartbeats(fake)] == [502000, 502000]
    first.disconnect()
    assert "dv-heartbeat" in library_threads()  # the second connection still beats
    assert not [name for name in library_threads() if name.endswith(f":{GUILD}")]
    clock.advance(2.0)
    assert fake.wait_until(lambda f: [s.heartbeats for s in f.voice_sessions] == [1, 2], LONG)
    second.disconnect()
    assert library_threads() == []  # the last websocket's release joined the heartbeat thread
    assert first.stats.heartbeats_sent == 1 and second.stats.heartbeats_sent == 2


def test_a_dead_socket_is_reported_off_the_shared_heartbeat_thread() -> None:
    """What the connection does with a dead socket (here: fail, sending the leave and calling
    state listeners) runs on a thread of that connection, never on ``dv-heartbeat``, which
    must not be delayed by one connection's handling."""
    clock = FakeClock(start=500.0)
    plan = ReconnectPlan(dataclasses.replace(ClosePolicy.voice_default(), dropped=Action.FATAL))
    with FakeDiscord(voice_heartbeat_interval=2.0) as fake:
        fake.withhold("heartbeat_ack")
        gateway = Gateway(fake.token, url=fake.gateway_url)
        gateway.connect(timeout=LONG)
        voice = Voice(gateway, clock=clock, reconnect_plan=plan)
        try:
            conn = voice.join_channel(GUILD, CHANNEL, timeout=LONG)
            closed_on: list[str] = []
            conn.add_state_listener(
                lambda old, new, reason: (
                    closed_on.append(threading.current_thread().name)
                    if new is conn.state.CLOSED
                    else None
                )
            )
            for beat in range(4):  # +2, +4, +6 unanswered; at +8 the first is 3 intervals old
                clock.wait_for_deadline(502.0 + 2 * beat, LONG)
                clock.advance(2.0)
            with pytest.raises(HeartbeatTimeout):  # a ConnectionClosed
                conn.wait(timeout=LONG)
            assert closed_on == [f"dv-voice-fail:{GUILD}"]
            assert len(heartbeats(fake)) == 3
        finally:
            voice.close()
            gateway.close()

"""Voice heartbeats end to end, driven by a fake clock (no waiting for real intervals)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from discord_voice import Gateway, Voice
from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing import FakeClock, FakeDiscord
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD
from tests.timeouts import LONG


@pytest.fixture
def rig() -> Iterator[tuple[FakeDiscord, Voice, FakeClock]]:
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
    return [m.data["d"] for m in fake.voice_messages
            if m.direction == "client" and m.op == VoiceOp.HEARTBEAT and m.data]


def acks(fake: FakeDiscord) -> list[dict[str, int]]:
    return [m.data["d"] for m in fake.voice_messages
            if m.direction == "server" and m.op == VoiceOp.HEARTBEAT_ACK and m.data]


def test_heartbeats_follow_the_hello_interval_and_carry_seq_ack(rig) -> None:
    fake, voice, clock = rig
    conn = voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert conn.latency is None
    assert clock.wait_for_sleepers(1, LONG) == [502.0]  # first beat one interval after Hello
    clock.advance(2.0)
    assert fake.wait_until(lambda f: len(heartbeats(f)) == 1, LONG)
    beat = next(m for m in fake.voice_messages if m.direction == "client" and m.op == 3)
    sent_before = [m.data["seq"] for m in fake.voice_messages if m.direction == "server"
                   and m.data and "seq" in m.data and m.index < beat.index]
    session_seq = next(m.data["seq"] for m in fake.voice_messages
                       if m.direction == "server" and m.op == VoiceOp.SESSION_DESCRIPTION)
    assert heartbeats(fake)[0]["t"] == 502000
    # seq_ack: at least what join_channel waited for, at most what the server had sent
    assert session_seq <= heartbeats(fake)[0]["seq_ack"] <= max(sent_before)
    assert clock.wait_for_sleepers(1, LONG) == [504.0]
    clock.advance(2.0)
    assert fake.wait_until(lambda f: len(heartbeats(f)) == 2 and len(acks(f)) == 2, LONG)
    assert heartbeats(fake)[1]["t"] == 504000
    assert [a["t"] for a in acks(fake)] == [502000, 504000]
    conn.disconnect()  # the reader handles every message before the close: both ACKs matched
    assert conn.stats.heartbeats_sent == 2 and conn.stats.heartbeat_acks == 2
    assert conn.latency == 0.0  # logical time did not move between beat and ACK


def test_missing_acks_make_the_client_resume_on_a_new_socket(rig) -> None:
    fake, voice, clock = rig
    fake.withhold("heartbeat_ack")
    conn = voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    before, after = opus_frame(b"before"), opus_frame(b"after")
    conn.opus_send.put(before)  # announces Speaking: it must be sent again after the resume
    fake.wait_for_frames(1, timeout=LONG, ssrc=conn.ssrc)
    for beat in range(3):  # beats at +2, +4, +6 s: the first is 4 s old at +6, not yet dead
        clock.wait_for_sleepers(1, LONG)
        clock.advance(2.0)
        assert fake.wait_until(lambda f, n=beat + 1: len(heartbeats(f)) == n, LONG)
    fake.release("heartbeat_ack")
    clock.wait_for_sleepers(1, LONG)
    clock.advance(2.0)  # +8 s: the first beat is 6 s (3 intervals) old: dead -> resume
    session = fake.voice_sessions[-1]
    assert fake.wait_until(lambda f: session.resumes == 1 and len(session.speaking) == 2, LONG)
    resume = [m.data["d"] for m in fake.voice_messages if m.direction == "client" and m.op == 7]
    assert len(resume) == 1 and resume[0]["session_id"] == session.session_id
    conn.opus_send.put(after)  # same SSRC and key on the same UDP socket
    assert [f.opus for f in fake.wait_for_frames(2, timeout=LONG, ssrc=conn.ssrc)] == [
        before, after]
    assert conn.error is None
    conn.disconnect()
    assert conn.resumes == 1

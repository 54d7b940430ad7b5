"""Receiving end to end: the fake's speakers (DAVE-encrypted by libdave, transport-sealed by an
independent AEAD) into ``join_channel(..., receive=True)`` and out of ``conn.opus_recv``."""

from __future__ import annotations

import queue

import pytest

from discord_voice import VoicePacket
from discord_voice.testing import FakeDiscord
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, MakeWorld, World
from tests.timeouts import LONG


def frames(tag: bytes, count: int) -> list[bytes]:
    return [opus_frame(b"%s %03d" % (tag, n)) for n in range(count)]


def take(conn_queue: queue.Queue[VoicePacket], count: int) -> list[VoicePacket]:
    return [conn_queue.get(timeout=LONG) for _ in range(count)]


def test_a_members_dave_encrypted_audio_arrives_decrypted_in_order(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)  # the speaker joined the group: a new epoch for us too
    sent = frames(b"alice", 20)
    speaker.send(sent)
    got = take(conn.opus_recv, 20)
    assert [p.opus for p in got] == sent  # decrypted by libdave's sender key, byte for byte
    assert {p.user_id for p in got} == {speaker.user_id}
    assert {p.ssrc for p in got} == {speaker.ssrc}
    sequences = [p.sequence for p in got]
    assert sequences == [(sequences[0] + n) % 65536 for n in range(20)]
    stats = conn.stats.receive
    assert stats is not None and stats.delivered == 20 and stats.dave_failures == 0
    conn.disconnect()


def test_audio_before_op_5_is_held_and_delivered_once_named(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker(announce="after:5")
    assert conn.wait_for_e2ee(LONG)
    sent = frames(b"early", 12)
    speaker.send(sent, padding=7)  # RTP padding too: stripped before DAVE
    got = take(conn.opus_recv, 12)
    assert [p.opus for p in got] == sent  # the first five were held, not lost
    conn.disconnect()


@pytest.mark.parametrize("dave", [True, False])
def test_padding_extension_and_csrcs_are_handled(make_world: MakeWorld, dave: bool) -> None:
    w: World = make_world(dave=dave)
    conn = w.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = w.fake.add_speaker()
    if dave:
        assert conn.wait_for_e2ee(LONG)
    sent = frames(b"shaped", 6)
    speaker.send(sent[:2], padding=255)
    speaker.send(sent[2:4], extension=b"\x10\x7f\x90\x01", csrcs=(1, 2, 3))
    speaker.send(sent[4:], padding=1, extension=b"\x10\x20")
    assert [p.opus for p in take(conn.opus_recv, 6)] == sent
    conn.disconnect()


def test_what_is_not_a_members_audio_is_counted_not_delivered(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)
    fake: FakeDiscord = world.fake
    fake.send_udp_raw(fake.rtcp_packet())
    fake.send_udp_raw(fake.video_packet())
    fake.send_udp_raw(b"\x01\x02\x03")
    speaker.send(frames(b"after junk", 1))
    assert take(conn.opus_recv, 1)[0].opus == frames(b"after junk", 1)[0]
    stats = conn.stats.receive
    assert stats is not None
    assert stats.dropped.get("rtcp") == 1 and stats.dropped.get("not_opus") == 1
    assert stats.dropped.get("short") == 1
    conn.disconnect()


def test_without_receive_nothing_is_read(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    speaker = world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)
    speaker.send(frames(b"unheard", 3))
    assert conn.stats.receive is None and conn.opus_recv.empty()
    conn.disconnect()


def test_receiving_survives_a_resume_and_a_new_voice_session(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)
    speaker.send(frames(b"before", 3))
    assert [p.opus for p in take(conn.opus_recv, 3)] == frames(b"before", 3)
    world.fake.close_voice(4015, "resume please")  # a resume: same session, same key
    assert world.fake.wait_until(lambda f: conn.resumes == 1, LONG)
    speaker.send(frames(b"resumed", 3))
    assert [p.opus for p in take(conn.opus_recv, 3)] == frames(b"resumed", 3)
    world.fake.close_voice(4006, "session gone")  # a new session: new socket, key, group
    assert world.fake.wait_until(lambda f: conn.reconnects == 1, LONG)
    assert conn.wait_for_e2ee(LONG)
    speaker.send(frames(b"new session", 3))
    got = take(conn.opus_recv, 3)
    assert [p.opus for p in got] == frames(b"new session", 3)
    assert {p.user_id for p in got} == {speaker.user_id}
    conn.disconnect()


def test_a_members_new_ssrc_is_followed(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    alice = world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)
    alice.send(frames(b"a", 2))
    assert [p.ssrc for p in take(conn.opus_recv, 2)] == [alice.ssrc] * 2
    old = alice.ssrc
    new = alice.change_ssrc()  # re-announced with op 5 before its next packet
    alice.send(frames(b"b", 2))
    got = take(conn.opus_recv, 2)
    assert new != old and [(p.ssrc, p.user_id) for p in got] == [(new, alice.user_id)] * 2
    conn.disconnect()


def test_one_receiver_thread_per_voice_for_every_receiving_connection(
    make_world: MakeWorld,
) -> None:
    import threading

    w: World = make_world()
    first = w.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    second = w.voice.join_channel(GUILD + 1, CHANNEL + 1, receive=True, timeout=LONG)
    names = [t.name for t in threading.enumerate()]
    assert names.count("dv-udp-receiver") == 1
    first.disconnect()
    assert [t.name for t in threading.enumerate()].count("dv-udp-receiver") == 1
    second.disconnect()  # the last one stops and joins it
    assert "dv-udp-receiver" not in [t.name for t in threading.enumerate()]


def test_receive_stats_stay_readable_after_disconnect(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)
    speaker.send(frames(b"x", 2))
    take(conn.opus_recv, 2)
    conn.disconnect()
    stats = conn.stats.receive
    assert stats is not None and stats.delivered == 2


def test_speaking_listeners_hear_starts_and_stops(world: World) -> None:
    import threading

    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker()
    assert conn.wait_for_e2ee(LONG)
    changes: list[tuple[int, bool, str]] = []
    changed = threading.Condition()

    def listener(user: int, speaking: bool) -> None:
        with changed:
            changes.append((user, speaking, threading.current_thread().name))
            changed.notify_all()

    remove = conn.add_speaking_listener(listener)
    speaker.send(frames(b"talk", 5))
    take(conn.opus_recv, 5)
    with changed:  # False comes ~200 ms after the last packet: waited for, bounded
        assert changed.wait_for(lambda: len(changes) >= 2, LONG)
    assert changes == [
        (speaker.user_id, True, "dv-udp-receiver"),
        (speaker.user_id, False, "dv-udp-receiver"),
    ]
    remove()
    conn.disconnect()


def test_speaking_listeners_need_receive(world: World) -> None:
    from discord_voice import LocalProtocolError

    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    with pytest.raises(LocalProtocolError, match="receive=True"):
        conn.add_speaking_listener(lambda user, speaking: None)
    conn.disconnect()

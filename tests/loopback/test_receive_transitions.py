"""Receiving across changes of the call, end to end: DAVE epoch changes while a member speaks
(members joining and leaving), frames in flight across them, a downgrade to protocol 0 and the
upgrade back, a move to another channel, and RTP sequence numbers wrapping (issue 11).

The fake's speakers are libdave members that switch keys when a transition executes (op 22),
as Discord's clients do, so a frame encrypted with an epoch's key can still be in flight when
the client already moved on: `FakeSpeaker.prepare` encrypts and numbers frames at one moment and
sends them at a later one, which makes that case deterministic. What the protocol allows to be
lost is documented in ``/work/shared/spec/dave-protocol.md``: receivers keep the previous epoch's
keys up to ten seconds, so an existing member loses nothing; only a member *welcomed* into an
epoch cannot decrypt frames still sent with the epoch before (dropped and counted, as
``receive.md`` §4 says). Clear frames pass while the call is not end-to-end encrypted and during
the passthrough windows of a downgrade and an upgrade, and are dropped (counted) otherwise.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections.abc import Callable

import pytest

from discord_voice import Connection, ConnectionState, VoicePacket
from discord_voice._shell.udp_receiver import ReceiveStats
from discord_voice.core.opcodes import VoiceOp
from discord_voice.opus import encode_frames, tone
from discord_voice.testing import FakeDiscord, FakeSpeaker
from discord_voice.testing.records import SentPacket
from tests.frames import dave_nonce, opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, World
from tests.timeouts import LONG

pytest.importorskip("dave")

OTHER_CHANNEL = CHANNEL + 7
#: Frames per `FakeSpeaker.send` of the continuous stream, and how many batches may be in
#: flight (sent, not yet taken from ``opus_recv``) before the speaker waits.
BATCH = 5
WINDOW = 2


def frames(tag: bytes, count: int, start: int = 0) -> list[bytes]:
    return [opus_frame(b"%s %03d" % (tag, n)) for n in range(start, start + count)]


def next_packet(conn: Connection) -> VoicePacket:
    try:
        packet: VoicePacket = conn.opus_recv.get(timeout=LONG)
    except queue.Empty:
        raise AssertionError(f"no packet within {LONG} s: {conn.stats.receive}") from None
    return packet


def take(conn: Connection, count: int) -> list[VoicePacket]:
    return [next_packet(conn) for _ in range(count)]


def take_until(conn: Connection, last: bytes, limit: int = 500) -> list[VoicePacket]:
    """Every packet up to and including the first whose Opus frame is `last` (a sentinel the
    client can decrypt): what came before it, once, in arrival order, without waiting for
    frames that were dropped."""
    got: list[VoicePacket] = []
    while len(got) < limit:
        got.append(next_packet(conn))
        if got[-1].opus == last:
            return got
    raise AssertionError(f"{last!r} did not come within {limit} packets")


def receive_stats(conn: Connection) -> ReceiveStats:
    stats = conn.stats.receive
    assert stats is not None
    return stats


def settled(fake: FakeDiscord, channel: int = CHANNEL) -> bool:
    """The channel's group (server view) is established, with everyone in it and nothing in
    flight."""
    state = fake.dave_state(channel)
    return state.epoch >= 1 and state.transition_id is None and not state.pending


def executed_count(fake: FakeDiscord, channel: int = CHANNEL) -> int:
    return len(fake.dave_state(channel).executed)


def key_switches(sent: list[SentPacket]) -> int:
    """How many times the speaker started a new key ratchet within `sent` (all DAVE frames)."""
    nonces = [dave_nonce(p.payload) for p in sent]
    return sum(1 for a, b in itertools.pairwise(nonces) if b <= a)


def join_with_speaker(world: World) -> tuple[Connection, FakeSpeaker]:
    """Join receiving; a speaker joins the call and is heard once (its key is settled)."""
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker()
    first = frames(b"hello", 1)
    speaker.send(first)  # waits until the group settled with the speaker in it
    assert [p.opus for p in take(conn, 1)] == first
    assert world.fake.wait_until(settled, LONG)
    return conn, speaker


# -- 1. DAVE epoch changes while a member speaks --------------------------------------------


def test_a_continuous_stream_loses_nothing_while_members_join_and_leave(world: World) -> None:
    fake = world.fake
    conn, alice = join_with_speaker(world)
    epoch = conn.dave_epoch
    assert epoch is not None
    stream_start = len(alice.sent)
    sent: list[bytes] = []
    got: list[VoicePacket] = []
    progress = threading.Condition()
    stop = threading.Event()

    def may_send(batch: int) -> bool:  # (progress held) stopped, or few enough in flight
        return stop.is_set() or len(got) >= (batch - WINDOW) * BATCH

    def speak() -> None:  # batches as fast as the client takes them, at most WINDOW ahead
        batch = 0
        while True:
            with progress:
                if not progress.wait_for(functools.partial(may_send, batch), LONG):
                    return  # timed out: the main thread fails on its own bounded get
            if stop.is_set():
                return
            out = frames(b"stream", BATCH, start=batch * BATCH)
            alice.send(out, settle=False)  # whatever key alice holds at this instant
            with progress:
                sent.extend(out)
            batch += 1

    def consume_until(done: Callable[[], bool]) -> None:
        while not done():
            packet = next_packet(conn)  # a lost frame ends here once WINDOW is used up
            with progress:
                got.append(packet)
                progress.notify_all()

    speaker = threading.Thread(target=speak, name="test-speaker")
    speaker.start()
    try:
        consume_until(lambda: len(got) >= 3 * BATCH)
        before = executed_count(fake)
        member = fake.add_member()  # a commit for us (a welcome for it): a new epoch
        consume_until(lambda: executed_count(fake) > before and settled(fake))
        mark = len(got)
        consume_until(lambda: len(got) >= mark + 3 * BATCH)  # new-key frames flow
        before = executed_count(fake)
        fake.remove_member(member)  # and it leaves: another epoch
        consume_until(lambda: executed_count(fake) > before and settled(fake))
        mark = len(got)
        consume_until(lambda: len(got) >= mark + 3 * BATCH)
    finally:
        stop.set()
        with progress:
            progress.notify_all()
        speaker.join(LONG)
    assert not speaker.is_alive()
    end = frames(b"end", 1)
    alice.send(end)
    got += take_until(conn, end[0], limit=len(sent) + 10)  # the rest, then the sentinel
    assert [p.opus for p in got] == sent + end  # every frame once, in order, byte for byte
    sequences = [p.sequence for p in got]
    assert sequences == [(sequences[0] + n) % 65536 for n in range(len(got))]
    assert {p.user_id for p in got} == {alice.user_id}
    assert conn.dave_epoch == epoch + 2  # both transitions happened under the stream
    stream = alice.sent[stream_start:-1]
    assert all(p.dave for p in stream) and key_switches(stream) == 2  # both keys were used
    stats = receive_stats(conn)
    assert stats.dave_failures == 0 and stats.delivered == len(got) + 1
    assert not fake.violations and not fake.udp_errors
    conn.disconnect()


@pytest.mark.parametrize("change", ["member joins", "member leaves", "speaker leaves"])
def test_frames_in_flight_across_an_epoch_change_decrypt_with_either_key(
    world: World, change: str
) -> None:
    fake = world.fake
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    alice = fake.add_speaker()
    member = fake.add_member() if change == "member leaves" else None
    bob = fake.add_speaker() if change == "speaker leaves" else None
    warm = frames(b"warm", 2)
    warm_sent = alice.send(warm)
    assert [p.opus for p in take(conn, 2)] == warm
    assert fake.wait_until(settled, LONG)
    epoch, before = conn.dave_epoch, executed_count(fake)
    assert epoch is not None

    # encrypted now with the current epoch's key, sent once the client is in the next epoch
    in_flight = alice.prepare(frames(b"old key", 5))
    if member is not None:
        fake.remove_member(member)
    elif bob is not None:
        bob.leave()
    else:
        fake.add_member()
    assert fake.wait_until(
        lambda f: executed_count(f) > before and settled(f) and conn.dave_epoch == epoch + 1,
        LONG,
    )  # the client processed the commit and the transition was executed (op 22)
    old = alice.send_prepared(in_flight)
    new = alice.send(frames(b"new key", 5))  # right after the transition: the next key
    assert [dave_nonce(p.payload) for p in old] == [
        dave_nonce(warm_sent[-1].payload) + n for n in range(1, 6)
    ]  # the previous ratchet went on ...
    assert [dave_nonce(p.payload) for p in new] == [1, 2, 3, 4, 5]  # ... and this one is new

    got = take(conn, 10)
    assert [p.opus for p in got] == in_flight.frames + [p.opus for p in new]
    assert [p.sequence for p in got] == [p.sequence for p in old + new]
    stats = receive_stats(conn)
    assert stats.dave_failures == 0 and stats.delivered == 12
    assert not fake.violations and not fake.udp_errors
    conn.disconnect()


def test_joining_by_welcome_earlier_epochs_frames_are_counted_and_later_ones_heard(
    world: World,
) -> None:
    fake = world.fake
    fake.add_member(CHANNEL)
    alice = fake.add_speaker(CHANNEL)  # she and a libdave member: a group without us
    assert fake.wait_until(
        lambda f: settled(f) and alice.user_id in f.dave_state(CHANNEL).members, LONG
    )
    in_flight = alice.prepare(frames(b"before us", 4))  # an epoch we are never in
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)  # a welcome
    assert fake.wait_until(lambda f: settled(f) and conn.dave_epoch == f.dave_state().epoch, LONG)
    # the whitepaper: a welcomed member cannot decrypt the epochs before it
    old = alice.send_prepared(in_flight)
    assert all(p.to == (conn.ssrc,) for p in old)
    after = alice.send(frames(b"after welcome", 4))
    got = take_until(conn, after[-1].opus)
    assert [p.opus for p in got] == [p.opus for p in after]
    stats = receive_stats(conn)
    assert stats.dave_failures == 4 and stats.delivered == 4  # counted, never delivered
    assert not fake.violations and not fake.udp_errors
    conn.disconnect()


# -- 2. Downgrade to protocol 0 and upgrade back ----------------------------------------------


def test_a_downgrade_and_an_upgrade_while_a_member_speaks_lose_nothing(world: World) -> None:
    fake = world.fake
    conn, alice = join_with_speaker(world)
    in_flight = alice.prepare(frames(b"before downgrade", 3))  # still E2EE
    fake.downgrade()
    assert conn.wait_for_e2ee(LONG, encrypted=False)  # we executed the downgrade
    assert fake.wait_until(lambda f: f.dave_state().version == 0, LONG)
    old = alice.send_prepared(in_flight)  # in flight from before: decrypted with the kept keys
    clear = alice.send(frames(b"clear", 4))  # protocol 0: the frames as they are
    assert all(p.dave for p in old) and not any(p.dave for p in clear)
    fake.upgrade()
    assert conn.wait_for_e2ee(LONG)
    assert fake.wait_until(settled, LONG)
    again = alice.send(frames(b"e2ee again", 4))
    assert all(p.dave for p in again)

    got = take(conn, 11)
    assert [p.opus for p in got] == [p.opus for p in old + clear + again]
    assert {p.user_id for p in got} == {alice.user_id}
    stats = receive_stats(conn)
    assert stats.dave_failures == 0 and stats.delivered == 12
    assert conn.e2ee_active and not fake.violations and not fake.udp_errors
    conn.disconnect()


def test_a_clear_frame_while_dave_is_in_effect_is_dropped_and_counted(world: World) -> None:
    conn, alice = join_with_speaker(world)
    (clear,) = alice.send(frames(b"clear", 1), dave=False)  # no transition, no passthrough
    assert not clear.dave and clear.payload == clear.opus
    after = frames(b"encrypted", 1)
    alice.send(after)
    assert [p.opus for p in take_until(conn, after[0])] == after  # the clear one never came
    stats = receive_stats(conn)
    assert stats.dave_failures == 1 and stats.delivered == 2
    conn.disconnect()


def downgraded(world: World) -> tuple[Connection, FakeSpeaker]:
    """`join_with_speaker`, then the call downgraded to protocol 0 on both sides."""
    conn, alice = join_with_speaker(world)
    world.fake.downgrade()
    assert conn.wait_for_e2ee(LONG, encrypted=False)
    assert world.fake.wait_until(lambda f: f.dave_state().version == 0, LONG)
    return conn, alice


def test_clear_frames_during_and_right_after_an_upgrade_are_delivered(world: World) -> None:
    fake = world.fake
    conn, alice = downgraded(world)
    key_packages = count_client_ops(fake, VoiceOp.DAVE_MLS_KEY_PACKAGE)
    fake.upgrade()
    assert fake.wait_until(  # we processed op 24: a new group, a key package
        lambda f: count_client_ops(f, VoiceOp.DAVE_MLS_KEY_PACKAGE) > key_packages, LONG
    )
    during = alice.send(frames(b"clear during", 3), dave=False, settle=False)
    assert conn.wait_for_e2ee(LONG)
    assert fake.wait_until(settled, LONG)
    after = alice.send(frames(b"clear after", 3), dave=False)  # a sender not switched yet
    end = frames(b"encrypted", 1)
    alice.send(end)
    got = take_until(conn, end[0])
    assert [p.opus for p in got] == [p.opus for p in during + after] + end
    assert receive_stats(conn).dave_failures == 0
    conn.disconnect()


def test_a_member_who_joins_while_dave_is_off_is_heard(world: World) -> None:
    fake = world.fake
    conn, alice = downgraded(world)
    bob = fake.add_speaker()  # no group at protocol 0: bob has no key, sends in the clear
    sent = bob.send(frames(b"bob", 3))
    assert not any(p.dave for p in sent)
    alice_frame = frames(b"alice", 1)
    alice.send(alice_frame)  # alice was in the group before: her clear frames pass
    end = frames(b"bob end", 1)
    bob.send(end)
    # bob's packets may be held until his op 5 is read, so alice's can come between them
    got = take_until(conn, end[0])
    assert [p.opus for p in got if p.user_id == bob.user_id] == [p.opus for p in sent] + end
    assert [p.opus for p in got if p.user_id == alice.user_id] == alice_frame
    assert receive_stats(conn).dave_failures == 0
    conn.disconnect()


def count_client_ops(fake: FakeDiscord, op: int) -> int:
    return sum(1 for m in fake.voice_messages if m.direction == "client" and m.op == op)


# -- 3. A move to another channel while receiving ---------------------------------------------


def test_after_a_move_the_new_channels_members_are_heard(world: World) -> None:
    fake = world.fake
    conn, alice = join_with_speaker(world)
    opus_recv = conn.opus_recv
    bob = fake.add_speaker(OTHER_CHANNEL)  # already in the channel we are moved to
    ready_again = threading.Event()
    conn.add_state_listener(
        lambda old, new, why: ready_again.set() if new is ConnectionState.READY else None
    )
    fake.move_user(OTHER_CHANNEL)  # a new voice server, session, key and DAVE group
    assert ready_again.wait(LONG)  # READY -> RECONNECTING -> READY, no action of ours
    assert conn.reconnects == 1 and conn.channel_id == str(OTHER_CHANNEL)
    assert conn.wait_for_e2ee(LONG)
    assert world.voice.connection(GUILD) is conn and conn.opus_recv is opus_recv

    left_behind = alice.send(frames(b"old channel", 2))  # to the old channel: not for us
    assert left_behind and all(p.to == () for p in left_behind)
    from_bob = bob.send(frames(b"bob", 4))  # waits for the new channel's group to settle
    carol = fake.add_speaker(OTHER_CHANNEL)  # joins after us: a new epoch there
    from_carol = carol.send(frames(b"carol", 4))
    got = take(conn, 8)
    assert [(p.user_id, p.ssrc, p.opus) for p in got] == [
        *[(bob.user_id, bob.ssrc, p.opus) for p in from_bob],
        *[(carol.user_id, carol.ssrc, p.opus) for p in from_carol],
    ]
    stats = receive_stats(conn)
    assert stats.dave_failures == 0 and stats.delivered == 9
    assert conn.error is None and not fake.violations and not fake.udp_errors
    conn.disconnect()


# -- 4. RTP sequence numbers wrapping ---------------------------------------------------------


def test_sequence_numbers_wrapping_arrive_in_order(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker(
        announce="after:4", sequence=65533, timestamp=2**32 - 2 * 960
    )  # the first four (65533 ... 0) are held until op 5 names the SSRC
    sent = speaker.send(frames(b"wrap", 8))
    got = take(conn, 8)
    assert [p.sequence for p in got] == [65533, 65534, 65535, 0, 1, 2, 3, 4]
    assert [p.timestamp for p in got] == [p.timestamp for p in sent]
    assert got[1].timestamp == 2**32 - 960 and got[2].timestamp == 0
    assert [p.opus for p in got] == [p.opus for p in sent]
    assert receive_stats(conn).dave_failures == 0
    conn.disconnect()


class BlockCounter:
    """A sink that counts the blocks written per user; a test can wait on it."""

    def __init__(self) -> None:
        self.blocks: dict[int, int] = {}
        self.changed = threading.Condition()

    def write(self, user_id: int, pcm: bytes) -> None:
        with self.changed:
            self.blocks[user_id] = self.blocks.get(user_id, 0) + 1
            self.changed.notify_all()

    def close(self) -> None:
        pass

    def wait_for(self, user_id: int, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.blocks.get(user_id, 0) >= count, LONG)


def test_listening_across_the_wrap_reorders_without_loss(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, receive=True, timeout=LONG)
    speaker = world.fake.add_speaker(sequence=65521)
    sink = BlockCounter()
    listener = conn.listen(sink)
    packets = list(encode_frames(tone(440.0, 0.8)))  # 40 packets of 20 ms
    sent = speaker.send(packets, reorder=0.3, seed=4)
    assert 65535 in [p.sequence for p in sent if p.reordered]  # seed chosen so: 0 came first
    assert sink.wait_for(speaker.user_id, len(packets))
    conn.stop_listening(LONG)
    stats = listener.stats()
    assert stats.users == {speaker.user_id: len(packets)}  # no gap, no resync, no extra
    assert (stats.concealed, stats.late_or_duplicate, stats.silence_samples) == (0, 0, 0)
    conn.disconnect()

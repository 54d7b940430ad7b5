"""Members who speak (`FakeDiscord.add_speaker`), checked against an independent receive path.

What a client receives is opened by the raw clients of `fake_raw_clients` (PyNaCl's AEADs and a
header walk written from receive.md §2, never `discord_voice.core` nor the fake's own codecs):
op 11 / op 5 / op 12 / op 13 on the websocket and their order against the packets (by the fake's
record indexes), the exact Opus frames under padding, extensions and CSRCs in both modes,
sequence and timestamp arithmetic, pauses, SSRC changes, several clients, seeded impairment,
raw RTCP / video / foreign datagrams. Reading a run of datagrams ends at a marker datagram the
test sends last, so "nothing else arrived" needs no waiting.

DAVE is covered end to end by the last tests: the raw client runs davey (openmls, the library's
engine) as a real member of the channel's MLS group and decrypts what the speaker's libdave
encryptor (Discord's C++ implementation, through dave-py) made: after each epoch change (the
speaker's fresh ratchet), with the previous epoch's key while a transition is held in flight
(the client's reader is blocked so it cannot execute), with the next epoch's key before the
client switched (``key_switch="commit"``), ``dave=False`` frames, and passthrough after a
downgrade. Not covered: a speaker that has no key at all (a pending joiner with
``settle=False`` raises rather than sending), op 12 and the announce modes in a DAVE channel
(the same code path as without DAVE), and the fake's behaviour towards the library's own
receive path (that is the library's tests' job).
"""

from __future__ import annotations

import itertools
import secrets
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import websocket

from discord_voice.testing import FakeDiscord, FakeSpeaker, SentPacket
from tests.frames import dave_nonce
from tests.testing.fake_raw_clients import (
    AES,
    XCHACHA,
    OpenedRtp,
    VoiceClient,
    aes_available,
    full_voice,
    main_ready,
    one_byte_elements,
    open_rtcp,
    open_rtp,
    recv_json,
)

if TYPE_CHECKING:
    from tests.testing.dave_raw_client import DaveRawClient

MODES = [
    pytest.param(AES, marks=pytest.mark.skipif(not aes_available(), reason="no AES-NI for PyNaCl")),
    XCHACHA,
]
CHANNEL = 222
OTHER_USER = 300000000000000003


def opus(ms: float, tag: int = 0, size: int = 40) -> bytes:
    """An Opus packet whose TOC byte says it lasts `ms` (one frame, code 0)."""
    toc = {2.5: 16 << 3, 10: 0 << 3, 20: 31 << 3 | 0x04, 40: 2 << 3, 60: 3 << 3}[ms]
    return bytes([toc]) + bytes([tag & 0xFF]) * size


def next_op(ws: websocket.WebSocket, op: int) -> dict[str, Any]:
    """The next voice message with `op` (others are skipped; Hello was read before)."""
    while True:
        message = recv_json(ws)
        if message["op"] == op:
            return message


def server_ops(fake: FakeDiscord, op: int) -> list[int]:
    """Record indexes of every voice message with `op` the fake sent."""
    return [m.index for m in fake.voice_messages if m.direction == "server" and m.op == op]


def received(client: VoiceClient, fake: FakeDiscord) -> list[OpenedRtp]:
    """Every packet the client got until now (a marker datagram closes the run)."""
    marker = b"marker-" + secrets.token_bytes(8)
    fake.send_udp_raw(marker, to_ssrc=client.ssrc)
    return [open_rtp(client.mode, client.key, d) for d in client.datagrams_until(marker)]


@pytest.fixture
def joined(fake: FakeDiscord) -> Iterator[VoiceClient]:
    """The bot in guild 111 / channel 222 with a key (xchacha), Speaking sent (no DAVE)."""
    main, client = full_voice(fake)
    try:
        yield client
    finally:
        client.close()
        main.close()


# ---------------------------------------------------------------- presence and Speaking


def test_before_op11_at_once_and_op5_before_the_first_packet(
    fake: FakeDiscord, joined: VoiceClient
) -> None:
    speaker = fake.add_speaker()
    assert isinstance(speaker, FakeSpeaker) and fake.speakers == [speaker]
    assert speaker.channel_id == CHANNEL and not speaker.dave
    assert speaker.ssrc not in (0, joined.ssrc) and 0 < speaker.ssrc < 1 << 32
    assert next_op(joined.ws, 11)["d"] == {"user_ids": [str(speaker.user_id)]}
    frames = [opus(20, i) for i in range(3)]
    sent = speaker.send(frames)
    assert next_op(joined.ws, 5)["d"] == {
        "user_id": str(speaker.user_id),
        "ssrc": speaker.ssrc,
        "speaking": 1,
    }
    got = received(joined, fake)
    assert [g.payload for g in got] == frames == [p.opus == p.payload and p.opus for p in sent]
    assert {g.ssrc for g in got} == {speaker.ssrc} and {g.payload_type for g in got} == {120}
    assert all(g.first == 0x80 and not g.marker and g.csrcs == () for g in got)
    (op11,), (op5,) = server_ops(fake, 11), server_ops(fake, 5)
    assert op11 < op5 < sent[0].index < sent[1].index < sent[2].index
    assert [p.to for p in sent] == [(joined.ssrc,)] * 3
    assert fake.sent_audio == sent == speaker.sent
    assert fake.violations == [] and fake.udp_errors == []
    assert [f for f in fake.faults if "speaker" in f][:2] == [
        f"add_speaker(channel_id={CHANNEL}, user_id={speaker.user_id}, ssrc={speaker.ssrc}, "
        "announce='before', dave=False)",
        f"speaker {speaker.user_id}: send(3 frames)",
    ]


def test_after_n_sends_op5_right_after_the_nth_packet(
    fake: FakeDiscord, joined: VoiceClient
) -> None:
    speaker = fake.add_speaker(announce="after:2")
    sent = speaker.send([opus(20, i) for i in range(4)])
    (op5,) = server_ops(fake, 5)
    assert sent[1].index < op5 < sent[2].index  # audio before the Speaking that names it
    assert [g.sequence for g in received(joined, fake)] == [p.sequence for p in sent]
    assert next_op(joined.ws, 5)["d"]["ssrc"] == speaker.ssrc
    speaker.send([opus(20)])
    assert len(server_ops(fake, 5)) == 1  # once per SSRC and client


def test_never_announces_until_told_and_op12_carries_audio_ssrc(
    fake: FakeDiscord, joined: VoiceClient
) -> None:
    speaker = fake.add_speaker(announce="never")
    speaker.send([opus(20, i) for i in range(2)])
    assert server_ops(fake, 5) == [] and len(received(joined, fake)) == 2
    speaker.announce(op12=True)
    assert next_op(joined.ws, 12)["d"] == {
        "user_id": str(speaker.user_id),
        "audio_ssrc": speaker.ssrc,
        "video_ssrc": 0,
        "rtx_ssrc": 0,
        "streams": [],
    }
    speaker.announce(speaking=5)
    assert next_op(joined.ws, 5)["d"] == {
        "user_id": str(speaker.user_id),
        "ssrc": speaker.ssrc,
        "speaking": 5,
    }
    assert f"speaker {speaker.user_id}: announce(op12=True, speaking=1)" in fake.faults


def test_a_speaker_there_before_the_client_is_announced_when_its_session_is_ready(
    fake: FakeDiscord,
) -> None:
    early = fake.add_speaker(CHANNEL, 400000000000000004)
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    try:
        late = fake.add_speaker()  # default channel: the bot's join (no voice session yet)
        assert late.channel_id == CHANNEL and late.user_id != early.user_id
        client.session(XCHACHA)
        assert next_op(client.ws, 11)["d"] == {"user_ids": [str(early.user_id), str(late.user_id)]}
        client.speaking()
        early.send([opus(20)])
        assert next_op(client.ws, 5)["d"]["user_id"] == str(early.user_id)
        (got,) = received(client, fake)
        assert got.ssrc == early.ssrc
    finally:
        client.close()
        main.close()


def test_leave_sends_op13_and_ends_the_speaker(fake: FakeDiscord, joined: VoiceClient) -> None:
    speaker = fake.add_speaker()
    speaker.leave()
    assert next_op(joined.ws, 13)["d"] == {"user_id": str(speaker.user_id)}
    assert speaker.left
    with pytest.raises(RuntimeError, match="has left"):
        speaker.send([opus(20)])
    speaker.leave()  # idempotent
    assert len(server_ops(fake, 13)) == 1


def test_prepared_packets_take_their_numbers_at_once_and_go_out_once(
    fake: FakeDiscord, joined: VoiceClient
) -> None:
    speaker, other = fake.add_speaker(), fake.add_speaker()
    held = speaker.prepare([opus(20, i) for i in range(2)])
    later = speaker.send([opus(20, 9)])
    assert held.sequences == [(later[0].sequence - 2 + k) % 65536 for k in range(2)]
    assert not held.sent and received(joined, fake)[-1].payload == opus(20, 9)
    sent = speaker.send_prepared(held)
    assert held.sent and [p.sequence for p in sent] == held.sequences
    assert [g.payload for g in received(joined, fake)[-2:]] == held.frames
    with pytest.raises(RuntimeError, match="sent already"):
        speaker.send_prepared(held)
    with pytest.raises(ValueError, match="not"):
        other.send_prepared(held)  # another speaker's packets
    assert f"speaker {speaker.user_id}: send_prepared(2 frames)" in fake.faults


def test_options_are_checked(fake: FakeDiscord, joined: VoiceClient) -> None:
    with pytest.raises(ValueError, match="announce"):
        fake.add_speaker(announce="later")
    speaker = fake.add_speaker(user_id=500000000000000005)
    with pytest.raises(ValueError, match="already"):
        fake.add_speaker(user_id=500000000000000005)
    for bad in (
        {"padding": 256},
        {"csrcs": list(range(16))},
        {"loss": 1.5},
    ):
        with pytest.raises(ValueError):
            speaker.send([opus(20)], **bad)
    for frame in (b"", b"\xfb", b"\xfb\x00", b"\xfb\x07"):  # no TOC, no count, 0 frames, 140 ms
        with pytest.raises(ValueError, match="Opus"):
            speaker.send([frame])
    assert fake.sent_audio == []


# ---------------------------------------------------------------- packets


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", [1, 17, 255])
def test_padding_is_sealed_and_strips_to_the_exact_frames(
    fake: FakeDiscord, mode: str, padding: int
) -> None:
    main, client = full_voice(fake, mode)
    try:
        speaker = fake.add_speaker()
        frames = [opus(20, i, size=30 + i) for i in range(3)]
        sent = speaker.send(frames, padding=padding)
        got = received(client, fake)
        assert [g.payload for g in got] == frames
        assert all(g.first == 0xA0 for g in got)  # V=2 and P
        assert all(len(g.padding) == padding and g.padding[-1] == padding for g in got)
        assert [g.size for g in got] == [12 + len(f) + padding + 16 + 4 for f in frames]
        nonces = [g.nonce for g in got]
        assert nonces == [(nonces[0] + i) & 0xFFFFFFFF for i in range(3)]
        assert [p.opus for p in sent] == frames
    finally:
        client.close()
        main.close()


@pytest.mark.parametrize("mode", MODES)
def test_extension_and_csrcs_are_where_receive_md_says(fake: FakeDiscord, mode: str) -> None:
    main, client = full_voice(fake, mode)
    try:
        speaker = fake.add_speaker()
        frames = [opus(20, i) for i in range(2)]
        csrcs = [1, 0xFFFFFFFF]
        speaker.send(frames, extension=b"\x10\x7f", csrcs=csrcs, padding=3)
        got = received(client, fake)
        assert [g.payload for g in got] == frames
        for g in got:
            assert g.first == 0x80 | 0x20 | 0x10 | 2 and g.csrcs == tuple(csrcs)
            assert g.extension_profile == 0xBEDE and g.extension == b"\x10\x7f\x00\x00"
            assert one_byte_elements(g.extension) == [(1, b"\x7f")]
            assert g.size == 12 + 8 + 4 + 4 + len(frames[0]) + 3 + 16 + 4
        speaker.send([frames[0]], extension=b"")  # X set, no element: LL = 0
        (bare,) = received(client, fake)
        assert bare.extension == b"" and bare.payload == frames[0] and bare.first == 0x90
    finally:
        client.close()
        main.close()


def test_sequence_and_timestamp_wrap(fake: FakeDiscord, joined: VoiceClient) -> None:
    speaker = fake.add_speaker(sequence=65534, timestamp=(1 << 32) - 960)
    sent = speaker.send([opus(20, i) for i in range(4)])
    got = received(joined, fake)
    assert [g.sequence for g in got] == [p.sequence for p in sent] == [65534, 65535, 0, 1]
    assert [g.timestamp for g in got] == [(1 << 32) - 960, 0, 960, 1920]


def test_timestamps_advance_by_each_frames_duration(fake: FakeDiscord, joined: VoiceClient) -> None:
    speaker = fake.add_speaker()
    frames = [
        opus(10),
        opus(20),
        opus(40),
        opus(60),
        opus(2.5),
        b"\xfd" + bytes(20),  # code 1: two 20 ms frames
        b"\xfb\x03" + bytes(20),  # code 3, three 20 ms frames
        opus(20),
    ]
    speaker.send(frames)
    got = received(joined, fake)
    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(got)]
    assert steps == [480, 960, 1920, 2880, 120, 1920, 2880]
    assert [(b.sequence - a.sequence) & 0xFFFF for a, b in itertools.pairwise(got)] == [1] * 7


def test_skip_is_a_timestamp_jump_without_a_sequence_gap(
    fake: FakeDiscord, joined: VoiceClient
) -> None:
    speaker = fake.add_speaker()
    speaker.send([opus(20, 1), opus(20, 2)])
    speaker.skip(1.5)
    speaker.send([opus(20, 3)])
    a, b, c = received(joined, fake)
    assert (b.sequence - a.sequence) & 0xFFFF == (c.sequence - b.sequence) & 0xFFFF == 1
    assert (c.timestamp - b.timestamp) & 0xFFFFFFFF == 960 + 72000
    with pytest.raises(ValueError):
        speaker.skip(-1)


def test_change_ssrc_is_a_new_stream_announced_again(
    fake: FakeDiscord, joined: VoiceClient
) -> None:
    speaker = fake.add_speaker()
    first = speaker.ssrc
    speaker.send([opus(20)])
    assert next_op(joined.ws, 5)["d"]["ssrc"] == first
    second = speaker.change_ssrc()
    assert second == speaker.ssrc and second not in (0, first, joined.ssrc)
    sequence, timestamp = speaker.next_sequence, speaker.next_timestamp
    sent = speaker.send([opus(20, 1), opus(20, 2)])
    assert next_op(joined.ws, 5)["d"] == {
        "user_id": str(speaker.user_id),
        "ssrc": second,
        "speaking": 1,
    }
    old, *new = received(joined, fake)
    assert old.ssrc == first and [g.ssrc for g in new] == [second, second]
    assert [(g.sequence, g.timestamp) for g in new] == [
        (sequence, timestamp),
        ((sequence + 1) & 0xFFFF, (timestamp + 960) & 0xFFFFFFFF),
    ]
    assert server_ops(fake, 5)[1] < sent[0].index


def test_every_client_of_the_channel_gets_its_own_copy(
    fake: FakeDiscord, joined: VoiceClient
) -> None:
    other = VoiceClient.connect_other(fake, OTHER_USER)
    try:
        other.session(AES if aes_available() else XCHACHA)
        speaker = fake.add_speaker()
        frames = [opus(20, i) for i in range(3)]
        sent = speaker.send(frames)
        assert [set(p.to) for p in sent] == [{joined.ssrc, other.ssrc}] * 3
        for client in (joined, other):
            got = received(client, fake)
            assert [g.payload for g in got] == frames
            assert [g.sequence for g in got] == [p.sequence for p in sent]
            assert next_op(client.ws, 11)["d"] == {"user_ids": [str(speaker.user_id)]}
    finally:
        other.close()


# ---------------------------------------------------------------- impairment


def pattern(sent: list[SentPacket]) -> list[tuple[bool, bool, bool]]:
    return [(p.dropped, p.duplicated, p.reordered) for p in sent]


def test_loss_reorder_duplicate_are_seeded(fake: FakeDiscord, joined: VoiceClient) -> None:
    speaker = fake.add_speaker(sequence=1000)  # no wrap: sequence order is numeric order
    frames = [opus(20, i) for i in range(30)]

    def send(seed: int) -> list[SentPacket]:
        return speaker.send(frames, seed=seed, loss=0.15, reorder=0.15, duplicate=0.15)

    sent = send(3)
    flags = pattern(sent)
    assert any(f[0] for f in flags) and any(f[1] for f in flags) and any(f[2] for f in flags)
    got = received(joined, fake)
    # what arrived is what the record says: dropped never, duplicated twice, the rest once
    counts = {p.sequence: 0 if p.dropped else 2 if p.duplicated else 1 for p in sent}
    assert sorted(g.sequence for g in got) == sorted(s for s, n in counts.items() for _ in range(n))
    assert all(not p.to for p in sent if p.dropped) and all(p.to for p in sent if not p.dropped)
    assert {g.payload for g in got} == {p.opus for p in sent if not p.dropped}
    firsts = list(dict.fromkeys(g.sequence for g in got))  # first arrival of each packet
    late = {s for at, s in enumerate(firsts) if any(e > s for e in firsts[:at])}
    assert late == {p.sequence for p in sent if p.reordered}
    # the same seed gives the same pattern, another seed another one
    assert pattern(send(3)) == flags
    assert pattern(send(4)) != flags
    received(joined, fake)


# ---------------------------------------------------------------- raw datagrams


@pytest.mark.parametrize("mode", MODES)
def test_raw_rtcp_video_and_foreign_datagrams_arrive_as_built(fake: FakeDiscord, mode: str) -> None:
    main, client = full_voice(fake, mode)
    try:
        rtcp = fake.rtcp_packet()
        assert fake.send_udp_raw(rtcp) == client.ssrc
        data, source = client.recv_datagram()
        assert data == rtcp and source == client.server_addr
        assert (data[0], data[1]) == (0x81, 201) and 192 <= data[1] <= 223
        report = open_rtcp(mode, client.key, data)
        assert len(report) == 32 and struct.unpack_from(">HI", report, 2)[0] == 7
        assert struct.unpack_from(">I", report, 8)[0] == client.ssrc  # the block is about us

        plain = fake.rtcp_packet(seal=False, sender_ssrc=42)
        fake.send_udp_raw(plain, to_ssrc=client.ssrc)
        assert client.recv_datagram()[0] == plain and plain[4:8] == struct.pack(">I", 42)

        video = fake.video_packet(payload_type=103, payload=b"vp8-keyframe", ssrc=77)
        fake.send_udp_raw(video)
        opened = open_rtp(mode, client.key, client.recv_datagram()[0])
        assert (opened.payload_type, opened.payload, opened.ssrc) == (103, b"vp8-keyframe", 77)

        fake.send_udp_raw(b"\x80\x78stranger", from_foreign=True)
        data, source = client.recv_datagram()
        assert data == b"\x80\x78stranger" and source != client.server_addr
        assert source[0] == "127.0.0.1"
        assert sum("send_udp_raw" in f for f in fake.faults) == 4
        with pytest.raises(ValueError, match="no client session"):
            fake.send_udp_raw(b"x", to_ssrc=client.ssrc ^ 1)
    finally:
        client.close()
        main.close()


def test_raw_datagrams_need_a_client(fake: FakeDiscord) -> None:
    with pytest.raises(RuntimeError, match="no client session"):
        fake.send_udp_raw(b"x")
    with pytest.raises(RuntimeError, match="pass channel_id"):
        fake.add_speaker()


# ---------------------------------------------------------------- DAVE, against davey


def dave_received(client: DaveRawClient, fake: FakeDiscord) -> list[OpenedRtp]:
    """As `received`, for a raw DAVE client (xchacha, reads its UDP socket on this thread)."""
    marker = b"marker-" + secrets.token_bytes(8)
    fake.send_udp_raw(marker, to_ssrc=client.ssrc)
    got: list[OpenedRtp] = []
    while True:
        data, source = client.udp.recvfrom(4096)
        assert source == client.server
        if data == marker:
            return got
        got.append(open_rtp(XCHACHA, client.key, data))


def davey_decrypt(client: DaveRawClient, user_id: int, packets: list[OpenedRtp]) -> list[bytes]:
    davey = pytest.importorskip("davey")
    with client.cond:
        return [
            bytes(client.dave.decrypt(user_id, davey.MediaType.audio, p.payload)) for p in packets
        ]


@pytest.fixture
def dave_bot() -> Iterator[tuple[FakeDiscord, DaveRawClient]]:
    """A DAVE fake (a libdave listener in the channel) and the bot as a raw davey client in
    the channel's group (epoch 1 executed)."""
    raw = pytest.importorskip("tests.testing.dave_raw_client")
    with FakeDiscord() as fake:
        main, client = raw.bot_client(fake)
        try:
            client.handshake()
            client.wait(lambda c: c.executed, "op 22")
            yield fake, client
        finally:
            client.close()
            main.close()


def test_dave_frames_of_libdave_decrypt_with_davey_across_epochs(
    dave_bot: tuple[FakeDiscord, DaveRawClient],
) -> None:
    fake, client = dave_bot
    speaker = fake.add_speaker()
    assert speaker.dave and speaker.channel_id == CHANNEL
    client.wait(lambda c: speaker.user_id in c.expected, "op 11 for the speaker")
    frames = [opus(20, i) for i in range(4)]
    sent = speaker.send(frames)  # waits until the speaker's own add executed
    assert speaker.user_id in fake.dave_state().members
    assert all(p.dave and p.payload != p.opus for p in sent)
    assert [dave_nonce(p.payload) for p in sent] == [1, 2, 3, 4]  # a fresh ratchet
    got = dave_received(client, fake)
    assert [g.payload for g in got] == [p.payload for p in sent]
    assert davey_decrypt(client, speaker.user_id, got) == frames
    client.wait(lambda c: any(m[:2] == ("json", 5) for m in c.messages), "op 5")
    assert ("json", 5, {"user_id": str(speaker.user_id), "ssrc": speaker.ssrc, "speaking": 1}) in (
        client.messages
    )

    # another member joins: a new epoch; the speaker switches on op 22, davey follows
    epoch = client.epoch
    fake.add_member()
    more = speaker.send([opus(20, 9), opus(20, 10)])
    assert client.epoch == (epoch or 0) + 1
    assert [dave_nonce(p.payload) for p in more] == [1, 2]
    assert davey_decrypt(client, speaker.user_id, dave_received(client, fake)) == [
        opus(20, 9),
        opus(20, 10),
    ]

    # dave=False: the Opus frame as is (what a client in passthrough, or a bad one, sends)
    (plain,) = speaker.send([opus(20, 11)], dave=False)
    assert not plain.dave and plain.payload == plain.opus == opus(20, 11)
    assert [g.payload for g in dave_received(client, fake)] == [opus(20, 11)]

    # leaving: op 13, then the gateway's Remove proposal makes another epoch
    executed = len(client.executed)
    speaker.leave()
    client.wait(lambda c: speaker.user_id not in c.expected, "op 13")
    client.wait(lambda c: len(c.executed) > executed, "the removal's op 22")
    assert speaker.user_id not in fake.dave_state().members
    assert fake.violations == [] and fake.udp_errors == [] and client.errors == []


def test_dave_key_switch_on_commit_sends_the_next_epochs_key_first(
    dave_bot: tuple[FakeDiscord, DaveRawClient],
) -> None:
    fake, client = dave_bot
    speaker = fake.add_speaker(key_switch="commit")
    speaker.send([opus(20)])
    dave_received(client, fake)
    executed = len(client.executed)
    with client.cond:  # the client's reader cannot process op 29 meanwhile: no op 23, no op 22
        fake.add_member()  # the speaker processes the commit at once and switches keys
        sent = speaker.send([opus(20, 1), opus(20, 2)], settle=False)
        assert fake.dave_state().transition_id is not None
    assert [dave_nonce(p.payload) for p in sent] == [1, 2]  # already the new epoch's ratchet
    got = dave_received(client, fake)
    client.wait(lambda c: len(c.executed) > executed, "op 22 of the new member")
    assert davey_decrypt(client, speaker.user_id, got) == [opus(20, 1), opus(20, 2)]
    assert fake.violations == [] and client.errors == []


def test_dave_frames_sent_during_a_transition_use_the_previous_key_and_still_decrypt(
    dave_bot: tuple[FakeDiscord, DaveRawClient],
) -> None:
    fake, client = dave_bot
    speaker = fake.add_speaker()  # key_switch="execute": on op 22, as Discord's clients do
    before = speaker.send([opus(20)])
    dave_received(client, fake)
    executed = len(client.executed)
    with client.cond:  # hold the client's reader: the transition cannot execute
        fake.add_member()
        late = speaker.send([opus(20, 1), opus(20, 2)], settle=False)
        assert fake.dave_state().transition_id is not None
    # the same ratchet as before (its nonces go on), not a fresh one
    assert [dave_nonce(p.payload) for p in late] == [
        dave_nonce(before[0].payload) + i for i in (1, 2)
    ]
    got = dave_received(client, fake)
    client.wait(lambda c: len(c.executed) > executed, "op 22 of the new member")
    # the previous epoch's key is still accepted after the switch (libdave and davey keep it)
    assert davey_decrypt(client, speaker.user_id, got) == [opus(20, 1), opus(20, 2)]
    after = speaker.send([opus(20, 3)])
    assert dave_nonce(after[0].payload) == 1
    assert davey_decrypt(client, speaker.user_id, dave_received(client, fake)) == [opus(20, 3)]
    assert fake.violations == [] and client.errors == []


def test_dave_speaker_there_first_then_a_downgrade_to_plain_frames() -> None:
    raw = pytest.importorskip("tests.testing.dave_raw_client")
    with FakeDiscord() as fake:
        speaker = fake.add_speaker(CHANNEL)
        main, client = raw.bot_client(fake)
        try:
            client.handshake()
            client.wait(lambda c: c.executed, "op 22")
            assert speaker.user_id in client.expected and len(client.expected) == 2  # + listener
            sent = speaker.send([opus(20, 1)])
            assert sent[0].dave
            got = dave_received(client, fake)
            assert davey_decrypt(client, speaker.user_id, got) == [opus(20, 1)]

            executed = len(client.executed)
            fake.downgrade()
            client.wait(lambda c: len(c.executed) > executed, "op 22 of the downgrade")
            (plain,) = speaker.send([opus(20, 2)])  # protocol 0: passthrough
            assert not plain.dave and plain.payload == opus(20, 2)
            assert [g.payload for g in dave_received(client, fake)] == [opus(20, 2)]
            assert fake.violations == [] and client.errors == []
        finally:
            client.close()
            main.close()

"""Scripted DAVE flows of the fake: our commit wins, op 31 recovery, downgrade/upgrade, sole
member reset, media rules (plaintext, silence, bad DAVE frames), and streaming across epochs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

davey = pytest.importorskip("davey")
pytest.importorskip("dave")

from discord_voice.testing import FakeDiscord  # noqa: E402
from tests.testing.dave_raw_client import (  # noqa: E402
    CHANNEL,
    DaveRawClient,
    bot_client,
    other_client,
)

SECOND_USER = 200000000000000002


@pytest.fixture
def dave_fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(dave=True, dave_listener=False) as running:
        yield running


@pytest.fixture
def joined(dave_fake: FakeDiscord) -> Iterator[tuple[DaveRawClient, int]]:
    """Our client in a group with one libdave member, transition 1 executed."""
    member = dave_fake.add_member(CHANNEL)
    main, client = bot_client(dave_fake)
    client.handshake()
    client.wait(lambda c: c.executed, "op 22")
    yield client, member
    client.close()
    main.close()


def ops(client: DaveRawClient, start: int = 0) -> list[int]:
    with client.cond:
        return [op for _, op, _ in client.messages[start:]]


def test_our_commit_wins_and_libdave_joins_by_welcome(dave_fake: FakeDiscord) -> None:
    main, client = bot_client(dave_fake)
    try:
        client.handshake()
        client.wait(lambda c: 25 in ops(c), "op 25")
        member = dave_fake.add_member(CHANNEL, commits=False)
        client.wait(lambda c: c.executed, "op 22")
        assert ops(client) == [25, 11, 27, 29, 22]  # our own commit comes back as op 29
        assert dave_fake.dave_state().members == (client.user_id, member)
        frame = client.send_opus(b"from davey")
        got = dave_fake.wait_for_frames(1)[0]
        assert (got.opus, got.e2ee_payload, got.dave) == (b"from davey", frame, "decrypted")
        assert dave_fake.member_epoch_authenticator(member) == client.dave.get_epoch_authenticator()
        assert dave_fake.violations == [] and client.errors == []
    finally:
        client.close()
        main.close()


def test_invalid_commit_removes_and_readds(
    dave_fake: FakeDiscord, joined: tuple[DaveRawClient, int]
) -> None:
    client, _ = joined
    dave_fake.send_invalid_commit()
    dave_fake.add_member(CHANNEL)  # epoch change whose op 29 reaches our client corrupted
    client.wait(lambda c: c.sent_invalid, "op 31 sent")
    client.wait(lambda c: len(c.executed) == 2, "re-added by welcome")
    state = dave_fake.dave_state()
    bad = client.sent_invalid[0]
    assert state.invalid_reports == ((client.user_id, bad),)
    # transition `bad` executes without us; then one commit removes and re-adds our client
    assert bad == 2 and state.executed == (1, 2, 3) and client.executed == [1, 3]
    assert client.epoch == state.epoch == 3 and client.user_id in state.members
    client.send_opus(b"after recovery")
    assert dave_fake.wait_for_frames(1)[0].opus == b"after recovery"
    assert dave_fake.violations == [] and dave_fake.udp_errors == [] and client.errors == []


def test_downgrade_then_upgrade(dave_fake: FakeDiscord, joined: tuple[DaveRawClient, int]) -> None:
    client, _ = joined
    dave_fake.downgrade()
    client.wait(lambda c: len(c.executed) == 2, "downgrade executed")
    assert dave_fake.dave_state().version == 0
    prepare = next(d for kind, op, d in client.messages if op == 21)
    assert prepare == {"protocol_version": 0, "transition_id": client.executed[1]}
    client.send_raw(b"plain after downgrade")
    frame = dave_fake.wait_for_frames(1)[0]
    assert (frame.opus, frame.dave) == (b"plain after downgrade", "plaintext")

    mark = len(client.messages)
    dave_fake.upgrade()
    client.wait(lambda c: len(c.executed) == 3, "upgrade executed")
    assert ops(client, mark)[:3] == [24, 27, 30]  # both pending again: libdave commits first
    state = dave_fake.dave_state()
    assert state.version == 1 and state.epoch == client.epoch == 1
    client.send_opus(b"encrypted again")
    assert dave_fake.wait_for_frames(2)[1].opus == b"encrypted again"
    assert dave_fake.violations == [] and client.errors == []


def test_sole_member_reset(dave_fake: FakeDiscord, joined: tuple[DaveRawClient, int]) -> None:
    client, member = joined
    mark = len(client.messages)
    dave_fake.remove_member(member)
    client.wait(lambda c: 21 in ops(c, mark), "op 21")
    assert client.messages[mark:][:3] == [
        ("json", 13, {"user_id": str(member)}),
        ("json", 24, {"protocol_version": 1, "epoch": 1}),
        ("json", 21, {"protocol_version": 1, "transition_id": 0}),
    ]
    assert dave_fake.wait_until(lambda f: f.dave_state().epoch == 0)
    dave_fake.add_member(CHANNEL)  # a new group is created with the next member
    client.wait(lambda c: len(c.executed) == 2, "new group")
    assert client.epoch == dave_fake.dave_state().epoch == 1
    assert dave_fake.violations == [] and client.errors == []


def test_media_rules(dave_fake: FakeDiscord, joined: tuple[DaveRawClient, int]) -> None:
    client, _ = joined
    client.send_opus(b"encrypted")
    client.send_raw(b"\xf8\xff\xfe")
    client.send_raw(b"plain audio")
    frames = dave_fake.wait_for_frames(3)
    assert [(f.opus, f.dave) for f in frames] == [
        (b"encrypted", "decrypted"),
        (b"\xf8\xff\xfe", "silence"),
        (b"plain audio", "plaintext"),
    ]
    assert len(dave_fake.violations) == 1 and "plaintext audio frame" in dave_fake.violations[0]
    client.send_raw(bytes(20) + b"\x00\x0b\xfa\xfa")  # looks like a DAVE frame, is not one
    assert dave_fake.wait_until(lambda f: f.udp_errors)
    assert "DAVE decryption failed" in dave_fake.udp_errors[0]
    assert len(dave_fake.frames()) == 3


def test_a_lone_pending_client_may_send_plaintext(dave_fake: FakeDiscord) -> None:
    """Alone there is no group (no one to commit an Add): the client passes audio through."""
    main, client = bot_client(dave_fake)
    try:
        client.handshake()
        client.wait(lambda c: 25 in ops(c), "op 25")
        client.send_raw(b"passthrough")
        frame = dave_fake.wait_for_frames(1)[0]
        assert (frame.opus, frame.dave, frame.e2ee_payload) == (
            b"passthrough",
            "plaintext",
            b"passthrough",
        )
        state = dave_fake.dave_state()
        assert (state.epoch, state.members, state.pending) == (0, (), (client.user_id,))
        assert ops(client) == [25] and client.dave.status == davey.SessionStatus.pending
        assert dave_fake.violations == []
    finally:
        client.close()
        main.close()


def test_key_package_for_another_user_is_a_violation(
    dave_fake: FakeDiscord, joined: tuple[DaveRawClient, int]
) -> None:
    client, _ = joined
    stranger = davey.DaveSession(1, 123456789, CHANNEL)
    client.ws.send_binary(b"\x1a" + stranger.get_serialized_key_package())
    assert dave_fake.wait_until(lambda f: f.violations)
    assert "is not user" in dave_fake.violations[0]


def test_streaming_across_epoch_changes_loses_nothing(
    dave_fake: FakeDiscord, joined: tuple[DaveRawClient, int]
) -> None:
    client, _ = joined
    second = other_client(dave_fake, SECOND_USER)
    stop = threading.Event()
    sent: list[bytes] = []

    def stream() -> None:
        while not stop.is_set() and len(sent) < 2000:
            opus = b"frame %d" % len(sent)
            client.send_opus(opus)
            sent.append(opus)
            stop.wait(0.002)  # pacing only

    streamer = threading.Thread(target=stream, name="test-dave-streamer")
    streamer.start()
    try:
        second.handshake()  # a davey client joins: epoch 2
        client.wait(lambda c: len(c.executed) == 2, "join transition")
        extra = dave_fake.add_member(CHANNEL)  # epoch 3
        client.wait(lambda c: len(c.executed) == 3, "member join transition")
        dave_fake.remove_member(extra)  # epoch 4
        client.wait(lambda c: len(c.executed) == 4, "member leave transition")
    finally:
        stop.set()
        streamer.join()
        second.close()
    frames = dave_fake.wait_for_frames(len(sent), ssrc=client.ssrc)
    assert [f.opus for f in frames] == sent  # 0 frames lost across 3 transitions
    assert client.epoch == 4 and dave_fake.udp_errors == [] and dave_fake.violations == []


def test_pending_member_leaving_gets_its_add_revoked(dave_fake: FakeDiscord) -> None:
    main, client = bot_client(dave_fake)
    try:
        client.handshake()
        client.wait(lambda c: 25 in ops(c), "op 25")
        dave_fake.add_member(CHANNEL, commits=False)
        client.wait(lambda c: c.executed, "group created by our commit")
        client.hold = True
        mark = len(client.messages)
        leaving = dave_fake.add_member(CHANNEL, commits=False)
        dave_fake.remove_member(leaving)  # before anyone committed its Add
        client.wait(lambda c: len(c.held) == 2 and 13 in ops(c, mark), "append, revoke, op 13")
        assert [payload[0] for payload, _ in client.held] == [0, 1]  # append, then revoke
        assert ops(client, mark) == [11, 27, 27, 13]
        client.release()  # append then revoke: nothing left to commit
        assert dave_fake.dave_state().epoch == 1 and client.epoch == 1
        joining = dave_fake.add_member(CHANNEL)  # the group still works
        client.wait(lambda c: len(c.executed) == 2, "next transition")
        assert client.epoch == dave_fake.dave_state().epoch == 2
        assert leaving not in dave_fake.dave_state().members
        assert joining in dave_fake.dave_state().members
        assert dave_fake.violations == [] and client.errors == []
    finally:
        client.close()
        main.close()


def test_a_commit_libdave_rejects_is_a_violation_and_everyone_recovers(
    dave_fake: FakeDiscord,
) -> None:
    main, client = bot_client(dave_fake)
    try:
        client.handshake()
        client.wait(lambda c: 25 in ops(c), "op 25")
        member = dave_fake.add_member(CHANNEL, commits=False)
        client.wait(lambda c: c.executed, "group created by our commit")
        client.corrupt_next_commit = True  # its membership tag will not verify
        joiner = dave_fake.add_member(CHANNEL)
        assert dave_fake.wait_until(lambda f: f.violations)
        assert "rejected the commit of transition 2" in dave_fake.violations[0]
        # libdave refused it, and so did davey on getting it back: both are re-added by the
        # member that joined by welcome.
        client.wait(lambda c: len(c.executed) == 2, "re-added")
        assert dave_fake.wait_until(lambda f: f.dave_state().transition_id is None)
        state = dave_fake.dave_state()
        assert set(state.invalid_reports) == {(member, 2), (client.user_id, 2)}
        assert set(state.members) == {client.user_id, member, joiner}
        assert client.epoch == state.epoch and client.executed[-1] == state.executed[-1]
        assert client.sent_invalid == [2]
        client.send_opus(b"recovered")
        assert dave_fake.wait_for_frames(1)[0].opus == b"recovered"
        assert len(dave_fake.violations) == 1 and client.errors == []
    finally:
        client.close()
        main.close()

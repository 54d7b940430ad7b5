"""The fake's DAVE role (FakeDiscord(dave=True)) against raw davey clients and libdave members."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest.importorskip("davey")
pytest.importorskip("dave")

from discord_voice.testing import FakeDiscord
from tests.testing.dave_raw_client import (
    CHANNEL,
    bot_client,
    other_client,
)

SECOND_USER = 200000000000000002


@pytest.fixture
def dave_fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(dave=True, dave_listener=False) as running:
        yield running


def test_dave_is_on_by_default_as_on_discord_and_can_be_switched_off() -> None:
    with FakeDiscord() as fake:
        assert fake.dave
    with FakeDiscord(dave=False) as fake:
        assert not fake.dave
        with pytest.raises(RuntimeError, match="DAVE is off"):
            fake.add_member(CHANNEL)


def test_client_joins_by_welcome_and_libdave_decrypts_its_frames(dave_fake: FakeDiscord) -> None:
    member = dave_fake.add_member(CHANNEL)
    main, client = bot_client(dave_fake)
    try:
        assert client.handshake()["dave_protocol_version"] == 1
        client.wait(lambda c: c.executed, "op 22")
        assert client.expected == {member}
        kinds = [(kind, op) for kind, op, _ in client.messages]
        # both are pending: each gets the other's Add; libdave commits first, we join by welcome
        assert kinds == [("json", 11), ("binary", 25), ("binary", 27), ("binary", 30), ("json", 22)]
        state = dave_fake.dave_state()
        assert state.epoch == client.epoch == 1 and set(state.members) == {member, client.user_id}
        assert client.executed == list(state.executed) == [1]

        opus = [os.urandom(40) for _ in range(5)]
        for frame in opus:
            client.send_opus(frame)
        frames = dave_fake.wait_for_frames(5)
        assert [f.opus for f in frames] == opus
        assert all(f.dave == "decrypted" and f.e2ee_payload != f.opus for f in frames)
        assert dave_fake.violations == [] and dave_fake.udp_errors == [] and client.errors == []
    finally:
        client.close()
        main.close()


def test_seq_counts_binary_frames(dave_fake: FakeDiscord) -> None:
    dave_fake.add_member(CHANNEL)
    main, client = bot_client(dave_fake)
    try:
        client.handshake()
        client.wait(lambda c: c.executed, "op 22")
        server = [m for m in dave_fake.voice_messages if m.direction == "server"]
        seqs = []
        for m in server:
            if isinstance(m.raw, bytes):
                seqs.append(int.from_bytes(m.raw[:2], "big"))
            elif m.data is not None and "seq" in m.data:
                seqs.append(m.data["seq"])
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 6
    finally:
        client.close()
        main.close()


def test_max_dave_zero_closes_4017(dave_fake: FakeDiscord) -> None:
    main, client = bot_client(dave_fake, max_dave=0)
    try:
        with pytest.raises(Exception):  # noqa: B017 - the connection is closed under it
            client.handshake()
        assert dave_fake.wait_until(lambda f: f.voice_sessions and f.voice_sessions[0].closed)
        assert dave_fake.voice_sessions[0].close_code == 4017
        assert dave_fake.voice_sessions[0].close_reason.startswith("E2EE/DAVE is required")
        assert client.messages == []
    finally:
        client.close()
        main.close()


@pytest.mark.parametrize("per_channel", [False, True])
def test_stage_channel_needs_no_dave(per_channel: bool) -> None:
    with FakeDiscord(dave=True, stage=not per_channel, dave_listener=False) as fake:
        if per_channel:
            fake.set_stage(CHANNEL)
        main, client = bot_client(fake, max_dave=0)
        try:
            assert client.handshake()["dave_protocol_version"] == 0
            client.send_raw(b"plain opus")
            assert fake.wait_for_frames(1)[0].opus == b"plain opus"
            assert fake.frames()[0].dave == "off"
            assert fake.violations == [] and client.messages == []
        finally:
            client.close()
            main.close()


def test_two_davey_clients_and_a_libdave_member(dave_fake: FakeDiscord) -> None:
    main, first = bot_client(dave_fake)
    second = other_client(dave_fake, SECOND_USER)
    try:
        first.handshake()
        second.handshake()
        # Initial group creation between the two davey clients: one commit wins.
        first.wait(lambda c: c.executed, "first transition")
        second.wait(lambda c: c.executed, "first transition")
        assert first.epoch == second.epoch == 1
        member = dave_fake.add_member(CHANNEL)
        first.wait(lambda c: len(c.executed) == 2, "second transition")
        second.wait(lambda c: len(c.executed) == 2, "second transition")
        assert first.epoch == second.epoch == dave_fake.dave_state().epoch == 2
        assert set(dave_fake.dave_state().members) == {
            fake_id for fake_id in (first.user_id, second.user_id, member)
        }
        a = [first.send_opus(b"first %d" % i) for i in range(3)]
        b = [second.send_opus(b"second %d" % i) for i in range(3)]
        assert len(a) == len(b) == 3
        dave_fake.wait_for_frames(3, ssrc=first.ssrc)
        dave_fake.wait_for_frames(3, ssrc=second.ssrc)
        assert [f.opus for f in dave_fake.frames(first.ssrc)] == [b"first %d" % i for i in range(3)]
        assert [f.opus for f in dave_fake.frames(second.ssrc)] == [
            b"second %d" % i for i in range(3)
        ]
        dave_fake.remove_member(member)
        first.wait(lambda c: len(c.executed) == 3, "removal transition")
        second.wait(lambda c: len(c.executed) == 3, "removal transition")
        assert first.epoch == second.epoch == 3
        assert member not in first.expected
        assert dave_fake.violations == [] and dave_fake.udp_errors == []
        assert first.errors == second.errors == []
    finally:
        first.close()
        second.close()
        main.close()


def test_dave_listener_hosts_a_libdave_member_in_each_channel() -> None:
    with FakeDiscord(dave=True, dave_listener=True) as fake:
        main, client = bot_client(fake)
        try:
            client.handshake()
            client.wait(lambda c: c.executed, "op 22")
            listener = fake.dave_listeners[CHANNEL]
            assert client.expected == {listener}
            assert set(fake.dave_state().members) == {listener, client.user_id}
            client.send_opus(b"heard by the listener")
            assert fake.wait_for_frames(1)[0].opus == b"heard by the listener"
            assert fake.violations == [] and client.errors == []
        finally:
            client.close()
            main.close()

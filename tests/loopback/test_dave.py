"""DAVE end to end: our client (davey) against the fake Discord's DAVE role and libdave members.

The fake plays the MLS external sender and hosts members built on dave-py (Discord's libdave),
and its UDP server DAVE-decrypts what our client sends with libdave, so these tests compare the
plaintext a libdave receiver recovers with what was put on ``opus_send``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from discord_voice import Connection, DaveRequired, Voice, VoiceEventHandler
from discord_voice.core import dave as dave_core
from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing import FakeDiscord
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, MakeWorld, World
from tests.timeouts import LONG, SHORT

pytest.importorskip("dave")

SILENCE = b"\xf8\xff\xfe"


def frames_of(count: int, start: int = 0) -> list[bytes]:
    return [
        opus_frame(bytes([(start + i) % 250 + 1]) * (19 + (start + i) % 200)) for i in range(count)
    ]


def stream(world: World, conn: Connection, frames: list[bytes]) -> None:
    for frame in frames:
        conn.opus_send.put(frame)


def test_alone_the_join_completes_and_frames_wait_for_a_second_member(
    make_world: MakeWorld,
) -> None:
    w: World = make_world(dave=True, dave_listener=False)
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    # a lone member only has a pending group: no key, so nothing may be sent yet
    assert conn.e2ee_active and conn.dave_protocol_version == 1
    assert conn.voice_privacy_code is None
    sent = frames_of(8)  # fewer than the queue holds: put does not block
    stream(w, conn, sent)
    assert not w.fake.wait_until(lambda f: f.frames(ssrc=conn.ssrc), SHORT)  # held, not sent
    w.fake.add_member(CHANNEL)  # someone joins: the group is created, the frames flow
    got = w.fake.wait_for_frames(len(sent), timeout=LONG, ssrc=conn.ssrc)
    assert [f.opus for f in got] == sent and {f.dave for f in got} == {"decrypted"}
    code = conn.voice_privacy_code
    assert code is not None and len(code) == 30 and code.isdigit()
    assert conn.dave_epoch is not None and conn.dave_epoch >= 1
    assert not w.fake.violations and not w.fake.udp_errors  # join time: bench/bench_dave.py
    conn.disconnect()


def test_join_with_a_group_ready_at_once(make_world: MakeWorld) -> None:
    w: World = make_world(dave=True, dave_listener=True)
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert conn.voice_privacy_code is not None  # the group key is there when join returns
    sent = frames_of(40)
    stream(w, conn, sent)
    conn.stop_speaking(timeout=LONG)
    got = w.fake.wait_for_frames(45, timeout=LONG, ssrc=conn.ssrc)
    assert [f.opus for f in got] == sent + [SILENCE] * 5
    assert {f.dave for f in got[:40]} == {"decrypted"}
    assert not w.fake.violations and not w.fake.udp_errors
    conn.disconnect()


def test_joining_where_a_libdave_member_already_is(make_world: MakeWorld) -> None:
    w: World = make_world(dave=True)
    member = w.fake.add_member(CHANNEL)
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)  # we join by welcome
    assert conn.e2ee_active
    assert len(conn.verification_code(member)) == 45
    sent = frames_of(30)
    stream(w, conn, sent)
    got = w.fake.wait_for_frames(30, timeout=LONG, ssrc=conn.ssrc)
    assert [f.opus for f in got] == sent
    assert not w.fake.violations and not w.fake.udp_errors
    conn.disconnect()


def test_members_joining_and_leaving_mid_stream_lose_no_frame(make_world: MakeWorld) -> None:
    w: World = make_world(dave=True, dave_listener=True)
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    first_epoch = conn.dave_epoch
    sent: list[bytes] = []

    def play(n: int) -> None:
        batch = frames_of(n, start=len(sent))
        sent.extend(batch)
        stream(w, conn, batch)

    play(15)
    member = w.fake.add_member(CHANNEL)  # epoch change while frames are queued
    play(15)
    w.fake.wait_until(lambda f: f.dave_state(CHANNEL).epoch > (first_epoch or 0), LONG)
    play(15)
    w.fake.remove_member(member)  # and another
    play(15)
    got = w.fake.wait_for_frames(len(sent), timeout=LONG, ssrc=conn.ssrc)
    assert [f.opus for f in got] == sent  # every frame decrypted by libdave, in order
    assert not w.fake.violations and not w.fake.udp_errors
    conn.disconnect()


class SecondBot:
    """A `MainGateway` for a second bot user, served by the fake's `issue_voice` (no websocket)."""

    def __init__(self, fake: FakeDiscord, user_id: int) -> None:
        self._fake = fake
        self.user_id = user_id
        self._handlers: list[VoiceEventHandler] = []

    def add_voice_handler(self, handler: VoiceEventHandler) -> Callable[[], None]:
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler)

    def update_voice_state(
        self, guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None:
        if channel_id is None:
            return
        issued = self._fake.issue_voice(int(guild_id), int(channel_id), self.user_id)
        for handler in self._handlers:
            handler.on_voice_state_update(
                {
                    "guild_id": guild_id,
                    "channel_id": channel_id,
                    "user_id": str(self.user_id),
                    "session_id": issued.session_id,
                }
            )
            handler.on_voice_server_update(
                {"guild_id": guild_id, "token": issued.token, "endpoint": self._fake.voice_endpoint}
            )


def test_two_of_our_clients_and_a_libdave_member(make_world: MakeWorld) -> None:
    w: World = make_world(dave=True)  # a libdave listener stays in the channel throughout
    member = w.fake.add_member(CHANNEL)  # and a second libdave member comes and goes
    conn_a = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    other = Voice(SecondBot(w.fake, 300000000000000003))
    conn_b = other.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert w.fake.wait_until(lambda f: conn_a.dave_epoch == conn_b.dave_epoch, LONG)
    assert conn_a.voice_privacy_code == conn_b.voice_privacy_code
    a, b = frames_of(60), frames_of(60, start=100)
    epoch = conn_a.dave_epoch or 0
    for step in range(6):  # both stream while the group changes twice under them
        stream(w, conn_a, a[step * 10 : (step + 1) * 10])
        stream(w, conn_b, b[step * 10 : (step + 1) * 10])
        if step == 1:
            w.fake.remove_member(member)
        elif step == 3:
            w.fake.add_member(CHANNEL)
    assert [f.opus for f in w.fake.wait_for_frames(60, timeout=LONG, ssrc=conn_a.ssrc)] == a
    assert [f.opus for f in w.fake.wait_for_frames(60, timeout=LONG, ssrc=conn_b.ssrc)] == b
    assert (conn_a.dave_epoch or 0) > epoch + 1
    assert not w.fake.violations and not w.fake.udp_errors
    conn_b.disconnect()
    conn_a.disconnect()


def test_invalid_commit_recovers_with_op_31(make_world: MakeWorld) -> None:
    w: World = make_world(dave=True, dave_listener=True)
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    w.fake.send_invalid_commit(CHANNEL)
    w.fake.add_member(CHANNEL)  # the next commit announcement is garbage
    assert w.fake.wait_until(
        lambda f: any(
            m.op == VoiceOp.DAVE_MLS_INVALID_COMMIT_WELCOME and m.direction == "client"
            for m in f.voice_messages
        ),
        LONG,
    )
    sent = frames_of(20)
    stream(w, conn, sent)  # held while the group is rebuilt, then sent, never in plaintext
    got = w.fake.wait_for_frames(20, timeout=LONG, ssrc=conn.ssrc)
    assert [f.opus for f in got] == sent
    assert conn.error is None and not w.fake.udp_errors
    conn.disconnect()


def test_downgrade_and_upgrade(make_world: MakeWorld) -> None:
    w: World = make_world(dave=True, dave_listener=True)
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert w.fake.wait_until(  # the server's group is settled (no transition in flight)
        lambda f: f.dave_state(CHANNEL).epoch >= 1 and f.dave_state(CHANNEL).transition_id is None,
        LONG,
    )
    w.fake.downgrade(CHANNEL)
    assert conn.wait_for_e2ee(LONG, encrypted=False)  # our side executed the downgrade
    assert not conn.e2ee_active and conn.dave_protocol_version == 0
    plain, secret = opus_frame(b"plain"), opus_frame(b"secret")
    stream(w, conn, [plain])
    assert w.fake.wait_for_frames(1, timeout=LONG, ssrc=conn.ssrc)[-1].opus == plain
    w.fake.upgrade(CHANNEL)
    assert conn.wait_for_e2ee(LONG)  # our side executed the upgrade transition
    stream(w, conn, [secret])
    assert w.fake.wait_for_frames(2, timeout=LONG, ssrc=conn.ssrc)[-1].opus == secret
    assert conn.e2ee_active and not w.fake.violations
    conn.disconnect()


def test_stage_channel_has_no_dave(make_world: MakeWorld) -> None:
    w: World = make_world(dave=True, stage=True)
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert not conn.e2ee_active and conn.dave_protocol_version == 0
    conn.disconnect()


def test_a_client_without_dave_gets_the_typed_4017_error(
    make_world: MakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("discord_voice.voice.supported_protocol_version", lambda: 0)
    w: World = make_world(dave=True)
    with pytest.raises(DaveRequired) as info:
        w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert info.value.code == 4017 and "requires DAVE" in str(info.value)
    assert dave_core.supported_protocol_version() == 1

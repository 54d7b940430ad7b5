"""End to end on loopback: Gateway + Voice + Connection against the fake Discord.

The fake decrypts with `cryptography`/`pycryptodome` and parses RTP itself, so these tests check
our bytes against an independent implementation of the server side.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import os
import random
import threading
import time
from dataclasses import replace

import pytest

from discord_voice import (
    Connection,
    ConnectionClosed,
    DaveRequired,
    Disconnected,
    InvalidFrame,
    JoinTimeout,
    SpeakingFlag,
    UnsupportedEncryptionMode,
    VoiceGatewayClosed,
    default_voice_plan,
)
from discord_voice.core import crypto
from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20, GatewayOp, VoiceOp
from discord_voice.testing import FakeDiscord
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, MakeWorld, World
from tests.timeouts import LONG

SILENCE = b"\xf8\xff\xfe"


def frames_of(count: int) -> list[bytes]:
    """Distinct frames of varying sizes (1..400 bytes) so reordering or truncation shows."""
    return [opus_frame(os.urandom((i * 37) % 400)) for i in range(count)]


def client_ops(fake: FakeDiscord, op: int) -> list[dict[str, object]]:
    """The ``d`` of every voice message the client sent with opcode `op`."""
    return [
        m.data["d"]
        for m in fake.voice_messages
        if m.direction == "client" and m.op == op and m.data is not None
    ]


def main_ops(fake: FakeDiscord, op: int) -> list[dict[str, object]]:
    """The ``d`` of every main-gateway message the client sent with opcode `op`."""
    return [
        m.data["d"]
        for m in fake.main_messages
        if m.direction == "client" and m.op == op and m.data is not None
    ]


def left(fake: FakeDiscord) -> bool:
    return any(d["channel_id"] is None for d in main_ops(fake, GatewayOp.VOICE_STATE_UPDATE))


@pytest.mark.parametrize("mode", [MODE_AES256_GCM, MODE_XCHACHA20])
def test_stream_arrives_exactly_once_in_order_byte_identical(
    make_world: MakeWorld, mode: str
) -> None:
    if mode == MODE_AES256_GCM and not crypto.aes256_gcm_available():
        pytest.skip("this CPU has no AES-256-GCM in libsodium")
    w: World = make_world(modes=(mode,))
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert conn.mode == mode
    conn.speaking(SpeakingFlag.MICROPHONE)
    sent = frames_of(60)
    for frame in sent:
        conn.opus_send.put(frame)
    conn.stop_speaking(timeout=LONG)
    got = w.fake.wait_for_frames(len(sent) + 5, timeout=LONG, ssrc=conn.ssrc)

    assert [f.opus for f in got] == sent + [SILENCE] * 5
    assert {f.ssrc for f in got} == {conn.ssrc} and {f.mode for f in got} == {mode}
    for a, b in itertools.pairwise(got):
        assert b.sequence == (a.sequence + 1) % 2**16
        assert b.timestamp == (a.timestamp + 960) % 2**32
        assert b.nonce == (a.nonce + 1) % 2**32
    # Speaking (op 5, with our ssrc and delay 0) announced the SSRC; the exact ordering against
    # the first packet is asserted in tests/shell/test_udp_sender.py (the fake reads the
    # websocket and UDP on different threads, and flags audio without a prior Speaking).
    assert w.fake.wait_until(lambda f: len(client_ops(f, VoiceOp.SPEAKING)) == 2, LONG)
    assert client_ops(w.fake, VoiceOp.SPEAKING) == [
        {"speaking": 1, "delay": 0, "ssrc": conn.ssrc},
        {"speaking": 0, "delay": 0, "ssrc": conn.ssrc},  # after stop_speaking's silence
    ]
    stats = conn.stats
    assert stats.frames_sent == len(sent) + 5 and stats.frames_discarded == 0
    conn.disconnect()
    assert not w.fake.violations and not w.fake.udp_errors


def test_identify_and_select_protocol_are_what_discord_expects(world: World) -> None:
    conn = world.voice.join_channel(str(GUILD), str(CHANNEL), self_deaf=True, timeout=LONG)
    assert main_ops(world.fake, GatewayOp.VOICE_STATE_UPDATE) == [
        {"guild_id": str(GUILD), "channel_id": str(CHANNEL), "self_mute": False, "self_deaf": True}
    ]
    session = world.fake.voice_sessions[-1]
    identify = client_ops(world.fake, VoiceOp.IDENTIFY)[0]
    assert identify == {
        "server_id": str(GUILD),
        "user_id": str(world.fake.user_id),
        "session_id": session.session_id,
        "token": identify["token"],
        "max_dave_protocol_version": 1,
    }
    select = client_ops(world.fake, VoiceOp.SELECT_PROTOCOL)[0]
    assert select["protocol"] == "udp"
    assert session.client_address is not None
    assert select["data"] == {
        "address": session.client_address[0],
        "port": session.client_address[1],
        "mode": conn.mode,
    }
    assert conn.ssrc == session.ssrc
    conn.disconnect()


def test_disconnect_sends_leave_closes_everything_and_is_idempotent(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def leave() -> None:
        barrier.wait(LONG)
        try:
            conn.disconnect()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=leave, name=f"fake-leaver-{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LONG)
    assert errors == []
    conn.disconnect()  # once more, from here
    assert world.fake.wait_until(left, LONG)
    leaves = [
        d for d in main_ops(world.fake, GatewayOp.VOICE_STATE_UPDATE) if d["channel_id"] is None
    ]
    assert leaves == [
        {"guild_id": str(GUILD), "channel_id": None, "self_mute": False, "self_deaf": False}
    ]
    assert world.fake.wait_until(lambda f: f.voice_sessions[-1].closed, LONG)
    assert world.fake.voice_sessions[-1].close_code == 1000
    assert world.fake.voice_sessions[-1].closed_by == "client"
    assert not [
        t
        for t in threading.enumerate()
        if t.name.startswith("dv-voice") or t.name.startswith("dv-udp")
    ]
    with pytest.raises(ConnectionClosed):
        conn.opus_send.put(opus_frame(b"\x01"))
    with pytest.raises(ConnectionClosed):
        conn.speaking()
    conn.wait(timeout=LONG)  # a user-initiated close is not an error
    assert world.voice.connection(GUILD) is None


def confirmed_leaves(fake: FakeDiscord) -> list[dict[str, object]]:
    """The VOICE_STATE_UPDATE dispatches with no channel that the fake sent (leave confirmed)."""
    return [
        m.data["d"]
        for m in fake.main_messages
        if m.direction == "server"
        and m.data
        and m.data.get("t") == "VOICE_STATE_UPDATE"
        and m.data["d"]["channel_id"] is None
    ]


def test_disconnect_returns_once_discord_confirmed_the_leave(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    conn.disconnect()
    assert len(confirmed_leaves(world.fake)) == 1  # already sent: disconnect waited for it


def test_disconnect_without_confirmation_is_still_bounded(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    world.fake.withhold("voice_state_update")
    started = time.perf_counter()
    conn.disconnect(timeout=0.3)
    assert time.perf_counter() - started < LONG  # bounded (a wait for the leave would not be)
    assert confirmed_leaves(world.fake) == []


def test_disconnect_waits_for_the_leave_of_an_end_already_under_way(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection fails on a library thread, which is still telling the Voice (and sending
    # the leave) when the user disconnects: disconnect must wait for that leave's confirmation
    # too, or an immediate rejoin races it.
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    entered, release = threading.Event(), threading.Event()
    leaves: list[concurrent.futures.Future[None] | None] = []
    tell_owner = world.voice.connection_ended

    def slow(connection: Connection, *, leave: bool) -> concurrent.futures.Future[None] | None:
        entered.set()
        assert release.wait(LONG)
        leaves.append(tell_owner(connection, leave=leave))
        return leaves[-1]

    monkeypatch.setattr(world.voice, "connection_ended", slow)
    world.fake.close_voice(4004, "authentication failed")  # fatal: the connection ends
    assert entered.wait(LONG)
    confirmed_on_return: list[bool] = []

    def disconnect() -> None:
        conn.disconnect(timeout=LONG)
        confirmed_on_return.append(leaves[0] is not None and leaves[0].done())

    user = threading.Thread(target=disconnect, name="test-disconnect")
    user.start()
    release.set()
    user.join(LONG)
    assert confirmed_on_return == [True]
    assert len(confirmed_leaves(world.fake)) == 1


def test_rejoining_the_same_channel_returns_the_live_connection(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert world.voice.join_channel(str(GUILD), CHANNEL, timeout=LONG) is conn
    conn.disconnect()
    again = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)  # a closed one is not reused
    assert again is not conn and again.state.value == "ready"
    frame = opus_frame(b"second life")
    again.opus_send.put(frame)
    assert world.fake.wait_for_frames(1, timeout=LONG, ssrc=again.ssrc)[0].opus == frame
    again.disconnect()


def test_joining_another_channel_moves_the_connection(world: World) -> None:
    first = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    old, new = opus_frame(b"old"), opus_frame(b"new")
    first.opus_send.put(old)
    old_ssrc = first.ssrc
    assert world.fake.wait_for_frames(1, timeout=LONG, ssrc=old_ssrc)[0].opus == old
    second = world.voice.join_channel(GUILD, CHANNEL + 1, timeout=LONG)
    assert second is first and second.channel_id == str(CHANNEL + 1)
    assert second.reconnects == 1 and second.ssrc != old_ssrc
    second.opus_send.put(new)  # the same queue goes on, into the new session
    assert world.fake.wait_for_frames(1, timeout=LONG, ssrc=second.ssrc)[0].opus == new
    assert world.voice.connection(GUILD) is second
    joins = [
        m.data["d"]["channel_id"]
        for m in world.fake.main_messages
        if m.direction == "client" and m.op == 4 and m.data is not None
    ]
    assert joins == [str(CHANNEL), str(CHANNEL + 1)]  # a move, not a leave and a rejoin
    second.disconnect()


@pytest.mark.parametrize("order", ["state_first", "server_first"])
@pytest.mark.parametrize("hello_first", [True, False])
def test_event_orders(make_world: MakeWorld, order: str, hello_first: bool) -> None:
    w: World = make_world(event_order=order, voice_hello_first=hello_first)
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    conn.opus_send.put(opus_frame(b"\x01\x02"))  # no explicit speaking(): the sender announces it
    assert w.fake.wait_for_frames(1, timeout=LONG)[0].opus == opus_frame(b"\x01\x02")
    assert w.fake.wait_until(lambda f: client_ops(f, VoiceOp.SPEAKING), LONG)
    assert client_ops(w.fake, VoiceOp.SPEAKING)[0]["speaking"] == 1
    conn.disconnect()


def test_aes_gcm_unavailable_falls_back_to_xchacha(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crypto, "available_modes", lambda: (MODE_XCHACHA20,))
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert conn.mode == MODE_XCHACHA20
    conn.opus_send.put(opus_frame(b"abc"))
    assert world.fake.wait_for_frames(1, timeout=LONG)[0].mode == MODE_XCHACHA20
    conn.disconnect()


def test_no_common_mode_is_a_clear_error(make_world: MakeWorld) -> None:
    w: World = make_world(modes=("xsalsa20_poly1305", "xsalsa20_poly1305_lite"))
    with pytest.raises(UnsupportedEncryptionMode) as info:
        w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert info.value.offered == ("xsalsa20_poly1305", "xsalsa20_poly1305_lite")
    assert "xsalsa20_poly1305_lite" in str(info.value)
    assert w.voice.connection(GUILD) is None


@pytest.mark.parametrize(
    "stage",
    [
        "voice_state_update",
        "voice_server_update",
        "hello",
        "ready",
        "ip_discovery",
        "session_description",
    ],
)
def test_join_timeout_names_the_stage_and_leaves(world: World, stage: str) -> None:
    world.fake.withhold(stage)
    with pytest.raises(JoinTimeout) as info:
        world.voice.join_channel(GUILD, CHANNEL, timeout=0.5)
    assert info.value.stage == stage and stage in str(info.value)
    assert isinstance(info.value, TimeoutError)
    # the bot does not stay in the channel after a failed join
    assert world.fake.wait_until(left, LONG)
    assert world.voice.connection(GUILD) is None


@pytest.mark.parametrize(
    ("op", "code"),
    [(VoiceOp.IDENTIFY, 4006), (VoiceOp.IDENTIFY, 4004), (VoiceOp.SELECT_PROTOCOL, 4017)],
)
def test_close_during_join_raises_the_close_code(world: World, op: int, code: int) -> None:
    world.fake.close_voice_on(op, code, "scripted")
    with pytest.raises(VoiceGatewayClosed) as info:
        world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert info.value.code == code
    if code == 4017:
        assert isinstance(info.value, DaveRequired) and "requires DAVE" in str(info.value)


def test_voice_server_closing_mid_stream_reaches_the_producer(make_world: MakeWorld) -> None:
    plan = replace(default_voice_plan(), move_timeout=0.2)
    world = make_world(voice_options={"reconnect_plan": plan})
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    conn.opus_send.put(opus_frame(b"one"))
    world.fake.wait_for_frames(1, timeout=LONG)
    world.fake.close_voice(4014, "kicked")  # no new server follows: the connection ends
    with pytest.raises(Disconnected) as info:
        conn.wait(timeout=LONG)
    assert (info.value.why, info.value.code) == ("not_moved", 4014)
    with pytest.raises(Disconnected):
        conn.opus_send.put(opus_frame(b"two"))
    assert conn.error is info.value


@pytest.mark.parametrize("fault", ["close_4015", "drop"])
def test_the_voice_websocket_is_resumed_without_losing_a_frame(world: World, fault: str) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    changes: list[tuple[str, str, object]] = []
    conn.add_state_listener(lambda old, new, why: changes.append((old.value, new.value, why)))
    sent = frames_of(40)
    for frame in sent[:20]:
        conn.opus_send.put(frame)
    if fault == "drop":
        world.fake.drop_voice()
    else:
        world.fake.close_voice(4015, "voice server crashed")
    for frame in sent[20:]:
        conn.opus_send.put(frame)
    got = world.fake.wait_for_frames(40, timeout=LONG, ssrc=conn.ssrc)
    assert [f.opus for f in got] == sent  # UDP kept going: same SSRC, key and sequence
    session = world.fake.voice_sessions[0]
    assert world.fake.wait_until(lambda f: session.resumes == 1, LONG)
    for a, b in itertools.pairwise(got):
        assert b.sequence == (a.sequence + 1) % 2**16
    after = opus_frame(b"after")
    conn.opus_send.put(after)
    assert world.fake.wait_for_frames(41, timeout=LONG, ssrc=conn.ssrc)[-1].opus == after
    assert conn.error is None and not world.fake.violations
    conn.disconnect()
    assert conn.resumes == 1
    assert [(old, new) for old, new, _ in changes] == [
        ("ready", "resuming"),
        ("resuming", "ready"),
        ("ready", "closed"),
    ]
    assert isinstance(changes[0][2], VoiceGatewayClosed) and changes[-1][2] is None


def test_a_state_listener_that_raises_ends_the_connection_loudly(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)

    def broken(old: object, new: object, why: object) -> None:
        raise RuntimeError("listener bug")

    conn.add_state_listener(broken)
    world.fake.close_voice(4015, "crash")  # READY -> RESUMING calls the listener
    with pytest.raises(ConnectionClosed) as info:
        conn.wait(timeout=LONG)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_bad_items_are_rejected_and_the_stream_goes_on(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    # not bytes, empty, too long for Opus, a 2.5 ms packet, a code-3 packet of 0 frames
    for bad in ("text", None, b"", b"\x00" * 5000, 42, b"\xe0abc", b"\xfb\x00"):
        with pytest.raises(InvalidFrame):
            conn.opus_send.put(bad)
    conn.opus_send.put(opus_frame(b"good"))
    assert world.fake.wait_for_frames(1, timeout=LONG)[0].opus == opus_frame(b"good")
    assert conn.error is None
    conn.disconnect()


def test_malformed_and_unknown_server_messages_are_survived(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    world.fake.send_voice({"op": 18, "d": {"flags": 3}})
    world.fake.send_voice({"op": 2, "d": {"ssrc": "x"}})  # malformed and out of order
    world.fake.send_voice({"op": 99})
    conn.opus_send.put(opus_frame(b"still-alive"))
    assert world.fake.wait_for_frames(1, timeout=LONG)[0].opus == opus_frame(b"still-alive")
    assert conn.error is None
    conn.disconnect()
    stats = conn.stats
    assert stats.ignored_messages >= 2 and stats.malformed_messages >= 1


def test_secrets_never_reach_logs_reprs_or_errors(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    w: World = make_world(token="Bot.SECRET-BOT-TOKEN.xyz")
    conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    conn.opus_send.put(opus_frame(b"x"))
    w.fake.wait_for_frames(1, timeout=LONG)
    session = w.fake.voice_sessions[-1]
    voice_token = client_ops(w.fake, VoiceOp.IDENTIFY)[0]["token"]

    def library_logs() -> str:  # the fake's own logs are not the library's
        return "\n".join(
            r.getMessage() for r in caplog.records if not r.name.startswith("discord_voice.testing")
        )

    texts = [library_logs(), repr(conn), repr(w.voice), repr(w.gateway), repr(conn.stats)]
    w.fake.close_voice(4006, "bye")  # a full reconnect: new session, token and key
    assert w.fake.wait_until(lambda f: conn.reconnects == 1, LONG)
    new = w.fake.voice_sessions[-1]
    texts += [repr(conn), repr(conn._sessions.link), library_logs()]
    w.fake.close_voice(4004, "bye")  # fatal
    with pytest.raises(VoiceGatewayClosed) as info:
        conn.wait(timeout=LONG)
    texts += [str(info.value), repr(info.value), library_logs()]
    assert session.secret_key is not None and session.session_id is not None
    secrets = [
        "SECRET-BOT-TOKEN",
        str(voice_token),
        session.session_id,
        session.secret_key.hex(),
        str(list(session.secret_key))[1:-1],
    ]
    assert new.secret_key is not None and new.session_id is not None
    secrets += [new.session_id, new.secret_key.hex(), str(client_ops(w.fake, 0)[-1]["token"])]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_garbage_from_the_voice_server_is_survived_and_counted(world: World) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    rng = random.Random(1234)
    values = [None, True, -1, 2**70, 1.5, "x", [], {}, {"ssrc": "x"}, [1, 2], "\u2603"]
    for _ in range(40):
        kind = rng.randrange(4)
        if kind == 0:  # JSON of the right envelope with garbage inside, any opcode
            world.fake.send_voice_raw(
                json.dumps({"op": rng.randrange(40), "d": rng.choice(values), "seq": 10**9})
            )
        elif kind == 1:  # not JSON at all
            world.fake.send_voice_raw("".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(20)))
        elif kind == 2:  # binary frames of any length, including shorter than the prefix
            world.fake.send_voice_raw(rng.randbytes(rng.randrange(0, 40)))
        else:  # JSON that is not an object
            world.fake.send_voice_raw(json.dumps(rng.choice(values)))
    world.fake.send_voice_raw("{" + " " * 300_000 + "}")  # big, still under the size limit
    frame = opus_frame(b"still here")
    conn.opus_send.put(frame)
    assert world.fake.wait_for_frames(1, timeout=LONG, ssrc=conn.ssrc)[0].opus == frame
    conn.disconnect()  # the reader has handled every message before the close
    assert conn.error is None
    assert conn.stats.malformed_messages + conn.stats.ignored_messages >= 20

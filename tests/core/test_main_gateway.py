"""The main gateway's sans-I/O core: payloads, events, session state, heartbeat and pacing."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core.main_gateway import (
    DEFAULT_GATEWAY_URL,
    Dispatch,
    GatewaySession,
    HeartbeatAck,
    HeartbeatRequest,
    Hello,
    InvalidSession,
    Payload,
    Ready,
    Reconnect,
    UnknownOp,
    decode_payload,
    describe_gateway_close,
    encode_payload,
    heartbeat_payload,
    identify_payload,
    normalize_gateway_url,
    parse_event,
    voice_state_update_payload,
)
from discord_voice.core.main_gateway_timing import HeartbeatSchedule, SendRateLimiter
from discord_voice.errors import LocalProtocolError, RemoteProtocolError

TOKEN = "MTIzNDU2Nzg5.core-secret-token"
READY_DATA = {
    "v": 10,
    "user": {"id": "80351110224678912", "username": "bot"},
    "guilds": [],
    "session_id": "abc",
    "resume_gateway_url": "wss://resume.example/",
}


def wire(op: int, d: Any = None, s: int | None = None, t: str | None = None) -> str:
    return json.dumps({"op": op, "d": d, "s": s, "t": t})


# --- urls -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        (None, "wss://gateway.discord.gg/?v=10&encoding=json"),
        ("wss://gateway.discord.gg", "wss://gateway.discord.gg/?v=10&encoding=json"),
        ("wss://gateway.discord.gg/", "wss://gateway.discord.gg/?v=10&encoding=json"),
        ("ws://127.0.0.1:5000", "ws://127.0.0.1:5000/?v=10&encoding=json"),
        ("wss://example.com/gw", "wss://example.com/gw?v=10&encoding=json"),
        ("wss://example.com/?v=9&encoding=json", "wss://example.com/?v=9&encoding=json"),
        ("wss://example.com/?", "wss://example.com/?v=10&encoding=json"),
    ],
)
def test_normalize_gateway_url(given_url: str | None, expected: str) -> None:
    assert normalize_gateway_url(given_url) == expected


def test_default_url_is_v10_json() -> None:
    assert DEFAULT_GATEWAY_URL == "wss://gateway.discord.gg/?v=10&encoding=json"


@pytest.mark.parametrize(
    "bad", ["https://gateway.discord.gg", "gateway.discord.gg", "wss://", "ws://[::1"]
)
def test_normalize_rejects_non_websocket_urls(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        normalize_gateway_url(bad)


# --- payload codec ----------------------------------------------------------------------------


def test_encode_is_compact_json() -> None:
    assert encode_payload(1, None) == '{"op":1,"d":null}'
    assert heartbeat_payload(None) == '{"op":1,"d":null}'
    assert heartbeat_payload(42) == '{"op":1,"d":42}'


@given(
    op=st.integers(1, 50),  # op 0 (dispatch) needs a "t", which clients never send
    d=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    ),
)
def test_encode_decode_round_trip(op: int, d: Any) -> None:
    assert decode_payload(encode_payload(op, d)) == Payload(op=op, d=d)
    assert decode_payload(encode_payload(op, d).encode()) == Payload(op=op, d=d)


def test_encode_refuses_payloads_over_4096_bytes() -> None:
    fits = encode_payload(4, "x" * (4096 - len('{"op":4,"d":""}')))
    assert len(fits.encode()) == 4096
    with pytest.raises(LocalProtocolError, match="4097 bytes"):
        encode_payload(4, "x" * (4097 - len('{"op":4,"d":""}')))
    with pytest.raises(LocalProtocolError):  # measured in UTF-8 bytes, not characters
        encode_payload(4, "é" * 2100)


def test_encode_refuses_non_json_without_echoing_the_data() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_payload(2, {"token": TOKEN, "bad": object()})
    assert TOKEN not in str(info.value)
    with pytest.raises(LocalProtocolError):
        encode_payload(1, float("nan"))


def test_decode_keeps_dispatch_fields() -> None:
    payload = decode_payload(wire(0, {"a": 1}, 7, "GUILD_CREATE"))
    assert payload == Payload(op=0, d={"a": 1}, s=7, t="GUILD_CREATE")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "{",
        "not json",
        "[]",
        "42",
        "null",
        '"text"',
        b"\xff\xfe",
        '{"d": null}',
        '{"op": "1"}',
        '{"op": true}',
        '{"op": 1.5}',
        '{"op": 0, "d": {}, "s": 1}',
        '{"op": 0, "t": 5, "s": 1}',
        '{"op": 0, "t": "X", "s": "1"}',
        '{"op": 0, "t": "X", "s": true}',
        "[" * 100000,
    ],
)
def test_decode_rejects_malformed_messages(raw: str | bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_payload(raw)


# --- events -----------------------------------------------------------------------------------


def test_parse_every_handled_opcode() -> None:
    assert parse_event(decode_payload(wire(10, {"heartbeat_interval": 41250}))) == Hello(41.25)
    assert parse_event(decode_payload(wire(1))) == HeartbeatRequest()
    assert parse_event(decode_payload(wire(11))) == HeartbeatAck()
    assert parse_event(decode_payload(wire(7))) == Reconnect()
    assert parse_event(decode_payload(wire(9, False))) == InvalidSession(resumable=False)
    assert parse_event(decode_payload(wire(9, True))) == InvalidSession(resumable=True)
    assert parse_event(decode_payload(wire(9, "yes"))) == InvalidSession(resumable=False)
    assert parse_event(decode_payload(wire(42, {"x": 1}))) == UnknownOp(op=42)


def test_parse_ready_pulls_out_the_session_fields() -> None:
    event = parse_event(decode_payload(wire(0, READY_DATA, 1, "READY")))
    assert isinstance(event, Ready) and isinstance(event, Dispatch)
    assert (event.name, event.seq, event.user_id) == ("READY", 1, 80351110224678912)
    assert (event.session_id, event.resume_gateway_url) == ("abc", "wss://resume.example/")
    assert event.data == READY_DATA


def test_parse_dispatch_with_null_data_gives_an_empty_mapping() -> None:
    event = parse_event(decode_payload(wire(0, None, 3, "RESUMED")))
    assert event == Dispatch(name="RESUMED", seq=3, data={})


@pytest.mark.parametrize(
    "hello",
    [
        None,
        {},
        {"heartbeat_interval": 0},
        {"heartbeat_interval": -5},
        {"heartbeat_interval": True},
        {"heartbeat_interval": "41250"},
        [41250],
    ],
)
def test_parse_rejects_bad_hello(hello: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_event(decode_payload(wire(10, hello)))


@pytest.mark.parametrize(
    "change",
    [
        {"user": None},
        {"user": {}},
        {"user": {"id": 123}},
        {"user": {"id": "12a"}},
        {"session_id": None},
        {"session_id": ""},
        {"resume_gateway_url": 5},
    ],
)
def test_parse_rejects_bad_ready(change: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_event(decode_payload(wire(0, {**READY_DATA, **change}, 1, "READY")))


def test_parse_rejects_dispatch_data_that_is_not_an_object() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_event(decode_payload(wire(0, [1, 2], 1, "VOICE_STATE_UPDATE")))


def test_event_reprs_leave_out_the_data() -> None:
    data = {"token": "voice-secret", "guild_id": "1", "endpoint": "x"}
    event = parse_event(decode_payload(wire(0, data, 2, "VOICE_SERVER_UPDATE")))
    assert "voice-secret" not in repr(event)
    assert "voice-secret" not in repr(decode_payload(wire(0, data, 2, "VOICE_SERVER_UPDATE")))


# --- session ----------------------------------------------------------------------------------


def test_session_identify_payload() -> None:
    session = GatewaySession(TOKEN, 129)
    assert json.loads(session.identify()) == {
        "op": 2,
        "d": {
            "token": TOKEN,
            "intents": 129,
            "properties": {
                "os": sys.platform,
                "browser": "discord-voice",
                "device": "discord-voice",
            },
        },
    }
    custom = identify_payload(TOKEN, 1, {"os": "x", "browser": "b", "device": "d"})
    assert json.loads(custom)["d"]["properties"] == {"os": "x", "browser": "b", "device": "d"}


def test_session_tracks_seq_and_ready_fields() -> None:
    session = GatewaySession(TOKEN, 129)
    assert session.heartbeat() == '{"op":1,"d":null}'
    session.receive(wire(10, {"heartbeat_interval": 1000}))
    assert session.seq is None
    session.receive(wire(0, READY_DATA, 1, "READY"))
    assert (session.user_id, session.session_id) == (80351110224678912, "abc")
    assert session.resume_gateway_url == "wss://resume.example/"
    session.receive(wire(0, {}, 5, "GUILD_CREATE"))
    session.receive(wire(11))  # non-dispatch payloads do not touch seq
    session.receive(wire(0, {}, None, "ODD"))  # a null s keeps the last one
    assert session.seq == 5
    assert session.heartbeat() == '{"op":1,"d":5}'


def test_session_never_shows_the_token() -> None:
    session = GatewaySession(TOKEN, 129)
    assert TOKEN not in repr(session) and TOKEN not in str(session)
    assert session.redact(f"reason mentions {TOKEN}!") == "reason mentions [redacted]!"
    with pytest.raises(LocalProtocolError):
        GatewaySession("  ", 129)


def test_session_receive_raises_only_remote_protocol_errors() -> None:
    session = GatewaySession(TOKEN, 129)
    with pytest.raises(RemoteProtocolError):
        session.receive(b'{"op": 0, "t": "READY", "s": 1, "d": {}}')
    assert session.seq is None and session.user_id is None


def test_voice_state_update_payload() -> None:
    text = voice_state_update_payload("41771983423143937", None, self_mute=False, self_deaf=True)
    assert json.loads(text) == {
        "op": 4,
        "d": {
            "guild_id": "41771983423143937",
            "channel_id": None,
            "self_mute": False,
            "self_deaf": True,
        },
    }
    moved = voice_state_update_payload("1", "2", self_mute=True, self_deaf=False)
    assert json.loads(moved)["d"]["channel_id"] == "2"


@pytest.mark.parametrize(
    ("guild", "channel", "mute"),
    [
        ("", None, False),
        ("12a", None, False),
        (12, None, False),
        ("1", "x", False),
        ("1", 2, False),
        ("1", None, 1),
        ("١٢", None, False),
    ],
)
def test_voice_state_update_rejects_bad_arguments(guild: Any, channel: Any, mute: Any) -> None:
    with pytest.raises(LocalProtocolError):
        voice_state_update_payload(guild, channel, self_mute=mute, self_deaf=False)


# --- heartbeat schedule -----------------------------------------------------------------------


def test_first_beat_waits_interval_times_jitter() -> None:
    assert HeartbeatSchedule(41.25, now=1000.0, jitter=0.0).next_due == 1000.0
    assert HeartbeatSchedule(41.25, now=1000.0, jitter=0.5).next_due == 1000.0 + 20.625
    with pytest.raises(ValueError):
        HeartbeatSchedule(41.25, now=0.0, jitter=1.0)
    with pytest.raises(ValueError):
        HeartbeatSchedule(0.0, now=0.0, jitter=0.5)


def test_beats_follow_a_fixed_grid_and_acks_give_latency() -> None:
    hb = HeartbeatSchedule(10.0, now=0.0, jitter=0.2)
    assert hb.latency is None and not hb.is_zombie(2.0)
    hb.on_sent(2.3)  # sent a little late: the grid does not drift
    assert hb.next_due == 12.0
    assert hb.on_ack(2.55) == pytest.approx(0.25)
    assert hb.latency == pytest.approx(0.25)
    assert hb.on_ack(3.0) is None  # unsolicited ACK changes nothing
    assert hb.latency == pytest.approx(0.25)
    assert not hb.is_zombie(12.0)
    hb.on_sent(12.0)
    assert hb.next_due == 22.0 and hb.beats_sent == 2


def test_zombie_when_the_next_beat_is_due_without_an_ack() -> None:
    hb = HeartbeatSchedule(10.0, now=0.0, jitter=0.0)
    hb.on_sent(0.0)
    assert not hb.is_zombie(9.999)
    assert hb.is_zombie(10.0)
    hb.on_ack(10.5)
    assert not hb.is_zombie(10.5)


def test_requested_beats_do_not_move_the_grid() -> None:
    hb = HeartbeatSchedule(10.0, now=0.0, jitter=0.0)
    hb.on_sent(0.0)
    hb.on_ack(0.1)
    hb.on_sent(4.0, requested=True)
    assert hb.next_due == 10.0
    assert hb.on_ack(4.2) == pytest.approx(0.2)
    assert not hb.is_zombie(10.0)


def test_a_stall_restarts_the_grid_instead_of_bursting() -> None:
    hb = HeartbeatSchedule(10.0, now=0.0, jitter=0.0)
    hb.on_sent(35.0)
    assert hb.next_due == 45.0


# --- rate limiter -----------------------------------------------------------------------------


def test_rate_limiter_allows_a_burst_then_spaces_sends() -> None:
    limiter = SendRateLimiter(limit=110, period=60.0)
    assert [limiter.reserve(0.0) for _ in range(55)] == [0.0] * 55
    assert limiter.reserve(0.0) == pytest.approx(60 / 55)
    assert limiter.reserve(0.0) == pytest.approx(2 * 60 / 55)


def test_rate_limiter_refuses_beyond_max_delay_without_booking() -> None:
    limiter = SendRateLimiter(limit=110, period=60.0)
    for _ in range(55):
        limiter.reserve(0.0)
    with pytest.raises(LocalProtocolError):
        limiter.reserve(0.0, max_delay=1.0)
    assert limiter.reserve(0.0, max_delay=2.0) == pytest.approx(60 / 55)


@given(st.lists(st.floats(0.0, 5.0, allow_nan=False), min_size=1, max_size=400))
def test_rate_limiter_never_exceeds_the_limit_in_any_window(gaps: list[float]) -> None:
    limiter = SendRateLimiter(limit=110, period=60.0)
    now, sends = 0.0, []
    for gap in gaps:
        now += gap
        sends.append(limiter.reserve(now))
        assert sends[-1] >= now
    sends.sort()
    for i, start in enumerate(sends):
        in_window = [t for t in sends[i:] if t < start + 60.0 - 1e-9]
        assert len(in_window) <= 110


# --- close codes -----------------------------------------------------------------------------


def test_describe_gateway_close() -> None:
    assert "token was rejected" in describe_gateway_close(4004)
    assert describe_gateway_close(4014) == "disallowed intents"
    assert describe_gateway_close(1000) == "normal closure"
    assert describe_gateway_close(4999) == "unknown close code"
    assert "without a close code" in describe_gateway_close(None)


def test_identify_carries_the_shard_only_when_sharded() -> None:
    from discord_voice.core.sharding import Shard

    plain = json.loads(GatewaySession(TOKEN, 129).identify())["d"]
    sharded = json.loads(GatewaySession(TOKEN, 129, shard=Shard(2, 8)).identify())["d"]
    assert "shard" not in plain and sharded["shard"] == [2, 8]
    assert "shard=2/8" in repr(GatewaySession(TOKEN, 129, shard=Shard(2, 8)))

"""The fake main gateway against a raw websocket-client."""

from __future__ import annotations

import json

import pytest

from discord_voice.testing import FakeDiscord
from tests.testing.fake_raw_clients import (
    connect_main,
    identify_payload,
    join,
    main_ready,
    recv_close,
    recv_json,
    send_json,
    voice_state_update,
)


def test_hello_identify_ready_and_heartbeat(fake: FakeDiscord) -> None:
    ws = connect_main(fake)
    hello = recv_json(ws)
    assert hello == {"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}
    send_json(ws, {"op": 1, "d": None})  # heartbeats are allowed before Identify
    assert recv_json(ws) == {"op": 11, "d": None, "s": None, "t": None}
    send_json(ws, identify_payload(fake.token))
    ready = recv_json(ws)
    assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
    d = ready["d"]
    assert d["v"] == 10
    assert d["user"]["id"] == "100000000000000001" and d["user"]["bot"] is True
    assert d["guilds"] == [] and d["resume_gateway_url"] == fake.gateway_url
    assert len(d["session_id"]) == 32 and "id" in d["application"]
    send_json(ws, {"op": 1, "d": 1})
    assert recv_json(ws)["op"] == 11
    ws.close()
    assert fake.wait_until(lambda f: f.main_sessions[0].closed)
    session = fake.main_sessions[0]
    assert (session.close_code, session.closed_by, session.heartbeats) == (1000, "client", 2)
    assert session.intents == 129 and session.session_id == d["session_id"]
    # every message in both directions is recorded, in order, with parsed data
    messages = fake.main_messages
    assert [(m.direction, m.op) for m in messages] == [
        ("server", 10),
        ("client", 1),
        ("server", 11),
        ("client", 2),
        ("server", 0),
        ("client", 1),
        ("server", 11),
    ]
    assert [m.index for m in messages] == sorted(m.index for m in messages)
    assert json.loads(messages[4].raw) == ready and messages[4].data == ready
    assert fake.violations == []


@pytest.mark.parametrize("order", ["state_first", "server_first"])
def test_voice_state_update_dispatches_in_configured_order(order: str) -> None:
    with FakeDiscord(dave=False, event_order=order) as fake:
        ws, _ = main_ready(fake)
        send_json(ws, voice_state_update("111", "222"))
        first, second = recv_json(ws), recv_json(ws)
        expected = ["VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE"]
        if order == "server_first":
            expected.reverse()
        assert [first["t"], second["t"]] == expected
        assert [first["s"], second["s"]] == [2, 3]
        events = {m["t"]: m["d"] for m in (first, second)}
        state, server = events["VOICE_STATE_UPDATE"], events["VOICE_SERVER_UPDATE"]
        assert state == {
            "guild_id": "111",
            "channel_id": "222",
            "user_id": "100000000000000001",
            "session_id": state["session_id"],
            "deaf": False,
            "mute": False,
            "self_deaf": False,
            "self_mute": False,
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }
        assert server["guild_id"] == "111" and server["endpoint"] == fake.voice_endpoint
        assert fake.voice_endpoint.startswith("ws://127.0.0.1:")
        # a second join hands out a new session id and a new voice token
        state2, server2 = join(fake, ws, "111", "333")
        assert state2["session_id"] != state["session_id"]
        assert server2["token"] != server["token"]
        ws.close()


def test_no_voice_state_update_without_the_intent(fake: FakeDiscord) -> None:
    ws, _ = main_ready(fake, intents=1)  # GUILDS only
    send_json(ws, voice_state_update("111", "222"))
    assert recv_json(ws)["t"] == "VOICE_SERVER_UPDATE"
    send_json(ws, {"op": 1, "d": 2})
    assert recv_json(ws)["op"] == 11  # nothing else was dispatched in between
    ws.close()


def test_leave_dispatches_a_voice_state_with_null_channel(fake: FakeDiscord) -> None:
    ws, _ = main_ready(fake)
    state, _ = join(fake, ws)
    send_json(ws, voice_state_update("111", None))
    leave = recv_json(ws)
    assert leave["t"] == "VOICE_STATE_UPDATE"
    assert leave["d"]["channel_id"] is None and leave["d"]["session_id"] == state["session_id"]
    ws.close()


def test_withheld_voice_server_update_is_not_sent(fake: FakeDiscord) -> None:
    fake.withhold("voice_server_update")
    ws, _ = main_ready(fake)
    send_json(ws, voice_state_update("111", "222"))
    assert recv_json(ws)["t"] == "VOICE_STATE_UPDATE"
    send_json(ws, {"op": 1, "d": 2})
    assert recv_json(ws)["op"] == 11
    ws.close()


def test_endpoint_without_scheme() -> None:
    with FakeDiscord(dave=False, endpoint_scheme=False) as fake:
        ws, _ = main_ready(fake)
        _, server = join(fake, ws)
        assert server["endpoint"] == fake.voice_endpoint
        assert server["endpoint"].startswith("127.0.0.1:") and "//" not in server["endpoint"]
        ws.close()


def test_bad_token_closes_4004_without_leaking_it() -> None:
    with FakeDiscord(dave=False, token="right-token") as fake:
        ws = connect_main(fake)
        recv_json(ws)
        send_json(ws, identify_payload("wrong-secret-token"))
        code, reason = recv_close(ws)
        assert code == 4004
        assert "token" in reason and "wrong-secret-token" not in reason
        assert "right-token" not in reason
        assert fake.wait_until(lambda f: f.main_sessions[0].closed)
        assert fake.main_sessions[0].closed_by == "server"
        assert len(fake.violations) == 1 and "4004" in fake.violations[0]
        assert "wrong-secret-token" not in repr(fake.main_messages)
        ws.close()


@pytest.mark.parametrize(
    ("query", "reason_part"),
    [("/?v=9&encoding=json", "v=10"), ("/?v=10", "encoding"), ("/", "v=10")],
)
def test_wrong_query_closes_4012(fake: FakeDiscord, query: str, reason_part: str) -> None:
    ws = connect_main(fake, query)
    code, reason = recv_close(ws)
    assert code == 4012 and reason_part in reason
    ws.close()


@pytest.mark.parametrize(
    ("message", "identified", "code", "reason_part"),
    [
        (
            '{"op": 4, "d": {"guild_id": "1", "channel_id": "2", "self_mute": false, '
            '"self_deaf": false}}',
            False,
            4003,
            "before identify",
        ),
        ('{"op": 99, "d": null}', True, 4001, "unknown opcode 99"),
        ("{not json", True, 4002, "json"),
        ('{"op": 1, "d": "x' + "x" * 5000 + '"}', True, 4002, "too large"),
        (
            '{"op": 4, "d": {"guild_id": 111, "channel_id": "2", "self_mute": false, '
            '"self_deaf": false}}',
            True,
            4002,
            "guild_id must be a snowflake string",
        ),
        (
            '{"op": 4, "d": {"guild_id": "1", "channel_id": 2, "self_mute": false, '
            '"self_deaf": false}}',
            True,
            4002,
            "channel_id",
        ),
        ('{"op": 1, "d": "seven"}', True, 4002, "heartbeat"),
        (
            '{"op": 2, "d": {"token": "fake-bot-token", "intents": "129", "properties": {}}}',
            False,
            4013,
            "intents",
        ),
    ],
)
def test_malformed_input_closes_with_discords_code(
    fake: FakeDiscord, message: str, identified: bool, code: int, reason_part: str
) -> None:
    if identified:
        ws, _ = main_ready(fake)
    else:
        ws = connect_main(fake)
        recv_json(ws)
    ws.send(message)
    got_code, reason = recv_close(ws)
    assert (got_code, reason_part in reason) == (code, True), reason
    assert fake.wait_until(lambda f: len(f.violations) == 1)
    assert str(code) in fake.violations[0]
    ws.close()


def test_second_identify_closes_4005(fake: FakeDiscord) -> None:
    ws, _ = main_ready(fake)
    send_json(ws, identify_payload(fake.token))
    assert recv_close(ws)[0] == 4005
    ws.close()


def test_heartbeat_with_a_future_seq_is_a_violation(fake: FakeDiscord) -> None:
    ws, _ = main_ready(fake)
    send_json(ws, {"op": 1, "d": 7})  # only s=1 was sent
    assert recv_json(ws)["op"] == 11
    assert any("d=7" in v for v in fake.violations)
    ws.close()


def test_withheld_main_heartbeat_ack(fake: FakeDiscord) -> None:
    fake.withhold("main_heartbeat_ack")
    ws, _ = main_ready(fake)
    send_json(ws, {"op": 1, "d": 1})
    send_json(ws, voice_state_update("111", "222"))
    assert recv_json(ws)["t"] == "VOICE_STATE_UPDATE"  # no ACK came first
    ws.close()


def test_scripted_send_and_close(fake: FakeDiscord) -> None:
    ws, _ = main_ready(fake)
    fake.send_main(
        {
            "op": 0,
            "t": "VOICE_SERVER_UPDATE",
            "d": {"token": "t", "guild_id": "111", "endpoint": None},
        }
    )
    pushed = recv_json(ws)
    assert (pushed["t"], pushed["s"], pushed["d"]["endpoint"]) == ("VOICE_SERVER_UPDATE", 2, None)
    fake.close_main(4000, "scripted")
    assert recv_close(ws) == (4000, "scripted")
    assert fake.violations == []
    ws.close()


@pytest.mark.parametrize("limit", [120, 3])
def test_more_events_than_the_rate_limit_close_4008(limit: int) -> None:
    with FakeDiscord(main_rate_limit=limit) as fake:
        ws, _ = main_ready(fake)  # Identify is the first event
        for _ in range(limit - 1):  # presence updates: counted, not answered
            send_json(
                ws,
                {"op": 3, "d": {"since": None, "activities": [], "status": "online", "afk": False}},
            )
        send_json(
            ws, {"op": 3, "d": {"since": None, "activities": [], "status": "online", "afk": False}}
        )  # one over the limit
        code, reason = recv_close(ws)
        assert code == 4008 and f"more than {limit} events" in reason
        ws.close()


def test_main_rate_limit_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="main_rate_limit"):
        FakeDiscord(main_rate_limit=0)


@pytest.mark.parametrize(
    ("shard", "needs", "code"),
    [
        ([4, 4], 1, 4010),
        ([-1, 4], 1, 4010),
        ([0], 1, 4010),
        ("0/4", 1, 4010),
        ([0, True], 1, 4010),
        (None, 2, 4011),
        ([0, 1], 2, 4011),
    ],
)
def test_a_bad_or_missing_shard_closes_with_discords_code(
    shard: object, needs: int, code: int
) -> None:
    with FakeDiscord(dave=False, shards=needs) as fake:
        ws = connect_main(fake)
        recv_json(ws)  # Hello
        payload = identify_payload(fake.token)
        if shard is not None:
            payload["d"]["shard"] = shard
        send_json(ws, payload)
        got, reason = recv_close(ws)
        assert got == code, reason
        assert fake.wait_until(lambda f: len(f.violations) == 1)
        ws.close()


def test_a_sharded_identify_gets_ready_with_its_shard() -> None:
    with FakeDiscord(dave=False, shards=2) as fake:
        ws = connect_main(fake)
        recv_json(ws)
        payload = identify_payload(fake.token)
        payload["d"]["shard"] = [1, 2]
        send_json(ws, payload)
        ready = recv_json(ws)
        assert ready["t"] == "READY" and ready["d"]["shard"] == [1, 2]
        assert fake.violations == []
        ws.close()

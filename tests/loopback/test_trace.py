"""The protocol trace (discord_voice.trace): complete for a bug report, and no secret in it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from discord_voice.core.opcodes import GatewayOp, VoiceOp
from discord_voice.trace import REDACTED, TRACE_LOGGER, JsonLinesTrace, redact, trace_enabled
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, MakeWorld, World
from tests.timeouts import LONG


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ops(records: list[dict[str, Any]], channel: str, direction: str) -> list[int]:
    return [
        r["json"]["op"]
        for r in records
        if r["channel"] == channel and r["direction"] == direction and "json" in r
    ]


def test_a_trace_has_every_message_redacted_and_no_secret(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    path = tmp_path / "trace.jsonl"
    with JsonLinesTrace(path) as trace:
        assert trace_enabled()
        w: World = make_world(token="Bot.SECRET-BOT-TOKEN.xyz")
        conn = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
        for n in range(8):
            conn.opus_send.put(opus_frame(b"trace %d" % n))
        w.fake.wait_for_frames(8, timeout=LONG)
        first = w.fake.voice_sessions[-1]
        w.fake.close_voice(4006, "bye")  # a new voice session: new token, session and key
        assert w.fake.wait_until(lambda f: conn.reconnects == 1, LONG)
        conn.opus_send.put(opus_frame(b"after"))
        w.fake.wait_for_frames(9, timeout=LONG)
        second = w.fake.voice_sessions[-1]
        conn.disconnect()
        w.gateway.close()
    assert not trace_enabled()  # the logger is back as it was
    text = path.read_text(encoding="utf-8")
    records = read(path)
    assert trace.records == len(records) > 0

    secrets = ["SECRET-BOT-TOKEN", w.fake.main_sessions[0].session_id]
    for session in (first, second):
        assert session.secret_key is not None and session.session_id is not None
        assert session.identify is not None
        secrets += [
            session.session_id,
            str(session.identify["token"]),
            session.secret_key.hex(),
            json.dumps(list(session.secret_key))[1:-1],
            str(list(session.secret_key))[1:-1],
        ]
    for secret in secrets:
        assert secret and secret not in text

    main = "main gateway websocket"
    voice = "voice websocket"
    assert GatewayOp.IDENTIFY in ops(records, main, "sent")
    assert ops(records, main, "sent").count(GatewayOp.VOICE_STATE_UPDATE) >= 2  # join, leave
    voice_sent = ops(records, voice, "sent")
    for op in (VoiceOp.IDENTIFY, VoiceOp.SELECT_PROTOCOL, VoiceOp.SPEAKING):
        assert op in voice_sent
    assert VoiceOp.SESSION_DESCRIPTION in ops(records, voice, "received")
    identify = next(
        r["json"]["d"]
        for r in records
        if "json" in r and r["channel"] == voice and r["json"]["op"] == VoiceOp.IDENTIFY
    )
    assert identify["token"] == REDACTED and identify["session_id"] == REDACTED
    assert identify["server_id"] == str(GUILD)  # what is not secret stays readable
    description = next(
        r["json"]["d"]
        for r in records
        if "json" in r and r["channel"] == voice and r["json"]["op"] == VoiceOp.SESSION_DESCRIPTION
    )
    assert description["secret_key"] == REDACTED and description["mode"] == conn.mode
    select = next(
        r["json"]["d"]
        for r in records
        if "json" in r and r["channel"] == voice and r["json"]["op"] == VoiceOp.SELECT_PROTOCOL
    )
    assert select["data"]["address"] == REDACTED  # our external address stays private

    binary = [r for r in records if r.get("binary")]
    assert binary and all(
        set(r) == {"time", "channel", "direction", "binary", "bytes"} for r in binary
    )

    rtp = [r for r in records if r["channel"] == "voice udp"]
    assert [r["packet"] for r in rtp] == [1, 2, 3, 4, 5, 1]  # first five, then the new session's
    assert [r["ssrc"] for r in rtp] == [first.ssrc] * 5 + [second.ssrc]
    sequences = [r["sequence"] for r in rtp[:5]]
    assert sequences == [(sequences[0] + k) % 65536 for k in range(5)]
    assert all(r["version"] == 2 and r["payload_type"] == 0x78 for r in rtp)


def test_nothing_is_traced_or_parsed_while_the_trace_logger_is_off(world: World) -> None:
    assert not trace_enabled()
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    logging.getLogger(TRACE_LOGGER).addHandler(handler)  # at INFO: below DEBUG nothing comes
    try:
        conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
        conn.disconnect()
    finally:
        logging.getLogger(TRACE_LOGGER).removeHandler(handler)
    assert sink.getvalue() == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"token": "t", "d": {"session_id": "s", "x": 1}},
            {"token": REDACTED, "d": {"session_id": REDACTED, "x": 1}},
        ),
        (
            [{"secret_key": [1, 2]}, {"address": "1.2.3.4"}],
            [{"secret_key": REDACTED}, {"address": REDACTED}],
        ),
        ({"token": None}, {"token": None}),  # a null says nothing
        ("token", "token"),
    ],
)
def test_redact_replaces_secret_keys_at_any_depth(value: object, expected: object) -> None:
    assert redact(value) == expected

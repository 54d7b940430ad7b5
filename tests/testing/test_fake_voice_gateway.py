"""The fake voice gateway against a raw websocket-client and a plain UDP socket."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing import FakeDiscord
from tests.testing.fake_raw_clients import (
    AES,
    DROP,
    XCHACHA,
    VoiceClient,
    discovery_request,
    full_voice,
    main_ready,
    recv_close,
    recv_json,
    send_json,
)
from tests.timeouts import LONG, SHORT


def test_full_handshake_bytes_and_records(fake: FakeDiscord) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    hello = recv_json(client.ws)
    assert hello == {"op": 8, "d": {"heartbeat_interval": 13750, "v": 8}}  # no seq on Hello
    client.identify()
    ready = recv_json(client.ws)
    assert ready["op"] == 2 and ready["seq"] == 1
    d = ready["d"]
    assert d["ip"] == "127.0.0.1" and (d["ip"], d["port"]) == fake.udp_address
    assert d["modes"] == [AES, XCHACHA] and d["heartbeat_interval"] == 1
    assert 0 < d["ssrc"] < 2**32
    client.ssrc, client.server_addr = d["ssrc"], (d["ip"], d["port"])

    reply = client.discover()
    port = client.udp.getsockname()[1]
    expected = struct.pack(">HHI", 2, 70, client.ssrc) + b"127.0.0.1".ljust(64, b"\0")
    assert reply == expected + struct.pack(">H", port)

    client.select(XCHACHA)
    description = recv_json(client.ws)
    assert (description["op"], description["seq"]) == (4, 2)
    assert description["d"]["mode"] == XCHACHA and description["d"]["dave_protocol_version"] == 0
    key = description["d"]["secret_key"]
    assert len(key) == 32 and all(type(b) is int and 0 <= b < 256 for b in key)

    send_json(client.ws, {"op": 3, "d": {"t": 1234, "seq_ack": 2}})
    assert recv_json(client.ws) == {"op": 6, "d": {"t": 1234}}  # no seq on the ACK
    client.speaking(5)

    assert fake.wait_until(lambda f: f.voice_sessions[0].speaking)
    session = fake.voice_sessions[0]
    assert (session.guild_id, session.channel_id, session.user_id) == (111, 222, fake.user_id)
    assert session.ssrc == client.ssrc and session.mode == XCHACHA
    assert session.secret_key == bytes(key)
    assert session.client_address == session.discovered_address == ("127.0.0.1", port)
    assert session.identify is not None and session.identify["server_id"] == "111"
    assert session.speaking == [{"speaking": 5, "delay": 0, "ssrc": client.ssrc}]
    # as a tuple: `close_code is None` would narrow it for mypy, and the close below sets it
    assert (session.heartbeats, session.close_code) == (1, None)

    server_messages = [m for m in fake.voice_messages if m.direction == "server"]
    assert [m.op for m in server_messages] == [8, 2, 4, 6]
    assert [m.data.get("seq") for m in server_messages if m.data] == [None, 1, 2, None]

    client.ws.close(status=4000)
    assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
    assert (session.close_code, session.closed_by) == (4000, "client")
    assert fake.violations == [] and fake.udp_errors == []
    client.close()
    main.close()


def test_hello_after_identify() -> None:
    with FakeDiscord(dave=False, voice_hello_first=False, voice_heartbeat_interval=5.0) as fake:
        main, _ = main_ready(fake)
        client = VoiceClient.connect(fake, main)
        client.identify()
        hello, ready = recv_json(client.ws), recv_json(client.ws)
        assert hello == {"op": 8, "d": {"heartbeat_interval": 5000, "v": 8}}
        assert ready["op"] == 2
        identify = next(m for m in fake.voice_messages if m.op == 0)
        sent_hello = next(m for m in fake.voice_messages if m.op == 8)
        assert identify.index < sent_hello.index
        client.close()
        main.close()


def _expect_close(client: VoiceClient, fake: FakeDiscord, code: int, part: str) -> None:
    got, reason = recv_close(client.ws)
    assert (got, part in reason) == (code, True), reason
    assert fake.wait_until(lambda f: f.voice_sessions[-1].closed)
    assert fake.voice_sessions[-1].close_code == code
    assert fake.voice_sessions[-1].closed_by == "server"


def test_v7_style_heartbeat_closes_4020(fake: FakeDiscord) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    client.ready()
    send_json(client.ws, {"op": 3, "d": 1234})
    _expect_close(client, fake, 4020, "heartbeat")
    assert len(fake.violations) == 1 and "4020" in fake.violations[0]
    client.close()
    main.close()


def test_unoffered_mode_closes_4016() -> None:
    with FakeDiscord(dave=False, modes=(XCHACHA,)) as fake:
        main, _ = main_ready(fake)
        client = VoiceClient.connect(fake, main)
        assert client.ready()["d"]["modes"] == [XCHACHA]
        client.discover()
        client.select(AES)
        _expect_close(client, fake, 4016, AES)
        client.close()
        main.close()


def test_missing_version_closes_4006(fake: FakeDiscord) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main, query="/")
    _expect_close(client, fake, 4006, "version")
    client.close()
    main.close()


@pytest.mark.parametrize(
    ("override", "code", "part"),
    [
        ({"token": "not-the-voice-token"}, 4004, "authentication failed"),
        ({"session_id": "0" * 32}, 4004, "authentication failed"),
        ({"server_id": 111}, 4004, "string server_id"),
        ({"max_dave_protocol_version": DROP}, 4020, "max_dave_protocol_version"),
        ({"max_dave_protocol_version": "1"}, 4020, "max_dave_protocol_version"),
    ],
)
def test_bad_identify(fake: FakeDiscord, override: dict[str, object], code: int, part: str) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    recv_json(client.ws)
    client.identify(**override)
    _expect_close(client, fake, code, part)
    assert len(fake.violations) == 1
    assert "not-the-voice-token" not in fake.violations[0]
    client.close()
    main.close()


@pytest.mark.parametrize(
    ("payload", "code", "part"),
    [
        ({"op": 1, "d": {"protocol": "udp", "data": {}}}, 4003, "before identify"),
        ({"op": 5, "d": {"speaking": 1, "delay": 0, "ssrc": 1}}, 4003, "before identify"),
        ({"op": 12, "d": {}}, 4001, "unknown opcode 12"),
        ({"op": 7, "d": {}}, 4006, "resume"),
        ("not an object", 4002, "json object"),
    ],
)
def test_bad_first_message(fake: FakeDiscord, payload: object, code: int, part: str) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    recv_json(client.ws)
    send_json(client.ws, payload)
    _expect_close(client, fake, code, part)
    client.close()
    main.close()


def test_heartbeat_allowed_before_identify(fake: FakeDiscord) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    recv_json(client.ws)
    send_json(client.ws, {"op": 3, "d": {"t": 9, "seq_ack": -1}})
    assert recv_json(client.ws) == {"op": 6, "d": {"t": 9}}
    client.close()
    main.close()


def test_withheld_hello_ready_and_ack(fake: FakeDiscord) -> None:
    fake.withhold("hello", "heartbeat_ack")
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    client.identify()
    assert recv_json(client.ws)["op"] == 2  # Ready is the first message: no Hello
    send_json(client.ws, {"op": 3, "d": {"t": 1, "seq_ack": 1}})
    client.ssrc = fake.voice_sessions[0].ssrc or 0
    client.server_addr = fake.udp_address
    client.discover()
    client.select(XCHACHA)
    assert recv_json(client.ws)["op"] == 4  # the heartbeat got no ACK
    fake.release("heartbeat_ack")
    send_json(client.ws, {"op": 3, "d": {"t": 2, "seq_ack": 2}})
    assert recv_json(client.ws)["op"] == 6
    client.close()
    main.close()


def test_withheld_ready_and_session_description(fake: FakeDiscord) -> None:
    fake.withhold("ready", "session_description")
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    recv_json(client.ws)
    client.identify()
    send_json(client.ws, {"op": 3, "d": {"t": 1, "seq_ack": -1}})
    assert recv_json(client.ws)["op"] == 6  # no Ready before the ACK
    client.ssrc = fake.voice_sessions[0].ssrc or 0
    client.server_addr = fake.udp_address
    client.discover()
    client.select(AES)
    send_json(client.ws, {"op": 3, "d": {"t": 2, "seq_ack": -1}})
    assert recv_json(client.ws)["op"] == 6  # no Session Description before the ACK
    assert fake.voice_sessions[0].mode == AES
    client.close()
    main.close()


def test_withheld_ip_discovery_gets_no_answer(fake: FakeDiscord) -> None:
    fake.withhold("ip_discovery")
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    client.ready()
    client.udp.settimeout(SHORT)
    client.udp.sendto(discovery_request(client.ssrc), client.server_addr)
    with pytest.raises(socket.timeout):
        client.udp.recv(100)
    client.udp.settimeout(LONG)
    fake.release()
    client.discover()  # answered once released
    assert fake.udp_errors == []
    client.close()
    main.close()


@pytest.mark.parametrize(
    ("op", "code"), [(VoiceOp.IDENTIFY, 4006), (VoiceOp.SELECT_PROTOCOL, 4015)]
)
def test_close_voice_on(fake: FakeDiscord, op: int, code: int) -> None:
    fake.close_voice_on(op, code, "scripted close")
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    if op == VoiceOp.IDENTIFY:
        recv_json(client.ws)
        client.identify()
    else:
        client.ready()
        client.discover()
        client.select(XCHACHA)
    assert recv_close(client.ws) == (code, "scripted close")
    assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
    assert fake.voice_sessions[0].close_code == code and fake.violations == []
    client.close()
    # one-shot: the next connection is answered normally
    again = VoiceClient.connect(fake, main, guild="112")
    again.session(XCHACHA)
    again.close()
    main.close()


def test_select_address_differing_from_discovery_is_a_violation(fake: FakeDiscord) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    client.ready()
    client.discover()
    client.select(XCHACHA, address=("10.0.0.1", 5))
    assert recv_json(client.ws)["op"] == 4  # still answered
    assert len(fake.violations) == 1 and "10.0.0.1:5" in fake.violations[0]
    client.close()
    main.close()


def test_speaking_with_wrong_ssrc_is_a_violation(fake: FakeDiscord) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    client.session(XCHACHA)
    client.speaking(1, ssrc=client.ssrc ^ 1)
    assert fake.wait_until(lambda f: f.violations)
    assert "ssrc" in fake.violations[0]
    client.close()
    main.close()


def test_audio_before_speaking_is_a_violation(fake: FakeDiscord) -> None:
    fake.speaking_grace = 0.05
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    client.session(XCHACHA)
    client.send_audio(0, b"early")
    assert fake.wait_until(lambda f: f.violations, timeout=LONG)
    assert "Speaking" in fake.violations[0]
    client.close()
    main.close()


def test_speaking_then_audio_is_not_a_violation(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    assert fake.wait_until(lambda f: f.voice_sessions[0].speaking)  # so the order is certain
    client.send_audio(0, b"fine")
    fake.wait_for_frames(1)
    client.ws.close()
    assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
    assert fake.violations == []
    speaking = next(m for m in fake.voice_messages if m.direction == "client" and m.op == 5)
    assert speaking.index < fake.frames()[0].index
    client.close()
    main.close()


def test_scripted_send_binary_and_close(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    fake.send_voice({"op": 18, "d": {"flags": 0}})
    # already sent: the last message the fake sent (the client's own Speaking may come after it)
    sent = [m for m in fake.voice_messages if m.direction == "server"][-1]
    assert sent.data == {"op": 18, "d": {"flags": 0}, "seq": 3}
    assert recv_json(client.ws) == {"op": 18, "d": {"flags": 0}, "seq": 3}
    fake.send_voice_binary(25, b"\x01\x02")
    assert client.ws.recv() == b"\x00\x04\x19\x01\x02"
    fake.close_voice(4014, "kicked")
    assert recv_close(client.ws) == (4014, "kicked")
    client.close()
    main.close()


def test_identify_twice_closes_4005(fake: FakeDiscord) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    client.ready()
    client.identify()
    _expect_close(client, fake, 4005, "already")
    client.close()
    main.close()


def test_server_json_messages_are_compact_json(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    for message in fake.voice_messages:
        if message.direction == "server":
            assert isinstance(message.raw, str)
            assert json.loads(message.raw) == message.data
    client.close()
    main.close()


def test_scripted_send_without_an_open_connection_fails(fake: FakeDiscord) -> None:
    with pytest.raises(RuntimeError, match="no open voice gateway connection"):
        fake.send_voice({"op": 18, "d": {}})
    main, client = full_voice(fake)
    client.ws.close()
    assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
    with pytest.raises(RuntimeError):
        fake.send_voice({"op": 18, "d": {}})
    client.close()
    main.close()

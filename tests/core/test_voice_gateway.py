"""The voice gateway core: payload decoding, the handshake state machine, URLs, seq_ack."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core import voice_payloads as vp
from discord_voice.core.opcodes import SpeakingFlag
from discord_voice.core.voice_gateway import (
    VoiceGatewayProtocol,
    VoiceServerInfo,
    VoiceState,
    voice_url,
)
from discord_voice.errors import LocalProtocolError, RemoteProtocolError

INFO = VoiceServerInfo(
    guild_id="41771983423143937",
    channel_id="127121515262115840",
    user_id="104694319306248192",
    session_id="sess-secret",
    token="voice-token-secret",
    endpoint="smart.loyal.discord.gg:443",
)
KEY = list(range(32))


def msg(op: int, d: object, seq: int | None = None) -> str:
    obj: dict[str, object] = {"op": op, "d": d}
    if seq is not None:
        obj["seq"] = seq
    return json.dumps(obj)


def state(proto: VoiceGatewayProtocol) -> VoiceState:
    """The protocol's state as a fresh value: an ``assert proto.state is X`` would otherwise
    narrow ``proto.state`` for mypy until the end of the test, across the calls that change it."""
    return proto.state


def handshake(proto: VoiceGatewayProtocol, mode: str = "aead_xchacha20_poly1305_rtpsize") -> None:
    proto.identify()
    proto.receive_text(msg(8, {"heartbeat_interval": 13750, "v": 8}))
    proto.receive_text(
        msg(
            2,
            {"ssrc": 7, "ip": "127.0.0.1", "port": 50004, "modes": [mode], "heartbeat_interval": 1},
            seq=1,
        )
    )
    proto.select_protocol("1.2.3.4", 5000, mode)
    proto.receive_text(msg(4, {"mode": mode, "secret_key": KEY, "dave_protocol_version": 0}, 2))


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("smart.loyal.discord.gg", "wss://smart.loyal.discord.gg/?v=8"),
        ("sweetwater-12345.discord.media:2048", "wss://sweetwater-12345.discord.media:2048/?v=8"),
        ("ws://127.0.0.1:5555", "ws://127.0.0.1:5555/?v=8"),
        ("wss://c-ams08.discord.media:443/", "wss://c-ams08.discord.media:443/?v=8"),
    ],
)
def test_voice_url_keeps_scheme_and_port(endpoint: str, url: str) -> None:
    assert voice_url(endpoint) == url


@pytest.mark.parametrize("endpoint", ["", "   ", "http://x.example", "ws://"])
def test_voice_url_rejects_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(RemoteProtocolError):
        voice_url(endpoint)


def test_identify_payload_is_exact_and_secrets_stay_out_of_repr() -> None:
    proto = VoiceGatewayProtocol(INFO, max_dave_protocol_version=0)
    frame = json.loads(proto.identify())
    assert frame == {
        "op": 0,
        "d": {
            "server_id": "41771983423143937",
            "user_id": "104694319306248192",
            "session_id": "sess-secret",
            "token": "voice-token-secret",
            "max_dave_protocol_version": 0,
        },
    }
    assert "secret" not in repr(INFO) and "secret" not in repr(proto)


def test_full_handshake_reaches_active_and_builds_frames() -> None:
    proto = VoiceGatewayProtocol(INFO)
    handshake(proto)
    assert proto.state is VoiceState.ACTIVE
    assert proto.hello == vp.Hello(13.75)
    assert proto.session is not None and proto.session.secret_key == bytes(KEY)
    assert "secret_key" not in repr(proto.session) and "0, 1, 2" not in repr(proto.session)
    assert proto.seq_ack == 2
    assert json.loads(proto.heartbeat(1234)) == {"op": 3, "d": {"t": 1234, "seq_ack": 2}}
    assert json.loads(proto.speaking(SpeakingFlag.MICROPHONE | SpeakingFlag.PRIORITY)) == {
        "op": 5,
        "d": {"speaking": 5, "delay": 0, "ssrc": 7},
    }


def test_select_protocol_payload() -> None:
    proto = VoiceGatewayProtocol(INFO)
    proto.identify()
    proto.receive_text(
        msg(2, {"ssrc": 7, "ip": "127.0.0.1", "port": 9, "modes": ["aead_aes256_gcm_rtpsize"]})
    )
    frame = json.loads(proto.select_protocol("203.0.113.9", 50004, "aead_aes256_gcm_rtpsize"))
    assert frame == {
        "op": 1,
        "d": {
            "protocol": "udp",
            "data": {"address": "203.0.113.9", "port": 50004, "mode": "aead_aes256_gcm_rtpsize"},
        },
    }


def test_seq_ack_starts_at_minus_one_and_follows_json_and_binary() -> None:
    proto = VoiceGatewayProtocol(INFO)
    proto.identify()
    assert json.loads(proto.heartbeat(1))["d"]["seq_ack"] == -1
    proto.receive_text(msg(11, {"user_ids": ["1", "2"]}, seq=5))
    assert proto.seq_ack == 5
    event = proto.receive_binary(b"\x00\x06\x19payload")
    assert event == vp.BinaryMessage(seq=6, op=25, payload=b"payload")
    assert proto.seq_ack == 6
    proto.receive_text(msg(8, {"heartbeat_interval": 1000}))  # no seq: unchanged
    assert proto.seq_ack == 6


def test_out_of_order_messages_are_remote_errors() -> None:
    proto = VoiceGatewayProtocol(INFO)
    with pytest.raises(RemoteProtocolError, match="unexpected Ready"):
        proto.receive_text(msg(2, {"ssrc": 1, "ip": "x", "port": 1, "modes": []}))
    proto.identify()
    with pytest.raises(RemoteProtocolError, match="Session Description"):
        proto.receive_text(msg(4, {"mode": "m", "secret_key": KEY}))


def test_session_description_must_name_the_selected_mode() -> None:
    proto = VoiceGatewayProtocol(INFO)
    proto.identify()
    proto.receive_text(
        msg(
            2,
            {
                "ssrc": 7,
                "ip": "127.0.0.1",
                "port": 9,
                "modes": ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"],
            },
        )
    )
    proto.select_protocol("1.2.3.4", 1, "aead_xchacha20_poly1305_rtpsize")
    with pytest.raises(RemoteProtocolError, match="was selected"):
        proto.receive_text(msg(4, {"mode": "aead_aes256_gcm_rtpsize", "secret_key": KEY}))


def test_illegal_local_calls() -> None:
    proto = VoiceGatewayProtocol(INFO)
    with pytest.raises(LocalProtocolError):
        proto.heartbeat(1)
    with pytest.raises(LocalProtocolError):
        proto.speaking(1)
    proto.identify()
    with pytest.raises(LocalProtocolError):
        proto.identify()
    proto.receive_text(msg(2, {"ssrc": 7, "ip": "h", "port": 9, "modes": ["a"]}))
    with pytest.raises(LocalProtocolError, match="not offered"):
        proto.select_protocol("1.2.3.4", 1, "b")
    proto.receive_close()
    with pytest.raises(LocalProtocolError):
        proto.heartbeat(1)


def test_unknown_and_undocumented_opcodes_are_ignored_and_counted() -> None:
    proto = VoiceGatewayProtocol(INFO)
    proto.identify()
    for op in (14, 15, 16, 18, 20, 99, 16):
        assert isinstance(proto.receive_text(msg(op, {"any": "thing"})), vp.UnknownMessage)
    assert proto.ignored == {14: 1, 15: 1, 16: 2, 18: 1, 20: 1, 99: 1}


def test_op_12_names_a_members_audio_ssrc() -> None:
    proto = VoiceGatewayProtocol(INFO)
    proto.identify()
    d = {"user_id": "123", "audio_ssrc": 4242, "video_ssrc": 0, "streams": []}
    assert proto.receive_text(msg(12, d)) == vp.ClientSsrcs(user_id="123", audio_ssrc=4242)
    for bad in ({"any": "thing"}, {"user_id": "x", "audio_ssrc": 1}, {"user_id": "1"}):
        with pytest.raises(RemoteProtocolError):
            proto.receive_text(msg(12, bad))


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"d": {}}',
        '{"op": "2"}',
        '{"op": true}',
        msg(8, {"heartbeat_interval": -5}),
        msg(8, None),
        msg(8, {"heartbeat_interval": "1"}),
        msg(2, {"ssrc": 1, "ip": "h", "port": 70000, "modes": []}),
        msg(2, {"ssrc": -1, "ip": "h", "port": 1, "modes": []}),
        msg(2, {"ssrc": 1, "ip": "h", "port": 1, "modes": "aead"}),
        msg(4, {"mode": "m", "secret_key": [1, 2, 3]}),
        msg(4, {"mode": "m", "secret_key": [256] * 32}),
        msg(4, {"mode": "m", "secret_key": KEY, "dave_protocol_version": "1"}),
        msg(6, {"nonce": 1}),
        msg(5, {"ssrc": 1}),
        msg(11, {"user_ids": "1"}),
        msg(13, {"user_id": "abc"}),
        msg(21, [1]),
        '{"op": 3, "d": null, "seq": -1}',
    ],
)
def test_malformed_server_messages_raise_remote_protocol_error(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        vp.decode_text(text)


def test_message_decoding_examples() -> None:
    assert vp.decode_text(msg(6, {"t": 99}))[1] == vp.HeartbeatAck(99)
    assert vp.decode_text(msg(6, 99))[1] == vp.HeartbeatAck(99)  # pre-v8 bare nonce
    assert vp.decode_text(msg(5, {"user_id": "5", "ssrc": 9, "speaking": 1}))[1] == vp.Speaking(
        "5", 9, 1
    )
    assert vp.decode_text(msg(13, {"user_id": "42"}, 3)) == (3, vp.ClientDisconnect("42"))
    assert vp.decode_text(msg(9, None))[1] == vp.Resumed()
    seq, dave = vp.decode_text(msg(21, {"protocol_version": 1, "transition_id": 4}, 8))
    assert seq == 8 and dave == vp.DaveMessage(21, {"protocol_version": 1, "transition_id": 4})
    session = vp.decode_text(
        msg(4, {"mode": "m", "secret_key": KEY, "dave_protocol_version": None})
    )[1]
    assert isinstance(session, vp.SessionDescription) and session.dave_protocol_version == 0


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x01"])
def test_truncated_binary_frames(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        vp.decode_binary(data)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_decode_text_only_raises_remote_protocol_error(data: str | bytes) -> None:
    try:
        vp.decode_text(data)
    except RemoteProtocolError:
        pass


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
        ),
        max_leaves=12,
    ),
    st.integers(min_value=0, max_value=40),
)
def test_decode_structured_garbage_only_raises_remote_protocol_error(d: object, op: int) -> None:
    try:
        vp.decode_text(json.dumps({"op": op, "d": d}))
    except RemoteProtocolError:
        pass


def test_resume_carries_the_session_and_seq_ack() -> None:
    old = VoiceGatewayProtocol(INFO)
    handshake(old)
    old.receive_text(msg(5, {"user_id": "9", "ssrc": 9, "speaking": 1}, seq=7))
    old.receive_close()
    new = VoiceGatewayProtocol.continue_from(old)
    assert json.loads(new.resume()) == {
        "op": 7,
        "d": {
            "server_id": INFO.guild_id,
            "session_id": "sess-secret",
            "token": "voice-token-secret",
            "seq_ack": 7,
        },
    }
    assert state(new) is VoiceState.RESUMING
    new.receive_text(msg(8, {"heartbeat_interval": 13750}))
    new.receive_text(msg(9, None))
    assert new.state is VoiceState.ACTIVE
    assert json.loads(new.speaking(1))["d"]["ssrc"] == 7  # Ready's SSRC survives
    new.receive_text(msg(13, {"user_id": "9"}, seq=8))  # replayed messages count as usual
    assert new.seq_ack == 8


def test_resume_rules() -> None:
    fresh = VoiceGatewayProtocol(INFO)
    with pytest.raises(LocalProtocolError):
        VoiceGatewayProtocol.continue_from(fresh)  # nothing to resume
    with pytest.raises(LocalProtocolError):
        fresh.resume()
    with pytest.raises(RemoteProtocolError, match="Resumed"):
        fresh.identify()
        fresh.receive_text(msg(9, None))

"""DAVE message codec: every server op decodes to its typed event, malformed input is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core import dave_messages as dm
from discord_voice.core.voice_payloads import BinaryMessage, DaveMessage, decode_binary, decode_text
from discord_voice.errors import LocalProtocolError, RemoteProtocolError


def binary(op: int, payload: bytes) -> BinaryMessage:
    return decode_binary(b"\x00\x07" + bytes([op]) + payload)


def text(op: int, d: object) -> DaveMessage:
    _, message = decode_text(json.dumps({"op": op, "d": d}))
    assert isinstance(message, DaveMessage)
    return message


# -- binary server ops -------------------------------------------------------------------------


def test_external_sender_package() -> None:
    package = b"\x40\x41" + b"\x04" * 65 + b"\x00\x01\x01\x00"
    assert dm.decode(binary(25, package)) == dm.ExternalSenderPackage(package=package)


@pytest.mark.parametrize(
    ("payload", "revoke", "data"),
    [
        (b"\x00\x03abc", False, b"\x03abc"),
        (b"\x01\x00", True, b"\x00"),
        (b"\x00\x40\x40" + b"x" * 64, False, b"\x40\x40" + b"x" * 64),
        (b"\x01\x80\x00\x40\x00" + b"r" * 0x4000, True, b"\x80\x00\x40\x00" + b"r" * 0x4000),
    ],
)
def test_proposals(payload: bytes, revoke: bool, data: bytes) -> None:
    assert dm.decode(binary(27, payload)) == dm.Proposals(revoke=revoke, data=data)


def test_announce_commit_and_welcome() -> None:
    assert dm.decode(binary(29, b"\x01\x02commit")) == dm.AnnounceCommit(258, b"commit")
    assert dm.decode(binary(30, b"\xff\xffW")) == dm.Welcome(65535, b"W")
    assert dm.decode(binary(29, b"\x00\x00C")) == dm.AnnounceCommit(0, b"C")


def test_payload_bytes_are_not_in_reprs() -> None:
    assert "secret" not in repr(dm.decode(binary(29, b"\x00\x01secret")))
    assert "secret" not in repr(dm.decode(binary(27, b"\x00\x06secret")))


@pytest.mark.parametrize(
    ("op", "payload", "message"),
    [
        (25, b"", "empty external sender"),
        (27, b"", "no operation type"),
        (27, b"\x02\x00", "unknown operation type 2"),
        (27, b"\xff\x00", "unknown operation type 255"),
        (27, b"\x00", "length does not match"),
        (27, b"\x00\x04abc", "length does not match"),
        (27, b"\x00\x02abc", "length does not match"),
        (27, b"\x00\x40\x01a", "length does not match"),  # non-minimal varint
        (27, b"\x00\xc0\x00\x00\x00\x00\x00\x00\x00", "length does not match"),  # reserved
        (27, b"\x01\x40", "length does not match"),  # truncated varint
        (29, b"", "too short"),
        (29, b"\x00\x01", "too short"),
        (30, b"\x00", "too short"),
        (26, b"kp", "not a server dave op"),
        (28, b"commit", "not a server dave op"),
        (31, b"{}", "not a server dave op"),
        (99, b"", "not a server dave op"),
    ],
)
def test_bad_binary_frames(op: int, payload: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        dm.decode(binary(op, payload))


@given(st.integers(0, 255), st.binary(max_size=80))
def test_any_binary_frame_decodes_or_raises_the_protocol_error(op: int, payload: bytes) -> None:
    try:
        event = dm.decode(binary(op, payload))
    except RemoteProtocolError as exc:
        assert str(exc)
        return
    assert op in (25, 27, 29, 30)
    if isinstance(event, (dm.AnnounceCommit, dm.Welcome)):
        assert event.transition_id == int.from_bytes(payload[:2], "big")


# -- JSON server ops ---------------------------------------------------------------------------


def test_json_ops() -> None:
    assert dm.decode(text(21, {"protocol_version": 0, "transition_id": 10})) == (
        dm.PrepareTransition(protocol_version=0, transition_id=10)
    )
    assert dm.decode(text(22, {"transition_id": 65535})) == dm.ExecuteTransition(65535)
    assert dm.decode(text(24, {"protocol_version": 1, "epoch": 1, "extra": "ok"})) == (
        dm.PrepareEpoch(protocol_version=1, epoch=1)
    )


@pytest.mark.parametrize(
    ("op", "d", "message"),
    [
        (21, {"transition_id": 1}, "'protocol_version' must be an integer"),
        (21, {"protocol_version": "1", "transition_id": 1}, "'protocol_version'"),
        (21, {"protocol_version": 1, "transition_id": 65536}, "'transition_id'"),
        (22, {"transition_id": -1}, "'transition_id'"),
        (22, {"transition_id": True}, "'transition_id'"),
        (22, {"transition_id": 1.0}, "'transition_id'"),
        (22, {}, "'transition_id'"),
        (24, {"protocol_version": 1, "epoch": None}, "'epoch'"),
        (24, {"protocol_version": 1, "epoch": 2**64}, "'epoch'"),
        (24, {"protocol_version": [], "epoch": 1}, "'protocol_version'"),
    ],
)
def test_bad_json_ops(op: int, d: dict[str, Any], message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        dm.decode(text(op, d))


def test_json_op_that_is_not_dave() -> None:
    with pytest.raises(RemoteProtocolError, match="not a server dave json op"):
        dm.decode(DaveMessage(op=23, data={"transition_id": 1}))


@given(
    st.dictionaries(
        st.sampled_from(["protocol_version", "transition_id", "epoch"]),
        st.one_of(st.integers(), st.text(), st.none(), st.booleans(), st.floats(allow_nan=False)),
    ),
    st.sampled_from([21, 22, 24]),
)
def test_any_json_op_decodes_or_raises_the_protocol_error(d: dict[str, Any], op: int) -> None:
    try:
        dm.decode(DaveMessage(op=op, data=d))
    except RemoteProtocolError:
        return
    for key in {
        21: ("protocol_version", "transition_id"),
        22: ("transition_id",),
        24: ("protocol_version", "epoch"),
    }[op]:
        assert type(d[key]) is int and d[key] >= 0


# -- client frames -----------------------------------------------------------------------------


def test_client_binary_frames() -> None:
    assert dm.key_package(b"KP") == b"\x1aKP"
    assert dm.commit_welcome(b"C", b"W") == b"\x1cCW"
    assert dm.commit_welcome(b"C", None) == b"\x1cC"


def test_client_json_frames() -> None:
    assert json.loads(dm.transition_ready(10)) == {"op": 23, "d": {"transition_id": 10}}
    assert json.loads(dm.invalid_commit_welcome(32)) == {"op": 31, "d": {"transition_id": 32}}


@pytest.mark.parametrize("bad", [-1, 65536, True])
def test_client_json_frames_refuse_bad_transition_ids(bad: int) -> None:
    with pytest.raises(LocalProtocolError):
        dm.transition_ready(bad)
    with pytest.raises(LocalProtocolError):
        dm.invalid_commit_welcome(bad)

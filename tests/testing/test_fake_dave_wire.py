"""The fake's own DAVE parsers: real davey/libdave bytes parse; garbage gives MLSDecodeError."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

davey = pytest.importorskip("davey")
dave = pytest.importorskip("dave")

from discord_voice.testing.dave import wire as dave_wire  # noqa: E402
from discord_voice.testing.dave.mls import (  # noqa: E402
    ExternalSender,
    MLSDecodeError,
    proposal_ref,
    proposals_append,
    split_commit_welcome,
)

CHANNEL, A, B = 222, 100000000000000001, 100000000000000002


def _commit_of_two() -> tuple[bytes, list[bytes], Any]:
    sender = ExternalSender()
    first, second = (davey.DaveSession(1, u, CHANNEL) for u in (A, B))
    for session in (first, second):
        session.set_external_sender(sender.package())
    add = sender.propose_add(CHANNEL, 0, second.get_serialized_key_package())
    result = first.process_proposals(
        davey.ProposalsOperationType.append, proposals_append([add])[1:], [A, B]
    )
    assert result is not None and result.welcome is not None
    return result.commit + result.welcome, [add], first


def test_key_package_identity_of_davey_and_libdave() -> None:
    session = davey.DaveSession(1, A, CHANNEL)
    assert dave_wire.key_package_identity(session.get_serialized_key_package()) == struct.pack(
        ">Q", A
    )
    peer = dave.Session(None)
    peer.init(1, CHANNEL, str(B))
    peer.set_external_sender(ExternalSender().package())
    package = peer.get_marshalled_key_package()
    assert package is not None
    assert dave_wire.key_package_identity(package) == struct.pack(">Q", B)


def test_commit_group_epoch_and_refs() -> None:
    op28, proposals, _ = _commit_of_two()
    commit, welcome = split_commit_welcome(op28)
    assert welcome is not None
    assert dave_wire.commit_group_epoch(commit) == (CHANNEL, 0)
    assert dave_wire.commit_proposal_refs(commit) == [proposal_ref(m) for m in proposals]
    with pytest.raises(MLSDecodeError, match="not a commit"):
        dave_wire.commit_proposal_refs(proposals[0])  # a proposal, content_type 2


def test_protocol_frame_check() -> None:
    assert not dave_wire.is_protocol_frame(dave_wire.SILENCE_FRAME)
    assert dave_wire.is_protocol_frame(bytes(20) + b"\x0b\xfa\xfa")
    assert not dave_wire.is_protocol_frame(bytes(20) + b"\x0a\xfa\xfa")  # supplemental < 11
    assert not dave_wire.is_protocol_frame(bytes(8) + b"\x0b\xfa\xfa")  # supplemental >= length
    assert not dave_wire.is_protocol_frame(bytes(20) + b"\x0b\xfa\xfb")


@pytest.mark.parametrize("cut", [0, 3, 5, 12, 20, 60])
def test_truncated_commit_is_a_decode_error(cut: int) -> None:
    commit, _ = split_commit_welcome(_commit_of_two()[0])
    with pytest.raises(MLSDecodeError):
        dave_wire.commit_proposal_refs(commit[:cut])
    if cut < 20:
        with pytest.raises(MLSDecodeError):
            dave_wire.commit_group_epoch(commit[:cut])


@given(st.binary(max_size=200))
def test_parsers_never_raise_anything_else(data: bytes) -> None:
    for parse in (
        dave_wire.key_package_identity,
        dave_wire.commit_group_epoch,
        dave_wire.commit_proposal_refs,
    ):
        try:
            parse(data)
        except MLSDecodeError:
            pass
    assert dave_wire.is_protocol_frame(data) in (True, False)

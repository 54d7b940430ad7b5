"""The fake server's MLS external sender, checked against two independent MLS stacks.

davey (openmls, Rust) and dave-py (Discord's libdave, mlspp) must both accept what
`ExternalSender` signs and refuse it once it is tampered with; the op 28 splitter must recover
the exact commit and welcome each of them produced.
"""

from __future__ import annotations

from collections.abc import Iterator

import dave
import davey
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.testing.dave.mls import (
    ExternalSender,
    MLSDecodeError,
    decode_varint,
    encode_varint,
    proposal_ref,
    proposals_append,
    proposals_revoke,
    split_commit_welcome,
)

CHANNEL = 927310423890473011
APPEND = davey.ProposalsOperationType.append
REVOKE = davey.ProposalsOperationType.revoke


class LibdaveMember:
    """A dave.Session that records libdave's MLS failure callbacks instead of losing them."""

    def __init__(self, sender: ExternalSender, user_id: int) -> None:
        self.failures: list[tuple[str, str]] = []
        self.session = dave.Session(lambda where, why: self.failures.append((where, why)))
        self.session.init(1, CHANNEL, str(user_id))
        self.session.set_external_sender(sender.package())
        key_package = self.session.get_marshalled_key_package()
        assert key_package is not None
        self.key_package = key_package


def davey_member(sender: ExternalSender, user_id: int) -> davey.DaveSession:
    session = davey.DaveSession(1, user_id, CHANNEL)
    session.set_external_sender(sender.package())
    return session


@pytest.fixture
def sender() -> Iterator[ExternalSender]:
    yield ExternalSender()


# -- varints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "value"),
    [(b"\x25", 37), (b"\x7b\xbd", 15293), (b"\x9d\x7f\x3e\x7d", 494878333), (b"\x00", 0)],
)
def test_varint_known_encodings(encoded: bytes, value: int) -> None:
    # RFC 9420 §2.1.2 / RFC 9000 §A.1 examples (4-byte form only; 8-byte is reserved in MLS).
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))


@given(st.integers(min_value=0, max_value=(1 << 30) - 1))
def test_varint_roundtrip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(b"\xaa" + encoded + b"\xbb", 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40",
        b"\x80\x00\x01",
        b"\xc0" + b"\x00" * 7,
        b"\x40\x25",
        b"\x80\x00\x00\x25",
        b"\x80\x00\x3f\xff",
    ],
)
def test_varint_rejects_truncated_reserved_and_non_minimal(data: bytes) -> None:
    with pytest.raises(MLSDecodeError):
        decode_varint(data)


def test_varint_encode_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_varint(1 << 30)


# -- op 25 / op 27 bodies ------------------------------------------------------------------------


def test_package_layout(sender: ExternalSender) -> None:
    package = sender.package()
    # signature_key<V> (65 bytes: 2-byte varint 0x4041), credential type 1, identity<V> = 00.
    assert package == b"\x40\x41" + sender.public_key + b"\x00\x01\x01\x00"
    assert len(package) + 3 == 74  # a real Discord op 25 frame is 74 bytes with its header
    assert sender.public_key[0] == 4 and len(sender.public_key) == 65


def test_proposal_bodies_layout() -> None:
    assert proposals_append([b"ab", b"cd"]) == b"\x00\x04abcd"
    assert proposals_revoke([b"x" * 70]) == b"\x01\x40\x46" + b"x" * 70
    ref = proposal_ref(b"\x00\x01rest")
    assert len(ref) == 33 and ref[0] == 32
    assert proposal_ref(b"\x00\x01rest") == ref != proposal_ref(b"\x00\x01resT")


def test_both_stacks_accept_package(sender: ExternalSender) -> None:
    assert davey_member(sender, 111).status == davey.SessionStatus.pending
    member = LibdaveMember(sender, 222)
    assert member.key_package and member.failures == []


# -- proposals: accepted, and refused when wrong --------------------------------------------------


def test_davey_commits_external_add_and_splitter_recovers_it(sender: ExternalSender) -> None:
    committer = davey_member(sender, 111)
    joiner = davey_member(sender, 222)
    body = proposals_append([sender.propose_add(CHANNEL, 0, joiner.get_serialized_key_package())])
    result = committer.process_proposals(APPEND, body[1:], [111, 222])
    assert result is not None and result.welcome is not None
    commit, welcome = split_commit_welcome(result.commit + result.welcome)
    assert (commit, welcome) == (result.commit, result.welcome) and welcome is not None
    committer.process_commit(commit)
    joiner.process_welcome(welcome)
    assert committer.epoch == joiner.epoch == 1 and committer.ready and joiner.ready
    assert committer.voice_privacy_code == joiner.voice_privacy_code


def test_libdave_joins_and_commits_then_removal(sender: ExternalSender) -> None:
    first = davey_member(sender, 111)
    second = LibdaveMember(sender, 222)
    add_second = proposals_append([sender.propose_add(CHANNEL, 0, second.key_package)])
    result = first.process_proposals(APPEND, add_second[1:], [111, 222])
    assert result is not None and result.welcome is not None
    first.process_commit(result.commit)
    roster = second.session.process_welcome(result.welcome, {"111", "222"})
    assert roster is not None and set(roster) == {111, 222}

    # libdave commits the next Add: its op 28 body is split and fed to both davey members.
    third = davey_member(sender, 333)
    third_kp = third.get_serialized_key_package()
    add_third = proposals_append([sender.propose_add(CHANNEL, 1, third_kp)])
    op28 = second.session.process_proposals(add_third, {"111", "222", "333"})
    assert op28 is not None
    commit, welcome = split_commit_welcome(op28)
    assert welcome is not None and commit + welcome == op28
    first.process_proposals(APPEND, add_third[1:], [111, 222, 333])
    first.process_commit(commit)
    third.process_welcome(welcome)
    assert isinstance(second.session.process_commit(commit), dict)
    assert first.epoch == third.epoch == 2

    # An external Remove of leaf 2 (user 333): a commit without a welcome.
    remove = proposals_append([sender.propose_remove(CHANNEL, 2, 2)])
    op28 = second.session.process_proposals(remove, {"111", "222"})
    assert op28 is not None
    commit, no_welcome = split_commit_welcome(op28)
    assert no_welcome is None and commit == op28
    first.process_proposals(APPEND, remove[1:], [111, 222])
    first.process_commit(commit)
    assert first.epoch == 3 and second.failures == []


def test_revoke_withdraws_a_proposal(sender: ExternalSender) -> None:
    member = davey_member(sender, 111)
    message = sender.propose_add(CHANNEL, 0, davey_member(sender, 222).get_serialized_key_package())
    assert member.process_proposals(APPEND, proposals_append([message])[1:], [111, 222])
    revoke = proposals_revoke([proposal_ref(message)])
    assert member.process_proposals(REVOKE, revoke[1:], [111, 222]) is None


def _bad_adds(sender: ExternalSender, key_package: bytes) -> dict[str, bytes]:
    tampered = bytearray(sender.propose_add(CHANNEL, 0, key_package))
    tampered[-5] ^= 0x01  # inside the DER signature
    return {
        "signature": bytes(tampered),
        "foreign key": ExternalSender().propose_add(CHANNEL, 0, key_package),
        "epoch": sender.propose_add(CHANNEL, 1, key_package),
        "group": sender.propose_add(CHANNEL + 1, 0, key_package),
    }


@pytest.mark.parametrize(
    ("case", "davey_error"),
    [
        ("signature", "InvalidSignature"),
        ("foreign key", "InvalidSignature"),
        ("epoch", "WrongEpoch"),
        ("group", "WrongGroupId"),
    ],
)
def test_davey_rejects_wrong_proposals(sender: ExternalSender, case: str, davey_error: str) -> None:
    member = davey_member(sender, 111)
    message = _bad_adds(sender, davey_member(sender, 222).get_serialized_key_package())[case]
    with pytest.raises(ValueError, match=davey_error):
        member.process_proposals(APPEND, proposals_append([message])[1:], [111, 222])


@pytest.mark.parametrize(
    ("case", "libdave_error"),
    [
        ("signature", "signature"),
        ("foreign key", "signature"),
        ("epoch", "not for this epoch"),
        ("group", "not for this group"),
    ],
)
def test_libdave_rejects_wrong_proposals(
    sender: ExternalSender, case: str, libdave_error: str
) -> None:
    member = LibdaveMember(sender, 111)
    message = _bad_adds(sender, davey_member(sender, 222).get_serialized_key_package())[case]
    assert member.session.process_proposals(proposals_append([message]), {"111", "222"}) is None
    assert len(member.failures) == 1 and libdave_error in member.failures[0][1]


# -- the op 28 splitter on malformed input -------------------------------------------------------


@pytest.fixture(scope="module")
def op28_body() -> bytes:
    sender = ExternalSender()
    committer = davey_member(sender, 111)
    kp = davey_member(sender, 222).get_serialized_key_package()
    result = committer.process_proposals(
        APPEND, proposals_append([sender.propose_add(CHANNEL, 0, kp)])[1:], [111, 222]
    )
    assert result is not None and result.welcome is not None
    return result.commit + result.welcome


def test_splitter_rejects_every_truncated_commit(op28_body: bytes) -> None:
    commit, _ = split_commit_welcome(op28_body)
    for size in range(len(commit)):
        with pytest.raises(MLSDecodeError):
            split_commit_welcome(op28_body[:size])


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (1, 2, "version"),
        (3, 2, "wire_format"),
        (21, 9, "sender_type"),
        (27, 2, "content_type is 2"),
    ],
)
def test_splitter_names_the_bad_field(
    op28_body: bytes, offset: int, value: int, message: str
) -> None:
    corrupted = bytearray(op28_body)
    corrupted[offset] = value
    with pytest.raises(MLSDecodeError, match=message):
        split_commit_welcome(bytes(corrupted))


@given(st.binary(max_size=300))
def test_splitter_on_random_bytes_raises_only_its_error(data: bytes) -> None:
    try:
        commit, welcome = split_commit_welcome(data)
    except MLSDecodeError:
        return
    assert commit + (welcome or b"") == data


@given(st.data())
def test_splitter_on_mutated_commit_raises_only_its_error(
    op28_body: bytes, data: st.DataObject
) -> None:
    mutated = bytearray(op28_body)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, 300))] = data.draw(st.integers(0, 255))
    try:
        commit, welcome = split_commit_welcome(bytes(mutated))
    except MLSDecodeError:
        return
    assert commit + (welcome or b"") == bytes(mutated)

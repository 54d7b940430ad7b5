"""DaveProtocol against an independent member: Discord's libdave (dave-py) in the same call.

`ExternalSender` (the fake server's MLS identity) plays the voice gateway; the tests route
frames by hand, as the gateway would: op 26 -> op 27 to every member -> op 28 -> split ->
op 29 to members / op 30 to the joiner -> op 23 -> op 22.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import dave
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voice.core import dave_messages as dm
from discord_voice.core.dave import SILENCE_FRAME, DaveProtocol, Frame
from discord_voice.core.voice_payloads import DaveMessage, decode_binary, decode_text
from discord_voice.errors import EncryptionError, LocalProtocolError, RemoteProtocolError
from discord_voice.testing.dave.mls import (
    ExternalSender,
    opaque,
    proposal_ref,
    proposals_append,
    proposals_revoke,
    split_commit_welcome,
)

CHANNEL = 1090123456789012345
ME = 158533742254751744
PEER = 256062279974387723
THIRD = 300000000000000003
OPUS = bytes(range(40, 100))


class Peer:
    """A libdave member: MLS session, plus encryptor/decryptor for media."""

    def __init__(self, sender: ExternalSender, user_id: int) -> None:
        self.user_id = user_id
        self.failures: list[tuple[str, str]] = []
        self.session = dave.Session(lambda where, why: self.failures.append((where, why)))
        self.sender = sender
        self.key_package = b""
        self.reset()

    def reset(self) -> None:
        self.session.init(1, CHANNEL, str(self.user_id))
        self.session.set_external_sender(self.sender.package())
        key_package = self.session.get_marshalled_key_package()
        assert key_package is not None
        self.key_package = key_package

    def ids(self, *users: int) -> set[str]:
        return {str(u) for u in users}

    def encrypt(self, frame: bytes) -> bytes:
        encryptor = dave.Encryptor()
        encryptor.set_key_ratchet(self.session.get_key_ratchet(str(self.user_id)))
        encryptor.assign_ssrc_to_codec(7, dave.Codec.opus)
        out = encryptor.encrypt(dave.MediaType.audio, 7, frame)
        assert out is not None
        return out

    def decrypt_from(self, user_id: int, frame: bytes) -> bytes | None:
        ratchet = self.session.get_key_ratchet(str(user_id))
        assert ratchet is not None
        decryptor = dave.Decryptor()
        decryptor.transition_to_key_ratchet(ratchet)
        return decryptor.decrypt(dave.MediaType.audio, frame)


def server_frame(op: int, payload: bytes, seq: int = 1) -> dm.DaveEvent:
    """Through the same decoders the voice gateway layer uses."""
    return dm.decode(decode_binary(seq.to_bytes(2, "big") + bytes([op]) + payload))


def server_json(op: int, d: dict[str, int]) -> dm.DaveEvent:
    _, message = decode_text(json.dumps({"op": op, "d": d}))
    assert isinstance(message, DaveMessage)
    return dm.decode(message)


def json_frames(frames: Iterable[Frame]) -> list[object]:
    return [json.loads(f) for f in frames if isinstance(f, str)]


def only_binary(frames: list[Frame], op: int) -> bytes:
    assert len(frames) == 1 and isinstance(frames[0], bytes) and frames[0][0] == op, frames
    return frames[0][1:]


@pytest.fixture
def sender() -> ExternalSender:
    return ExternalSender()


def started(sender: ExternalSender, *, sender_first: bool = False) -> tuple[DaveProtocol, bytes]:
    """Our client after op 4 (version 1) and op 25; returns it and its key package."""
    client = DaveProtocol(ME, CHANNEL)
    if sender_first:
        assert client.receive(server_frame(25, sender.package())) == []
    key_package = only_binary(client.start(1), 26)
    if not sender_first:
        assert client.receive(server_frame(25, sender.package())) == []
    return client, key_package


def joined_by_welcome(sender: ExternalSender, transition_id: int = 5) -> tuple[DaveProtocol, Peer]:
    """A libdave member commits our Add; we join from the Welcome (op 30) and execute."""
    client, key_package = started(sender)
    peer = Peer(sender, PEER)
    client.clients_connect([str(PEER)])
    op28 = peer.session.process_proposals(
        proposals_append([sender.propose_add(CHANNEL, 0, key_package)]), peer.ids(ME, PEER)
    )
    assert op28 is not None
    commit, welcome = split_commit_welcome(op28)
    assert welcome is not None
    assert isinstance(peer.session.process_commit(commit), dict)
    frames = client.receive(server_frame(30, transition_id.to_bytes(2, "big") + welcome))
    assert json_frames(frames) == [{"op": 23, "d": {"transition_id": transition_id}}]
    assert client.receive(server_json(22, {"transition_id": transition_id})) == []
    return client, peer


# -- alone ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender_first", [False, True])
def test_alone_client_sends_key_package_and_has_no_key(
    sender: ExternalSender, sender_first: bool
) -> None:
    client, key_package = started(sender, sender_first=sender_first)
    # A real key package: libdave commits an Add of it.
    peer = Peer(sender, PEER)
    op28 = peer.session.process_proposals(
        proposals_append([sender.propose_add(CHANNEL, 0, key_package)]), peer.ids(ME, PEER)
    )
    assert op28 is not None and peer.failures == []
    assert client.active and not client.ready and client.protocol_version == 1
    assert client.privacy_code is None
    with pytest.raises(EncryptionError, match="not ready"):
        client.transform(OPUS)
    assert client.transform(SILENCE_FRAME) == SILENCE_FRAME


def test_dave_off_is_passthrough(sender: ExternalSender) -> None:
    client = DaveProtocol(ME, CHANNEL)
    assert client.start(0) == []
    assert client.receive(server_frame(25, sender.package())) == []
    assert client.receive(server_frame(27, proposals_append([b"ignored"]))) == []
    assert not client.active and not client.ready and client.epoch is None
    assert client.transform(OPUS) == OPUS and client.decrypt(PEER, OPUS) == OPUS
    with pytest.raises(RemoteProtocolError, match="before dave started"):
        client.receive(server_frame(29, b"\x00\x01commit"))


# -- welcome path and media ------------------------------------------------------------------


def test_join_by_welcome_then_media_both_ways(sender: ExternalSender) -> None:
    client, peer = joined_by_welcome(sender)
    assert client.ready and client.active and client.epoch == 1
    assert peer.session.get_last_epoch_authenticator() is not None
    code = client.privacy_code
    assert code is not None and len(code) == 30 and code.isdigit()
    assert len(client.verification_code(PEER)) == 45

    sealed = client.transform(OPUS)
    assert sealed != OPUS and sealed.endswith(b"\xfa\xfa") and OPUS not in sealed
    assert peer.decrypt_from(ME, sealed) == OPUS
    assert client.transform(SILENCE_FRAME) == SILENCE_FRAME

    from_peer = peer.encrypt(OPUS)
    assert from_peer != OPUS and client.decrypt(PEER, from_peer) == OPUS
    with pytest.raises(EncryptionError, match="decrypt"):
        client.decrypt(PEER, from_peer)  # replay of the same nonce
    assert peer.failures == []


def test_ignores_proposals_before_external_sender() -> None:
    client = DaveProtocol(ME, CHANNEL)
    only_binary(client.start(1), 26)
    assert client.receive(server_frame(27, proposals_append([b"x"]))) == []


# -- commit path: a member joins and leaves -----------------------------------------------------


def test_member_joins_by_our_commit_and_leaves(sender: ExternalSender) -> None:
    client, peer = joined_by_welcome(sender)
    third = Peer(sender, THIRD)
    client.clients_connect([THIRD])
    proposals = proposals_append([sender.propose_add(CHANNEL, 1, third.key_package)])
    op28 = only_binary(client.receive(server_frame(27, proposals)), 28)
    # The peer stores the same proposals (and would race with its own commit; ours wins).
    assert peer.session.process_proposals(proposals, peer.ids(ME, PEER, THIRD)) is not None
    commit, welcome = split_commit_welcome(op28)
    assert welcome is not None
    frames = client.receive(server_frame(29, b"\x00\x09" + commit))
    assert json_frames(frames) == [{"op": 23, "d": {"transition_id": 9}}]
    assert isinstance(peer.session.process_commit(commit), dict)
    assert third.session.process_welcome(welcome, third.ids(ME, PEER, THIRD)) is not None
    assert client.receive(server_json(22, {"transition_id": 9})) == []
    assert client.epoch == 2
    assert third.decrypt_from(ME, client.transform(OPUS)) == OPUS

    # THIRD leaves: the gateway proposes removing leaf 2; our commit has no welcome.
    client.client_disconnect(THIRD)
    removal = proposals_append([sender.propose_remove(CHANNEL, 2, 2)])
    op28 = only_binary(client.receive(server_frame(27, removal)), 28)
    assert peer.session.process_proposals(removal, peer.ids(ME, PEER)) is not None
    commit, no_welcome = split_commit_welcome(op28)
    assert no_welcome is None
    assert json_frames(client.receive(server_frame(29, b"\x00\x0a" + commit))) == [
        {"op": 23, "d": {"transition_id": 10}}
    ]
    assert isinstance(peer.session.process_commit(commit), dict)
    assert client.epoch == 3
    assert peer.decrypt_from(ME, client.transform(OPUS)) == OPUS
    assert peer.failures == [] and third.failures == []


def test_peer_commit_applies_to_us(sender: ExternalSender) -> None:
    client, peer = joined_by_welcome(sender)
    third = Peer(sender, THIRD)
    client.clients_connect([THIRD])
    proposals = proposals_append([sender.propose_add(CHANNEL, 1, third.key_package)])
    assert client.receive(server_frame(27, proposals))  # our own commit loses the race
    op28 = peer.session.process_proposals(proposals, peer.ids(ME, PEER, THIRD))
    assert op28 is not None
    commit, _ = split_commit_welcome(op28)
    assert client.receive(server_frame(29, b"\x00\x0b" + commit))[0] == dm.transition_ready(11)
    assert isinstance(peer.session.process_commit(commit), dict)
    assert client.epoch == 2 and peer.decrypt_from(ME, client.transform(OPUS)) == OPUS


def test_unexpected_user_add_is_refused_and_state_kept(sender: ExternalSender) -> None:
    client, _peer = joined_by_welcome(sender)
    stranger = Peer(sender, THIRD)  # never announced by op 11
    proposals = proposals_append([sender.propose_add(CHANNEL, 1, stranger.key_package)])
    with pytest.raises(RemoteProtocolError, match="proposals refused"):
        client.receive(server_frame(27, proposals))
    assert client.ready and client.epoch == 1


def test_revoked_proposal_is_not_committed(sender: ExternalSender) -> None:
    client, _peer = joined_by_welcome(sender)
    client.clients_connect([THIRD])
    message = sender.propose_add(CHANNEL, 1, Peer(sender, THIRD).key_package)
    assert client.receive(server_frame(27, proposals_append([message])))
    assert client.receive(server_frame(27, proposals_revoke([proposal_ref(message)]))) == []


# -- failures and recovery ---------------------------------------------------------------------


@pytest.mark.parametrize("op", [29, 30])
def test_invalid_commit_or_welcome_sends_op31_and_a_fresh_key_package(
    sender: ExternalSender, op: int
) -> None:
    client, _peer = joined_by_welcome(sender)
    frames = client.receive(server_frame(op, b"\x00\x0cnot mls"))
    assert len(frames) == 2
    assert json.loads(frames[0]) == {"op": 31, "d": {"transition_id": 12}}
    fresh = only_binary(frames[1:], 26)
    assert not client.ready and client.epoch in (None, 0)
    assert client.receive(server_json(22, {"transition_id": 12})) == []  # nothing prepared

    # The gateway re-adds us: a new peer group built from the fresh key package welcomes us.
    peer = Peer(sender, PEER)
    op28 = peer.session.process_proposals(
        proposals_append([sender.propose_add(CHANNEL, 0, fresh)]), peer.ids(ME, PEER)
    )
    assert op28 is not None
    commit, welcome = split_commit_welcome(op28)
    assert welcome is not None and isinstance(peer.session.process_commit(commit), dict)
    assert client.receive(server_frame(30, b"\x00\x0d" + welcome)) == [dm.transition_ready(13)]
    assert client.receive(server_json(22, {"transition_id": 13})) == []
    assert peer.decrypt_from(ME, client.transform(OPUS)) == OPUS


def test_commit_for_another_epoch_is_invalid(sender: ExternalSender) -> None:
    client, peer = joined_by_welcome(sender)
    client.clients_connect([THIRD])
    proposals = proposals_append([sender.propose_add(CHANNEL, 1, Peer(sender, THIRD).key_package)])
    op28 = peer.session.process_proposals(proposals, peer.ids(ME, PEER, THIRD))
    assert op28 is not None
    commit, _ = split_commit_welcome(op28)
    # We never saw the proposals, so the commit references one we do not have.
    frames = client.receive(server_frame(29, b"\x00\x0e" + commit))
    assert json_frames(frames) == [{"op": 31, "d": {"transition_id": 14}}]
    only_binary(frames[1:], 26)


# -- transitions: id 0, downgrade and upgrade ----------------------------------------------------


def test_transition_id_zero_executes_at_once(sender: ExternalSender) -> None:
    client, key_package = started(sender)
    peer = Peer(sender, PEER)
    op28 = peer.session.process_proposals(
        proposals_append([sender.propose_add(CHANNEL, 0, key_package)]), peer.ids(ME, PEER)
    )
    assert op28 is not None
    _, welcome = split_commit_welcome(op28)
    assert welcome is not None
    assert client.receive(server_frame(30, b"\x00\x00" + welcome)) == []  # no op 23
    assert client.ready and client.epoch == 1


def test_sole_member_reset(sender: ExternalSender) -> None:
    client, _peer = joined_by_welcome(sender)
    only_binary(client.receive(server_json(24, {"protocol_version": 1, "epoch": 1})), 26)
    assert client.receive(server_json(21, {"protocol_version": 1, "transition_id": 0})) == []
    assert client.active and not client.ready


def test_downgrade_then_upgrade(sender: ExternalSender) -> None:
    client, peer = joined_by_welcome(sender)
    frames = client.receive(server_json(21, {"protocol_version": 0, "transition_id": 7}))
    assert frames == [dm.transition_ready(7)]
    assert client.transform(OPUS) != OPUS  # still encrypted until the execute
    assert client.receive(server_json(22, {"transition_id": 7})) == []
    assert client.protocol_version == 0 and not client.active and not client.ready
    assert client.transform(OPUS) == OPUS
    assert client.decrypt(PEER, OPUS) == OPUS  # passthrough for the others' plain media

    # Upgrade: a new group at epoch 1; we commit the peer's Add this time.
    fresh = only_binary(client.receive(server_json(24, {"protocol_version": 1, "epoch": 1})), 26)
    assert fresh and client.transform(OPUS) == OPUS  # version 0 until the transition executes
    assert client.decrypt(PEER, OPUS) == OPUS  # not end-to-end encrypted yet: clear media passes
    with pytest.raises(EncryptionError):  # but a frame marked as DAVE's is never passed as is
        client.decrypt(PEER, OPUS + b"\x00\xfa\xfa")
    peer.reset()
    proposals = proposals_append([sender.propose_add(CHANNEL, 0, peer.key_package)])
    op28 = only_binary(client.receive(server_frame(27, proposals)), 28)
    commit, welcome = split_commit_welcome(op28)
    assert welcome is not None
    assert client.receive(server_frame(29, b"\x00\x08" + commit)) == [dm.transition_ready(8)]
    assert peer.session.process_welcome(welcome, peer.ids(ME, PEER)) is not None
    assert client.receive(server_json(22, {"transition_id": 8})) == []
    assert client.protocol_version == 1 and client.ready
    assert peer.decrypt_from(ME, client.transform(OPUS)) == OPUS
    assert client.decrypt(PEER, OPUS) == OPUS  # the upgrade's window: a sender not switched yet


def test_start_from_version_zero_upgrades_on_prepare_epoch(sender: ExternalSender) -> None:
    client = DaveProtocol(str(ME), str(CHANNEL))
    assert client.start(0) == []
    assert client.receive(server_frame(25, sender.package())) == []
    key_package = only_binary(
        client.receive(server_json(24, {"protocol_version": 1, "epoch": 1})), 26
    )
    peer = Peer(sender, PEER)
    op28 = peer.session.process_proposals(
        proposals_append([sender.propose_add(CHANNEL, 0, key_package)]), peer.ids(ME, PEER)
    )
    assert op28 is not None
    commit, welcome = split_commit_welcome(op28)
    assert welcome is not None and isinstance(peer.session.process_commit(commit), dict)
    assert client.receive(server_frame(30, b"\x00\x03" + welcome)) == [dm.transition_ready(3)]
    assert not client.active and client.transform(OPUS) == OPUS
    client.receive(server_json(22, {"transition_id": 3}))
    assert client.ready and peer.decrypt_from(ME, client.transform(OPUS)) == OPUS


def test_duplicate_prepare_is_acknowledged_once(sender: ExternalSender) -> None:
    client, _peer = joined_by_welcome(sender)
    assert client.receive(server_json(21, {"protocol_version": 1, "transition_id": 4})) == [
        dm.transition_ready(4)
    ]
    assert client.receive(server_json(21, {"protocol_version": 1, "transition_id": 4})) == []
    assert client.receive(server_json(22, {"transition_id": 99})) == []  # unknown: ignored
    assert client.protocol_version == 1


# -- local misuse ------------------------------------------------------------------------------


def test_local_misuse() -> None:
    with pytest.raises(LocalProtocolError, match="user id"):
        DaveProtocol("me", CHANNEL)
    with pytest.raises(LocalProtocolError, match="channel id"):
        DaveProtocol(ME, 2**64)
    client = DaveProtocol(ME, CHANNEL)
    with pytest.raises(LocalProtocolError, match="version"):
        client.start(-1)
    with pytest.raises(EncryptionError, match="no group"):
        client.verification_code(PEER)
    client.start(0)
    with pytest.raises(LocalProtocolError, match="already started"):
        client.start(1)
    assert "secret" not in repr(client) and "DaveProtocol(" in repr(client)


# -- garbage from the server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def member() -> DaveProtocol:
    """One client in a two-member group, shared by the fuzz tests below (they never break it)."""
    client, _peer = joined_by_welcome(ExternalSender())
    return client


@settings(max_examples=60)
@given(st.binary(max_size=200))
def test_garbage_proposals_refused_with_the_protocol_error(
    member: DaveProtocol, data: bytes
) -> None:
    for revoke in (False, True):
        vector = opaque(data)
        try:
            frames = member.receive(dm.Proposals(revoke=revoke, data=vector))
        except RemoteProtocolError:
            frames = []
        assert frames == []
    assert member.ready and member.epoch == 1


@settings(max_examples=40)
@given(st.sampled_from([29, 30]), st.binary(max_size=200))
def test_garbage_commit_or_welcome_always_recovers(op: int, data: bytes) -> None:
    client, _peer = joined_by_welcome(ExternalSender())
    frames = client.receive(server_frame(op, b"\x00\x01" + data + b"\x00"))
    assert frames[0] == dm.invalid_commit_welcome(1) and len(frames) == 2
    only_binary(frames[1:], 26)


# -- the engine is replaceable -------------------------------------------------------------------


class ScriptedEngine:
    """An `Engine` without MLS: records calls, refuses what it is told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.ready = False
        self.epoch: int | None = None
        self.privacy_code: str | None = None
        self.refuse_commit = False

    def reinit(self, protocol_version: int, user_id: int, channel_id: int) -> None:
        self.calls.append(("reinit", protocol_version, user_id, channel_id))

    def set_external_sender(self, package: bytes) -> None:
        self.calls.append(("external_sender", package))

    def key_package(self) -> bytes:
        return b"KP%d" % len(self.calls)

    def process_proposals(
        self, revoke: bool, proposals: bytes, expected_user_ids: Iterable[int]
    ) -> tuple[bytes, bytes | None] | None:
        self.calls.append(("proposals", revoke, proposals, tuple(expected_user_ids)))
        return (b"C", b"W")

    def process_commit(self, commit: bytes) -> None:
        if self.refuse_commit:
            raise RemoteProtocolError("refused")
        self.ready = True

    def process_welcome(self, welcome: bytes) -> None:
        self.ready = True

    def set_passthrough(self, enabled: bool, expiry: int) -> None:
        self.calls.append(("passthrough", enabled, expiry))

    def encrypt_opus(self, frame: bytes) -> bytes:
        return b"E(" + frame + b")"

    def decrypt_opus(self, user_id: int, frame: bytes) -> bytes:
        return frame

    def verification_code(self, user_id: int) -> str:
        return "0" * 45


def test_scripted_engine_sees_the_expected_users_and_the_rules() -> None:
    engine = ScriptedEngine()
    client = DaveProtocol(ME, CHANNEL, engine=engine)
    assert client.receive(dm.ExternalSenderPackage(b"ES")) == []  # buffered before start
    assert client.start(1) == [b"\x1aKP2"]
    assert engine.calls == [("reinit", 1, ME, CHANNEL), ("external_sender", b"ES")]
    client.clients_connect(["5", 7])
    client.client_disconnect("7")
    assert client.receive(dm.Proposals(revoke=True, data=b"\x01x")) == [b"\x1cCW"]
    assert engine.calls[-1] == ("proposals", True, b"\x01x", (5, ME))
    assert client.receive(dm.AnnounceCommit(2, b"c")) == [dm.transition_ready(2)]
    assert client.transform(b"op") == b"E(op)"
    engine.refuse_commit = True
    assert client.receive(dm.AnnounceCommit(3, b"c")) == [dm.invalid_commit_welcome(3), b"\x1aKP5"]
    assert engine.calls[-2:] == [("reinit", 1, ME, CHANNEL), ("external_sender", b"ES")]
    assert client.receive(dm.PrepareTransition(0, 4)) == [dm.transition_ready(4)]
    assert engine.calls[5:] == [("passthrough", True, 10)]
    client.receive(dm.ExecuteTransition(4))
    assert not client.active and client.transform(b"op") == b"op"

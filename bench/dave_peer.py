"""Benchmarks' DAVE setup: our DAVE session joined by welcome into a group with one libdave
member (dave-py), as the benches of the send and the receive path both need it. Needs dave-py
(the testing extra)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from discord_voice.core import dave_messages as dm
from discord_voice.core.voice_payloads import decode_binary

if TYPE_CHECKING:
    import dave

__all__ = ["ME", "PEER", "CHANNEL", "join_with_peer"]

ME, PEER, CHANNEL = 158533742254751744, 256062279974387723, 1090123456789012345

#: ``start(version)`` -> our frames (the first our key package); ``receive(event)``;
#: ``clients_connect(user_ids)``: the three steps of our session the setup drives.
Start = Callable[[int], Sequence[bytes | str]]
Receive = Callable[[dm.DaveEvent], object]
Connect = Callable[[list[str]], object]


def join_with_peer(start: Start, receive: Receive, clients_connect: Connect) -> dave.Session:
    """Start our session (user `ME`, channel `CHANNEL`), let the member `PEER` commit our add
    and welcome us, execute the transition; returns the member's libdave session."""
    import dave

    from discord_voice.testing.dave.mls import (
        ExternalSender,
        proposals_append,
        split_commit_welcome,
    )

    def server_frame(op: int, payload: bytes) -> dm.DaveEvent:
        return dm.decode(decode_binary(b"\x00\x01" + bytes([op]) + payload))

    sender = ExternalSender()
    key_package = start(1)[0]
    assert isinstance(key_package, bytes)
    receive(server_frame(25, sender.package()))
    clients_connect([str(PEER)])
    peer = dave.Session(lambda where, why: None)
    peer.init(1, CHANNEL, str(PEER))
    peer.set_external_sender(sender.package())
    op28 = peer.process_proposals(
        proposals_append([sender.propose_add(CHANNEL, 0, key_package[1:])]),
        {str(ME), str(PEER)},
    )
    assert op28 is not None
    commit, welcome = split_commit_welcome(op28)
    assert welcome is not None
    peer.process_commit(commit)
    receive(server_frame(30, (5).to_bytes(2, "big") + welcome))
    receive(dm.ExecuteTransition(transition_id=5))
    return peer

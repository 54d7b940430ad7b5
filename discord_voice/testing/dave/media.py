"""What the fake's UDP server learns from DAVE about one frame of a channel's call.

A `FrameOpener` belongs to one channel's `group.DaveGroup` and is used under its lock: it keeps
a libdave decryptor per sender, fed with the key ratchets of the group's observer (the first
libdave member in the group) after each commit or welcome it processed, and it applies the
plaintext rule: plaintext is fine from a member not (yet) in the established group (a lone or
pending client sends in passthrough, as Discord's own clients do); from a member whose
transition into the group executed it is a violation, after `PLAINTEXT_GRACE` for frames
already in flight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import dave

from discord_voice.testing.dave import wire
from discord_voice.testing.dave.members import LibdaveMember, Member

__all__ = ["PLAINTEXT_GRACE", "FrameOpener", "OpenedFrame"]

#: Seconds after op 22 during which plaintext frames already in flight are tolerated.
PLAINTEXT_GRACE = 0.5


@dataclass(frozen=True)
class OpenedFrame:
    """What the UDP server learns from DAVE about one transport-decrypted payload."""

    kind: str  # "decrypted", "silence", "plaintext", "undecryptable" (no libdave member)
    opus: bytes
    error: str = ""  # DAVE decryption failed: the frame is not recorded
    violation: str = ""


class FrameOpener:
    """libdave decryptors for one channel's senders, by user id."""

    def __init__(self) -> None:
        self._decryptors: dict[int, dave.Decryptor] = {}

    def refresh(self, observer: LibdaveMember, in_group: list[Member]) -> None:
        """Hand every member's new key ratchet (as `observer` now knows it) to its decryptor;
        the previous keys stay valid for libdave's transition expiry, so frames sent with either
        epoch's key decrypt across the transition."""
        for m in in_group:
            if m is not observer:
                ratchet = observer.key_ratchet(m.user_id)
                if ratchet is not None:
                    decryptor = self._decryptors.setdefault(m.user_id, dave.Decryptor())
                    decryptor.transition_to_key_ratchet(ratchet)

    def passthrough(self) -> None:
        """The call was downgraded to protocol 0: every decryptor passes frames through."""
        for decryptor in self._decryptors.values():
            decryptor.transition_to_passthrough_mode(True)

    def open(self, sender: Member | None, user_id: int, payload: bytes) -> OpenedFrame:
        """DAVE-decrypt one transport-decrypted frame from `user_id` (`sender`: its member in
        the group, if it is one) with libdave's ratchet."""
        if payload == wire.SILENCE_FRAME:
            return OpenedFrame("silence", payload)
        if not wire.is_protocol_frame(payload):
            return OpenedFrame("plaintext", payload, violation=_plaintext_violation(sender))
        if sender is not None:
            sender.sent_dave = True
        decryptor = self._decryptors.get(user_id)
        if decryptor is None:
            return OpenedFrame("undecryptable", b"")
        plain = decryptor.decrypt(dave.MediaType.audio, payload)
        if plain is None:
            return OpenedFrame("decrypted", b"", error="DAVE decryption failed")
        return OpenedFrame("decrypted", bytes(plain))


def _plaintext_violation(sender: Member | None) -> str:
    if sender is None or sender.encrypting_since is None:
        return ""
    late = time.monotonic() - sender.encrypting_since
    if sender.sent_dave or late > PLAINTEXT_GRACE:
        return (
            f"plaintext audio frame from user {sender.user_id}, {late:.3f} s after its "
            "DAVE transition executed"
        )
    return ""

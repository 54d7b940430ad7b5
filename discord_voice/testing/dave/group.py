"""One channel's DAVE group as the fake voice gateway sees it: the gateway is the MLS external
sender (op 25), proposes Adds/Removes (op 27, to every member, at the group's current epoch),
keeps the first valid commit per epoch (ops 29 to members, 30 to joiners), waits for every
member's op 23 and then executes (op 22). Also: op 31 recovery (remove and re-add), sole-member
reset (ops 24 + 21 with transition 0), downgrade to protocol 0 and upgrade back.

Every method takes the group's lock; nothing here does network I/O (clients get their messages
through their connection's outbox). Violations are collected and handed to the caller, who
records them after the lock is released (the recorder lock is never taken under this one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import dave

from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing.dave import wire as dave_wire
from discord_voice.testing.dave.commits import DaveGroupCore
from discord_voice.testing.dave.members import LibdaveMember, Member
from discord_voice.testing.dave.mls import MLSDecodeError

__all__ = ["DaveGroup", "DaveState", "OpenedFrame"]

_T = TypeVar("_T")

#: Seconds after op 22 during which plaintext frames already in flight are tolerated.
PLAINTEXT_GRACE = 0.5


@dataclass(frozen=True)
class DaveState:
    """A snapshot of a channel's DAVE group (server view)."""

    channel_id: int
    version: int
    epoch: int  # 0 while the group is not established
    members: tuple[int, ...]  # user ids in the established group
    pending: tuple[int, ...]  # connected user ids not (yet) in it
    transition_id: int | None  # the transition in flight
    executed: tuple[int, ...]  # every executed transition id, in order
    invalid_reports: tuple[tuple[int, int], ...]  # (user id, transition id) of each op 31

    @property
    def protocol_version(self) -> int:
        """Same as `version`: the call's DAVE protocol version (0 after a downgrade)."""
        return self.version


@dataclass(frozen=True)
class OpenedFrame:
    """What the UDP server learns from DAVE about one transport-decrypted payload."""

    kind: str  # "decrypted", "silence", "plaintext", "undecryptable" (no libdave member)
    opus: bytes
    error: str = ""  # DAVE decryption failed: the frame is not recorded
    violation: str = ""


class DaveGroup(DaveGroupCore):
    """The server side of one channel's DAVE session: events from members and scripting."""

    # -- events (each returns the violations to record) -----------------------------------------

    def join(self, member: Member) -> list[str]:
        """A member connects (a client after Session Description, or a libdave member)."""
        with self._lock:
            others = [m.user_id for m in self.members]
            for m in self.members:
                m.send_json(VoiceOp.CLIENTS_CONNECT, {"user_ids": [str(member.user_id)]})
            self.members.append(member)
            if others:
                member.send_json(VoiceOp.CLIENTS_CONNECT, {"user_ids": [str(u) for u in others]})
            if self.version >= 1:
                member.send_binary(VoiceOp.DAVE_MLS_EXTERNAL_SENDER, self.sender.package())
                if isinstance(member, LibdaveMember):
                    member.key_package = member.start(self.version, self.sender.package())
            return self._settle()

    def leave(self, member: Member) -> list[str]:
        with self._lock:
            if member not in self.members:
                return self._settle()
            self.members.remove(member)
            if not member.in_group:
                self._revoke_adds_of(member)
            self._drop_from_group(member)
            for m in self.members:
                m.send_json(VoiceOp.CLIENT_DISCONNECT, {"user_id": str(member.user_id)})
            if self.epoch and len(self.members) <= 1:
                self._sole_member_reset()
            return self._settle()

    def key_package(self, member: Member, key_package: bytes) -> list[str]:
        with self._lock:
            try:
                identity = dave_wire.key_package_identity(key_package)
            except MLSDecodeError as exc:
                self._violations.append(f"op 26 key package does not parse: {exc}")
                return self._settle()
            if identity != member.user_id.to_bytes(8, "big"):
                self._violations.append(
                    f"op 26 key package identity {identity.hex()} is not user {member.user_id}"
                )
                return self._settle()
            if self.version < 1:
                self._violations.append("op 26 key package sent while the call is at version 0")
            if member.in_group:  # a new key package while in the group: remove and re-add
                self._drop_from_group(member)
            member.key_package = bytes(key_package)
            return self._settle()

    def commit_welcome(self, member: Member, body: bytes) -> list[str]:
        with self._lock:
            self._on_commit(member, bytes(body))
            return self._settle()

    def ready(self, member: Member, transition_id: int) -> list[str]:
        with self._lock:
            t = self._transition
            if t is not None and t.transition_id == transition_id:
                t.waiting.discard(member)
            elif transition_id >= self._next_tid or transition_id == 0:
                self._violations.append(f"op 23 for transition {transition_id}, never announced")
            return self._settle()

    def invalid(self, member: Member, transition_id: int) -> list[str]:
        """Op 31: the member could not process a commit or welcome; remove and re-add it."""
        with self._lock:
            self._invalid.append((member.user_id, transition_id))
            self._drop_from_group(member)
            return self._settle()

    # -- scripting -----------------------------------------------------------------------------

    def garbage_next_commit(self) -> list[str]:
        with self._lock:
            self._garbage_next_commit = True
            return self._settle()

    def downgrade(self) -> list[str]:
        """Op 21 to protocol version 0 for everyone; op 22 once all are ready."""
        with self._lock:
            if self.version == 0 or self._transition is not None:
                raise RuntimeError("downgrade needs a call at version 1 with no transition")
            self._batch = None
            t = self._begin_transition("downgrade", list(self.members))
            for m in self.members:
                m.send_json(
                    VoiceOp.DAVE_PREPARE_TRANSITION,
                    {"protocol_version": 0, "transition_id": t.transition_id},
                )
            return self._settle()

    def upgrade(self) -> list[str]:
        """Op 24 (version 1, epoch 1): everyone makes a new group; the usual flow follows."""
        with self._lock:
            if self.version != 0 or self._transition is not None:
                raise RuntimeError("upgrade needs a call at version 0 with no transition")
            self.version = 1
            self._reset_group()
            for m in self.members:
                m.send_json(VoiceOp.DAVE_PREPARE_EPOCH, {"protocol_version": 1, "epoch": 1})
                if isinstance(m, LibdaveMember):
                    m.key_package = m.start(1, self.sender.package())
            return self._settle()

    def state(self) -> DaveState:
        with self._lock:
            t = self._transition
            return DaveState(
                channel_id=self.channel_id,
                version=self.version,
                epoch=self.epoch,
                members=tuple(m.user_id for m in self.members if m.in_group),
                pending=tuple(m.user_id for m in self.members if not m.in_group),
                transition_id=None if t is None else t.transition_id,
                executed=tuple(self._executed),
                invalid_reports=tuple(self._invalid),
            )

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` under the group lock (for reading a libdave member's state)."""
        with self._lock:
            return fn()

    # -- media ---------------------------------------------------------------------------------

    def open_frame(self, user_id: int, payload: bytes) -> OpenedFrame:
        """DAVE-decrypt one transport-decrypted frame from `user_id` with libdave's ratchet.

        Plaintext is fine from a member not (yet) in the established group (a lone or pending
        client sends in passthrough, as Discord's own clients do); from a member whose
        transition into the group executed it is a violation.
        """
        with self._lock:
            sender = next((m for m in self.members if m.user_id == user_id), None)
            if payload == dave_wire.SILENCE_FRAME:
                return OpenedFrame("silence", payload)
            if not dave_wire.is_protocol_frame(payload):
                return OpenedFrame("plaintext", payload, violation=self._plaintext(sender))
            if sender is not None:
                sender.sent_dave = True
            decryptor = self._decryptors.get(user_id)
            if decryptor is None:
                return OpenedFrame("undecryptable", b"")
            plain = decryptor.decrypt(dave.MediaType.audio, payload)
            if plain is None:
                return OpenedFrame("decrypted", b"", error="DAVE decryption failed")
            return OpenedFrame("decrypted", bytes(plain))

    def _plaintext(self, sender: Member | None) -> str:
        if sender is None or sender.encrypting_since is None:
            return ""
        late = time.monotonic() - sender.encrypting_since
        if sender.sent_dave or late > PLAINTEXT_GRACE:
            return (
                f"plaintext audio frame from user {sender.user_id}, {late:.3f} s after its "
                "DAVE transition executed"
            )
        return ""

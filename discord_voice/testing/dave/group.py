"""One channel's DAVE group as the fake voice gateway sees it: the gateway is the MLS external
sender (op 25), proposes Adds/Removes (op 27, to every member, at the group's current epoch),
keeps the first valid commit per epoch (ops 29 to members, 30 to joiners), waits for every
member's op 23 and then executes (op 22). Also: op 31 recovery (remove and re-add), sole-member
reset (ops 24 + 21 with transition 0), downgrade to protocol 0 and upgrade back.

`DaveGroup` holds the group state (server view: epoch, leaves, members in the group) and the
machinery that moves it forward: batching proposals per epoch (op 27, to every member), choosing
the first valid commit of an epoch by the ProposalRefs it names, announcing it (ops 29/30),
waiting for op 23 from everyone and executing (op 22), and feeding libdave's key ratchets to
the UDP side's decryptors (`media.FrameOpener`). A speaking libdave member (a `FakeSpeaker` in a
DAVE channel) encrypts with its own key ratchet, switched when its transition executes (or, with
``key_switch="commit"``, as soon as it processed the commit or welcome): `encrypt`,
`settled_for`.

Every public method takes the group's lock (the private ones run with it held); nothing here does
network I/O (clients get their messages through their connection's outbox). Violations are
collected and handed to the caller, who records them after the lock is released (the recorder
lock is never taken under this one).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing.dave import wire
from discord_voice.testing.dave.media import FrameOpener, OpenedFrame
from discord_voice.testing.dave.members import LibdaveMember, Member, transition_frame
from discord_voice.testing.dave.mls import (
    ExternalSender,
    MLSDecodeError,
    proposal_ref,
    proposals_append,
    proposals_revoke,
    split_commit_welcome,
)

__all__ = ["DaveGroup", "DaveState"]

_T = TypeVar("_T")


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


@dataclass
class _Batch:
    """Proposals in flight for one epoch, by ProposalRef (a commit names those it applies)."""

    epoch: int
    adds: dict[bytes, Member]
    removes: dict[bytes, int]
    committers: list[Member]  # who got the proposals and may commit
    revoked: set[bytes] = field(default_factory=set)


@dataclass
class _Transition:
    transition_id: int
    kind: str  # "commit", "downgrade"
    waiting: set[Member] = field(default_factory=set)
    members: list[Member] = field(default_factory=list)


class DaveGroup:
    """The server side of one channel's DAVE session: events from members and scripting."""

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self.sender = ExternalSender()
        self._lock = threading.RLock()
        self._violations: list[str] = []
        self._todo: deque[Callable[[], None]] = deque()
        self.version = 1
        self.members: list[Member] = []
        self.epoch = 0
        self._leaves: list[Member | None] = []
        self._stale: dict[int, Member] = {}  # leaves to remove, with who held them
        self._batch: _Batch | None = None
        self._transition: _Transition | None = None
        self._next_tid = 1
        self._executed: list[int] = []
        self._invalid: list[tuple[int, int]] = []
        self._garbage_next_commit = False
        self._frames = FrameOpener()  # what the UDP server decrypts with

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
                identity = wire.key_package_identity(key_package)
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

    def settled_for(self, member: LibdaveMember) -> bool:
        """Whether a speaking member's next frame goes out with the key every member will hold:
        nothing in flight (no proposals, no transition) and it is in the group with its key, or
        the call is at protocol version 0."""
        with self._lock:
            if self._transition is not None or self._batch is not None:
                return False
            return self.version == 0 or (member.in_group and member.has_key)

    def encrypt(self, member: LibdaveMember, ssrc: int, frame: bytes) -> bytes | None:
        """A speaking member's frame as it sends it: DAVE-encrypted with its current key, as
        is at protocol version 0; None when it has no key yet."""
        with self._lock:
            if self.version == 0 and self._transition is None:
                return bytes(frame)
            if not member.has_key:
                return None
            return member.encrypt(ssrc, frame)

    def open_frame(self, user_id: int, payload: bytes) -> OpenedFrame:
        """DAVE view of one transport-decrypted frame from `user_id` (see `media.FrameOpener`)."""
        with self._lock:
            sender = next((m for m in self.members if m.user_id == user_id), None)
            return self._frames.open(sender, user_id, payload)

    # -- internals (lock held) -----------------------------------------------------------------

    def _settle(self) -> list[str]:
        """Run deferred libdave reactions and start the next batch until nothing moves."""
        while True:
            while self._todo:
                self._todo.popleft()()
            t = self._transition
            if t is not None and not t.waiting:
                self._execute(t)
                continue
            if not self._next_batch():
                break
        violations, self._violations = self._violations, []
        return violations

    def _recognized(self) -> set[int]:
        return {m.user_id for m in self.members}

    def _drop_from_group(self, member: Member) -> None:
        if member.in_group and member.leaf is not None:
            self._stale[member.leaf] = member
        member.in_group = False
        if self._transition is not None:
            self._transition.waiting.discard(member)
        member.encrypting_since, member.sent_dave = None, False
        if self.epoch and not any(m.in_group for m in self.members):
            # Nobody holds the group any more: start over with the key packages already sent.
            self._reset_group(forget_key_packages=False)

    def _reset_group(self, *, forget_key_packages: bool = True) -> None:
        """Back to an unestablished group (members were told to make new key packages, unless
        `forget_key_packages` is False)."""
        self.epoch = 0
        self._leaves, self._stale, self._batch = [], {}, None
        for m in self.members:
            m.in_group, m.leaf = False, None
            m.encrypting_since, m.sent_dave = None, False
            if forget_key_packages:
                m.key_package = None

    def _sole_member_reset(self) -> None:
        self._reset_group()
        self._transition = None
        for m in self.members:
            m.send_json(VoiceOp.DAVE_PREPARE_EPOCH, {"protocol_version": self.version, "epoch": 1})
            m.send_json(
                VoiceOp.DAVE_PREPARE_TRANSITION,
                {"protocol_version": self.version, "transition_id": 0},
            )
            if isinstance(m, LibdaveMember):
                m.key_package = m.start(self.version, self.sender.package())

    def _next_batch(self) -> bool:
        """Send the next proposals if nothing is in flight; True if something was sent."""
        if self._batch is not None or self._transition is not None or self.version < 1:
            return False
        if self.epoch == 0:
            pending = [m for m in self.members if m.key_package is not None]
            if len(pending) < 2:
                return False
            initial = {joiner: self._add(0, joiner) for joiner in pending}
            for m in pending:
                self._propose(m, [msg for p, msg in initial.items() if p is not m])
            by_ref = {proposal_ref(msg): joiner for joiner, msg in initial.items()}
            self._batch = _Batch(0, by_ref, {}, pending)
            return True
        # A member still connected (op 31, new key package) is removed in the same commit that
        # re-adds it, so its removal waits for its new key package.
        removes = sorted(
            leaf
            for leaf, m in self._stale.items()
            if m not in self.members or m.key_package is not None
        )
        adds = [m for m in self.members if m.key_package is not None and not m.in_group]
        if not removes and not adds:
            return False
        remove_msgs = {
            r: self.sender.propose_remove(self.channel_id, self.epoch, r) for r in removes
        }
        add_msgs = {m: self._add(self.epoch, m) for m in adds}
        committers = [m for m in self.members if m.in_group]
        for m in committers:
            self._propose(m, [*remove_msgs.values(), *add_msgs.values()])
        self._batch = _Batch(
            self.epoch,
            {proposal_ref(msg): m for m, msg in add_msgs.items()},
            {proposal_ref(msg): r for r, msg in remove_msgs.items()},
            committers,
        )
        return True

    def _add(self, epoch: int, member: Member) -> bytes:
        assert member.key_package is not None
        return self.sender.propose_add(self.channel_id, epoch, member.key_package)

    def _propose(self, member: Member, messages: list[bytes]) -> None:
        self._send_proposals(member, proposals_append(messages))

    def _send_proposals(self, member: Member, body: bytes) -> None:
        """Op 27 to one member; a libdave member processes it (and may commit) right after."""
        member.send_binary(VoiceOp.DAVE_MLS_PROPOSALS, body)
        if isinstance(member, LibdaveMember):
            recognized = self._recognized()

            def react() -> None:
                op28 = member.process_proposals(body, recognized)
                if op28 is not None and member.commits:
                    self._on_commit(member, op28)

            self._todo.append(react)

    def _revoke_adds_of(self, member: Member) -> None:
        """A pending member left while its Add is in flight: revoke that proposal (op 27)."""
        batch = self._batch
        if batch is None:
            return
        refs = [ref for ref, m in batch.adds.items() if m is member]
        if member in batch.committers:
            batch.committers.remove(member)
        if not refs:
            return
        for ref in refs:
            del batch.adds[ref]
            batch.revoked.add(ref)
        body = proposals_revoke(refs)
        for m in batch.committers:
            self._send_proposals(m, body)
        if (batch.epoch == 0 and len(batch.committers) < 2) or not (batch.adds or batch.removes):
            self._batch = None

    def _on_commit(self, member: Member, body: bytes) -> None:
        batch = self._batch
        if batch is None or member not in batch.committers:
            return  # a late commit for an epoch already decided: not broadcast
        try:
            commit, welcome = split_commit_welcome(body)
            group, epoch = wire.commit_group_epoch(commit)
            refs = wire.commit_proposal_refs(commit)
        except MLSDecodeError as exc:
            self._violations.append(f"op 28 from user {member.user_id} does not parse: {exc}")
            return
        if group != self.channel_id or epoch != batch.epoch:
            return  # a past or future epoch's commit is never broadcast
        if any(r in batch.revoked for r in refs):
            return  # sent before it processed our revoke: stale, never broadcast
        unknown = [r for r in refs if r not in batch.adds and r not in batch.removes]
        if unknown or not refs:
            self._violations.append(
                f"op 28 from user {member.user_id} commits {len(unknown)} proposals the gateway "
                f"did not send (of {len(refs)}): not broadcast"
            )
            return
        joiners = [batch.adds[r] for r in refs if r in batch.adds]
        removes = [batch.removes[r] for r in refs if r in batch.removes]
        if member in joiners:
            self._violations.append(f"op 28 from user {member.user_id} commits its own add")
            return
        existing = [member] if batch.epoch == 0 else [m for m in batch.committers if m.in_group]
        if joiners and welcome is None:
            self._violations.append(f"op 28 from user {member.user_id} adds members, no welcome")
            return
        self._batch = None
        self._apply(existing, joiners, removes)
        t = self._begin_transition("commit", [m for m in existing + joiners if m in self.members])
        self._announce(t, existing, joiners, commit, welcome or b"")

    def _apply(self, existing: list[Member], joiners: list[Member], removes: list[int]) -> None:
        if self.epoch == 0:
            self._leaves = list(existing)
        for leaf in removes:
            if leaf < len(self._leaves):
                self._leaves[leaf] = None
        for leaf in removes:
            self._stale.pop(leaf, None)
        for m in existing:
            m.in_group, m.key_package = True, None
        for m in joiners:
            slot = next((i for i, v in enumerate(self._leaves) if v is None), len(self._leaves))
            if slot == len(self._leaves):
                self._leaves.append(None)
            self._leaves[slot] = m
            m.in_group, m.key_package = True, None
        for i, slot_member in enumerate(self._leaves):
            if slot_member is not None:
                slot_member.leaf = i
        while self._leaves and self._leaves[-1] is None:
            self._leaves.pop()
        self.epoch += 1
        for m in joiners + existing:
            if m not in self.members:  # left while its add was in flight: remove it next time
                self._drop_from_group(m)

    def _begin_transition(self, kind: str, members: list[Member]) -> _Transition:
        tid = self._next_tid
        self._next_tid = tid + 1 if tid < 0xFFFF else 1
        waiting = {m for m in members if not isinstance(m, LibdaveMember)}
        self._transition = _Transition(tid, kind, waiting, members)
        return self._transition

    def _announce(
        self,
        t: _Transition,
        existing: list[Member],
        joiners: list[Member],
        commit: bytes,
        welcome: bytes,
    ) -> None:
        garbage = self._garbage_next_commit and any(
            not isinstance(m, LibdaveMember) and m in self.members for m in existing
        )
        if garbage:  # armed by send_invalid_commit: spent on the first op 29 a client gets
            self._garbage_next_commit = False
        sent = commit[:-8] + bytes(b ^ 0x5A for b in commit[-8:]) if garbage else commit
        for m in existing:
            if m not in self.members:
                continue
            if isinstance(m, LibdaveMember):
                self._todo.append(partial(self._libdave_commit, m, t, commit))
            m.send_binary(
                VoiceOp.DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION, transition_frame(t.transition_id, sent)
            )
        for m in joiners:
            if m not in self.members:
                continue
            if isinstance(m, LibdaveMember):
                self._todo.append(partial(self._libdave_welcome, m, t, welcome))
            m.send_binary(VoiceOp.DAVE_MLS_WELCOME, transition_frame(t.transition_id, welcome))

    def _libdave_commit(self, member: LibdaveMember, t: _Transition, commit: bytes) -> None:
        if member.process_commit(commit):
            self._refresh_decryptors(member)
            if member.key_switch == "commit":
                member.use_current_key()
        else:
            self._libdave_failed(member, f"the commit of transition {t.transition_id}")

    def _libdave_welcome(self, member: LibdaveMember, t: _Transition, welcome: bytes) -> None:
        if member.process_welcome(welcome, self._recognized()):
            self._refresh_decryptors(member)
            if member.key_switch == "commit":
                member.use_current_key()
        else:
            self._libdave_failed(member, f"the welcome of transition {t.transition_id}")

    def _libdave_failed(self, member: LibdaveMember, what: str) -> None:
        """libdave could not process what a client committed: a violation (the client's commit
        or welcome is bad, or the implementations disagree); recover as a client would after
        op 31 (new key package, removed and re-added)."""
        self._violations.append(f"{member.name} rejected {what}: {member.failures[-1:]}")
        self._invalid.append((member.user_id, self._transition_id_or_zero()))
        self._drop_from_group(member)
        member.key_package = member.start(self.version, self.sender.package())

    def _transition_id_or_zero(self) -> int:
        return 0 if self._transition is None else self._transition.transition_id

    def _execute(self, t: _Transition) -> None:
        self._transition = None
        self._executed.append(t.transition_id)
        for m in self.members:
            if (m in t.members and m.in_group) or t.kind == "downgrade":
                m.send_json(VoiceOp.DAVE_EXECUTE_TRANSITION, {"transition_id": t.transition_id})
        if t.kind == "downgrade":
            self.version = 0
            self._reset_group()
            self._frames.passthrough()
            for m in self.members:
                if isinstance(m, LibdaveMember):
                    m.use_passthrough()
            return
        now = time.monotonic()
        for m in t.members:
            if m.in_group and m.encrypting_since is None:
                m.encrypting_since = now  # from now on its audio must be DAVE frames
            if isinstance(m, LibdaveMember) and m.in_group and m.key_switch == "execute":
                m.use_current_key()  # a speaking member switches here, as Discord's clients do

    def _refresh_decryptors(self, member: LibdaveMember) -> None:
        """After the observer (the first libdave member in the group) processed a commit or
        welcome, hand every other member's new key ratchet to the UDP side's decryptors."""
        observer = next(
            (m for m in self.members if isinstance(m, LibdaveMember) and m.in_group), None
        )
        if observer is member:
            self._frames.refresh(observer, [m for m in self.members if m.in_group])

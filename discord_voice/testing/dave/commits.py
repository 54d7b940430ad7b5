"""How the fake DAVE gateway turns key packages into proposals, commits and transitions.

`DaveGroupCore` holds one channel's group state (server view: epoch, leaves, members in the
group) and its internals: batching proposals per epoch (op 27, to every member), choosing the
first valid commit of an epoch by the ProposalRefs it names, announcing it (ops 29/30), waiting
for op 23 from everyone and executing (op 22), and feeding libdave's key ratchets to the UDP
side's decryptors. `dave_group.DaveGroup` adds the locked public events. Every method here runs
with the group's lock held.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import dave

from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing.dave import wire as dave_wire
from discord_voice.testing.dave.members import LibdaveMember, Member, transition_frame
from discord_voice.testing.dave.mls import (
    ExternalSender,
    MLSDecodeError,
    proposal_ref,
    proposals_append,
    proposals_revoke,
    split_commit_welcome,
)

__all__ = ["DaveGroupCore"]


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


class DaveGroupCore:
    """The state of one channel's DAVE session and the machinery that moves it forward."""

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
        self._decryptors: dict[int, dave.Decryptor] = {}

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
            group, epoch = dave_wire.commit_group_epoch(commit)
            refs = dave_wire.commit_proposal_refs(commit)
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
        else:
            self._libdave_failed(member, f"the commit of transition {t.transition_id}")

    def _libdave_welcome(self, member: LibdaveMember, t: _Transition, welcome: bytes) -> None:
        if member.process_welcome(welcome, self._recognized()):
            self._refresh_decryptors(member)
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
            for decryptor in self._decryptors.values():
                decryptor.transition_to_passthrough_mode(True)
            return
        now = time.monotonic()
        for m in t.members:
            if m.in_group and m.encrypting_since is None:
                m.encrypting_since = now  # from now on its audio must be DAVE frames

    def _refresh_decryptors(self, member: LibdaveMember) -> None:
        """After the observer (the first libdave member in the group) processed a commit or
        welcome, hand every other member's new key ratchet to the UDP side's decryptors; the
        previous keys stay valid for libdave's transition expiry, so frames sent with either
        epoch's key decrypt across the transition."""
        observer = next(
            (m for m in self.members if isinstance(m, LibdaveMember) and m.in_group), None
        )
        if observer is not member:
            return
        for m in self.members:
            if m.in_group and m is not observer:
                ratchet = observer.key_ratchet(m.user_id)
                if ratchet is not None:
                    decryptor = self._decryptors.setdefault(m.user_id, dave.Decryptor())
                    decryptor.transition_to_key_ratchet(ratchet)

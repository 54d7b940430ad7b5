"""Every channel's DAVE group in one fake, plus the switches: DAVE on or off, stage channels.

The voice gateway, the UDP server and `FakeDiscord`'s scripting methods all go through here.
Each event runs on a `DaveGroup` (under its lock), then the violations it found are recorded and
waiters on the recorder are woken (with the group lock released).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from discord_voice.testing.dave.group import DaveGroup, DaveState
from discord_voice.testing.dave.media import OpenedFrame
from discord_voice.testing.dave.members import LibdaveMember, Member
from discord_voice.testing.records import Recorder, VoiceSession

__all__ = ["DaveHub"]

#: First fake user id given to libdave members hosted by the fake.
FIRST_MEMBER_ID = 900000000000000001


class DaveHub:
    """Groups by channel id; `enabled` False means every channel is a non-DAVE one."""

    def __init__(
        self, recorder: Recorder, *, enabled: bool, stage: bool, listener: bool = False
    ) -> None:
        self.enabled = enabled
        self.listener = listener  # host a libdave member in every DAVE channel a client joins
        self._stage_all = stage
        self._rec = recorder
        self._lock = threading.Lock()
        self._stage: dict[int, bool] = {}
        self._groups: dict[int, DaveGroup] = {}
        self._hosted: dict[int, tuple[int, LibdaveMember]] = {}
        self._ids = itertools.count(FIRST_MEMBER_ID)
        self._listeners: dict[int, int] = {}  # channel id -> user id of its listener member

    def set_stage(self, channel_id: int, stage: bool) -> None:
        with self._lock:
            self._stage[channel_id] = stage

    def requires_dave(self, channel_id: int) -> bool:
        """Whether a client joining `channel_id` must speak DAVE (else 4017)."""
        with self._lock:
            return self.enabled and not self._stage.get(channel_id, self._stage_all)

    def group(self, channel_id: int) -> DaveGroup:
        with self._lock:
            group = self._groups.get(channel_id)
            if group is None:
                group = self._groups[channel_id] = DaveGroup(channel_id)
            return group

    def find(self, channel_id: int) -> DaveGroup | None:
        with self._lock:
            return self._groups.get(channel_id)

    def run(self, channel_id: int, event: Callable[[DaveGroup], list[str]]) -> None:
        """Apply one event to a channel's group; record what it found; wake waiters."""
        violations = event(self.group(channel_id))
        with self._rec.changing():
            self._rec.violations.extend(f"dave#{channel_id}: {v}" for v in violations)

    def state(self, channel_id: int) -> DaveState:
        return self.group(channel_id).state()

    # -- libdave members hosted by the fake ----------------------------------------------------

    def add_member(
        self,
        channel_id: int,
        user_id: int | None,
        commits: bool,
        *,
        key_switch: str | None = None,
    ) -> int:
        """Host a libdave member in the channel's group; returns its user id. With `key_switch`
        it speaks (see `LibdaveMember`): `encrypt_as`, `settled_for`."""
        if not self.requires_dave(channel_id):
            raise RuntimeError(f"channel {channel_id} is not a DAVE channel in this fake")
        with self._lock:
            uid = next(self._ids) if user_id is None else user_id
            if uid in self._hosted:
                raise ValueError(f"user {uid} is already a hosted member")
            member = LibdaveMember(uid, channel_id, commits=commits, key_switch=key_switch)
            self._hosted[uid] = (channel_id, member)
        self.run(channel_id, lambda g: g.join(member))
        return uid

    def ensure_listener(self, channel_id: int) -> None:
        """With `listener` on: the channel's libdave listener joins before the first client,
        so clients are never alone (they join by welcome and their audio is decrypted)."""
        if not self.listener:
            return
        with self._lock:
            if channel_id in self._listeners:
                return
            self._listeners[channel_id] = 0
        user_id = self.add_member(channel_id, None, True)
        with self._lock:
            self._listeners[channel_id] = user_id

    def listeners(self) -> dict[int, int]:
        with self._lock:
            return {c: u for c, u in self._listeners.items() if u}

    def remove_member(self, user_id: int) -> None:
        with self._lock:
            hosted = self._hosted.pop(user_id, None)
        if hosted is None:
            raise ValueError(f"user {user_id} is not a member hosted by the fake")
        channel_id, member = hosted
        self.run(channel_id, lambda g: g.leave(member))

    def hosted(self, user_id: int) -> LibdaveMember:
        with self._lock:
            return self._hosted[user_id][1]

    def is_hosted(self, user_id: int) -> bool:
        with self._lock:
            return user_id in self._hosted

    def encrypt_as(self, user_id: int, ssrc: int, frame: bytes) -> bytes | None:
        """A speaking hosted member's frame, DAVE-encrypted (see `DaveGroup.encrypt`)."""
        member = self.hosted(user_id)
        return self.group(member.channel_id).encrypt(member, ssrc, frame)

    def settled_for(self, user_id: int) -> bool:
        """See `DaveGroup.settled_for`; False once the member is gone."""
        with self._lock:
            hosted = self._hosted.get(user_id)
        if hosted is None:
            return False
        return self.group(hosted[0]).settled_for(hosted[1])

    # -- used by the voice gateway and the UDP server ------------------------------------------

    def leave(self, channel_id: int, member: Member) -> None:
        self.run(channel_id, lambda g: g.leave(member))

    def open_frame(self, session: VoiceSession, payload: bytes) -> OpenedFrame | None:
        """DAVE view of a frame from `session`, or None when its call does not use DAVE."""
        if not self.enabled or session.channel_id is None or session.user_id is None:
            return None
        if not session.dave_protocol_version:
            return None
        group = self.find(session.channel_id)
        if group is None:
            return None
        return group.open_frame(session.user_id, payload)

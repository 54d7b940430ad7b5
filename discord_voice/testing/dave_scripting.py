"""`FakeDiscord`'s DAVE scripting and inspection (``FakeDiscord(dave=True)``), as a mixin.

Kept apart from `fake_discord` so that the fake's core does not grow with DAVE; every method
goes through the fake's `DaveHub` and raises RuntimeError when DAVE is off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from discord_voice.testing.dave.group import DaveState
    from discord_voice.testing.dave.hub import DaveHub
    from discord_voice.testing.records import Recorder

__all__ = ["DaveScripting"]


class DaveScripting:
    """DAVE methods of `FakeDiscord` (which sets ``_dave`` and ``_rec``)."""

    _dave: DaveHub | None
    _rec: Recorder

    @property
    def dave(self) -> bool:
        """Whether the fake plays Discord's DAVE role (E2EE required outside stage channels)."""
        return self._dave is not None

    @property
    def dave_listeners(self) -> dict[int, int]:
        """Channel id -> user id of the libdave listener hosted there (``dave_listener=True``)."""
        return self._hub().listeners()

    def _hub(self) -> DaveHub:
        if self._dave is None:
            raise RuntimeError("DAVE is off: create the fake with FakeDiscord(dave=True)")
        return self._dave

    def _channel(self, channel_id: int | None) -> int:
        if channel_id is not None:
            return channel_id
        with self._rec.lock:
            for session in reversed(self._rec.voice_sessions):
                if session.channel_id is not None:
                    return session.channel_id
        raise RuntimeError("no voice session yet: pass channel_id")

    def set_stage(self, channel_id: int, stage: bool = True) -> None:
        """Make `channel_id` stage-like (no DAVE: version 0, max 0 accepted) or not."""
        self._hub().set_stage(channel_id, stage)

    def add_member(
        self, channel_id: int | None = None, *, user_id: int | None = None, commits: bool = True
    ) -> int:
        """Put a libdave (dave-py) member with a fake user id into the channel (default: that
        of the newest voice session); returns its user id. Its joining changes the epoch.
        With `commits` False it never commits, so our clients' commits win."""
        return self._hub().add_member(self._channel(channel_id), user_id, commits)

    def remove_member(self, user_id: int) -> None:
        """Disconnect a member added by `add_member` (a Remove proposal follows)."""
        self._hub().remove_member(user_id)

    def send_invalid_commit(self, channel_id: int | None = None) -> None:
        """Corrupt the next commit announcement (op 29) sent to clients: they must answer op 31
        and get removed and re-added."""
        self._hub().run(self._channel(channel_id), lambda g: g.garbage_next_commit())

    def downgrade(self, channel_id: int | None = None) -> None:
        """Op 21 to protocol version 0; op 22 once every client sent op 23."""
        self._hub().run(self._channel(channel_id), lambda g: g.downgrade())

    def upgrade(self, channel_id: int | None = None) -> None:
        """Op 24 (version 1, epoch 1) after a downgrade: the group is created again."""
        self._hub().run(self._channel(channel_id), lambda g: g.upgrade())

    def dave_state(self, channel_id: int | None = None) -> DaveState:
        """The server's view of a channel's DAVE group (epoch, members, transitions)."""
        return self._hub().state(self._channel(channel_id))

    def member_epoch_authenticator(self, user_id: int) -> bytes | None:
        """A hosted libdave member's epoch authenticator (equal for all members of an epoch)."""
        hub = self._hub()
        member = hub.hosted(user_id)
        return hub.group(member.channel_id).call(member.epoch_authenticator)

"""The members of a fake DAVE group: our clients (over their websocket) and libdave peers.

`ClientMember` forwards what the group sends to a voice connection's outbox (the connection's own
thread writes it, so everything it sends stays in order). `LibdaveMember` is a DAVE participant
hosted inside the fake with dave-py (Discord's C++ libdave): an implementation independent of the
client under test, answering proposals, commits and welcomes synchronously.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import dave

__all__ = ["KEY_SWITCHES", "ClientMember", "LibdaveMember", "Member"]

Post = Callable[[tuple[Any, ...]], object]


class Member:
    """What the group tracks for one participant (all fields owned by the group's lock)."""

    kind = "member"

    def __init__(self, user_id: int, name: str) -> None:
        self.user_id = user_id
        self.name = name
        self.key_package: bytes | None = None  # the latest one not yet used in a commit
        self.in_group = False  # part of the server's view of the established group
        self.leaf: int | None = None
        # Set when a transition into the group executed for it: its audio must be DAVE frames
        # (after the first DAVE frame, or `PLAINTEXT_GRACE` seconds for frames in flight).
        self.encrypting_since: float | None = None
        self.sent_dave = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, user_id={self.user_id})"

    def send_json(self, op: int, d: Any) -> None:
        """Deliver a JSON op (ignored by server-side members)."""

    def send_binary(self, op: int, payload: bytes) -> None:
        """Deliver a binary op (ignored by server-side members)."""


class ClientMember(Member):
    """A client connected to the fake voice gateway."""

    kind = "client"

    def __init__(self, user_id: int, name: str, post: Post) -> None:
        super().__init__(user_id, name)
        self._post = post

    def send_json(self, op: int, d: Any) -> None:
        self._post(("send", {"op": int(op), "d": d}, True))

    def send_binary(self, op: int, payload: bytes) -> None:
        self._post(("binary", bytes([int(op)]) + bytes(payload)))


#: When a speaking libdave member starts encrypting with a new epoch's key: on the transition's
#: execution (op 22), as Discord's clients do, or as soon as it processed the commit or welcome.
KEY_SWITCHES = ("execute", "commit")


class LibdaveMember(Member):
    """A libdave session in the fake, with its own fake user id. Raises nothing: failures come
    back as False/None and the texts libdave reported are kept in `failures`.

    With `key_switch` ("execute" or "commit", see `KEY_SWITCHES`) it also speaks: a libdave
    `dave.Encryptor` DAVE-encrypts its frames with the key ratchet of its own user id, switched
    by the group (`use_current_key`, `use_passthrough`) at the moment `key_switch` names.
    """

    kind = "libdave"

    def __init__(
        self,
        user_id: int,
        channel_id: int,
        *,
        commits: bool = True,
        key_switch: str | None = None,
    ) -> None:
        if key_switch is not None and key_switch not in KEY_SWITCHES:
            raise ValueError(f"key_switch must be one of {KEY_SWITCHES}, got {key_switch!r}")
        super().__init__(user_id, f"libdave:{user_id}")
        self.channel_id = channel_id
        self.commits = commits
        self.failures: list[str] = []
        self.session = dave.Session(self._failed)
        self.key_switch = key_switch
        self.encryptor = dave.Encryptor() if key_switch is not None else None
        self.has_key = False  # the encryptor holds a key ratchet (or passes frames through)
        self._codecs: set[int] = set()  # SSRCs the encryptor knows as Opus

    def _failed(self, source: str, reason: str) -> None:
        self.failures.append(f"{source}: {reason}")

    def start(self, version: int, external_sender: bytes) -> bytes | None:
        """(Re)create the local pending group; returns a fresh key package."""
        self.session.reset()
        self.session.init(version, self.channel_id, str(self.user_id))
        self.session.set_external_sender(external_sender)
        return self.session.get_marshalled_key_package()

    def process_proposals(self, op27_body: bytes, recognized: set[int]) -> bytes | None:
        """The op 28 body it would send (commit and maybe welcome), or None."""
        return self.session.process_proposals(op27_body, {str(u) for u in recognized})

    def process_commit(self, commit: bytes) -> bool:
        return isinstance(self.session.process_commit(commit), dict)

    def process_welcome(self, welcome: bytes, recognized: set[int]) -> bool:
        result = self.session.process_welcome(welcome, {str(u) for u in recognized})
        return result is not None

    def key_ratchet(self, user_id: int) -> dave.IKeyRatchet | None:
        return self.session.get_key_ratchet(str(user_id))

    def epoch_authenticator(self) -> bytes | None:
        return self.session.get_last_epoch_authenticator()

    # -- speaking (with `key_switch`) ----------------------------------------------------------

    def use_current_key(self) -> None:
        """Encrypt from now on with the key ratchet of the epoch the session is in."""
        if self.encryptor is None:
            return
        ratchet = self.key_ratchet(self.user_id)
        if ratchet is not None:
            self.encryptor.set_key_ratchet(ratchet)
            self.encryptor.set_passthrough_mode(False)
            self.has_key = True

    def use_passthrough(self) -> None:
        """The call went to protocol version 0: frames go out unencrypted."""
        if self.encryptor is not None:
            self.encryptor.set_passthrough_mode(True)
            self.has_key = True

    def encrypt(self, ssrc: int, frame: bytes) -> bytes | None:
        """`frame` as a DAVE protocol frame (as is in passthrough); None without a key."""
        if self.encryptor is None:
            return None
        if ssrc not in self._codecs:
            self.encryptor.assign_ssrc_to_codec(ssrc, dave.Codec.opus)
            self._codecs.add(ssrc)
        encrypted = self.encryptor.encrypt(dave.MediaType.audio, ssrc, frame)
        return None if encrypted is None else bytes(encrypted)


def transition_frame(transition_id: int, body: bytes) -> bytes:
    """Ops 29/30 payload: the transition id (uint16 BE) then the commit or welcome."""
    return struct.pack(">H", transition_id & 0xFFFF) + body

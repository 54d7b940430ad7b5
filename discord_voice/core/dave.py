"""The DAVE (end-to-end encryption) state machine of one voice connection, sans-I/O.

`DaveProtocol` takes what the voice gateway says about DAVE — the protocol version from the
Session Description, the typed events of `dave_messages`, and the connected user ids of ops
11 and 13 — and returns the frames to send back (JSON text or binary). It also is the
`FrameTransform` of the packetizer: Opus frames go through `transform` before the transport
cipher. The MLS work itself is done by an `Engine` (by default `DaveyEngine`, a thin wrapper of
``davey.DaveSession``); every engine failure arrives here as a typed error.

The rules (Discord's DAVE protocol, see protocol-facts §10.3): a key package (op 26) on start,
after a prepare-epoch of epoch 1, and after recovering from a bad commit or welcome; proposals
(op 27) are answered with our commit (op 28); a commit (op 29) or welcome (op 30) is applied
and acknowledged with op 23, unless its transition id is 0 (then it is in effect at once); an
execute (op 22) switches to the prepared transition's protocol version; a commit or welcome
that cannot be processed is answered with op 31, a reset, and a fresh key package.

Sending: while E2EE is in effect (`active`), frames are encrypted, except the Opus silence frame
``F8 FF FE``, which stays plain as the protocol allows. If E2EE is in effect but there is no group
key yet (`ready` is False), `transform` raises `EncryptionError` rather than send plaintext
into an E2EE call: the caller must drop the frame. Not thread-safe: one owner serialises calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from discord_voice.core import dave_messages as dm
from discord_voice.core.voice_payloads import BinaryMessage, DaveMessage
from discord_voice.errors import (
    DaveNotReady,
    EncryptionError,
    LocalProtocolError,
    RemoteProtocolError,
    VoiceError,
)

if TYPE_CHECKING:
    import davey

__all__ = ["MARKER", "SILENCE_FRAME", "DaveProtocol", "DaveyEngine", "Engine", "Frame"]

#: A frame to send on the voice websocket: JSON text (ops 23, 31) or binary (ops 26, 28).
Frame = str | bytes

#: The Opus silence frame; sent unencrypted even in an E2EE call.
SILENCE_FRAME: Final = b"\xf8\xff\xfe"
#: The last two bytes of every DAVE-encrypted frame.
MARKER: Final = b"\xfa\xfa"

#: Seconds the receive side keeps accepting the previous context after a transition.
TRANSITION_EXPIRY: Final = 10

_U64: Final = 2**64 - 1
T = TypeVar("T")


class Engine(Protocol):
    """The MLS and frame-crypto engine `DaveProtocol` drives (one member of one group).

    Every method raises `RemoteProtocolError` when the server's data is refused and
    `EncryptionError` when media cannot be encrypted; nothing else.
    """

    @property
    def ready(self) -> bool:
        """Whether there is a group key to encrypt media with."""

    @property
    def epoch(self) -> int | None:
        """The MLS epoch of the established group, None without one."""

    @property
    def privacy_code(self) -> str | None:
        """The call's voice privacy code (changes with every epoch), None without a group."""

    def reinit(self, protocol_version: int, user_id: int, channel_id: int) -> None:
        """Drop any group and start afresh (keeping the external sender if one was set)."""

    def set_external_sender(self, package: bytes) -> None:
        """Store the voice gateway's external sender (an op 25 body)."""

    def key_package(self) -> bytes:
        """A new single-use key package (an op 26 body)."""

    def process_proposals(
        self, revoke: bool, proposals: bytes, expected_user_ids: Iterable[int]
    ) -> tuple[bytes, bytes | None] | None:
        """Apply op 27; return our ``(commit, welcome)`` when proposals are left to commit."""

    def process_commit(self, commit: bytes) -> None:
        """Apply the winning commit of op 29."""

    def process_welcome(self, welcome: bytes) -> None:
        """Join the group from the welcome of op 30."""

    def set_passthrough(self, enabled: bool, expiry: int) -> None:
        """Let unencrypted received media through (after a downgrade), or stop after ``expiry``."""

    def encrypt_opus(self, frame: bytes) -> bytes:
        """Encrypt one Opus frame with the current group key."""

    def decrypt_opus(self, user_id: int, frame: bytes) -> bytes:
        """Decrypt one Opus frame that ``user_id`` sent (plain frames pass in passthrough)."""

    def verification_code(self, user_id: int) -> str:
        """The displayable code that verifies ``user_id`` against us."""


class DaveyEngine:
    """`Engine` on davey (openmls + Discord's frame format in Rust); wraps its exceptions."""

    def __init__(self) -> None:
        try:
            import davey
        except ImportError as exc:  # pragma: no cover - davey is a declared dependency
            raise EncryptionError("dave needs the 'davey' package, which is not installed") from exc
        self._davey = davey
        self._session: davey.DaveSession | None = None

    def __repr__(self) -> str:
        status = None if self._session is None else self._session.status.name
        return f"DaveyEngine(status={status})"

    def _call(
        self, error: type[VoiceError], what: str, call: Callable[[davey.DaveSession], T]
    ) -> T:
        """Run ``call`` on the session; davey's ValueError/OverflowError become ``error``."""
        if self._session is None:
            raise LocalProtocolError("dave engine used before reinit")
        try:
            return call(self._session)
        except (ValueError, OverflowError) as exc:
            raise error(f"dave: {what}: {exc}") from None

    @property
    def ready(self) -> bool:
        return self._session is not None and self._session.ready

    @property
    def epoch(self) -> int | None:
        return None if self._session is None else self._session.epoch

    @property
    def privacy_code(self) -> str | None:
        return None if self._session is None else self._session.voice_privacy_code

    def reinit(self, protocol_version: int, user_id: int, channel_id: int) -> None:
        if self._session is None:
            try:
                self._session = self._davey.DaveSession(protocol_version, user_id, channel_id)
            except (ValueError, OverflowError) as exc:
                raise RemoteProtocolError(
                    f"dave: cannot start version {protocol_version}: {exc}"
                ) from None
            return
        self._call(
            RemoteProtocolError,
            f"cannot start version {protocol_version}",
            lambda s: s.reinit(protocol_version, user_id, channel_id),
        )

    def set_external_sender(self, package: bytes) -> None:
        self._call(
            RemoteProtocolError,
            "op 25 external sender refused",
            lambda s: s.set_external_sender(package),
        )

    def key_package(self) -> bytes:
        return self._call(
            EncryptionError, "cannot create a key package", lambda s: s.get_serialized_key_package()
        )

    def process_proposals(
        self, revoke: bool, proposals: bytes, expected_user_ids: Iterable[int]
    ) -> tuple[bytes, bytes | None] | None:
        kind = (
            self._davey.ProposalsOperationType.revoke
            if revoke
            else (self._davey.ProposalsOperationType.append)
        )
        result = self._call(
            RemoteProtocolError,
            "op 27 proposals refused",
            lambda s: s.process_proposals(kind, proposals, list(expected_user_ids)),
        )
        return None if result is None else (result.commit, result.welcome)

    def process_commit(self, commit: bytes) -> None:
        self._call(RemoteProtocolError, "op 29 commit refused", lambda s: s.process_commit(commit))

    def process_welcome(self, welcome: bytes) -> None:
        self._call(
            RemoteProtocolError, "op 30 welcome refused", lambda s: s.process_welcome(welcome)
        )

    def set_passthrough(self, enabled: bool, expiry: int) -> None:
        self._call(
            LocalProtocolError,
            "passthrough refused",
            lambda s: s.set_passthrough_mode(enabled, expiry),
        )

    def encrypt_opus(self, frame: bytes) -> bytes:
        # once per packet on the sender thread: no closure, one call into davey
        session = self._session
        if session is None:
            raise LocalProtocolError("dave engine used before reinit")
        try:
            result: bytes = session.encrypt_opus(frame)
        except (ValueError, OverflowError) as exc:
            raise EncryptionError(f"dave: cannot encrypt a frame: {exc}") from None
        return result

    def decrypt_opus(self, user_id: int, frame: bytes) -> bytes:
        audio = self._davey.MediaType.audio
        return self._call(
            EncryptionError,
            f"cannot decrypt a frame of {user_id}",
            lambda s: s.decrypt(user_id, audio, frame),
        )

    def verification_code(self, user_id: int) -> str:
        return self._call(
            EncryptionError,
            f"no verification code for {user_id}",
            lambda s: s.get_verification_code(user_id),
        )


def _snowflake(name: str, value: int | str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise LocalProtocolError(f"{name} must be a snowflake, got {value!r}") from None
    if isinstance(value, bool) or not 0 <= number <= _U64:
        raise LocalProtocolError(f"{name} must be a snowflake, got {value!r}")
    return number


def supported_protocol_version() -> int:
    """The highest DAVE protocol version the engine speaks (Identify's max_dave_protocol_version).

    0 when davey is not installed, so such a client honestly declares no DAVE.
    """
    try:
        import davey
    except ImportError:  # pragma: no cover - davey is a declared dependency
        return 0
    return int(davey.DAVE_PROTOCOL_VERSION)


class DaveProtocol:
    """DAVE for one voice connection: events in, frames out, Opus frames encrypted.

    Construct it with our user id and the channel id; call `start` with the Session
    Description's ``dave_protocol_version``; feed every DAVE event to `receive` (or the raw
    gateway message to `receive_message`) and ops 11/13 to `clients_connect` /
    `client_disconnect`; send every returned frame in order.
    """

    def __init__(
        self, user_id: int | str, channel_id: int | str, engine: Engine | None = None
    ) -> None:
        self._user_id = _snowflake("user id", user_id)
        self._channel_id = _snowflake("channel id", channel_id)
        self._engine: Engine = DaveyEngine() if engine is None else engine
        self._started = False
        self._version = 0  # the protocol version media is sent with
        self._group_version = 0  # the version of the MLS group being built; 0 = none
        self._external_sender: bytes | None = None
        self._pending: dict[int, int] = {}  # transition id -> protocol version
        self._connected: set[int] = set()

    def __repr__(self) -> str:
        return (
            f"DaveProtocol(protocol_version={self._version}, ready={self.ready}, "
            f"epoch={self.epoch})"
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def protocol_version(self) -> int:
        """The DAVE version media is sent with now (0: no end-to-end encryption)."""
        return self._version

    @property
    def active(self) -> bool:
        """Whether end-to-end encryption is in effect for what we send."""
        return self._version > 0

    @property
    def ready(self) -> bool:
        """Whether E2EE is in effect and there is a group key: `transform` can encrypt."""
        return self.active and self._engine.ready

    @property
    def waiting_alone(self) -> bool:
        """E2EE is required, we are the only member known, and our pending local group exists.

        The protocol cannot give a lone member a group key (the first commit needs a second
        member), so this is as ready as a call can be until someone joins.
        """
        others = self._connected - {self._user_id}
        return (
            self.active
            and not self._engine.ready
            and not others
            and self._group_version > 0
            and self._external_sender is not None
        )

    @property
    def epoch(self) -> int | None:
        """The MLS epoch of our group, None before we are in one."""
        return self._engine.epoch if self._group_version else None

    @property
    def privacy_code(self) -> str | None:
        """The voice privacy code everyone in the call sees, None before we are in a group."""
        return self._engine.privacy_code if self._group_version else None

    def verification_code(self, user_id: int | str) -> str:
        """The code to compare with ``user_id`` out of band (raises `EncryptionError` if none)."""
        if not self._group_version:
            raise EncryptionError("dave: no group, so no verification code")
        return self._engine.verification_code(_snowflake("user id", user_id))

    # -- inputs --------------------------------------------------------------------------------

    def start(self, protocol_version: int) -> list[Frame]:
        """Begin with the Session Description's ``dave_protocol_version`` (0: DAVE is off)."""
        if self._started:
            raise LocalProtocolError("dave protocol already started")
        if (
            isinstance(protocol_version, bool)
            or not isinstance(protocol_version, int)
            or (protocol_version < 0)
        ):
            raise LocalProtocolError(f"dave protocol version must be >= 0: {protocol_version!r}")
        self._started = True
        self._version = protocol_version
        return self._new_group(protocol_version) if protocol_version else []

    def clients_connect(self, user_ids: Iterable[int | str]) -> None:
        """Op 11: these users are in the call; Adds for anyone else are refused."""
        self._connected.update(_snowflake("user id", u) for u in user_ids)

    def client_disconnect(self, user_id: int | str) -> None:
        """Op 13: this user left; later Adds for them are refused."""
        self._connected.discard(_snowflake("user id", user_id))

    def receive_message(self, message: BinaryMessage | DaveMessage) -> list[Frame]:
        """Decode a DAVE gateway message (`RemoteProtocolError` if malformed) and `receive` it."""
        return self.receive(dm.decode(message))

    def receive(self, event: dm.DaveEvent) -> list[Frame]:
        """Apply one DAVE event; return the frames to send in reply, in order.

        A commit or welcome the engine refuses is not an error: the reply is op 31 and a fresh
        key package (the gateway then removes and re-adds us).

        Raises:
            RemoteProtocolError: proposals or an external sender the engine refuses (our state
                is unchanged, the call can go on), or a commit/welcome before DAVE started.
        """
        if isinstance(event, dm.ExternalSenderPackage):
            self._external_sender = event.package
            if self._group_version:
                self._engine.set_external_sender(event.package)
            return []
        if isinstance(event, dm.Proposals):
            return self._proposals(event)
        if isinstance(event, (dm.AnnounceCommit, dm.Welcome)):
            return self._commit_or_welcome(event)
        if isinstance(event, dm.PrepareTransition):
            return self._prepare_transition(event)
        if isinstance(event, dm.ExecuteTransition):
            self._execute(event.transition_id)
            return []
        return self._prepare_epoch(event)

    # -- media ---------------------------------------------------------------------------------

    def transform(self, frame: bytes) -> bytes:
        """Encrypt an Opus frame for an E2EE call; pass it through when E2EE is not in effect.

        Raises:
            EncryptionError: E2EE is in effect but there is no group key yet (drop the frame),
                or the engine failed; plaintext is never returned in an E2EE call, except the
                silence frame.
        """
        if not self.active or frame == SILENCE_FRAME:
            return frame
        if not self._engine.ready:
            raise DaveNotReady("dave: e2ee is in effect but the group key is not ready yet")
        return self._engine.encrypt_opus(frame)

    def encrypt_ready(self, frame: bytes) -> bytes:
        """Encrypt ``frame`` with the group key; only when `ready` (the caller checked it, as
        `transform` does: this is the sender's per-packet path without the checks).

        Raises:
            EncryptionError: the engine failed.
        """
        return self._engine.encrypt_opus(frame)

    def decrypt(self, user_id: int | str, frame: bytes) -> bytes:
        """Decrypt an Opus frame received from ``user_id``; as is when DAVE never started, and
        a frame without the DAVE marker as is while media is not end-to-end encrypted for us
        (protocol 0: before an upgrade executes, after a downgrade, a member who joined then).

        Raises:
            EncryptionError: the frame is not decryptable (wrong key, replay, plain frame
                outside passthrough).
        """
        if not self._group_version:
            return frame
        if not self._version and not frame.endswith(MARKER):
            return frame
        return self._engine.decrypt_opus(_snowflake("user id", user_id), frame)

    # -- rules ---------------------------------------------------------------------------------

    def _new_group(self, protocol_version: int) -> list[Frame]:
        """Reset the engine for ``protocol_version`` and announce a fresh key package."""
        self._engine.reinit(protocol_version, self._user_id, self._channel_id)
        self._group_version = protocol_version
        if self._external_sender is not None:
            self._engine.set_external_sender(self._external_sender)
        return [dm.key_package(self._engine.key_package())]

    def _proposals(self, event: dm.Proposals) -> list[Frame]:
        if not self._group_version or self._external_sender is None:
            return []  # no local group to commit to yet
        expected = self._connected | {self._user_id}
        result = self._engine.process_proposals(event.revoke, event.data, sorted(expected))
        if result is None:
            return []
        commit, welcome = result
        return [dm.commit_welcome(commit, welcome)]

    def _commit_or_welcome(self, event: dm.AnnounceCommit | dm.Welcome) -> list[Frame]:
        tid = event.transition_id
        if not self._group_version:
            raise RemoteProtocolError(f"dave: mls message for transition {tid} before dave started")
        try:
            if isinstance(event, dm.AnnounceCommit):
                self._engine.process_commit(event.commit)
            else:
                self._engine.process_welcome(event.welcome)
        except RemoteProtocolError:
            return self._recover(tid)
        return self._prepared(tid, self._group_version)

    def _recover(self, transition_id: int) -> list[Frame]:
        """Op 31 for the transition we could not follow, then a fresh group and key package."""
        self._pending.pop(transition_id, None)
        return [dm.invalid_commit_welcome(transition_id), *self._new_group(self._group_version)]

    def _prepare_transition(self, event: dm.PrepareTransition) -> list[Frame]:
        if event.protocol_version == 0 and self._group_version:
            # Downgrade announced: from now on, let plain media from others through.
            self._engine.set_passthrough(True, TRANSITION_EXPIRY)
        return self._prepared(event.transition_id, event.protocol_version)

    def _prepared(self, transition_id: int, protocol_version: int) -> list[Frame]:
        """Record a prepared transition; id 0 is executed at once and not acknowledged."""
        if transition_id == 0:
            self._pending[0] = protocol_version
            self._execute(0)
            return []
        already = transition_id in self._pending
        self._pending[transition_id] = protocol_version
        return [] if already else [dm.transition_ready(transition_id)]

    def _execute(self, transition_id: int) -> None:
        version = self._pending.pop(transition_id, None)
        if version is None:
            return  # not prepared here (e.g. a commit we failed and reported with op 31)
        upgraded = version > 0 and self._version == 0
        self._version = version
        if upgraded and self._group_version:
            # Others may still send plaintext for a while after an upgrade: the new group's
            # decryptors start with passthrough off, so it is opened, then given its expiry.
            self._engine.set_passthrough(True, TRANSITION_EXPIRY)
            self._engine.set_passthrough(False, TRANSITION_EXPIRY)

    def _prepare_epoch(self, event: dm.PrepareEpoch) -> list[Frame]:
        if event.epoch == 1 and event.protocol_version > 0:
            return self._new_group(event.protocol_version)
        if event.epoch > 1:
            self._group_version = event.protocol_version or self._group_version
        return []

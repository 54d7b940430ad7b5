"""What the fake Discord saw: websocket messages, decrypted RTP frames, sessions, violations;
and what it sent as other members of a call (`SentPacket`).

Every record carries an ``index`` from one counter shared by the whole fake (both gateways and
the UDP server), so a test can assert the order of events across sockets, e.g. that the client's
Speaking (op 5) came before its first audio packet::

    speaking = next(m for m in fake.voice_messages if m.direction == "client" and m.op == 5)
    assert speaking.index < fake.frames()[0].index

Reprs never show the bot token, voice tokens or secret keys.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "MainSession",
    "ReceivedFrame",
    "RecordedMessage",
    "Recorder",
    "SentPacket",
    "VoiceSession",
]

_SECRET_KEYS = frozenset({"token", "secret_key"})

Direction = Literal["client", "server"]


def redact(value: Any) -> Any:
    """`value` with every ``token`` / ``secret_key`` entry (at any depth) replaced."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k in _SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclass(frozen=True, repr=False)
class RecordedMessage:
    """One websocket message, as received from the client or as sent by the fake.

    ``data`` is the parsed JSON object (None for binary or undecodable messages); ``op`` is its
    ``op`` field, or the opcode byte of a binary message. ``connection`` numbers the websocket
    within its gateway (1, 2, ...; `VoiceSession.connection` uses the same numbers).
    """

    index: int
    time: float  # time.monotonic() when recorded
    direction: Direction
    op: int | None
    data: dict[str, Any] | None
    raw: str | bytes
    connection: int = 0

    def __repr__(self) -> str:
        body = f"data={redact(self.data)!r}" if self.data is not None else f"raw={len(self.raw)}B"
        return (
            f"RecordedMessage(index={self.index}, direction={self.direction!r}, op={self.op}, "
            f"connection={self.connection}, {body})"
        )


@dataclass(frozen=True)
class ReceivedFrame:
    """One RTP packet that parsed and decrypted.

    ``arrival`` is the kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME) in seconds, so
    it is on the same clock as `time.time()`; where the kernel cannot give one it is `time.time()`
    when the fake read the packet. ``nonce`` is the 4-byte trailing counter (big-endian), ``opus``
    the decrypted payload with any RTP header-extension body removed, ``size`` the UDP payload
    length on the wire.

    In a DAVE call ``e2ee_payload`` keeps the transport-decrypted bytes and ``opus`` is what a
    libdave member of the channel decrypted from them; ``dave`` says which case it was: "off"
    (no DAVE), "decrypted", "silence" (the plaintext silence frame), "plaintext" (not a DAVE
    frame) or "undecryptable" (no libdave member in the channel: ``opus`` is empty).
    """

    index: int
    arrival: float
    ssrc: int
    sequence: int
    timestamp: int
    nonce: int
    opus: bytes
    size: int
    mode: str
    e2ee_payload: bytes | None = None
    dave: str = "off"


@dataclass(frozen=True)
class SentPacket:
    """One RTP audio packet a member played by the fake (a `FakeSpeaker`) sent to the clients.

    ``opus`` is the plaintext Opus frame; ``payload`` what the RTP payload carried before
    transport encryption: the DAVE frame when ``dave`` is True, else ``opus`` itself. ``to``
    holds the SSRCs of the client sessions that got it (one datagram each, two when
    ``duplicated``); a ``dropped`` packet went to none (its sequence number is still used up).
    ``reordered``: it went on the wire after a packet with a later sequence number. ``index``
    orders it with the other records (its first datagram; a dropped packet's is taken after the
    last datagram of its `FakeSpeaker.send` call).
    """

    index: int
    user_id: int
    ssrc: int
    sequence: int
    timestamp: int
    opus: bytes
    payload: bytes
    dave: bool
    to: tuple[int, ...] = ()
    dropped: bool = False
    duplicated: bool = False
    reordered: bool = False


@dataclass(eq=False)
class MainSession:
    """One main-gateway websocket connection (fields fill in as the handshake progresses)."""

    connection: int
    path: str
    identify: dict[str, Any] | None = field(default=None, repr=False)
    intents: int | None = None
    session_id: str | None = None
    heartbeats: int = 0
    close_code: int | None = None
    close_reason: str = ""
    closed_by: Literal["client", "server"] | None = None
    closed: bool = False
    resumed: bool = False  # this websocket continued ``session_id`` with op 6 Resume


@dataclass(eq=False)
class VoiceSession:
    """One voice-gateway websocket connection (fields fill in as the handshake progresses).

    ``guild_id``, ``channel_id`` and ``user_id`` are ints (parsed from the snowflake strings the
    client sent). ``client_address`` is the (ip, port) from Select Protocol, ``discovered_address``
    what IP discovery told the client. ``speaking`` holds the ``d`` of every Speaking (op 5) the
    client sent. ``close_code`` is set when the websocket closes: the code the client sent (None
    if it dropped the TCP connection without a close frame), or the code the fake closed with
    (``closed_by`` tells which). A resume (op 7) continues the same record on a new websocket:
    ``resumes`` counts them and ``connections`` lists every websocket number, first to last.
    """

    connection: int
    path: str
    guild_id: int | None = None
    channel_id: int | None = None
    user_id: int | None = None
    session_id: str | None = None
    ssrc: int | None = None
    mode: str | None = None
    secret_key: bytes | None = field(default=None, repr=False)
    client_address: tuple[str, int] | None = None
    discovered_address: tuple[str, int] | None = None
    identify: dict[str, Any] | None = field(default=None, repr=False)
    dave_protocol_version: int | None = None  # as sent in Session Description
    speaking: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: int = 0
    close_code: int | None = None
    close_reason: str = ""
    closed_by: Literal["client", "server"] | None = None
    closed: bool = False
    resumes: int = 0  # successful op 7 resumes; ``connection`` is then the latest websocket
    connections: list[int] = field(default_factory=list)  # every websocket that carried it
    # "Speaking before audio" bookkeeping (monotonic times); the caller holds Recorder.lock.
    _speaking_since: float | None = field(default=None, init=False, repr=False)
    _first_audio: float | None = field(default=None, init=False, repr=False)
    _audio_rule_done: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.connections:
            self.connections.append(self.connection)

    def _note_audio(self, now: float, grace: float) -> str | None:
        if self._first_audio is None:
            self._first_audio = now
        return self._check_audio_rule(now, grace, final=self.closed)

    def _note_speaking(self, mask: int, now: float, grace: float) -> str | None:
        if mask and self._speaking_since is None:
            self._speaking_since = now
        return self._check_audio_rule(now, grace, final=False)

    def _check_audio_rule(self, now: float, grace: float, *, final: bool) -> str | None:
        """A violation message once it is certain audio came before a non-zero Speaking.

        The websocket and UDP paths are read by different threads, so a Speaking sent just before
        the first packet may be *recorded* just after it; `grace` seconds absorb that.
        """
        first = self._first_audio
        if self._audio_rule_done or first is None:
            return None
        if self._speaking_since is not None:
            self._audio_rule_done = True
            late = self._speaking_since - first
            if late > grace:
                return (
                    f"first audio packet of ssrc {self.ssrc} arrived {late:.3f} s before any "
                    "Speaking (op 5) with a non-zero mask"
                )
            return None
        if final or now - first > grace:
            self._audio_rule_done = True
            return (
                f"audio from ssrc {self.ssrc} arrived but no Speaking (op 5) with a non-zero "
                "mask came before it"
            )
        return None


class Recorder:
    """All records of one fake, under one re-entrant lock with a Condition for waiters.

    Nothing holds `lock` across socket I/O. Anything that changes a record calls `notify`
    (or uses `changing`), so `Condition.wait_for` predicates are re-evaluated without polling.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._next_index = 0
        self.main_messages: list[RecordedMessage] = []
        self.voice_messages: list[RecordedMessage] = []
        self.frames: list[ReceivedFrame] = []
        self.frames_by_ssrc: dict[int, list[ReceivedFrame]] = {}
        self.sent_audio: list[SentPacket] = []  # what `FakeSpeaker`s sent, in send order
        self.udp_errors: list[str] = []
        self.violations: list[str] = []
        self.faults: list[str] = []  # every fault a test scripted, in order (`FakeDiscord.faults`)
        self.main_sessions: list[MainSession] = []
        self.voice_sessions: list[VoiceSession] = []

    def take_index(self) -> int:
        """The next global index (caller holds `lock`)."""
        index = self._next_index
        self._next_index += 1
        return index

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Hold the lock while mutating records, then wake every waiter."""
        with self.lock:
            yield
            self.cond.notify_all()

    def message(
        self, gateway: Literal["main", "voice"], direction: Direction, raw: str | bytes, conn: int
    ) -> RecordedMessage:
        """Record one websocket message; parses JSON text and binary opcodes."""
        data: dict[str, Any] | None = None
        op: int | None = None
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw)
            except (ValueError, RecursionError):  # deeply nested garbage too
                parsed = None
            if isinstance(parsed, dict):
                data = parsed
                op_value = parsed.get("op")
                op = op_value if type(op_value) is int else None
        elif raw:
            position = 0 if direction == "client" else 2  # server frames start with a uint16 seq
            op = raw[position] if len(raw) > position else None
        with self.changing():
            record = RecordedMessage(
                self.take_index(), time.monotonic(), direction, op, data, raw, conn
            )
            (self.main_messages if gateway == "main" else self.voice_messages).append(record)
        return record

    def violation(self, text: str) -> None:
        with self.changing():
            self.violations.append(text)

    def fault(self, text: str) -> None:
        with self.changing():
            self.faults.append(text)

    def udp_error(self, text: str) -> None:
        with self.changing():
            self.udp_errors.append(text)


def record_close(
    recorder: Recorder,
    session: MainSession | VoiceSession,
    code: int | None,
    reason: str,
    by: str,
) -> None:
    """Record how a websocket of either gateway ended (`by`: "server" or "client")."""
    with recorder.changing():
        session.close_code = code
        session.close_reason = reason
        session.closed_by = "server" if by == "server" else "client"
        session.closed = True

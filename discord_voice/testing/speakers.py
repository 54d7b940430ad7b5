"""Members of a call played by the fake, who speak: audio sent TO the clients, as Discord's voice
server forwards another member's audio, so that a client's receive path can be tested.

`FakeDiscord.add_speaker` makes a `FakeSpeaker`. What it does, as Discord does it:

- **Presence.** Its arrival is op 11 Clients Connect (``{"user_ids": [id]}``) to every client of
  the channel (a client that comes later gets it when its session is ready), its `leave` op 13
  Client Disconnect. In a DAVE channel it is a libdave member of the channel's group (dave-py,
  Discord's C++ libdave), added and removed by the gateway's external-sender proposals like any
  member, and the group sends those ops; elsewhere the `Roster` does.
- **Who speaks.** Op 5 Speaking (``{"user_id", "ssrc", "speaking": 1}``) names its SSRC, per
  client: before the first packet ("before"), after the N-th ("after:N": audio arrives before
  the op 5 that names it, as on Discord), or only when `FakeSpeaker.announce` says so ("never";
  ``announce(op12=True)`` sends the undocumented op 12 with ``audio_ssrc`` instead).
- **Audio.** One RTP packet per Opus frame (version 2, payload type 120, sequence +1 wrapping at
  65536, timestamp + the frame's duration from its TOC byte, its SSRC), sent at once (no pacing)
  from the voice server's socket to every client session of the channel that has a key, each
  copy sealed with that client's mode, key and outgoing nonce counter. Options: RTP padding,
  a header extension, CSRCs, seeded loss/reorder/duplication. In a DAVE call the Opus frame is
  first DAVE-encrypted with the speaker's own libdave `Encryptor` (the key ratchet of its user
  id in the current epoch), so clients decrypt frames made by Discord's own implementation.
  `FakeSpeaker.prepare` numbers and encrypts packets now and sends them later (audio in flight
  across a key change).
- **Everything is recorded**: each packet in ``fake.sent_audio`` (`SentPacket`, with the
  plaintext frame), each scripted action in ``fake.faults``.

`Speakers` is the fake's registry of them and also sends raw datagrams (RTCP, video, garbage,
from a foreign address) for negative tests.
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from discord_voice.core.opcodes import VoiceOp
from discord_voice.testing.gateways.voice_live import LiveVoice
from discord_voice.testing.gateways.voice_roster import Roster
from discord_voice.testing.records import Recorder, SentPacket
from discord_voice.testing.udp.outbound import (
    check_rtp_options,
    opus_samples,
    receiver_report,
    rtp_parts,
    wire_order,
)
from discord_voice.testing.udp.server import FakeUdpServer

if TYPE_CHECKING:
    from discord_voice.testing.dave.hub import DaveHub

__all__ = ["FakeSpeaker", "PreparedAudio", "Speakers"]

#: First user id given to speakers when the test names none (the fake's libdave members start
#: at 900000000000000001, its bot at 100000000000000001).
FIRST_SPEAKER_ID = 700000000000000001
#: Seconds `FakeSpeaker.send` waits for its DAVE group to settle, and for an op 5 to be sent.
SETTLE_TIMEOUT = 5.0
DELIVERY_TIMEOUT = 5.0
#: Undocumented voice op 12 ("video"): ``{user_id, audio_ssrc, video_ssrc, ...}``.
OP_VIDEO = 12
SAMPLE_RATE = 48000
_AFTER = re.compile(r"after:([0-9]+)")


def parse_announce(announce: str) -> int | None:
    """How many packets a client gets before the op 5 that names the SSRC: 0 for "before",
    N for "after:N", None for "never"."""
    if announce == "before":
        return 0
    if announce == "never":
        return None
    match = _AFTER.fullmatch(announce) if isinstance(announce, str) else None
    if match is None:
        raise ValueError(f'announce must be "before", "after:N" or "never", got {announce!r}')
    return int(match.group(1))


@dataclass(frozen=True)
class _Room:
    """What every speaker of one fake uses."""

    recorder: Recorder
    udp: FakeUdpServer
    roster: Roster
    dave: DaveHub | None

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate` holds, re-evaluated on every change the recorder hears of
        (DAVE group events included)."""
        with self.recorder.cond:
            return bool(self.recorder.cond.wait_for(predicate, timeout))

    def take_index(self) -> int:
        with self.recorder.lock:
            return self.recorder.take_index()


class FakeSpeaker:
    """Another member of a voice channel, played by the fake, who speaks to the clients there.

    Made by `FakeDiscord.add_speaker`; see `discord_voice.testing.speakers` for what it sends.
    ``user_id`` and ``channel_id`` are ints; ``ssrc`` is its current SSRC (`change_ssrc`);
    ``dave`` tells whether it is a libdave member of the channel's DAVE group; ``sent`` lists
    its packets (`SentPacket`). Methods may be called from any thread (one runs at a time).
    """

    def __init__(
        self,
        room: _Room,
        user_id: int,
        channel_id: int,
        ssrc: int,
        *,
        announce: str,
        sequence: int | None,
        timestamp: int | None,
        dave: bool,
    ) -> None:
        self._room = room
        self.user_id = user_id
        self.channel_id = channel_id
        self.announce_mode = announce
        self._announce_after = parse_announce(announce)
        self.dave = dave
        self._lock = threading.RLock()
        self._ssrc = ssrc
        self._sequence = secrets.randbits(16) if sequence is None else sequence & 0xFFFF
        self._timestamp = secrets.randbits(32) if timestamp is None else timestamp & 0xFFFFFFFF
        self._told: set[int] = set()  # client SSRCs told this speaker's current SSRC
        self._counts: dict[int, int] = {}  # datagrams of the current SSRC sent per client SSRC
        self._left = False

    def __repr__(self) -> str:
        return (
            f"FakeSpeaker(user_id={self.user_id}, channel_id={self.channel_id}, "
            f"ssrc={self._ssrc}, announce={self.announce_mode!r}, dave={self.dave}"
            + (", left" if self._left else "")
            + ")"
        )

    @property
    def ssrc(self) -> int:
        with self._lock:
            return self._ssrc

    @property
    def left(self) -> bool:
        """True once `leave` ran."""
        return self._left

    @property
    def next_sequence(self) -> int:
        """The RTP sequence number the next packet will carry."""
        with self._lock:
            return self._sequence

    @property
    def next_timestamp(self) -> int:
        """The RTP timestamp the next packet will carry."""
        with self._lock:
            return self._timestamp

    @property
    def sent(self) -> list[SentPacket]:
        """Every packet this speaker sent (all its SSRCs), in send order."""
        rec = self._room.recorder
        with rec.lock:
            return [p for p in rec.sent_audio if p.user_id == self.user_id]

    def _fault(self, text: str) -> None:
        self._room.recorder.fault(f"speaker {self.user_id}: {text}")

    def _check_alive(self) -> None:
        if self._left:
            raise RuntimeError(f"speaker {self.user_id} has left the channel")

    # -- speaking --------------------------------------------------------------------------------

    def send(
        self,
        frames: Sequence[bytes],
        *,
        padding: int = 0,
        extension: bytes | None = None,
        csrcs: Sequence[int] = (),
        loss: float = 0.0,
        reorder: float = 0.0,
        duplicate: float = 0.0,
        seed: int = 0,
        dave: bool = True,
        settle: bool = True,
    ) -> list[SentPacket]:
        """Send one RTP packet per Opus frame in `frames` to every client session of the
        channel that has a key (Session Description), at once; returns what was sent, one
        `SentPacket` per frame in sequence order (also appended to ``fake.sent_audio``).

        Each packet: version 2, payload type 120, the next sequence number (wrapping at 65536),
        the timestamp advanced by the previous frame's duration (from its TOC byte, in 48 kHz
        samples; `skip` adds a pause), this speaker's SSRC; `csrcs` after the header; with
        `extension` (the one-byte-form elements, e.g. ``b"\\x10\\x7f"``: id 1, audio level) the
        X bit, the ``BE DE`` preamble and the body zero-padded to 32-bit words; with `padding`
        (1-255) the P bit and that many bytes of RTP padding, the last holding the count. Each
        client's copy is sealed with its mode and key: the header, CSRCs and extension
        preamble are the AAD; the extension body, the payload and the padding are encrypted;
        then the 16-byte tag and that client's 4-byte big-endian nonce counter (one per client,
        +1 per datagram).

        `loss`, `reorder`, `duplicate`: probabilities applied to the run of packets with
        ``random.Random(seed)`` (the same seed gives the same pattern; see
        `udp.outbound.wire_order`): a dropped packet uses its sequence number but goes to no one;
        a duplicated one goes twice; a reordered one goes after the next packet.

        DAVE (the speaker is a member of the channel's DAVE group): with `dave` True each frame
        is DAVE-encrypted by the speaker's libdave encryptor (the payload ends with ``FA FA``);
        `dave` False sends the Opus frame as is (passthrough, downgrade and plaintext tests).
        With `settle` (default) the call first waits, up to `SETTLE_TIMEOUT` seconds, until the
        group has no proposals or transition in flight and the speaker holds its key, so the
        frames use the key every member will have; `settle` False sends at once with whatever
        key the speaker holds (the previous epoch's during a transition, or the next one's with
        ``add_speaker(key_switch="commit")``). RuntimeError if it has no key at all.

        No pacing: all datagrams leave within the call (a client must read them fast enough or
        have the socket buffer for them). ValueError for an invalid frame or option.
        `prepare` does the same in two steps (packets numbered and encrypted now, sent later).
        """
        with self._lock:  # numbered and sent in one step: no other send in between
            audio = self._prepare("send", frames, SendOptions(
                padding, extension, tuple(csrcs), loss, reorder, duplicate, seed, dave, settle
            ))  # fmt: skip
            audio.sent = True
            return self._transmit(audio)

    def prepare(self, frames: Sequence[bytes], **options: Any) -> PreparedAudio:
        """The first half of `send` (the same keyword options): the packets get their sequence
        numbers, timestamps and SSRC, and in a DAVE call their DAVE encryption with the key the
        speaker holds now (after waiting for the group to settle, with `settle`); nothing is
        sent until `send_prepared`. Audio in flight across a change: frames encrypted with an
        epoch's key that arrive after the clients moved to the next epoch (or a downgrade).

        Packets sent by this speaker in between keep their own numbers (the prepared ones were
        taken first), so send the prepared packets before any later `send` to keep the RTP
        order. ValueError for an invalid frame or option; RuntimeError as `send`.
        """
        shape = SendOptions(**options)  # TypeError for an unknown option
        with self._lock:
            return self._prepare("prepare", frames, shape)

    def _prepare(self, verb: str, frames: Sequence[bytes], shape: SendOptions) -> PreparedAudio:
        """Number, DAVE-encrypt and build the packets of `send`/`prepare` (lock held)."""
        frames = [bytes(f) for f in frames]
        durations = [opus_samples(f) for f in frames]
        check_rtp_options(shape.padding, shape.extension, shape.csrcs)
        order = wire_order(len(frames), shape.loss, shape.reorder, shape.duplicate, shape.seed)
        self._check_alive()
        self._fault(f"{verb}({len(frames)} frames{shape.changed()})")
        dave, settle = shape.dave, shape.settle
        encrypt = dave and self.dave
        payloads = self._dave_encrypt(frames, settle) if encrypt else list(frames)
        headers: list[tuple[int, int]] = []
        for duration in durations:
            headers.append((self._sequence, self._timestamp))
            self._sequence = (self._sequence + 1) & 0xFFFF
            self._timestamp = (self._timestamp + duration) & 0xFFFFFFFF
        parts = [
            rtp_parts(
                self._ssrc,
                sequence,
                timestamp,
                payload,
                padding=shape.padding,
                extension=shape.extension,
                csrcs=shape.csrcs,
            )
            for (sequence, timestamp), payload in zip(headers, payloads, strict=True)
        ]
        ssrc = self._ssrc
        return PreparedAudio(self.user_id, ssrc, frames, payloads, headers, parts, order, encrypt)

    def send_prepared(self, audio: PreparedAudio) -> list[SentPacket]:
        """Send what `prepare` made, now, as `send` would have (to the clients of the channel
        that have a key now); returns one `SentPacket` per frame. ValueError for another
        speaker's packets; RuntimeError if they were sent already or the speaker has left."""
        if audio.user_id != self.user_id:
            raise ValueError(f"{audio.user_id}'s packets, not {self.user_id}'s")
        with self._lock:
            self._check_alive()
            if audio.sent:
                raise RuntimeError("these packets were sent already")
            audio.sent = True
            self._fault(f"send_prepared({len(audio.frames)} frames)")
            return self._transmit(audio)

    def _transmit(self, audio: PreparedAudio) -> list[SentPacket]:
        """The second half of `send`: every packet of `audio` to every client of the channel
        that has a key, in wire order, recorded in ``sent_audio`` (lock held)."""
        room = self._room
        frames, payloads, headers, parts = audio.frames, audio.payloads, audio.headers, audio.parts
        clients = [
            (live, live.session.ssrc)
            for live in room.roster.clients(self.channel_id)
            if live.session.ssrc is not None
        ]
        index: dict[int, int] = {}
        to: dict[int, list[int]] = {k: [] for k in range(len(frames))}

        for k in audio.order:
            stamp = functools.partial(_stamp, index, k, room)
            for live, client in clients:
                if self._deliver(live, client, parts[k], stamp) and client not in to[k]:
                    to[k].append(client)
            stamp()  # no client to send to
        for k in range(len(frames)):
            if k not in index:  # dropped
                index[k] = room.take_index()
        first = {k: audio.order.index(k) for k in set(audio.order)}
        sent = [
            SentPacket(
                index=index[k],
                user_id=self.user_id,
                ssrc=audio.ssrc,
                sequence=headers[k][0],
                timestamp=headers[k][1],
                opus=frames[k],
                payload=payloads[k],
                dave=audio.encrypted and payloads[k] != frames[k],
                to=tuple(to[k]),
                dropped=k not in first,
                duplicated=audio.order.count(k) > 1,
                reordered=k in first and any(first[j] < first[k] for j in first if j > k),
            )
            for k in range(len(frames))
        ]
        with room.recorder.changing():
            room.recorder.sent_audio.extend(sent)
        return sent

    def _dave_encrypt(self, frames: list[bytes], settle: bool) -> list[bytes]:
        hub = self._room.dave
        assert hub is not None
        uid = self.user_id
        if settle and not self._room.wait(lambda: hub.settled_for(uid), SETTLE_TIMEOUT):
            raise RuntimeError(
                f"speaker {uid}: the DAVE group of channel {self.channel_id} did not settle "
                f"within {SETTLE_TIMEOUT} s ({hub.state(self.channel_id)}); a client that "
                "never answers op 29/30 with op 23? (send(settle=False) sends at once)"
            )
        payloads: list[bytes] = []
        for frame in frames:
            encrypted = hub.encrypt_as(uid, self._ssrc, frame)
            if encrypted is None:
                raise RuntimeError(
                    f"speaker {uid} has no DAVE key yet (not in the group of channel "
                    f"{self.channel_id}: {hub.state(self.channel_id)})"
                )
            payloads.append(encrypted)
        return payloads

    def _deliver(
        self,
        live: LiveVoice,
        client: int,
        parts: tuple[bytes, bytes],
        stamp: Callable[[], None],
    ) -> bool:
        """One datagram to one client session, with the op 5 its announce mode puts around it
        (`stamp` runs right before the datagram goes); False when the client has no address
        or key yet."""
        udp = self._room.udp
        address = udp.destination(client)
        if address is None:
            return False
        after = self._announce_after
        if after == 0 and client not in self._told:
            self._announce_to([(live, client)], op12=False, speaking=1)
        datagram = udp.seal_for(client, *parts)
        if datagram is None:
            return False
        stamp()
        udp.send(datagram, address)
        count = self._counts.get(client, 0) + 1
        self._counts[client] = count
        if after is not None and count >= after and client not in self._told:
            self._announce_to([(live, client)], op12=False, speaking=1)
        return True

    def _announce_to(
        self, clients: list[tuple[LiveVoice, int]], *, op12: bool, speaking: int
    ) -> None:
        """Tell `clients` this speaker's SSRC (op 5, or op 12) and wait until it is sent."""
        uid, ssrc = str(self.user_id), self._ssrc
        if op12:
            message = {
                "op": OP_VIDEO,
                "d": {"user_id": uid, "audio_ssrc": ssrc, "video_ssrc": 0, "rtx_ssrc": 0,
                      "streams": []},
            }  # fmt: skip
        else:
            message = {
                "op": int(VoiceOp.SPEAKING),
                "d": {"user_id": uid, "ssrc": ssrc, "speaking": speaking},
            }
        deliveries = []
        for live, client in clients:
            deliveries.append(live.post_tracked(("send", message, True)))
            self._told.add(client)
        for delivery in deliveries:
            if delivery is not None:
                delivery.wait(DELIVERY_TIMEOUT)  # False: the websocket closed meanwhile

    # -- scripting -------------------------------------------------------------------------------

    def announce(self, op12: bool = False, *, speaking: int = 1) -> None:
        """Send op 5 Speaking ``{"user_id", "ssrc", "speaking"}`` now to every ready client of
        the channel (with `op12`: op 12 ``{"user_id", "audio_ssrc", "video_ssrc": 0,
        "rtx_ssrc": 0, "streams": []}`` instead); returns once it is sent. Those clients count
        as told: the announce mode does not send it to them again for this SSRC."""
        with self._lock:
            self._check_alive()
            self._fault(f"announce(op12={bool(op12)}, speaking={speaking})")
            clients = [
                (live, live.session.ssrc)
                for live in self._room.roster.clients(self.channel_id)
                if live.session.ssrc is not None
            ]
            self._announce_to(clients, op12=bool(op12), speaking=int(speaking))

    def skip(self, seconds: float) -> None:
        """A pause: the next packet's timestamp jumps `seconds` further (48 kHz samples,
        rounded), its sequence number does not."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._check_alive()
            self._fault(f"skip({seconds})")
            samples = round(seconds * SAMPLE_RATE)
            self._timestamp = (self._timestamp + samples) & 0xFFFFFFFF

    def change_ssrc(self) -> int:
        """Speak from a new random SSRC (as after a reconnect): a new stream, so sequence and
        timestamp start at new random values, and every client is announced the new SSRC
        again as the announce mode says. Returns it."""
        with self._lock:
            self._check_alive()
            udp = self._room.udp
            old, self._ssrc = self._ssrc, udp.reserve_ssrc()
            udp.release_ssrc(old)
            self._sequence, self._timestamp = secrets.randbits(16), secrets.randbits(32)
            self._told.clear()
            self._counts.clear()
            self._fault(f"change_ssrc({old} -> {self._ssrc})")
            return self._ssrc

    def leave(self) -> None:
        """Leave the channel: op 13 ``{"user_id"}`` to its clients; in a DAVE channel the
        gateway also proposes its removal (op 27), so the epoch changes. Idempotent."""
        with self._lock:
            if self._left:
                return
            self._left = True
            self._fault("leave()")
            room = self._room
            if self.dave and room.dave is not None:
                room.dave.remove_member(self.user_id)
            room.roster.remove_member(self.channel_id, self.user_id)
            room.udp.release_ssrc(self._ssrc)


@dataclass(frozen=True)
class SendOptions:
    """The keyword options of `FakeSpeaker.send` and `prepare`, with their defaults."""

    padding: int = 0
    extension: bytes | None = None
    csrcs: tuple[int, ...] = ()
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    seed: int = 0
    dave: bool = True
    settle: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "csrcs", tuple(self.csrcs))

    def changed(self) -> str:
        """``, name=value`` for each option not at its default (for ``faults``)."""
        return "".join(
            f", {f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        )


@dataclass(eq=False)
class PreparedAudio:
    """Packets a `FakeSpeaker` numbered and (in a DAVE call) encrypted, not sent yet: made by
    `FakeSpeaker.prepare`, sent once by `FakeSpeaker.send_prepared`. ``frames`` are the Opus
    frames, ``payloads`` what goes in the packets (DAVE-encrypted or not), ``headers`` each
    packet's (sequence, timestamp), ``ssrc`` the speaker's SSRC when they were prepared."""

    user_id: int
    ssrc: int
    frames: list[bytes]
    payloads: list[bytes]
    headers: list[tuple[int, int]]
    parts: list[tuple[bytes, bytes]]  # each packet's RTP header and body, before the seal
    order: list[int]  # the wire order (loss, reordering, duplicates)
    encrypted: bool  # DAVE-encrypted
    sent: bool = False

    @property
    def sequences(self) -> list[int]:
        return [sequence for sequence, _ in self.headers]


def _stamp(index: dict[int, int], k: int, room: _Room) -> None:
    """Give packet `k` its record index, unless it has one (its first datagram's)."""
    if k not in index:
        index[k] = room.take_index()


class Speakers:
    """Every `FakeSpeaker` of one fake, and raw datagrams to clients (negative tests)."""

    def __init__(
        self, recorder: Recorder, udp: FakeUdpServer, roster: Roster, dave: DaveHub | None
    ) -> None:
        self._room = _Room(recorder, udp, roster, dave)
        self._lock = threading.Lock()
        self._speakers: list[FakeSpeaker] = []
        self._ids = itertools.count(FIRST_SPEAKER_ID)

    def add(
        self,
        channel_id: int,
        user_id: int | None,
        *,
        announce: str,
        sequence: int | None,
        timestamp: int | None,
        key_switch: str,
    ) -> FakeSpeaker:
        """See `FakeDiscord.add_speaker`."""
        parse_announce(announce)
        if key_switch not in ("execute", "commit"):
            raise ValueError(f'key_switch must be "execute" or "commit", got {key_switch!r}')
        for name, value in (("sequence", sequence), ("timestamp", timestamp)):
            if value is not None and type(value) is not int:
                raise ValueError(f"{name} must be an int or None, got {value!r}")
        room = self._room
        hub = room.dave
        with self._lock:
            taken = {s.user_id for s in self._speakers if not s.left}
            if user_id is None:
                uid = next(self._ids)
                while uid in taken or (hub is not None and hub.is_hosted(uid)):
                    uid = next(self._ids)
            elif type(user_id) is not int or not 0 < user_id < 1 << 64:
                raise ValueError(f"user_id must be a positive 64-bit int, got {user_id!r}")
            elif user_id in taken or (hub is not None and hub.is_hosted(user_id)):
                raise ValueError(f"user {user_id} is already in a channel as a fake member")
            else:
                uid = user_id
            in_dave = hub is not None and hub.requires_dave(channel_id)
            ssrc = room.udp.reserve_ssrc()
            speaker = FakeSpeaker(
                room, uid, channel_id, ssrc, announce=announce, sequence=sequence,
                timestamp=timestamp, dave=in_dave,
            )  # fmt: skip
            self._speakers.append(speaker)
        room.recorder.fault(
            f"add_speaker(channel_id={channel_id}, user_id={uid}, ssrc={ssrc}, "
            f"announce={announce!r}, dave={in_dave})"
        )
        room.roster.add_member(channel_id, uid, announce=not in_dave)
        if in_dave:
            assert hub is not None
            hub.add_member(channel_id, uid, True, key_switch=key_switch)
        return speaker

    def all(self) -> list[FakeSpeaker]:
        with self._lock:
            return list(self._speakers)

    # -- raw datagrams ---------------------------------------------------------------------------

    def client(self, to_ssrc: int | None) -> int:
        """The client session `to_ssrc` (checked), or the newest one that has an address."""
        clients = self._room.udp.clients()
        if to_ssrc is None:
            if not clients:
                raise RuntimeError("no client session has an address yet (IP discovery)")
            return clients[-1]
        if to_ssrc not in clients:
            raise ValueError(f"no client session with ssrc {to_ssrc} and an address")
        return to_ssrc

    def send_raw(self, data: bytes, to_ssrc: int | None, from_foreign: bool) -> int:
        """Send `data` as is to a client session; returns its SSRC."""
        client = self.client(to_ssrc)
        address = self._room.udp.destination(client)
        assert address is not None
        self._room.recorder.fault(
            f"send_udp_raw({len(data)} bytes, to_ssrc={client}, from_foreign={from_foreign})"
        )
        self._room.udp.send(bytes(data), address, foreign=from_foreign)
        return client

    def _seal(self, client: int, aad: bytes, plaintext: bytes) -> bytes:
        sealed = self._room.udp.seal_for(client, aad, plaintext)
        if sealed is None:
            raise RuntimeError(f"client session {client} has no key yet (Session Description)")
        return sealed

    def rtcp(self, to_ssrc: int | None, sender_ssrc: int | None, seal: bool) -> bytes:
        """See `FakeDiscord.rtcp_packet`."""
        client = self.client(to_ssrc)
        sender = secrets.randbits(32) | 1 if sender_ssrc is None else sender_ssrc
        report = receiver_report(sender, client)
        return self._seal(client, report[:8], report[8:]) if seal else report

    def video(
        self,
        to_ssrc: int | None,
        *,
        payload_type: int,
        payload: bytes,
        ssrc: int | None,
        sequence: int,
        timestamp: int,
    ) -> bytes:
        """See `FakeDiscord.video_packet`."""
        if type(payload_type) is not int or not 0 <= payload_type <= 127:
            raise ValueError(f"payload_type must be 0-127, got {payload_type!r}")
        client = self.client(to_ssrc)
        source = secrets.randbits(32) | 1 if ssrc is None else ssrc
        aad, plaintext = rtp_parts(source, sequence, timestamp, payload, payload_type=payload_type)
        return self._seal(client, aad, plaintext)

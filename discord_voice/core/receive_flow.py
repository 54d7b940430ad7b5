"""What happens to received audio before anyone hears it: one voice session's receive path.

datagram -> `open_datagram` (classify, transport-decrypt, strip; ``receive.md`` §1-§2) ->
`SsrcMap` (who sent it; early audio held until op 5/12 names the SSRC; §3) -> DAVE decryption
with the sender's user id (§4; the silence frame ``F8 FF FE`` passes in clear) -> `VoicePacket`.

Nothing is lost silently: every datagram ends as a delivered packet, a held one, or a count in
`ReceiveCounters`. A frame whose DAVE decryption fails is dropped (a frame still carrying the
``FA FA`` marker must never reach a decoder). `ReceiveFlow` is pure: the caller reads the
socket, supplies `now`, and gives it the DAVE step as a function (`Decrypt`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from discord_voice.core.crypto import TransportCipher
from discord_voice.core.dave import MARKER
from discord_voice.core.frames import OPUS_SILENCE_FRAME
from discord_voice.core.receive_packet import Dropped, DropReason, RtpAudio, open_datagram
from discord_voice.core.ssrc_map import Deliver, Expired, Reset, SsrcMap

__all__ = [
    "SPEAKING_TIMEOUT",
    "Decrypt",
    "ReceiveCounters",
    "ReceiveFlow",
    "Reset",
    "VoicePacket",
]

#: The DAVE step: (sender's user id, frame) -> the Opus frame, or None if it cannot be decrypted.
Decrypt = Callable[[int, bytes], bytes | None]

#: A member stops speaking when nothing of theirs arrived for this long (seconds).
SPEAKING_TIMEOUT = 0.2

#: A packet as the SSRC map holds it: with the time it arrived.
Arrived = tuple[RtpAudio, float]


@dataclass(frozen=True, slots=True)
class VoicePacket:
    """One Opus packet of another member, as ``conn.opus_recv`` delivers it."""

    user_id: int
    ssrc: int
    sequence: int
    timestamp: int
    opus: bytes  # transport- and DAVE-decrypted, extension and padding removed
    arrival: float  # the connection's clock, seconds


@dataclass(slots=True)
class ReceiveCounters:
    """What was not delivered, by reason (each a count of datagrams or packets)."""

    #: DropReason value -> count; every reason is there from the start, so a snapshot taken
    #: by another thread never sees the dict change size
    dropped: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in DropReason})
    unmapped: int = 0  # held for an SSRC that was never named in time
    dave_failures: int = 0  # DAVE decryption failed (or a marked frame got through)
    delivered: int = 0

    def count(self, reason: DropReason) -> None:
        self.dropped[reason.value] += 1


class ReceiveFlow:
    """The receive path of one voice session (see the module docstring). One owner thread."""

    def __init__(
        self,
        *,
        own_ssrc: int,
        server: tuple[str, int],
        cipher: TransportCipher,
        decrypt: Decrypt,
        ssrcs: SsrcMap[Arrived] | None = None,
    ) -> None:
        self._own_ssrc = own_ssrc
        self._server = server
        self._cipher = cipher
        self._decrypt = decrypt
        self._ssrcs: SsrcMap[Arrived] = ssrcs if ssrcs is not None else SsrcMap()
        self.counters = ReceiveCounters()
        self._heard: dict[int, float] = {}  # speaking members -> when their last packet came
        #: (user id, speaking) changes since the owner last took them: True at the first
        #: packet after silence, False once `SPEAKING_TIMEOUT` passed without one (or reset).
        self.speaking_changes: list[tuple[int, bool]] = []

    @property
    def ssrcs(self) -> SsrcMap[Arrived]:
        return self._ssrcs

    def new_session(
        self,
        *,
        own_ssrc: int,
        server: tuple[str, int],
        cipher: TransportCipher,
        decrypt: Decrypt | None = None,
    ) -> list[Reset]:
        """A new voice session (reconnect, move): new key, SSRCs, server (and DAVE group);
        everyone resets."""
        self._own_ssrc, self._server, self._cipher = own_ssrc, server, cipher
        if decrypt is not None:
            self._decrypt = decrypt
        return self._settle(self._ssrcs.clear(), now=0.0)[1]

    def datagram(
        self, data: bytes, source: tuple[str, int], now: float
    ) -> tuple[list[VoicePacket], list[Reset]]:
        """One datagram from the socket."""
        opened = open_datagram(
            data, source=source, server=self._server, own_ssrc=self._own_ssrc, cipher=self._cipher
        )
        if isinstance(opened, Dropped):
            self.counters.count(opened.reason)
            return [], []
        return self._settle(self._ssrcs.packet(opened.ssrc, (opened, now), now), now)

    def speaking(
        self, user_id: int, ssrc: int, now: float
    ) -> tuple[list[VoicePacket], list[Reset]]:
        """Op 5 (or op 12's ``audio_ssrc``): releases what was held for `ssrc`."""
        if ssrc == self._own_ssrc or ssrc == 0:
            return [], []
        return self._settle(self._ssrcs.speaking(user_id, ssrc, now), now)

    def disconnected(self, user_id: int, now: float) -> list[Reset]:
        return self._settle(self._ssrcs.disconnected(user_id, now), now)[1]

    def tick(self, now: float) -> None:
        """Time passes: holds that ran out are dropped and counted; members fall silent."""
        self._settle(self._ssrcs.expire(now), now)
        for user in [u for u, heard in self._heard.items() if now - heard >= SPEAKING_TIMEOUT]:
            del self._heard[user]
            self.speaking_changes.append((user, False))

    def _settle(
        self, actions: list[Deliver[Arrived] | Reset | Expired], now: float
    ) -> tuple[list[VoicePacket], list[Reset]]:
        packets: list[VoicePacket] = []
        resets: list[Reset] = []
        for action in actions:
            if isinstance(action, Deliver):
                packet = self._deliver(action.user_id, *action.packet)
                if packet is not None:
                    packets.append(packet)
                    if action.user_id not in self._heard:
                        self.speaking_changes.append((action.user_id, True))
                    self._heard[action.user_id] = now
            elif isinstance(action, Reset):
                resets.append(action)
                if self._heard.pop(action.user_id, None) is not None:
                    self.speaking_changes.append((action.user_id, False))
            else:
                self.counters.unmapped += action.count
        return packets, resets

    def _deliver(self, user_id: int, audio: RtpAudio, arrival: float) -> VoicePacket | None:
        frame: bytes | None = audio.payload
        if frame != OPUS_SILENCE_FRAME:
            frame = self._decrypt(user_id, audio.payload)
            if frame is None or frame.endswith(MARKER):
                self.counters.dave_failures += 1
                return None
        assert frame is not None
        self.counters.delivered += 1
        return VoicePacket(
            user_id=user_id,
            ssrc=audio.ssrc,
            sequence=audio.sequence,
            timestamp=audio.timestamp,
            opus=frame,
            arrival=arrival,
        )

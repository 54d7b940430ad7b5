"""One received UDP datagram: classified, transport-decrypted, stripped to the Opus payload.

The rules (``receive.md`` §1-§2), in this order; every datagram that is not audio for us ends as
a `Dropped` with its reason, counted by the caller, never an exception:

1. shorter than the 12-byte RTP header, or a 74-byte IP discovery reply: ``SHORT`` /
   ``DISCOVERY``;
2. not RTP version 2: ``NOT_RTP`` (keepalives and other non-RTP);
3. second byte 192..223: RTCP (``RTCP``), never audio;
4. payload type other than 120 (Opus): ``NOT_OPUS`` (video packets crash decoders);
5. from any address but the voice server's: ``FOREIGN``;
6. carrying our own SSRC: ``OWN_SSRC``;
7. a header cut short by its CSRC count or extension: ``MALFORMED``;
8. failing authentication (``*_rtpsize`` AEAD; the AAD is the 12-byte header, the CSRCs and the
   4-byte extension preamble): ``AUTH_FAILED``;
9. after decryption, the extension body (``4 * length`` bytes) is skipped and, when the P bit is
   set, the RTP padding (its last byte says how many bytes) is removed; a padding or extension
   longer than what was decrypted: ``BAD_PADDING`` / ``MALFORMED``; nothing left: ``EMPTY``.

What is left is `RtpAudio`: the (possibly DAVE-encrypted) Opus frame, with its SSRC, sequence
and timestamp. Pure: bytes and values in, a value out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from discord_voice.core.crypto import TransportCipher
from discord_voice.core.rtp import OPUS_PAYLOAD_TYPE, RTP_HEADER_SIZE, RtpHeader
from discord_voice.errors import InvalidPacket

__all__ = ["DISCOVERY_REPLY_SIZE", "DropReason", "Dropped", "RtpAudio", "open_datagram"]

#: An IP discovery reply: type 0x0002, length 70, then 70 bytes (RFC-less, Discord's own).
DISCOVERY_REPLY_SIZE: Final = 74


class DropReason(enum.Enum):
    """Why a received datagram is not audio to deliver (each is counted, none is fatal)."""

    SHORT = "short"
    DISCOVERY = "discovery"
    NOT_RTP = "not_rtp"
    RTCP = "rtcp"
    NOT_OPUS = "not_opus"
    FOREIGN = "foreign"
    OWN_SSRC = "own_ssrc"
    MALFORMED = "malformed"
    AUTH_FAILED = "auth_failed"
    BAD_PADDING = "bad_padding"
    EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: DropReason
    ssrc: int | None = None  # when the header was readable


@dataclass(frozen=True, slots=True)
class RtpAudio:
    """An Opus packet as it arrived: transport-decrypted, extension and padding removed (still
    DAVE-encrypted in an E2EE call)."""

    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes
    marker: bool = False


def open_datagram(
    datagram: bytes,
    *,
    source: tuple[str, int],
    server: tuple[str, int],
    own_ssrc: int,
    cipher: TransportCipher,
) -> RtpAudio | Dropped:
    """Apply the rules of the module docstring to one datagram from `source`."""
    length = len(datagram)
    if length < RTP_HEADER_SIZE:
        return Dropped(DropReason.SHORT)
    if length == DISCOVERY_REPLY_SIZE and datagram[0] == 0 and datagram[1] == 2:
        return Dropped(DropReason.DISCOVERY)
    first, second = datagram[0], datagram[1]
    if first >> 6 != 2:
        return Dropped(DropReason.NOT_RTP)
    if 192 <= second <= 223:
        return Dropped(DropReason.RTCP)
    ssrc = int.from_bytes(datagram[8:12], "big")
    if second & 0x7F != OPUS_PAYLOAD_TYPE:
        return Dropped(DropReason.NOT_OPUS, ssrc)
    if source != server:
        return Dropped(DropReason.FOREIGN, ssrc)
    if ssrc == own_ssrc:
        return Dropped(DropReason.OWN_SSRC, ssrc)
    try:
        header = RtpHeader.parse(datagram)
    except InvalidPacket:
        return Dropped(DropReason.MALFORMED, ssrc)
    try:
        plain = cipher.open(datagram, header.size)
    except InvalidPacket:
        return Dropped(DropReason.AUTH_FAILED, ssrc)
    start = header.extension_body_size
    end = len(plain)
    if start > end:
        return Dropped(DropReason.MALFORMED, ssrc)
    if header.padding:
        padding = plain[-1] if plain else 0
        if padding == 0 or padding > end - start:
            return Dropped(DropReason.BAD_PADDING, ssrc)
        end -= padding
    if end <= start:
        return Dropped(DropReason.EMPTY, ssrc)
    return RtpAudio(
        ssrc=ssrc,
        sequence=header.sequence,
        timestamp=header.timestamp,
        payload=plain[start:end],
        marker=header.marker,
    )

"""The RTP header Discord voice uses: encoding for the send path, parsing for received packets.

Discord sends and expects RFC 3550 headers. Ours is always the fixed 12 bytes
``0x80 0x78 seq(u16 BE) ts(u32 BE) ssrc(u32 BE)`` (version 2, no padding, no extension, no
CSRCs, payload type 120 = Opus). Packets from Discord may carry CSRCs and a one-byte-header
extension; for the ``*_rtpsize`` transport modes the unencrypted part of the header (the AAD) is
sized "the same way as SRTP": the 12 fixed bytes, the CSRCs and the 4-byte extension preamble,
while the extension body sits encrypted at the start of the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from discord_voice.errors import InvalidPacket, LocalProtocolError

__all__ = [
    "FIXED_HEADER",
    "OPUS_PAYLOAD_TYPE",
    "RTP_HEADER_SIZE",
    "RTP_VERSION_BYTE",
    "SAMPLES_PER_FRAME",
    "RtpHeader",
    "encode_header",
    "next_sequence",
    "next_timestamp",
]

#: Size of the fixed RTP header (no CSRCs, no extension).
RTP_HEADER_SIZE: Final = 12
#: First header byte of every packet we send: version 2, no padding, no extension, CC = 0.
RTP_VERSION_BYTE: Final = 0x80
#: Payload type Discord uses for Opus (marker bit clear).
OPUS_PAYLOAD_TYPE: Final = 0x78
#: Samples per 20 ms Opus frame at 48 kHz: the RTP timestamp step per packet.
SAMPLES_PER_FRAME: Final = 960

#: The fixed header as one struct: version/flags byte, payload-type byte, sequence, timestamp,
#: ssrc. ``FIXED_HEADER.pack(RTP_VERSION_BYTE, OPUS_PAYLOAD_TYPE, ...)`` is `encode_header`
#: without its argument checks, for callers whose counters are valid by construction.
FIXED_HEADER: Final = struct.Struct(">BBHII")

_U16: Final = 0xFFFF
_U32: Final = 0xFFFFFFFF
_FIXED: Final = FIXED_HEADER
_EXTENSION_PREAMBLE = struct.Struct(">HH")


def _check_range(name: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise LocalProtocolError(f"rtp {name} must be an integer in 0..{maximum}, got {value!r}")


def encode_header(sequence: int, timestamp: int, ssrc: int) -> bytes:
    """Return the 12-byte header Discord expects in front of every voice packet we send."""
    try:
        return _FIXED.pack(RTP_VERSION_BYTE, OPUS_PAYLOAD_TYPE, sequence, timestamp, ssrc)
    except struct.error:
        # Slow path only: find which field is wrong so the message names it.
        _check_range("sequence", sequence, _U16)
        _check_range("timestamp", timestamp, _U32)
        _check_range("ssrc", ssrc, _U32)
        raise  # pragma: no cover - struct rejected something the checks accept


def next_sequence(sequence: int) -> int:
    """The sequence number after ``sequence`` (16 bits, wraps 65535 -> 0)."""
    return (sequence + 1) & _U16


def next_timestamp(timestamp: int, samples: int = SAMPLES_PER_FRAME) -> int:
    """The timestamp ``samples`` later (32 bits, wraps at 2**32)."""
    return (timestamp + samples) & _U32


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """A parsed RTP header: the fixed part, the CSRCs and the extension preamble.

    ``extension_profile`` and ``extension_length`` (in 32-bit words, preamble excluded) are 0
    when ``extension`` is false. ``bytes(header)`` gives back exactly ``size`` bytes; the
    extension body is not part of it (in the rtpsize modes it is encrypted with the payload).
    """

    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int = OPUS_PAYLOAD_TYPE
    marker: bool = False
    version: int = 2
    padding: bool = False
    extension: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int = 0
    extension_length: int = 0

    def __post_init__(self) -> None:
        _check_range("version", self.version, 3)
        _check_range("payload type", self.payload_type, 0x7F)
        _check_range("sequence", self.sequence, _U16)
        _check_range("timestamp", self.timestamp, _U32)
        _check_range("ssrc", self.ssrc, _U32)
        if len(self.csrcs) > 15:
            raise LocalProtocolError(f"rtp header holds at most 15 csrcs, got {len(self.csrcs)}")
        for csrc in self.csrcs:
            _check_range("csrc", csrc, _U32)
        _check_range("extension profile", self.extension_profile, _U16)
        _check_range("extension length", self.extension_length, _U16)
        if not self.extension and (self.extension_profile or self.extension_length):
            raise LocalProtocolError("rtp extension profile/length set without the extension bit")

    @property
    def csrc_count(self) -> int:
        """The CC field: how many CSRCs follow the fixed header."""
        return len(self.csrcs)

    @property
    def size(self) -> int:
        """Unencrypted header length (SRTP rule): 12 + 4*CC + 4 if an extension is present.

        This is the AAD length of the ``*_rtpsize`` transport modes.
        """
        return RTP_HEADER_SIZE + 4 * len(self.csrcs) + (4 if self.extension else 0)

    @property
    def extension_body_size(self) -> int:
        """Bytes of extension body following the header (encrypted in the rtpsize modes)."""
        return 4 * self.extension_length

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpHeader:
        """Parse the header at the start of ``data``; raise `InvalidPacket` if it is malformed.

        Only the header itself must be present: trailing bytes (payload, extension body) are
        ignored, so this works on both encrypted packets and bare headers.
        """
        if type(data) is not bytes:
            data = bytes(data)
        length = len(data)
        if length < RTP_HEADER_SIZE:
            raise InvalidPacket(
                f"rtp packet is {length} bytes, shorter than the {RTP_HEADER_SIZE}-byte header",
                data,
            )
        first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(data)
        version = first >> 6
        if version != 2:
            raise InvalidPacket(f"rtp version is {version}, expected 2", data)
        csrc_count = first & 0x0F
        extension = bool(first & 0x10)
        size = RTP_HEADER_SIZE + 4 * csrc_count + (4 if extension else 0)
        if length < size:
            what = f"{csrc_count} csrcs" + (" and extension preamble" if extension else "")
            raise InvalidPacket(
                f"rtp packet is {length} bytes, too short for a header with {what} ({size} bytes)",
                data,
            )
        csrcs = struct.unpack_from(f">{csrc_count}I", data, RTP_HEADER_SIZE)
        profile = ext_length = 0
        if extension:
            profile, ext_length = _EXTENSION_PREAMBLE.unpack_from(data, size - 4)
        return cls(
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload_type=second & 0x7F,
            marker=bool(second & 0x80),
            version=version,
            padding=bool(first & 0x20),
            extension=extension,
            csrcs=csrcs,
            extension_profile=profile,
            extension_length=ext_length,
        )

    def __bytes__(self) -> bytes:
        first = (
            (self.version << 6)
            | (0x20 if self.padding else 0)
            | (0x10 if self.extension else 0)
            | len(self.csrcs)
        )
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [_FIXED.pack(first, second, self.sequence, self.timestamp, self.ssrc)]
        if self.csrcs:
            parts.append(struct.pack(f">{len(self.csrcs)}I", *self.csrcs))
        if self.extension:
            parts.append(_EXTENSION_PREAMBLE.pack(self.extension_profile, self.extension_length))
        return b"".join(parts)

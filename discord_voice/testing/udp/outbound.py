"""What the fake voice server sends to clients: other members' RTP audio, RTCP, video packets.

Discord's voice server forwards each member's audio to every other member of the call, each copy
transport-encrypted with the receiving client's mode and key (``rtpsize``, see `packets`). The
pieces here build those datagrams independently of `discord_voice.core`:

- `opus_samples`: a frame's duration in 48 kHz samples, read from its TOC byte (RFC 6716 §3.1),
  which is what the RTP timestamp advances by.
- `rtp_parts`: the unencrypted header (the AAD: 12 bytes, 4 per CSRC, and with an extension its
  ``BE DE LL LL`` preamble) and the plaintext (the extension body padded to 32-bit words, the
  payload, the RTP padding whose last byte is its length); `TransportCipher.seal` does the rest.
- `receiver_report`: an RTCP receiver report (PT 201); sealed with its 8-byte header as AAD.
- `wire_order`: seeded loss, duplication and reordering of a run of packets, with the same rules
  (and the same random draws) as `impairment.UdpImpairment` on the receive path.

Every function raises `ValueError` with a readable reason on bad input.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from discord_voice.testing.udp.impairment import UdpImpairment

__all__ = [
    "AUDIO_PAYLOAD_TYPE",
    "MAX_OPUS_SAMPLES",
    "check_rtp_options",
    "opus_samples",
    "receiver_report",
    "rtp_parts",
    "wire_order",
]

AUDIO_PAYLOAD_TYPE = 120
#: 120 ms at 48 kHz: the longest an Opus packet may last.
MAX_OPUS_SAMPLES = 5760
_SILK = (480, 960, 1920, 2880)  # configs 0-11: 10, 20, 40, 60 ms
_HYBRID = (480, 960)  # configs 12-15: 10, 20 ms
_CELT = (120, 240, 480, 960)  # configs 16-31: 2.5, 5, 10, 20 ms
_RTCP_RECEIVER_REPORT = 201


def opus_samples(frame: bytes) -> int:
    """How many 48 kHz samples (per channel) the Opus packet `frame` lasts, from its TOC byte:
    the frame size of its configuration times its frame count (1; 2 for codes 1 and 2; the
    count byte's low 6 bits for code 3)."""
    if not frame:
        raise ValueError("an empty Opus frame has no TOC byte")
    config, code = frame[0] >> 3, frame[0] & 0x03
    if config < 12:
        per_frame = _SILK[config % 4]
    elif config < 16:
        per_frame = _HYBRID[config % 2]
    else:
        per_frame = _CELT[config % 4]
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    elif len(frame) < 2:
        raise ValueError("Opus code 3 packet without its frame count byte")
    else:
        count = frame[1] & 0x3F
        if count == 0:
            raise ValueError("Opus code 3 packet with a frame count of 0")
    total = per_frame * count
    if total > MAX_OPUS_SAMPLES:
        raise ValueError(f"Opus packet of {total / 48:g} ms is longer than 120 ms")
    return total


def check_rtp_options(padding: int, extension: bytes | None, csrcs: Sequence[int]) -> None:
    """ValueError unless the options fit an RTP header (see `rtp_parts`)."""
    if type(padding) is not int or not 0 <= padding <= 255:
        raise ValueError(f"padding must be 0-255 bytes, got {padding!r}")
    if len(csrcs) > 15:
        raise ValueError(f"at most 15 CSRCs fit an RTP header, got {len(csrcs)}")
    if not all(type(c) is int and 0 <= c < 1 << 32 for c in csrcs):
        raise ValueError(f"CSRCs must be 32-bit unsigned ints, got {list(csrcs)!r}")
    if extension is not None and len(extension) > 4 * 0xFFFF:
        raise ValueError(f"extension body of {len(extension)} bytes is too long")


def rtp_parts(
    ssrc: int,
    sequence: int,
    timestamp: int,
    payload: bytes,
    *,
    payload_type: int = AUDIO_PAYLOAD_TYPE,
    padding: int = 0,
    extension: bytes | None = None,
    csrcs: Sequence[int] = (),
) -> tuple[bytes, bytes]:
    """``(aad, plaintext)`` of one rtpsize packet.

    `aad`: version 2, the P bit when `padding`, the X bit when `extension` is not None, the CSRC
    count; the payload type (marker 0); sequence, timestamp, SSRC; the CSRCs; with an extension,
    its preamble ``BE DE`` and its length in 32-bit words. `plaintext`: the extension body (the
    one-byte-form elements given, zero-padded to whole words), `payload`, then `padding` bytes
    of RTP padding (zeros, the last one holding the count).
    """
    check_rtp_options(padding, extension, csrcs)
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension is not None else 0) | len(csrcs)
    header = struct.pack(
        ">BBHII", first, payload_type & 0x7F, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
    )
    header += b"".join(struct.pack(">I", c) for c in csrcs)
    body = b""
    if extension is not None:
        body = bytes(extension) + bytes(-len(extension) % 4)
        header += b"\xbe\xde" + struct.pack(">H", len(body) // 4)
    trailer = bytes(padding - 1) + bytes([padding]) if padding else b""
    return header, body + bytes(payload) + trailer


def receiver_report(
    sender_ssrc: int,
    source_ssrc: int,
    *,
    fraction_lost: int = 0,
    cumulative_lost: int = 0,
    highest_sequence: int = 0,
    jitter: int = 0,
) -> bytes:
    """An RTCP receiver report (RFC 3550 §6.4.2) with one report block: first byte ``0x81``
    (version 2, one block), PT 201, length 7 (32 bytes), `sender_ssrc`, then the block about
    `source_ssrc` (no LSR/DLSR)."""
    header = struct.pack(">BBHI", 0x81, _RTCP_RECEIVER_REPORT, 7, sender_ssrc & 0xFFFFFFFF)
    block = struct.pack(">IB", source_ssrc & 0xFFFFFFFF, fraction_lost & 0xFF)
    block += (cumulative_lost & 0xFFFFFF).to_bytes(3, "big")
    block += struct.pack(">IIII", highest_sequence & 0xFFFFFFFF, jitter & 0xFFFFFFFF, 0, 0)
    return header + block


def wire_order(count: int, loss: float, reorder: float, duplicate: float, seed: int) -> list[int]:
    """The order in which packets ``0..count-1`` go on the wire: a dropped one is missing, a
    duplicated one appears twice in a row, a reordered one goes right after the next packet
    that is not dropped (at the end if none is). Decided by ``random.Random(seed)`` exactly as
    `impairment.UdpImpairment` decides for received packets: same seed, same pattern."""
    impairment = UdpImpairment[int](loss, duplicate, reorder, 0.0, seed)
    impairment.feed(list(range(count)), 0.0)
    return impairment.due(0.0) + impairment.flush()

"""What may go on ``opus_send``: the rule producers see, checked before a frame is queued.

One item is one Opus packet (RFC 6716) of 48 kHz audio lasting 10, 20, 40 or 60 ms, as bytes.
The check is cheap: type, size, and the packet's duration read from its TOC byte (plus the
frame-count byte of a code-3 packet). The library does not decode audio, so a packet whose
frames are corrupt but whose TOC is sound is accepted; the receiver's decoder will conceal it.

Duration (RFC 6716 section 3.1): the TOC byte's top five bits are the configuration, which fixes
the size of each frame (SILK 10/20/40/60 ms, Hybrid 10/20 ms, CELT 2.5/5/10/20 ms); its low two
bits are the frame-count code: 0 = one frame, 1 and 2 = two frames, 3 = M frames where M is the
low six bits of the next byte (1 <= M, at most 120 ms in all). `frame_samples` reads it from two
tables, since it runs once per packet on the sender's path; the sender paces each packet by its
duration and advances the RTP timestamp by its sample count (48 per millisecond).
"""

from __future__ import annotations

from typing import Final

from discord_voice.errors import InvalidFrame

__all__ = [
    "ACCEPTED_FRAME_SAMPLES",
    "FRAME_DURATION",
    "MAX_OPUS_PACKET_SIZE",
    "MAX_PACKET_SAMPLES",
    "OPUS_SILENCE_FRAME",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "SILENCE_FRAMES_ON_STOP",
    "check_opus_frame",
    "frame_samples",
]

#: The RTP clock rate of Opus: timestamps count 48 kHz samples whatever the coded bandwidth.
SAMPLE_RATE: Final = 48_000
#: Seconds of audio in the usual frame (and in the silence frame).
FRAME_DURATION: Final = 0.020
#: RTP timestamp units (48 kHz samples) of a 20 ms frame.
SAMPLES_PER_FRAME: Final = 960
#: Packet durations ``opus_send`` takes, in 48 kHz samples: 10, 20, 40 and 60 ms.
ACCEPTED_FRAME_SAMPLES: Final = frozenset({480, 960, 1920, 2880})
#: The longest an Opus packet may last (120 ms, RFC 6716 section 3.2.5), in 48 kHz samples.
MAX_PACKET_SAMPLES: Final = 5760
#: The Opus silence frame Discord asks for when audio stops (CELT fullband, 20 ms).
OPUS_SILENCE_FRAME: Final = b"\xf8\xff\xfe"
#: How many silence frames are sent before going quiet (Discord's "voice data interpolation").
SILENCE_FRAMES_ON_STOP: Final = 5
#: The largest Opus packet libopus produces (three 1275-byte frames plus framing, RFC 6716
#: section 3.2); anything longer cannot be an Opus packet from a real encoder.
MAX_OPUS_PACKET_SIZE: Final = 3 * 1275 + 7

#: Samples per frame for each TOC configuration (RFC 6716 section 3.1, Table 2).
_CONFIG_FRAME_SAMPLES: Final[tuple[int, ...]] = (
    (480, 960, 1920, 2880) * 3  # 0-11: SILK narrow-, medium-, wideband: 10, 20, 40, 60 ms
    + (480, 960) * 2  # 12-15: Hybrid super-wideband, fullband: 10, 20 ms
    + (120, 240, 480, 960) * 4  # 16-31: CELT narrow-, wide-, super-wide-, fullband: 2.5-20 ms
)
#: Frames per packet for codes 0, 1, 2; 0 for code 3 (the count is in the next byte).
_CODE_FRAMES: Final = (1, 2, 2, 0)
#: Duration of a packet in samples, by TOC byte; 0 for code 3.
_TOC_SAMPLES: Final[tuple[int, ...]] = tuple(
    _CONFIG_FRAME_SAMPLES[toc >> 3] * _CODE_FRAMES[toc & 3] for toc in range(256)
)
#: The frame-count byte of a code-3 packet: M in the low six bits (then padding and VBR flags).
_COUNT_MASK: Final = 0x3F


def _ms(samples: int) -> str:
    return f"{samples / 48:g} ms"


def frame_samples(frame: bytes) -> int:
    """Return how long the Opus packet ``frame`` lasts, in 48 kHz samples (960 for 20 ms).

    Reads only the TOC byte, and the frame-count byte of a code-3 packet. Any duration an Opus
    packet may have is returned (120 for 2.5 ms up to 5760 for 120 ms); `check_opus_frame`
    decides which of them ``opus_send`` accepts.

    Raises:
        InvalidFrame: ``frame`` is empty, or is a code-3 packet without its frame-count byte,
            with a count of 0, or lasting more than 120 ms.
    """
    if not frame:
        raise InvalidFrame("an empty opus packet has no TOC byte and no duration")
    samples = _TOC_SAMPLES[frame[0]]
    if samples:
        return samples
    return _code3_samples(frame)


def _code3_samples(frame: bytes) -> int:
    """Duration of a code-3 packet (M frames, M in the byte after the TOC), checked."""
    toc = frame[0]
    if len(frame) < 2:
        raise InvalidFrame(
            f"opus packet with TOC 0x{toc:02x} (frame count code 3) has no frame-count byte"
        )
    count = frame[1] & _COUNT_MASK
    each = _CONFIG_FRAME_SAMPLES[toc >> 3]
    if count == 0:
        raise InvalidFrame(
            f"opus packet with TOC 0x{toc:02x} (frame count code 3) says it holds 0 frames"
        )
    samples = each * count
    if samples > MAX_PACKET_SAMPLES:
        raise InvalidFrame(
            f"opus packet with TOC 0x{toc:02x} holds {count} frames of {_ms(each)}: "
            f"{_ms(samples)}, more than the 120 ms an opus packet may last"
        )
    return samples


def check_opus_frame(item: object) -> bytes:
    """Return `item` as immutable bytes if it can be sent as one Opus packet, else raise.

    Accepted: non-empty ``bytes``, ``bytearray`` or ``memoryview`` of at most
    `MAX_OPUS_PACKET_SIZE` bytes (mutable buffers are copied, so later changes by the producer
    cannot alter a queued frame) whose TOC says it lasts 10, 20, 40 or 60 ms
    (`ACCEPTED_FRAME_SAMPLES`).

    Raises:
        InvalidFrame: with a message naming what is wrong; nothing is queued.
    """
    if isinstance(item, bytes):
        frame = item
    elif isinstance(item, (bytearray, memoryview)):
        frame = bytes(item)
    else:
        raise InvalidFrame(
            f"opus_send items must be bytes (one Opus packet), got {type(item).__name__}"
        )
    if not frame:
        raise InvalidFrame("opus_send items must not be empty (use OPUS_SILENCE_FRAME for silence)")
    if len(frame) > MAX_OPUS_PACKET_SIZE:
        raise InvalidFrame(
            f"opus frame is {len(frame)} bytes, larger than any Opus packet "
            f"({MAX_OPUS_PACKET_SIZE} bytes max); is this PCM instead of Opus?"
        )
    samples = frame_samples(frame)
    if samples not in ACCEPTED_FRAME_SAMPLES:
        raise InvalidFrame(
            f"opus packet lasts {_ms(samples)} (TOC 0x{frame[0]:02x}); "
            "opus_send takes packets of 10, 20, 40 or 60 ms"
        )
    return frame

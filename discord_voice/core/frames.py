"""What may go on ``opus_send``: the rule producers see, checked before a frame is queued.

One item is one Opus packet carrying 20 ms of 48 kHz stereo audio, as bytes. The check is cheap
(type and size only): the library does not decode audio, and cannot tell a corrupt Opus packet
from a valid one without doing so.
"""

from __future__ import annotations

from typing import Final

from discord_voice.errors import InvalidFrame

__all__ = [
    "FRAME_DURATION",
    "MAX_OPUS_PACKET_SIZE",
    "OPUS_SILENCE_FRAME",
    "SAMPLES_PER_FRAME",
    "SILENCE_FRAMES_ON_STOP",
    "check_opus_frame",
]

#: Seconds of audio per frame on ``opus_send``.
FRAME_DURATION: Final = 0.020
#: RTP timestamp units (48 kHz samples) per frame.
SAMPLES_PER_FRAME: Final = 960
#: The Opus silence frame Discord asks for when audio stops.
OPUS_SILENCE_FRAME: Final = b"\xf8\xff\xfe"
#: How many silence frames are sent before going quiet (Discord's "voice data interpolation").
SILENCE_FRAMES_ON_STOP: Final = 5
#: The largest Opus packet libopus produces (three 1275-byte frames plus framing, RFC 6716
#: section 3.2); anything longer cannot be an Opus packet from a real encoder.
MAX_OPUS_PACKET_SIZE: Final = 3 * 1275 + 7


def check_opus_frame(item: object) -> bytes:
    """Return `item` as immutable bytes if it can be sent as one Opus frame, else raise.

    Accepted: non-empty ``bytes``, ``bytearray`` or ``memoryview`` of at most
    `MAX_OPUS_PACKET_SIZE` bytes (mutable buffers are copied, so later changes by the producer
    cannot alter a queued frame).

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
    return frame

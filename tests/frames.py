"""Valid Opus packets for tests that only need *some* frame on ``opus_send``, and the nonce of
a DAVE frame (which key ratchet made it).

`opus_frame` returns a one-frame (code 0) Opus packet whose payload is ``tag``: what a test puts
is still exactly what the fake Discord must receive, and ``opus_send`` accepts it, since its TOC
byte gives a duration of 10, 20, 40 or 60 ms (RFC 6716 section 3.1).
"""

from __future__ import annotations

from typing import Final

__all__ = ["dave_nonce", "opus_frame"]

#: TOC byte of a code-0 packet per duration: CELT fullband 10 and 20 ms (configs 30, 31),
#: SILK wideband 40 and 60 ms (configs 10, 11).
_TOC_BY_MS: Final = {10: 0xF0, 20: 0xF8, 40: 0x50, 60: 0x58}


def opus_frame(tag: bytes, ms: int = 20) -> bytes:
    """Return a valid ``ms``-long Opus packet (one frame) whose payload is ``tag``."""
    return bytes((_TOC_BY_MS[ms],)) + tag


def dave_nonce(payload: bytes) -> int:
    """The truncated nonce of a DAVE protocol frame (ULEB128 after the 8-byte tag): a new key
    ratchet starts again at 1."""
    assert payload[-2:] == b"\xfa\xfa", payload.hex()
    at, value, shift = len(payload) - payload[-3] + 8, 0, 0
    while True:
        byte = payload[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value

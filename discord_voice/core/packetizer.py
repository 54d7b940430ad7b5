"""Turn Opus frames into encrypted voice packets: RTP header + frame transform + transport cipher.

The packetizer is the pure half of the UDP sender: it owns the per-connection counters (RTP
sequence and timestamp, transport nonce) and nothing else. No I/O, no clock; pacing is the
sender thread's job. Order per frame: ``transform`` (DAVE end-to-end encryption, or nothing) ->
``cipher.seal`` with the RTP header as AAD -> advance the counters.

It runs once per packet, so it does the least it can: the counters are valid by construction
(checked once in ``__init__``, then kept in range by masking), the header is one
``struct.Struct.pack`` call, and the cipher is the connection's, made once per key.
"""

from __future__ import annotations

from typing import Final, Protocol

from discord_voice.core.crypto import TransportCipher
from discord_voice.core.rtp import (
    FIXED_HEADER,
    OPUS_PAYLOAD_TYPE,
    RTP_VERSION_BYTE,
    SAMPLES_PER_FRAME,
)
from discord_voice.errors import EncryptionError, LocalProtocolError

__all__ = ["FrameTransform", "Packetizer", "PassthroughTransform"]

_U16: Final = 0xFFFF
_U32: Final = 0xFFFFFFFF
_pack_header: Final = FIXED_HEADER.pack


class FrameTransform(Protocol):
    """A per-frame step between the Opus encoder and the transport cipher (DAVE sits here)."""

    def transform(self, frame: bytes) -> bytes:
        """Return the bytes to put in the packet for ``frame``."""
        ...


class PassthroughTransform:
    """The transform of a call without end-to-end encryption: the frame as is."""

    __slots__ = ()

    def transform(self, frame: bytes) -> bytes:
        """Return ``frame`` unchanged."""
        return frame

    def __repr__(self) -> str:
        return "PassthroughTransform()"


def _check(name: str, value: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise LocalProtocolError(f"{name} must be an integer in 0..{maximum}, got {value!r}")
    return value


class Packetizer:
    """Builds the UDP packets of one voice connection, one Opus frame at a time.

    ``sequence``, ``timestamp`` and ``nonce`` are the values the next packet will use; the
    first two wrap (2**16, 2**32), the nonce never does: after counter 2**32-1 has been used,
    `packetize` raises `EncryptionError` (a new key, i.e. a new session, is needed) rather than
    reuse a nonce. Not thread-safe: one sender thread owns it.
    """

    __slots__ = ("_cipher", "_nonce", "_packets", "_sequence", "_ssrc", "_timestamp", "_transform")

    def __init__(
        self,
        ssrc: int,
        cipher: TransportCipher,
        *,
        sequence: int = 0,
        timestamp: int = 0,
        nonce: int = 0,
        transform: FrameTransform | None = None,
    ) -> None:
        self._ssrc = _check("ssrc", ssrc, _U32)
        self._sequence = _check("rtp sequence", sequence, _U16)
        self._timestamp = _check("rtp timestamp", timestamp, _U32)
        self._nonce = _check("transport nonce", nonce, _U32)
        self._cipher = cipher
        # None means passthrough, and saves a call per packet.
        self._transform = None if isinstance(transform, PassthroughTransform) else transform
        self._packets = 0

    def __repr__(self) -> str:
        return (
            f"Packetizer(ssrc={self._ssrc}, mode={self._cipher.mode!r}, "
            f"sequence={self._sequence}, timestamp={self._timestamp}, nonce={self._nonce}, "
            f"packets={self._packets})"
        )

    @property
    def ssrc(self) -> int:
        """The SSRC every packet carries (from Ready)."""
        return self._ssrc

    @property
    def sequence(self) -> int:
        """RTP sequence number of the next packet."""
        return self._sequence

    @property
    def timestamp(self) -> int:
        """RTP timestamp of the next packet."""
        return self._timestamp

    @property
    def nonce(self) -> int:
        """Transport nonce counter of the next packet (2**32 once the counter is used up)."""
        return self._nonce

    @property
    def packets(self) -> int:
        """How many packets this packetizer has built."""
        return self._packets

    @property
    def exhausted(self) -> bool:
        """True once every nonce counter value has been used: `packetize` will raise."""
        return self._nonce > _U32

    def packetize(self, frame: bytes, samples: int = SAMPLES_PER_FRAME) -> bytes:
        """Return the UDP packet for ``frame`` and advance the counters.

        ``samples`` is the frame's duration in 48 kHz samples (960 for 20 ms); the next packet's
        timestamp is this one's plus ``samples``. If the transform or the cipher raises, the
        counters do not move.
        """
        nonce = self._nonce
        if nonce > _U32:
            raise EncryptionError(
                "transport nonce counter exhausted after 2**32 packets; a new session key is needed"
            )
        if samples.__class__ is not int or not 0 < samples <= _U32:
            raise LocalProtocolError(f"samples per frame must be in 1..{_U32}, got {samples!r}")
        sequence = self._sequence
        timestamp = self._timestamp
        header = _pack_header(RTP_VERSION_BYTE, OPUS_PAYLOAD_TYPE, sequence, timestamp, self._ssrc)
        if self._transform is not None:
            frame = self._transform.transform(frame)
        packet = self._cipher.seal(header, frame, nonce)
        self._sequence = (sequence + 1) & _U16
        self._timestamp = (timestamp + samples) & _U32
        self._nonce = nonce + 1
        self._packets += 1
        return packet

"""Server-side codecs for the voice UDP socket: IP discovery, RTP parsing, transport encryption.

Written independently of `discord_voice.core` on purpose (and with `cryptography` /
`pycryptodome` instead of PyNaCl), so a symmetric bug in the client cannot make tests pass.
Every function raises `ValueError` with a readable reason on bad input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from Crypto.Cipher import ChaCha20_Poly1305
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20

__all__ = [
    "DISCOVERY_SIZE",
    "RtpPacket",
    "TransportCipher",
    "discovery_response",
    "parse_discovery_request",
    "parse_rtp",
]

DISCOVERY_SIZE = 74
_DISCOVERY = struct.Struct(">HHI64sH")
RTP_PAYLOAD_TYPE = 120
TAG_SIZE = 16
NONCE_SIZE = 4


def parse_discovery_request(data: bytes) -> int:
    """The SSRC of a valid 74-byte IP discovery request."""
    if len(data) != DISCOVERY_SIZE:
        raise ValueError(f"ip discovery request must be {DISCOVERY_SIZE} bytes, got {len(data)}")
    kind, length, ssrc, address, port = _DISCOVERY.unpack(data)
    if kind != 0x0001:
        raise ValueError(f"ip discovery request type must be 0x0001, got {kind:#06x}")
    if length != 70:
        raise ValueError(f"ip discovery request length field must be 70, got {length}")
    if address != bytes(64) or port != 0:
        raise ValueError("ip discovery request address and port fields must be zero")
    return int(ssrc)


def discovery_response(ssrc: int, ip: str, port: int) -> bytes:
    """Type 0x0002, length 70, SSRC, the IP as NUL-terminated ASCII in 64 bytes, the port."""
    return _DISCOVERY.pack(0x0002, 70, ssrc, ip.encode("ascii"), port)


@dataclass(frozen=True)
class RtpPacket:
    """An encrypted rtpsize packet split into its parts."""

    ssrc: int
    sequence: int
    timestamp: int
    aad: bytes  # fixed header + CSRCs + extension preamble: authenticated, not encrypted
    sealed: bytes  # ciphertext followed by the 16-byte tag
    nonce: bytes  # the trailing 4-byte counter
    extension_words: int  # length of the encrypted extension body in 32-bit words (0: none)


def parse_rtp(data: bytes) -> RtpPacket:
    if len(data) < 12:
        raise ValueError(f"rtp packet shorter than its 12-byte header ({len(data)} bytes)")
    first, second = data[0], data[1]
    if first & 0xE0 != 0x80:
        raise ValueError(f"rtp first byte {first:#04x}: version must be 2 and padding unset")
    if second & 0x7F != RTP_PAYLOAD_TYPE:
        raise ValueError(f"rtp payload type must be {RTP_PAYLOAD_TYPE}, got {second & 0x7F}")
    sequence, timestamp, ssrc = struct.unpack_from(">HII", data, 2)
    header = 12 + 4 * (first & 0x0F)
    extension_words = 0
    if first & 0x10:
        if len(data) < header + 4:
            raise ValueError("rtp extension bit set but the packet ends inside the preamble")
        (extension_words,) = struct.unpack_from(">H", data, header + 2)
        header += 4
    if len(data) < header + TAG_SIZE + NONCE_SIZE:
        raise ValueError(
            f"rtp packet too short for header, tag and nonce ({len(data)} < "
            f"{header + TAG_SIZE + NONCE_SIZE} bytes)"
        )
    return RtpPacket(
        ssrc=ssrc,
        sequence=sequence,
        timestamp=timestamp,
        aad=data[:header],
        sealed=data[header:-NONCE_SIZE],
        nonce=data[-NONCE_SIZE:],
        extension_words=extension_words,
    )


class TransportCipher:
    """Opens (and seals) packets of one session: AES-256-GCM or XChaCha20-Poly1305, rtpsize.

    The 4-byte counter goes first in the nonce, padded with zeros after it (12 or 24 bytes).
    """

    def __init__(self, mode: str, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("secret key must be 32 bytes")
        if mode not in (MODE_AES256_GCM, MODE_XCHACHA20):
            raise ValueError(f"the fake cannot decrypt mode {mode!r}")
        self.mode = mode
        self._key = key
        self._aes = AESGCM(key) if mode == MODE_AES256_GCM else None

    def __repr__(self) -> str:
        return f"TransportCipher({self.mode!r})"

    def open(self, packet: RtpPacket) -> bytes:
        """The plaintext with any extension body removed; ValueError if it does not verify."""
        if self._aes is not None:
            try:
                plain = self._aes.decrypt(packet.nonce + bytes(8), packet.sealed, packet.aad)
            except InvalidTag:
                raise ValueError("aes-256-gcm authentication failed") from None
        else:
            cipher = ChaCha20_Poly1305.new(key=self._key, nonce=packet.nonce + bytes(20))
            cipher.update(packet.aad)
            try:
                plain = cipher.decrypt_and_verify(
                    packet.sealed[:-TAG_SIZE], packet.sealed[-TAG_SIZE:]
                )
            except ValueError:
                raise ValueError("xchacha20-poly1305 authentication failed") from None
        body = 4 * packet.extension_words
        if len(plain) < body:
            raise ValueError(f"extension body of {body} bytes is longer than the plaintext")
        return bytes(plain[body:])

    def seal(self, aad: bytes, plaintext: bytes, counter: int) -> bytes:
        """One rtpsize datagram as Discord's voice server sends it: `aad` (the unencrypted
        header), the ciphertext of `plaintext`, the 16-byte tag, the 4-byte big-endian
        `counter`."""
        nonce = struct.pack(">I", counter & 0xFFFFFFFF)
        if self._aes is not None:
            sealed = self._aes.encrypt(nonce + bytes(8), plaintext, aad)
        else:
            cipher = ChaCha20_Poly1305.new(key=self._key, nonce=nonce + bytes(20))
            cipher.update(aad)
            ciphertext, tag = cipher.encrypt_and_digest(plaintext)
            sealed = ciphertext + tag
        return bytes(aad) + sealed + nonce

"""Transport encryption of voice packets: the two AEAD ``*_rtpsize`` modes Discord accepts today.

Packet layout (both modes)::

    RTP header (AAD, sent in clear) | ciphertext | 16-byte tag | 4-byte nonce counter (BE)

The AEAD nonce is the 32-bit counter big-endian in its first 4 bytes followed by zeros: 12 bytes
for ``aead_aes256_gcm_rtpsize``, 24 for ``aead_xchacha20_poly1305_rtpsize``. The key is the
32-byte ``secret_key`` from Session Description. Everything runs through libsodium (PyNaCl);
PyNaCl exceptions are wrapped into `EncryptionError` (sealing) or `InvalidPacket` (opening).
The legacy ``xsalsa20_poly1305*`` modes were switched off by Discord and are not implemented.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Protocol

import nacl.bindings
from nacl.exceptions import CryptoError

from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20, SUPPORTED_MODES
from discord_voice.errors import (
    EncryptionError,
    InvalidPacket,
    LocalProtocolError,
    UnsupportedEncryptionMode,
)

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "OVERHEAD",
    "TAG_SIZE",
    "Aes256GcmRtpSize",
    "TransportCipher",
    "XChaCha20Poly1305RtpSize",
    "aes256_gcm_available",
    "available_modes",
    "choose_mode",
    "make_cipher",
]

#: Length of the transport key (Session Description ``secret_key``).
KEY_SIZE: Final = 32
#: Length of the AEAD authentication tag that follows the ciphertext.
TAG_SIZE: Final = 16
#: Length of the nonce counter appended to every packet.
NONCE_SIZE: Final = 4
#: Bytes a sealed packet carries beyond header and payload.
OVERHEAD: Final = TAG_SIZE + NONCE_SIZE

_U32: Final = 0xFFFFFFFF

# (message, aad, nonce, key) -> bytes, as in nacl.bindings.
_AeadFunction = Callable[[bytes, bytes | None, bytes, bytes], bytes]
_BytesLike = bytes | bytearray | memoryview


class TransportCipher(Protocol):
    """What the packetizer needs from a transport mode."""

    @property
    def mode(self) -> str:
        """The mode name as sent in Select Protocol."""
        ...

    def seal(self, header: bytes, payload: bytes, nonce: int) -> bytes:
        """Return the UDP packet: header + ciphertext + tag + nonce counter (4 bytes, BE)."""
        ...

    def open(self, packet: bytes, header_size: int) -> bytes:
        """Return the plaintext of ``packet`` whose first ``header_size`` bytes are the AAD."""
        ...


class _RtpSizeAead:
    """Shared seal/open of the rtpsize modes; subclasses set the mode, nonce size and functions."""

    __slots__ = ("_decrypt", "_encrypt", "_key")

    mode: ClassVar[str]
    _full_nonce: ClassVar[struct.Struct]
    _padding: ClassVar[bytes]

    def __init__(self, key: _BytesLike, encrypt: _AeadFunction, decrypt: _AeadFunction) -> None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise EncryptionError(f"transport key must be bytes, got {type(key).__name__}")
        key = bytes(key)
        if len(key) != KEY_SIZE:
            raise EncryptionError(f"transport key must be {KEY_SIZE} bytes, got {len(key)}")
        self._key = key
        self._encrypt = encrypt
        self._decrypt = decrypt

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"

    def seal(self, header: _BytesLike, payload: _BytesLike, nonce: int) -> bytes:
        """Encrypt ``payload`` with ``header`` as AAD under nonce counter ``nonce``.

        Returns the complete UDP packet. Raises `EncryptionError` for a counter outside
        0..2**32-1 or when libsodium fails.
        """
        try:
            full_nonce = self._full_nonce.pack(nonce)
        except struct.error:
            raise EncryptionError(
                f"transport nonce counter must be an integer in 0..{_U32}, got {nonce!r}"
            ) from None
        if type(payload) is not bytes:
            payload = bytes(payload)
        if type(header) is not bytes:
            header = bytes(header)
        try:
            sealed = self._encrypt(payload, header, full_nonce, self._key)
        except (CryptoError, TypeError) as err:
            raise EncryptionError(f"{self.mode} encryption failed: {err}") from err
        return b"".join((header, sealed, full_nonce[:NONCE_SIZE]))

    def open(self, packet: _BytesLike, header_size: int) -> bytes:
        """Authenticate and decrypt ``packet``; raise `InvalidPacket` if short or forged.

        ``header_size`` is the AAD length: `RtpHeader.size` for RTP, 8 for RTCP. The returned
        plaintext still starts with the RTP extension body, if the header announced one.
        """
        if type(packet) is not bytes:
            packet = bytes(packet)
        if header_size < 0:
            raise LocalProtocolError(f"header size must not be negative, got {header_size}")
        minimum = header_size + OVERHEAD
        if len(packet) < minimum:
            raise InvalidPacket(
                f"{self.mode} packet is {len(packet)} bytes, shorter than {minimum} "
                f"(header {header_size} + tag {TAG_SIZE} + nonce {NONCE_SIZE})",
                packet,
            )
        full_nonce = packet[-NONCE_SIZE:] + self._padding
        try:
            return self._decrypt(
                packet[header_size:-NONCE_SIZE], packet[:header_size], full_nonce, self._key
            )
        except (CryptoError, TypeError):
            raise InvalidPacket(f"{self.mode} packet failed authentication", packet) from None


class Aes256GcmRtpSize(_RtpSizeAead):
    """``aead_aes256_gcm_rtpsize``: AES-256-GCM, 12-byte nonce = counter (BE) + 8 zero bytes.

    Needs hardware AES (AES-NI or ARMv8 crypto); construction raises `EncryptionError` on a CPU
    without it (check `aes256_gcm_available` or use `choose_mode` first).
    """

    __slots__ = ()
    mode: ClassVar[str] = MODE_AES256_GCM
    _full_nonce: ClassVar[struct.Struct] = struct.Struct(">I8x")
    _padding: ClassVar[bytes] = bytes(8)

    def __init__(self, key: _BytesLike) -> None:
        if not aes256_gcm_available():
            raise EncryptionError(
                f"{MODE_AES256_GCM} is not available: libsodium has no hardware aes-256-gcm "
                "on this cpu"
            )
        super().__init__(
            key,
            nacl.bindings.crypto_aead_aes256gcm_encrypt,
            nacl.bindings.crypto_aead_aes256gcm_decrypt,
        )


class XChaCha20Poly1305RtpSize(_RtpSizeAead):
    """``aead_xchacha20_poly1305_rtpsize``: 24-byte nonce = counter (BE) + 20 zero bytes.

    Every Discord voice server offers it and every client must support it.
    """

    __slots__ = ()
    mode: ClassVar[str] = MODE_XCHACHA20
    _full_nonce: ClassVar[struct.Struct] = struct.Struct(">I20x")
    _padding: ClassVar[bytes] = bytes(20)

    def __init__(self, key: _BytesLike) -> None:
        super().__init__(
            key,
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt,
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt,
        )


@functools.cache
def aes256_gcm_available() -> bool:
    """Whether libsodium can do AES-256-GCM on this CPU (probed once, then cached).

    PyNaCl 1.6 has no Python wrapper for ``crypto_aead_aes256gcm_is_available`` and the raw C
    function answers 0 until libsodium is initialised (importing ``nacl.bindings`` does that),
    so: ask a wrapper if PyNaCl grows one, else the C function, then confirm with a trial seal.
    """
    encrypt = getattr(nacl.bindings, "crypto_aead_aes256gcm_encrypt", None)
    if encrypt is None:  # PyNaCl < 1.6
        return False
    probe = getattr(nacl.bindings, "crypto_aead_aes256gcm_is_available", None)
    if probe is None:
        try:
            from nacl._sodium import lib

            probe = lib.crypto_aead_aes256gcm_is_available
        except (ImportError, AttributeError):
            probe = None
    if probe is not None and not probe():
        return False
    try:
        encrypt(b"probe", b"", bytes(12), bytes(KEY_SIZE))
    except CryptoError:  # UnavailableError, or anything else that says "not here"
        return False
    return True


def available_modes() -> tuple[str, ...]:
    """Modes this process can use, best first (AES-GCM only when the CPU supports it)."""
    if aes256_gcm_available():
        return SUPPORTED_MODES
    return tuple(mode for mode in SUPPORTED_MODES if mode != MODE_AES256_GCM)


def choose_mode(offered: Sequence[str], available: Sequence[str] | None = None) -> str:
    """Pick the first of ``available`` (default `available_modes`) that the server offered.

    Modes this library does not implement (the retired xsalsa20 family) are never chosen.
    Raises `UnsupportedEncryptionMode` when nothing matches.
    """
    if isinstance(offered, str) or (available is not None and isinstance(available, str)):
        raise LocalProtocolError("encryption modes must be a sequence of names, not a str")
    usable = [
        mode
        for mode in (available_modes() if available is None else available)
        if mode in SUPPORTED_MODES
    ]
    for mode in usable:
        if mode in offered:
            return mode
    raise UnsupportedEncryptionMode(offered, usable)


_CIPHERS: Final[dict[str, type[Aes256GcmRtpSize | XChaCha20Poly1305RtpSize]]] = {
    MODE_AES256_GCM: Aes256GcmRtpSize,
    MODE_XCHACHA20: XChaCha20Poly1305RtpSize,
}


def make_cipher(mode: str, key: _BytesLike) -> TransportCipher:
    """Return the cipher for ``mode`` (the Session Description mode) keyed with ``key``."""
    cls = _CIPHERS.get(mode)
    if cls is None:
        raise UnsupportedEncryptionMode((mode,), available_modes())
    return cls(key)

"""Transport encryption of voice packets: the two AEAD ``*_rtpsize`` modes Discord accepts today.

Packet layout (both modes)::

    RTP header (AAD, sent in clear) | ciphertext | 16-byte tag | 4-byte nonce counter (BE)

The AEAD nonce is the 32-bit counter big-endian in its first 4 bytes followed by zeros: 12 bytes
for ``aead_aes256_gcm_rtpsize``, 24 for ``aead_xchacha20_poly1305_rtpsize``. The key is the
32-byte ``secret_key`` from Session Description. Everything runs through libsodium (PyNaCl);
PyNaCl exceptions are wrapped into `EncryptionError` (sealing) or `InvalidPacket` (opening).
The legacy ``xsalsa20_poly1305*`` modes were switched off by Discord and are not implemented.

Sealing runs once per packet on the sender's path, so a cipher is made once per key and
reused, and it calls libsodium's C function directly through PyNaCl's cffi module
(``nacl._sodium``) when that module exposes it: the header is copied into a preallocated
packet buffer, the ciphertext and tag are written after it in place, the counter is written
into a preallocated nonce, and the packet is copied out once. PyNaCl's public binding (which
checks its arguments, allocates a C buffer and copies it out on every call) costs several
times the encryption itself; it stays the fallback, used when the cffi module does not expose
the function. `open` (the receive path) does the same with the decrypt functions. PyNaCl 1.6
does not expose libsodium's precomputed AES-GCM key state (``crypto_aead_aes256gcm_beforenm``),
so the AES key schedule still runs in every call. Both paths produce the same bytes (tested).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Protocol

import nacl.bindings
from nacl.exceptions import CryptoError

try:  # PyNaCl's cffi module: libsodium's C functions without the Python wrapper's overhead
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - every PyNaCl wheel so far has it
    _ffi = _lib = None

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
#: The nonce counter as it is sent, and as the first 4 bytes of the AEAD nonce.
_COUNTER: Final = struct.Struct(">I")
#: Initial size of a cipher's packet buffer; it grows when a packet needs more.
_INITIAL_BUFFER: Final = 2048

# (message, aad, nonce, key) -> bytes, as in nacl.bindings.
_AeadFunction = Callable[[bytes, bytes | None, bytes, bytes], bytes]
# libsodium's crypto_aead_*_encrypt through cffi: (c, clen_p, m, mlen, ad, adlen, nsec, npub, k).
_RawEncrypt = Callable[..., int]
_BytesLike = bytes | bytearray | memoryview


def _raw_function(name: str) -> _RawEncrypt | None:
    """libsodium's C function ``name`` from PyNaCl's cffi module, or None if it is not exposed."""
    if _lib is None:  # pragma: no cover - see the import
        return None
    function: _RawEncrypt | None = getattr(_lib, name, None)
    return function


class TransportCipher(Protocol):
    """What the packetizer needs from a transport mode."""

    @property
    def mode(self) -> str:
        """The mode name as sent in Select Protocol."""
        ...

    def seal(self, header: bytes, payload: bytes, nonce: int) -> bytes:
        """Return the UDP packet: header + ciphertext + tag + nonce counter (4 bytes, BE).

        ``header`` and ``payload`` are read during the call only.
        """
        ...

    def open(self, packet: bytes, header_size: int) -> bytes:
        """Return the plaintext of ``packet`` whose first ``header_size`` bytes are the AAD."""
        ...


def _bad_counter(nonce: object) -> EncryptionError:
    return EncryptionError(
        f"transport nonce counter must be an integer in 0..{_U32}, got {nonce!r}"
    )


class _RtpSizeAead:
    """Shared seal/open of the rtpsize modes; subclasses set the mode, nonce size and functions.

    `seal` reuses one packet buffer and one nonce buffer, so one thread at a time may seal
    with a cipher (the packetizer's owner); `open` has buffers of its own, so one other thread
    at a time may open with it (the receiver's).
    """

    __slots__ = (
        "_buffer",
        "_decrypt",
        "_encrypt",
        "_key",
        "_nonce",
        "_nonce_view",
        "_open_nonce",
        "_open_nonce_view",
        "_open_out",
        "_open_view",
        "_raw",
        "_raw_open",
        "_view",
    )

    mode: ClassVar[str]
    _full_nonce: ClassVar[struct.Struct]
    _padding: ClassVar[bytes]
    _raw_name: ClassVar[str]
    _raw_open_name: ClassVar[str]

    def __init__(self, key: _BytesLike, encrypt: _AeadFunction, decrypt: _AeadFunction) -> None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise EncryptionError(f"transport key must be bytes, got {type(key).__name__}")
        key = bytes(key)
        if len(key) != KEY_SIZE:
            raise EncryptionError(f"transport key must be {KEY_SIZE} bytes, got {len(key)}")
        self._key = key
        self._encrypt = encrypt
        self._decrypt = decrypt
        self._raw = _raw_function(self._raw_name)
        if self._raw is not None:
            # The nonce: the counter is written into its first 4 bytes; the rest stays zero.
            self._nonce = _ffi.new("unsigned char[]", self._full_nonce.size)
            self._nonce_view = _ffi.buffer(self._nonce)
            self._grow(_INITIAL_BUFFER)
        self._raw_open = _raw_function(self._raw_open_name)
        if self._raw_open is not None:
            self._open_nonce = _ffi.new("unsigned char[]", self._full_nonce.size)
            self._open_nonce_view = _ffi.buffer(self._open_nonce)
            self._grow_open(_INITIAL_BUFFER)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"

    def _grow(self, size: int) -> None:
        """Make the packet buffer hold ``size`` bytes (a new buffer; the old one is freed)."""
        self._buffer = _ffi.new("unsigned char[]", size)
        self._view = _ffi.buffer(self._buffer)

    def _grow_open(self, size: int) -> None:
        """Make `open`'s plaintext buffer hold ``size`` bytes."""
        self._open_out = _ffi.new("unsigned char[]", size)
        self._open_view = _ffi.buffer(self._open_out)

    def seal(self, header: _BytesLike, payload: _BytesLike, nonce: int) -> bytes:
        """Encrypt ``payload`` with ``header`` as AAD under nonce counter ``nonce``.

        Returns the complete UDP packet. Raises `EncryptionError` for a counter outside
        0..2**32-1 or when libsodium fails.
        """
        raw = self._raw
        if raw is None:
            return self._seal_public(header, payload, nonce)
        try:
            _COUNTER.pack_into(self._nonce_view, 0, nonce)
        except struct.error:
            raise _bad_counter(nonce) from None
        try:
            if type(payload) is not bytes:
                payload = bytes(payload)
            header_size = len(header)
            end = header_size + len(payload) + TAG_SIZE
            if end + NONCE_SIZE > len(self._view):
                self._grow(end + NONCE_SIZE)
            view = self._view
            buffer = self._buffer
            view[0:header_size] = header
            # Ciphertext and tag go right after the header, which is also the AAD.
            failed = raw(
                buffer + header_size,
                _ffi.NULL,
                payload,
                len(payload),
                buffer,
                header_size,
                _ffi.NULL,
                self._nonce,
                self._key,
            )
        except TypeError as err:
            raise EncryptionError(f"{self.mode} encryption failed: {err}") from err
        if failed:
            raise EncryptionError(f"{self.mode} encryption failed (libsodium returned {failed})")
        _COUNTER.pack_into(view, end, nonce)
        packet: bytes = view[0 : end + NONCE_SIZE]  # the one copy: a new bytes object
        return packet

    def _seal_public(self, header: _BytesLike, payload: _BytesLike, nonce: int) -> bytes:
        """`seal` through PyNaCl's public binding: the fallback, and the reference in tests."""
        try:
            full_nonce = self._full_nonce.pack(nonce)
        except struct.error:
            raise _bad_counter(nonce) from None
        try:
            if type(payload) is not bytes:
                payload = bytes(payload)
            if type(header) is not bytes:
                header = bytes(header)
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
        raw = self._raw_open
        if raw is not None:  # libsodium straight: the public binding costs 4-5 us more here
            size = len(packet) - header_size - NONCE_SIZE
            if size > len(self._open_view):
                self._grow_open(size)
            self._open_nonce_view[0:NONCE_SIZE] = packet[-NONCE_SIZE:]
            failed = raw(
                self._open_out,
                _ffi.NULL,
                _ffi.NULL,
                packet[header_size:-NONCE_SIZE],
                size,
                packet,
                header_size,
                self._open_nonce,
                self._key,
            )
            if failed:
                raise InvalidPacket(f"{self.mode} packet failed authentication", packet)
            plaintext: bytes = self._open_view[0 : size - TAG_SIZE]
            return plaintext
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
    _raw_name: ClassVar[str] = "crypto_aead_aes256gcm_encrypt"
    _raw_open_name: ClassVar[str] = "crypto_aead_aes256gcm_decrypt"

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
    _raw_name: ClassVar[str] = "crypto_aead_xchacha20poly1305_ietf_encrypt"
    _raw_open_name: ClassVar[str] = "crypto_aead_xchacha20poly1305_ietf_decrypt"

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

"""Transport ciphers: known answers from independent AEAD implementations, nonce layout,
tampering, key handling, mode negotiation and the AES-GCM availability probe.

Expected packets are built here with `cryptography` (AES-256-GCM) and `pycryptodome`
(XChaCha20-Poly1305), never with PyNaCl, so a symmetric bug in our code cannot pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import nacl.bindings
import nacl.exceptions
import pytest
from Crypto.Cipher import ChaCha20_Poly1305
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voice.core import crypto
from discord_voice.core.crypto import (
    OVERHEAD,
    Aes256GcmRtpSize,
    TransportCipher,
    XChaCha20Poly1305RtpSize,
    aes256_gcm_available,
    available_modes,
    choose_mode,
    make_cipher,
)
from discord_voice.errors import (
    EncryptionError,
    InvalidPacket,
    LocalProtocolError,
    UnsupportedEncryptionMode,
)

AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
KEY = bytes(range(32))
HEADER = bytes.fromhex("80 78 1234 56789abc deadbeef")

needs_aes = pytest.mark.skipif(not aes256_gcm_available(), reason="no hardware AES-256-GCM")
MODES = [pytest.param(AES, marks=needs_aes), XCHACHA]


# -- independent reference implementations ------------------------------------------------


def ref_seal(mode: str, key: bytes, header: bytes, plaintext: bytes, counter: int) -> bytes:
    counter4 = counter.to_bytes(4, "big")
    if mode == AES:
        return header + AESGCM(key).encrypt(counter4 + bytes(8), plaintext, header) + counter4
    cipher = ChaCha20_Poly1305.new(key=key, nonce=counter4 + bytes(20))  # 24 bytes: XChaCha
    cipher.update(header)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return header + ciphertext + tag + counter4


def ref_open(mode: str, key: bytes, packet: bytes, header_size: int, nonce: bytes) -> bytes:
    header, body = packet[:header_size], packet[header_size:-4]
    if mode == AES:
        return AESGCM(key).decrypt(nonce, body, header)
    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(header)
    plaintext: bytes = cipher.decrypt_and_verify(body[:-16], body[-16:])
    return plaintext


# Pinned packets: key 00..1f, HEADER, counter 0x01020304, plaintext PINNED_PLAINTEXT.
PINNED_PLAINTEXT = b"\xf8\xff\xfe discord voice kat"
PINNED = {
    AES: bytes.fromhex(
        "8078123456789abcdeadbeef"
        "d9aa237d73f80b129495f39bc6afde0d953f3190a4"  # ciphertext
        "ce754ea5f6e9b44e3e071a0e9556ded5"  # tag
        "01020304"  # nonce counter
    ),
    XCHACHA: bytes.fromhex(
        "8078123456789abcdeadbeef"
        "8e97ee6cfa03317ce99111a786364d9359653f02c0"
        "444b42169088c50833ef55afcd2b689e"
        "01020304"
    ),
}


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Forget the cached AES-GCM probe result before and after the test."""
    aes256_gcm_available.cache_clear()
    yield
    aes256_gcm_available.cache_clear()


# -- sealing ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pinned_vector(mode: str) -> None:
    cipher = make_cipher(mode, KEY)
    assert cipher.seal(HEADER, PINNED_PLAINTEXT, 0x01020304) == PINNED[mode]
    # The pinned bytes are also what the independent libraries produce today.
    assert ref_seal(mode, KEY, HEADER, PINNED_PLAINTEXT, 0x01020304) == PINNED[mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("counter", [0, 1, 0x01020304, 0x7FFFFFFF, 0xFFFFFFFF])
@pytest.mark.parametrize(
    ("header", "plaintext"),
    [
        (HEADER, b"\xf8\xff\xfe"),
        (HEADER, b""),
        (HEADER, bytes(range(256)) * 5),
        # A received-style header: one CSRC plus extension preamble (AAD is 20 bytes).
        (bytes.fromhex("91 78 0001 00000002 00000003 00000004 bede 0001"), b"\x10\x20\x30\x00ab"),
    ],
)
def test_seal_matches_independent_implementation(
    mode: str, counter: int, header: bytes, plaintext: bytes
) -> None:
    key = bytes(range(100, 132))
    packet = make_cipher(mode, key).seal(header, plaintext, counter)
    assert packet == ref_seal(mode, key, header, plaintext, counter)
    assert len(packet) == len(header) + len(plaintext) + OVERHEAD


@pytest.mark.parametrize("mode", MODES)
def test_nonce_layout(mode: str) -> None:
    counter = 0x0A0B0C0D
    packet = make_cipher(mode, KEY).seal(HEADER, b"opus", counter)
    # The header is sent in clear and the counter is appended big-endian.
    assert packet[:12] == HEADER
    assert packet[-4:] == b"\x0a\x0b\x0c\x0d"
    # The AEAD nonce is the counter in its FIRST four bytes, then zeros.
    padding = bytes(8 if mode == AES else 20)
    assert ref_open(mode, KEY, packet, 12, b"\x0a\x0b\x0c\x0d" + padding) == b"opus"
    for wrong in (padding + b"\x0a\x0b\x0c\x0d", b"\x0d\x0c\x0b\x0a" + padding):
        with pytest.raises((InvalidTag, ValueError)):
            ref_open(mode, KEY, packet, 12, wrong)


@pytest.mark.parametrize("mode", MODES)
def test_seal_accepts_bytes_like(mode: str) -> None:
    cipher = make_cipher(mode, KEY)
    expected = cipher.seal(HEADER, b"frame", 9)
    # The concrete ciphers accept any bytes-like object (the protocol only promises bytes).
    sealed = cipher.seal(bytearray(HEADER), memoryview(b"frame"), 9)  # type: ignore[arg-type]
    assert sealed == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("counter", [-1, 2**32, 1.5])
def test_seal_rejects_nonce_outside_32_bits(mode: str, counter: int) -> None:
    with pytest.raises(EncryptionError, match="transport nonce counter must be an integer"):
        make_cipher(mode, KEY).seal(HEADER, b"x", counter)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "error",
    [
        nacl.exceptions.UnavailableError("Construction requires hardware acceleration"),
        nacl.exceptions.CryptoError("Encryption failed."),
        nacl.exceptions.TypeError("Input message type must be bytes"),
    ],
)
def test_seal_wraps_pynacl_errors(mode: str, error: Exception, public_binding_only: None) -> None:
    cipher = make_cipher(mode, KEY)

    def failing(*args: object) -> bytes:
        raise error

    cipher._encrypt = failing  # type: ignore[attr-defined]
    with pytest.raises(EncryptionError, match=f"{mode} encryption failed") as info:
        cipher.seal(HEADER, b"x", 0)
    assert info.value.__cause__ is error


@pytest.mark.parametrize("mode", MODES)
def test_seal_reports_a_libsodium_failure(mode: str) -> None:
    cipher = make_cipher(mode, KEY)
    assert cipher._raw is not None  # type: ignore[attr-defined]
    cipher._raw = lambda *args: -1  # type: ignore[attr-defined]
    with pytest.raises(EncryptionError, match=f"{mode} encryption failed .libsodium returned -1"):
        cipher.seal(HEADER, b"x", 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize(("header", "payload"), [("text", b"x"), (None, b"x"), (HEADER, "text")])
def test_seal_rejects_what_is_not_bytes(
    mode: str, fallback: bool, header: object, payload: object
) -> None:
    cipher = make_cipher(mode, KEY)
    if fallback:
        cipher._raw = None  # type: ignore[attr-defined]
    with pytest.raises(EncryptionError, match=f"{mode} encryption failed"):
        cipher.seal(header, payload, 0)  # type: ignore[arg-type]


# -- the two seal paths: libsodium through cffi, PyNaCl's public binding --------------------


@pytest.fixture
def public_binding_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ciphers made during the test seal through PyNaCl's public binding (the fallback)."""
    monkeypatch.setattr(crypto, "_raw_function", lambda name: None)


@pytest.mark.parametrize("mode", MODES)
def test_the_direct_path_is_used_when_pynacl_exposes_libsodium(mode: str) -> None:
    from nacl._sodium import lib

    cipher = make_cipher(mode, KEY)
    name = (
        "crypto_aead_aes256gcm_encrypt"
        if mode == AES
        else ("crypto_aead_xchacha20poly1305_ietf_encrypt")
    )
    assert cipher._raw is getattr(lib, name)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", MODES)
def test_the_fallback_seals_the_pinned_vector(mode: str, public_binding_only: None) -> None:
    cipher = make_cipher(mode, KEY)
    assert cipher._raw is None  # type: ignore[attr-defined]
    assert cipher.seal(HEADER, PINNED_PLAINTEXT, 0x01020304) == PINNED[mode]
    assert cipher.open(PINNED[mode], 12) == PINNED_PLAINTEXT


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=50)
@given(
    header=st.binary(min_size=0, max_size=64),
    payload=st.binary(min_size=0, max_size=3000),
    counter=st.integers(0, 2**32 - 1),
)
def test_both_paths_give_the_bytes_of_the_independent_implementation(
    mode: str, header: bytes, payload: bytes, counter: int
) -> None:
    direct = make_cipher(mode, KEY)
    fallback = make_cipher(mode, KEY)
    fallback._raw = None  # type: ignore[attr-defined]
    expected = ref_seal(mode, KEY, header, payload, counter)
    assert direct.seal(header, payload, counter) == expected
    assert fallback.seal(header, payload, counter) == expected


@pytest.mark.parametrize("mode", MODES)
def test_sealed_packets_do_not_share_the_reused_buffer(mode: str) -> None:
    """Each packet is its own bytes: sealing the next one (even a bigger one, which replaces
    the buffer) leaves the ones already returned untouched."""
    cipher = make_cipher(mode, KEY)
    first = cipher.seal(HEADER, b"first frame", 1)
    second = cipher.seal(bytearray(HEADER), memoryview(b"second, longer frame"), 2)  # type: ignore[arg-type]
    big = cipher.seal(HEADER, bytes(range(256)) * 20, 3)  # 5120 bytes: more than the buffer
    after = cipher.seal(HEADER, b"", 4)
    assert type(first) is bytes and type(big) is bytes
    assert first == ref_seal(mode, KEY, HEADER, b"first frame", 1)
    assert second == ref_seal(mode, KEY, HEADER, b"second, longer frame", 2)
    assert big == ref_seal(mode, KEY, HEADER, bytes(range(256)) * 20, 3)
    assert after == ref_seal(mode, KEY, HEADER, b"", 4)


# -- opening ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_open_reference_packet(mode: str) -> None:
    header = bytes.fromhex("91 78 0001 00000002 00000003 00000004 bede 0001")
    packet = ref_seal(mode, KEY, header, b"\x10\x20\x30\x00opus", 77)
    assert make_cipher(mode, KEY).open(packet, len(header)) == b"\x10\x20\x30\x00opus"
    view = memoryview(packet)
    opened = make_cipher(mode, KEY).open(view, len(header))  # type: ignore[arg-type]
    assert opened == b"\x10\x20\x30\x00opus"


@pytest.mark.parametrize("mode", MODES)
def test_open_round_trip(mode: str) -> None:
    cipher = make_cipher(mode, KEY)
    assert cipher.open(cipher.seal(HEADER, b"", 0), 12) == b""
    assert cipher.open(cipher.seal(HEADER, b"abc" * 100, 2**32 - 1), 12) == b"abc" * 100


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", [0, 1, 11, 12, 14, -20, -17, -4, -1])
def test_open_rejects_tampering(mode: str, where: int) -> None:
    """Flip one bit in the header, ciphertext, tag or nonce: authentication must fail."""
    packet = bytearray(make_cipher(mode, KEY).seal(HEADER, b"opus frame", 5))
    packet[where] ^= 0x01
    with pytest.raises(InvalidPacket, match=f"{mode} packet failed authentication") as info:
        make_cipher(mode, KEY).open(bytes(packet), 12)
    assert info.value.data == bytes(packet)[:64]


@pytest.mark.parametrize("mode", MODES)
def test_open_rejects_wrong_key_and_wrong_header_size(mode: str) -> None:
    packet = make_cipher(mode, KEY).seal(HEADER, b"opus frame", 5)
    with pytest.raises(InvalidPacket, match="failed authentication"):
        make_cipher(mode, bytes(32)).open(packet, 12)
    with pytest.raises(InvalidPacket, match="failed authentication"):
        make_cipher(mode, KEY).open(packet, 16)


@pytest.mark.parametrize("mode", MODES)
def test_open_rejects_short_packet(mode: str) -> None:
    cipher = make_cipher(mode, KEY)
    with pytest.raises(InvalidPacket, match=rf"{mode} packet is 31 bytes, shorter than 32"):
        cipher.open(bytes(31), 12)
    with pytest.raises(InvalidPacket, match="packet is 0 bytes"):
        cipher.open(b"", 0)
    with pytest.raises(LocalProtocolError, match="header size must not be negative"):
        cipher.open(bytes(40), -1)


# -- keys and secrets ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)])
def test_key_must_be_32_bytes(mode: str, key: bytes) -> None:
    with pytest.raises(EncryptionError, match=f"transport key must be 32 bytes, got {len(key)}"):
        make_cipher(mode, key)


@pytest.mark.parametrize("mode", MODES)
def test_key_must_be_bytes_like(mode: str) -> None:
    with pytest.raises(EncryptionError, match="transport key must be bytes, got str"):
        make_cipher(mode, "k" * 32)  # type: ignore[arg-type]
    with pytest.raises(EncryptionError, match="transport key must be bytes, got int"):
        make_cipher(mode, 32)  # type: ignore[arg-type]
    cipher = make_cipher(mode, bytearray(KEY))
    assert cipher.seal(HEADER, PINNED_PLAINTEXT, 0x01020304) == PINNED[mode]


@pytest.mark.parametrize("mode", MODES)
def test_key_never_shown(mode: str) -> None:
    key = bytes.fromhex("5e" * 32)
    cipher = make_cipher(mode, key)
    for text in (repr(cipher), str(cipher), f"{cipher}"):
        assert text == f"{type(cipher).__name__}(mode={mode!r})"
        assert "5e" not in text.lower() and "^" not in text  # hex or bytes repr of the key
    assert not hasattr(cipher, "__dict__")  # slots only: nothing for vars() to dump
    with pytest.raises(InvalidPacket) as info:
        cipher.open(bytes(40), 12)
    assert key not in info.value.data and "5e5e" not in str(info.value)


def test_cipher_classes_and_protocol() -> None:
    cipher: TransportCipher = make_cipher(XCHACHA, KEY)
    assert type(cipher) is XChaCha20Poly1305RtpSize
    assert cipher.mode == XCHACHA
    if aes256_gcm_available():
        assert type(make_cipher(AES, KEY)) is Aes256GcmRtpSize
        assert Aes256GcmRtpSize(KEY).mode == AES


# -- availability and negotiation ---------------------------------------------------------


def test_aes_probe_agrees_with_libsodium(fresh_probe: None) -> None:
    from nacl._sodium import lib  # after nacl.bindings: libsodium is initialised

    assert aes256_gcm_available() is bool(lib.crypto_aead_aes256gcm_is_available())
    assert aes256_gcm_available() is bool(lib.crypto_aead_aes256gcm_is_available())
    assert aes256_gcm_available.cache_info().misses == 1


def test_aes_probe_is_cached(fresh_probe: None, monkeypatch: pytest.MonkeyPatch) -> None:
    first = aes256_gcm_available()
    monkeypatch.delattr(nacl.bindings, "crypto_aead_aes256gcm_encrypt")
    assert aes256_gcm_available() is first


def test_aes_probe_without_pynacl_aes_bindings(
    fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(nacl.bindings, "crypto_aead_aes256gcm_encrypt")
    assert aes256_gcm_available() is False


def test_aes_probe_uses_python_wrapper_when_present(
    fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nacl.bindings, "crypto_aead_aes256gcm_is_available", lambda: 0, False)
    assert aes256_gcm_available() is False


def test_aes_probe_trial_encrypt_unavailable(
    fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*args: object) -> bytes:
        raise nacl.exceptions.UnavailableError("Construction requires hardware acceleration")

    monkeypatch.setattr(nacl.bindings, "crypto_aead_aes256gcm_encrypt", unavailable)
    assert aes256_gcm_available() is False


@needs_aes
def test_available_modes_prefers_aes() -> None:
    assert available_modes() == (AES, XCHACHA)


def without_aes(monkeypatch: pytest.MonkeyPatch) -> None:
    unavailable: Callable[[], bool] = lambda: False  # noqa: E731
    monkeypatch.setattr(crypto, "aes256_gcm_available", unavailable)


def test_fallback_to_xchacha_without_aes(monkeypatch: pytest.MonkeyPatch) -> None:
    without_aes(monkeypatch)
    assert available_modes() == (XCHACHA,)
    assert choose_mode([AES, XCHACHA]) == XCHACHA
    with pytest.raises(EncryptionError, match=f"{AES} is not available"):
        make_cipher(AES, KEY)
    with pytest.raises(UnsupportedEncryptionMode) as info:
        choose_mode([AES])
    assert info.value.offered == (AES,)
    assert info.value.supported == (XCHACHA,)


@pytest.mark.parametrize(
    ("offered", "available", "chosen"),
    [
        ([AES, XCHACHA], (AES, XCHACHA), AES),
        ([XCHACHA, AES], (AES, XCHACHA), AES),  # our preference, not the server's order
        ([XCHACHA, "xsalsa20_poly1305_lite_rtpsize"], (AES, XCHACHA), XCHACHA),
        ([AES, XCHACHA], (XCHACHA,), XCHACHA),
        ([AES, XCHACHA], (XCHACHA, AES), XCHACHA),
        # xsalsa20 is never chosen, even if a caller lists it as available.
        (["xsalsa20_poly1305", XCHACHA], ("xsalsa20_poly1305", XCHACHA), XCHACHA),
    ],
)
def test_choose_mode(offered: list[str], available: tuple[str, ...], chosen: str) -> None:
    assert choose_mode(offered, available) == chosen


@needs_aes
def test_choose_mode_default_prefers_aes() -> None:
    assert choose_mode([XCHACHA, AES]) == AES


def test_choose_mode_no_common_mode() -> None:
    legacy = ["xsalsa20_poly1305", "xsalsa20_poly1305_lite_rtpsize"]
    with pytest.raises(UnsupportedEncryptionMode) as info:
        choose_mode(legacy, ["xsalsa20_poly1305", XCHACHA])
    assert info.value.offered == tuple(legacy)
    assert info.value.supported == (XCHACHA,)
    assert "no common encryption mode" in str(info.value)
    with pytest.raises(UnsupportedEncryptionMode):
        choose_mode([], None)


def test_choose_mode_rejects_a_bare_string() -> None:
    with pytest.raises(LocalProtocolError, match="not a str"):
        choose_mode(XCHACHA)
    with pytest.raises(LocalProtocolError, match="not a str"):
        choose_mode([XCHACHA], XCHACHA)


@pytest.mark.parametrize("mode", ["xsalsa20_poly1305", "aead_aes256_gcm", "", "AEAD_XCHACHA"])
def test_make_cipher_unknown_mode(mode: str) -> None:
    with pytest.raises(UnsupportedEncryptionMode) as info:
        make_cipher(mode, KEY)
    assert info.value.offered == (mode,)
    assert info.value.supported == available_modes()


@pytest.mark.parametrize("mode", MODES)
def test_open_takes_libsodium_directly_and_agrees_with_the_public_binding(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = make_cipher(mode, KEY)
    assert direct._raw_open is not None  # type: ignore[attr-defined]
    monkeypatch.setattr(crypto, "_raw_function", lambda name: None)
    fallback = make_cipher(mode, KEY)
    assert fallback._raw_open is None  # type: ignore[attr-defined]
    for size in (0, 1, 160, 3000):  # 3000: past the first buffer, which grows
        packet = direct.seal(HEADER, bytes(range(256)) * (size // 256) + b"x" * (size % 256), size)
        assert direct.open(packet, 12) == fallback.open(packet, 12)
        forged = packet[:20] + bytes([packet[20] ^ 1]) + packet[21:]
        for cipher in (direct, fallback):
            with pytest.raises(InvalidPacket, match="failed authentication"):
                cipher.open(forged, 12)

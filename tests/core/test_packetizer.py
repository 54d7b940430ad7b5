"""Packetizer: counters advance and wrap, transform runs before the cipher, nonces never repeat,
and real packets decrypt with independent AEAD implementations."""

from __future__ import annotations

import struct

import pytest
from Crypto.Cipher import ChaCha20_Poly1305
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from discord_voice.core.crypto import aes256_gcm_available, make_cipher
from discord_voice.core.packetizer import Packetizer, PassthroughTransform
from discord_voice.errors import EncryptionError, LocalProtocolError

AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
KEY = bytes(range(1, 33))
SSRC = 0x0001E240

needs_aes = pytest.mark.skipif(not aes256_gcm_available(), reason="no hardware AES-256-GCM")
MODES = [pytest.param(AES, marks=needs_aes), XCHACHA]


class RecordingCipher:
    """Fake cipher: packet = header + payload + counter (BE), and every call is recorded."""

    mode = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[bytes, bytes, int]] = []
        self.fail = fail

    def seal(self, header: bytes, payload: bytes, nonce: int) -> bytes:
        if self.fail:
            raise EncryptionError("fake failure")
        self.calls.append((header, payload, nonce))
        return header + payload + nonce.to_bytes(4, "big")

    def open(self, packet: bytes, header_size: int) -> bytes:
        return packet[header_size:-4]


class TaggingTransform:
    """Fake DAVE: marks the frame so the test can see it reached the cipher transformed."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def transform(self, frame: bytes) -> bytes:
        self.frames.append(frame)
        return b"E2EE[" + frame + b"]"


def header_fields(packet: bytes) -> tuple[int, int, int, int, int]:
    """Unpack the fixed RTP header independently of discord_voice.core.rtp."""
    fields: tuple[int, int, int, int, int] = struct.unpack_from(">BBHII", packet)
    return fields


def test_first_packet_bytes() -> None:
    cipher = RecordingCipher()
    packet = Packetizer(SSRC, cipher).packetize(b"\xf8\xff\xfe")
    assert packet == bytes.fromhex("8078 0000 00000000 0001e240") + b"\xf8\xff\xfe" + bytes(4)
    assert cipher.calls == [(bytes.fromhex("8078 0000 00000000 0001e240"), b"\xf8\xff\xfe", 0)]


def test_counters_advance() -> None:
    cipher = RecordingCipher()
    packetizer = Packetizer(SSRC, cipher, sequence=10, timestamp=1000, nonce=5)
    assert (packetizer.sequence, packetizer.timestamp, packetizer.nonce) == (10, 1000, 5)
    for i in range(3):
        packet = packetizer.packetize(b"frame%d" % i)
        assert header_fields(packet) == (0x80, 0x78, 10 + i, 1000 + 960 * i, SSRC)
        assert packet[-4:] == (5 + i).to_bytes(4, "big")
    assert [nonce for _, _, nonce in cipher.calls] == [5, 6, 7]
    assert (packetizer.sequence, packetizer.timestamp, packetizer.nonce) == (13, 3880, 8)
    assert packetizer.packets == 3
    assert packetizer.ssrc == SSRC


def test_timestamp_advances_by_frame_samples() -> None:
    packetizer = Packetizer(SSRC, RecordingCipher())
    packetizer.packetize(b"40 ms", samples=1920)
    packetizer.packetize(b"2.5 ms", samples=120)
    assert header_fields(packetizer.packetize(b"next"))[3] == 2040
    assert packetizer.timestamp == 3000


def test_sequence_and_timestamp_wrap() -> None:
    packetizer = Packetizer(SSRC, RecordingCipher(), sequence=65535, timestamp=2**32 - 960)
    first = packetizer.packetize(b"a")
    second = packetizer.packetize(b"b")
    assert header_fields(first)[2:4] == (65535, 2**32 - 960)
    assert header_fields(second)[2:4] == (0, 0)
    assert (packetizer.sequence, packetizer.timestamp) == (1, 960)


def test_timestamp_wraps_mid_step() -> None:
    packetizer = Packetizer(SSRC, RecordingCipher(), timestamp=2**32 - 1)
    packetizer.packetize(b"a")
    assert packetizer.timestamp == 959


def test_transform_runs_before_the_cipher() -> None:
    cipher = RecordingCipher()
    transform = TaggingTransform()
    packetizer = Packetizer(SSRC, cipher, transform=transform)
    packet = packetizer.packetize(b"opus")
    assert transform.frames == [b"opus"]
    assert cipher.calls[0][1] == b"E2EE[opus]"
    assert packet[12:-4] == b"E2EE[opus]"


def test_passthrough_transform() -> None:
    frame = b"\xfc\x00\x01"
    assert PassthroughTransform().transform(frame) is frame
    cipher = RecordingCipher()
    Packetizer(SSRC, cipher, transform=PassthroughTransform()).packetize(frame)
    assert cipher.calls[0][1] is frame


def test_nonce_exhaustion_raises_instead_of_wrapping() -> None:
    cipher = RecordingCipher()
    packetizer = Packetizer(SSRC, cipher, sequence=7, timestamp=9, nonce=2**32 - 1)
    last = packetizer.packetize(b"last")
    assert last[-4:] == b"\xff\xff\xff\xff"
    assert packetizer.exhausted
    assert packetizer.nonce == 2**32
    for _ in range(2):
        with pytest.raises(EncryptionError, match="nonce counter exhausted"):
            packetizer.packetize(b"one too many")
    assert [nonce for _, _, nonce in cipher.calls] == [2**32 - 1]
    assert (packetizer.sequence, packetizer.timestamp, packetizer.packets) == (8, 969, 1)


def test_failed_seal_does_not_advance_counters() -> None:
    packetizer = Packetizer(SSRC, RecordingCipher(fail=True), sequence=3, timestamp=4, nonce=5)
    with pytest.raises(EncryptionError, match="fake failure"):
        packetizer.packetize(b"x")
    assert (packetizer.sequence, packetizer.timestamp, packetizer.nonce) == (3, 4, 5)
    assert packetizer.packets == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ssrc": -1}, "ssrc must be"),
        ({"ssrc": 2**32}, "ssrc must be"),
        ({"sequence": 65536}, "rtp sequence must be"),
        ({"timestamp": -1}, "rtp timestamp must be"),
        ({"nonce": 2**32}, "transport nonce must be"),
        ({"nonce": True}, "transport nonce must be"),
    ],
)
def test_constructor_validates(kwargs: dict[str, int], message: str) -> None:
    args: dict[str, int] = {"ssrc": SSRC, **kwargs}
    ssrc = args.pop("ssrc")
    with pytest.raises(LocalProtocolError, match=message):
        Packetizer(ssrc, RecordingCipher(), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("samples", [0, -960, 2**32, 960.0, True])
def test_samples_validated(samples: int) -> None:
    packetizer = Packetizer(SSRC, RecordingCipher())
    with pytest.raises(LocalProtocolError, match="samples per frame"):
        packetizer.packetize(b"x", samples=samples)
    assert packetizer.packets == 0


def independent_open(mode: str, key: bytes, packet: bytes) -> bytes:
    """Decrypt with cryptography / pycryptodome: header(12) | ct | tag(16) | counter(4)."""
    header, body, counter = packet[:12], packet[12:-4], packet[-4:]
    if mode == AES:
        return AESGCM(key).decrypt(counter + bytes(8), body, header)
    cipher = ChaCha20_Poly1305.new(key=key, nonce=counter + bytes(20))
    cipher.update(header)
    plaintext: bytes = cipher.decrypt_and_verify(body[:-16], body[-16:])
    return plaintext


@pytest.mark.parametrize("mode", MODES)
def test_real_packets_decrypt_independently(mode: str) -> None:
    packetizer = Packetizer(SSRC, make_cipher(mode, KEY), sequence=65534, timestamp=123)
    frames = [b"\xf8\xff\xfe", bytes(range(200)), b"\x78" * 40]
    for i, frame in enumerate(frames):
        packet = packetizer.packetize(frame)
        assert header_fields(packet) == (0x80, 0x78, (65534 + i) % 65536, 123 + 960 * i, SSRC)
        assert packet[-4:] == i.to_bytes(4, "big")
        assert len(packet) == 12 + len(frame) + 16 + 4
        assert independent_open(mode, KEY, packet) == frame


@pytest.mark.parametrize("mode", MODES)
def test_real_packets_carry_the_transformed_frame(mode: str) -> None:
    packetizer = Packetizer(SSRC, make_cipher(mode, KEY), transform=TaggingTransform())
    packet = packetizer.packetize(b"opus")
    assert independent_open(mode, KEY, packet) == b"E2EE[opus]"


def test_repr_shows_state_not_key() -> None:
    key = bytes.fromhex("5e" * 32)
    packetizer = Packetizer(SSRC, make_cipher(XCHACHA, key), sequence=1, nonce=2)
    text = repr(packetizer)
    assert text == (
        f"Packetizer(ssrc={SSRC}, mode='{XCHACHA}', sequence=1, timestamp=0, nonce=2, packets=0)"
    )
    assert "^" not in text and "5e5e" not in text

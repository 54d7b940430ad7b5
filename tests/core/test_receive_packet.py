"""core.receive_packet: every rule of receive.md §1-§2, on packets sealed by pycryptodome (an AEAD
implementation independent of libsodium, which the library uses), and fuzzed."""

from __future__ import annotations

import struct

import pytest
from Crypto.Cipher import AES, ChaCha20_Poly1305
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core.crypto import aes256_gcm_available, make_cipher
from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20
from discord_voice.core.receive_packet import Dropped, DropReason, RtpAudio, open_datagram

KEY = bytes(range(32))
SERVER = ("10.0.0.1", 50001)
OWN = 0x0BADBEEF
SSRC = 0x00C0FFEE
MODES = [MODE_XCHACHA20] + ([MODE_AES256_GCM] if aes256_gcm_available() else [])
OPUS = b"\xf8opus frame bytes"


def seal(mode: str, aad: bytes, plaintext: bytes, counter: int = 7) -> bytes:
    """Discord's layout: AAD | ciphertext | tag | 4-byte counter; nonce = counter + zeros."""
    nonce4 = struct.pack(">I", counter)
    if mode == MODE_AES256_GCM:
        gcm = AES.new(KEY, AES.MODE_GCM, nonce=nonce4 + bytes(8))
        gcm.update(aad)
        sealed, tag = gcm.encrypt_and_digest(plaintext)
    else:
        xchacha = ChaCha20_Poly1305.new(key=KEY, nonce=nonce4 + bytes(20))
        xchacha.update(aad)
        sealed, tag = xchacha.encrypt_and_digest(plaintext)
    return aad + sealed + tag + nonce4


def packet(
    mode: str = MODE_XCHACHA20,
    *,
    payload: bytes = OPUS,
    ssrc: int = SSRC,
    sequence: int = 65535,
    timestamp: int = 0xFFFFFF00,
    payload_type: int = 120,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension: bytes | None = None,
    padding: int = 0,
) -> bytes:
    first = 0x80 | len(csrcs) | (0x10 if extension is not None else 0) | (0x20 if padding else 0)
    second = (0x80 if marker else 0) | payload_type
    aad = struct.pack(">BBHII", first, second, sequence, timestamp, ssrc)
    aad += b"".join(struct.pack(">I", c) for c in csrcs)
    body = b""
    if extension is not None:
        words = (len(extension) + 3) // 4
        aad += struct.pack(">HH", 0xBEDE, words)
        body = extension.ljust(4 * words, b"\0")
    pad = b""
    if padding:
        pad = bytes(padding - 1) + bytes([padding])
    return seal(mode, aad, body + payload + pad)


def receive(data: bytes, mode: str = MODE_XCHACHA20, source: tuple[str, int] = SERVER) -> object:
    return open_datagram(
        data, source=source, server=SERVER, own_ssrc=OWN, cipher=make_cipher(mode, KEY)
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_plain_packet_opens_to_its_payload_and_header_fields(mode: str) -> None:
    got = receive(packet(mode, marker=True), mode)
    assert got == RtpAudio(SSRC, 65535, 0xFFFFFF00, OPUS, marker=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", [1, 2, 17, 255])
def test_rtp_padding_is_stripped(mode: str, padding: int) -> None:
    dave_like = OPUS + b"\x00\x01\x02\x09\xfa\xfa"  # the trailer must end up at the end again
    got = receive(packet(mode, payload=dave_like, padding=padding), mode)
    assert isinstance(got, RtpAudio) and got.payload == dave_like


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extension", [b"\x10\x7f", b"\x10\x7f\x90\x01\x02\x03\x04", bytes(8)])
def test_the_encrypted_extension_body_is_skipped(mode: str, extension: bytes) -> None:
    got = receive(packet(mode, extension=extension, padding=3, csrcs=(1, 2)), mode)
    assert isinstance(got, RtpAudio) and got.payload == OPUS


def test_csrcs_are_part_of_the_authenticated_header() -> None:
    data = bytearray(packet(csrcs=(0x11111111, 0x22222222, 0x33333333)))
    assert receive(bytes(data)) == RtpAudio(SSRC, 65535, 0xFFFFFF00, OPUS)
    data[13] ^= 1  # a CSRC byte: in the AAD, so authentication fails
    assert receive(bytes(data)) == Dropped(DropReason.AUTH_FAILED, SSRC)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", DropReason.SHORT),
        (bytes(11), DropReason.SHORT),
        (struct.pack(">HH", 2, 70) + bytes(70), DropReason.DISCOVERY),
        (b"\x00" * 40, DropReason.NOT_RTP),  # version 0
        (b"\xc0" + bytes(39), DropReason.NOT_RTP),  # version 3
        (b"\x81\xc9" + bytes(30), DropReason.RTCP),  # receiver report, PT 201
        (b"\x80\xc8" + bytes(30), DropReason.RTCP),  # sender report, PT 200
        (b"\x80\xdf" + bytes(30), DropReason.RTCP),
    ],
)
def test_what_is_not_rtp_audio_is_dropped_with_its_reason(data: bytes, reason: DropReason) -> None:
    got = receive(data)
    assert isinstance(got, Dropped) and got.reason is reason


@pytest.mark.parametrize("payload_type", [0, 96, 101, 103, 105, 119, 121, 127])
def test_video_and_other_payload_types_never_reach_the_decoder(payload_type: int) -> None:
    assert receive(packet(payload_type=payload_type)) == Dropped(DropReason.NOT_OPUS, SSRC)


def test_a_datagram_from_any_other_address_is_dropped() -> None:
    for source in (("10.0.0.2", 50001), ("10.0.0.1", 50002)):
        assert receive(packet(), source=source) == Dropped(DropReason.FOREIGN, SSRC)


def test_our_own_ssrc_is_dropped() -> None:
    assert receive(packet(ssrc=OWN)) == Dropped(DropReason.OWN_SSRC, OWN)


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_tag_a_wrong_key_or_a_forged_counter_fails_authentication(mode: str) -> None:
    good = packet(mode)
    for index in (len(good) - 5, len(good) - 1, 12, 3):  # tag, counter, ciphertext, header
        forged = bytearray(good)
        forged[index] ^= 0x40
        got = receive(bytes(forged), mode)
        assert got == Dropped(DropReason.AUTH_FAILED, int.from_bytes(forged[8:12], "big"))
    other = open_datagram(
        good, source=SERVER, server=SERVER, own_ssrc=OWN, cipher=make_cipher(mode, bytes(32))
    )
    assert other == Dropped(DropReason.AUTH_FAILED, SSRC)


def test_headers_cut_short_and_bad_lengths_are_malformed_or_bad_padding() -> None:
    assert receive(b"\x8f\x78" + bytes(30)) == Dropped(DropReason.MALFORMED, 0)  # 15 csrcs
    # an extension longer than what was decrypted
    aad = struct.pack(">BBHIIHH", 0x90, 0x78, 1, 2, SSRC, 0xBEDE, 100)
    assert receive(seal(MODE_XCHACHA20, aad, OPUS)) == Dropped(DropReason.MALFORMED, SSRC)
    # padding: a count of 0, or more than the payload
    base = struct.pack(">BBHII", 0xA0, 0x78, 1, 2, SSRC)
    for tail in (b"\x00", bytes([len(OPUS) + 2])):
        got = receive(seal(MODE_XCHACHA20, base, OPUS + tail))
        assert got == Dropped(DropReason.BAD_PADDING, SSRC)
    # all padding, no payload
    assert receive(seal(MODE_XCHACHA20, base, b"\x00\x02")) == Dropped(DropReason.EMPTY, SSRC)
    plain = struct.pack(">BBHII", 0x80, 0x78, 1, 2, SSRC)
    assert receive(seal(MODE_XCHACHA20, plain, b"")) == Dropped(DropReason.EMPTY, SSRC)


@given(st.binary(max_size=200))
def test_fuzz_random_datagrams_only_ever_drop(data: bytes) -> None:
    got = receive(data)
    assert isinstance(got, Dropped)  # forging a valid tag by chance does not happen


@given(st.data())
def test_fuzz_mutated_packets_open_or_drop_never_raise(data: st.DataObject) -> None:
    raw = bytearray(
        packet(
            extension=data.draw(st.one_of(st.none(), st.binary(max_size=12))),
            padding=data.draw(st.integers(0, 255)),
            csrcs=tuple(data.draw(st.lists(st.integers(0, 2**32 - 1), max_size=3))),
        )
    )
    for _ in range(data.draw(st.integers(0, 3))):
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    got = receive(bytes(raw[:cut]))
    assert isinstance(got, (RtpAudio, Dropped))
    if isinstance(got, RtpAudio):
        assert got.payload == OPUS  # only an untouched packet opens, to exactly its payload

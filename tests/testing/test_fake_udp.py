"""The fake UDP server: IP discovery, decryption of both AEAD modes, bad packets."""

from __future__ import annotations

import struct
import time

import pytest

from discord_voice.testing import FakeDiscord
from tests.testing.fake_raw_clients import (
    AES,
    XCHACHA,
    VoiceClient,
    aes_available,
    full_voice,
    main_ready,
    rtp_header,
    seal,
)
from tests.timeouts import LONG

MODES = [
    pytest.param(AES, marks=pytest.mark.skipif(not aes_available(), reason="no AES-NI for PyNaCl")),
    XCHACHA,
]


@pytest.mark.parametrize("mode", MODES)
def test_both_modes_decrypt(fake: FakeDiscord, mode: str) -> None:
    main, client = full_voice(fake, mode)
    assert fake.wait_until(lambda f: f.voice_sessions[0].speaking)
    before = time.time()
    sent = [client.send_audio(100 + i, b"\xfc" + bytes([i]) * 40, counter=7 + i) for i in range(3)]
    frames = fake.wait_for_frames(3)
    assert [f.sequence for f in frames] == [100, 101, 102]
    assert [f.timestamp for f in frames] == [96000, 96960, 97920]
    assert [f.nonce for f in frames] == [7, 8, 9]
    assert [f.opus for f in frames] == [b"\xfc" + bytes([i]) * 40 for i in range(3)]
    assert [f.size for f in frames] == [len(p) for p in sent] == [12 + 41 + 16 + 4] * 3
    assert {f.mode for f in frames} == {mode} and {f.ssrc for f in frames} == {client.ssrc}
    assert all(before - 1 < f.arrival < time.time() + 1 for f in frames)  # time.time() clock
    assert fake.frames(ssrc=client.ssrc) == frames and fake.frames(ssrc=1) == []
    assert fake.udp_errors == [] and fake.violations == []
    client.close()
    main.close()


def test_header_extension_body_is_stripped(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    assert fake.wait_until(lambda f: f.voice_sessions[0].speaking)
    # X bit set, BEDE one-byte-header profile, 1 word of extension: the preamble is AAD, the
    # body is encrypted at the start of the plaintext
    header = rtp_header(client.ssrc, 5, 4800, first=0x90) + b"\xbe\xde\x00\x01"
    body = b"\x10\x7f\x00\x00"  # id 1 (audio level), len 0 -> 1 byte, then padding
    packet = seal(XCHACHA, client.key, header, 1, body + b"opus-payload")
    client.udp.sendto(packet, client.server_addr)
    (frame,) = fake.wait_for_frames(1)
    assert (frame.opus, frame.sequence, frame.size) == (b"opus-payload", 5, len(packet))
    assert fake.udp_errors == []
    client.close()
    main.close()


def test_csrc_count_extends_the_authenticated_header(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    header = rtp_header(client.ssrc, 9, 0, first=0x81) + struct.pack(">I", 42)
    client.udp.sendto(seal(XCHACHA, client.key, header, 3, b"x"), client.server_addr)
    assert fake.wait_for_frames(1)[0].opus == b"x"
    client.close()
    main.close()


def test_bad_packets_land_in_udp_errors_and_the_thread_survives(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    good = client.send_audio(1, b"ok")  # sent, then replayed in tampered forms
    tampered = bytearray(good)
    tampered[14] ^= 0x01  # flip a ciphertext bit
    wrong_aad = bytearray(good)
    wrong_aad[3] ^= 0x01  # the sequence number is authenticated
    bad = [
        bytes(tampered),
        bytes(wrong_aad),
        good[:20],  # too short for header + tag + nonce
        b"\x00\x01\x00\x46" + bytes(10),  # ip discovery with the wrong length
        struct.pack(">HHI64sH", 1, 70, 12345, b"", 0),  # ip discovery for an unknown ssrc
        b"\x80\x60" + good[2:],  # payload type 96
        b"\x40" + good[1:],  # RTP version 1
        rtp_header(client.ssrc ^ 0xFFFF, 1, 0) + bytes(30),  # unknown ssrc
    ]
    for packet in bad:
        client.udp.sendto(packet, client.server_addr)
    client.send_audio(2, b"still alive")
    assert fake.wait_until(lambda f: len(f.frames()) == 2 and len(f.udp_errors) == len(bad))
    assert [f.opus for f in fake.frames()] == [b"ok", b"still alive"]
    errors = fake.udp_errors
    assert "authentication failed" in errors[0] and "authentication failed" in errors[1]
    assert "too short" in errors[2]
    assert "74 bytes" in errors[3]
    assert "unknown ssrc 12345" in errors[4]
    assert "payload type" in errors[5]
    assert "version" in errors[6]
    assert "unknown ssrc" in errors[7]
    client.close()
    main.close()


def test_audio_before_session_description_is_an_error(fake: FakeDiscord) -> None:
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main)
    client.ready()
    client.udp.sendto(rtp_header(client.ssrc, 1, 0) + bytes(30), client.server_addr)
    assert fake.wait_until(lambda f: f.udp_errors, timeout=LONG)
    assert "before the session description" in fake.udp_errors[0]
    client.close()
    main.close()


def test_wait_for_frames_times_out_with_a_useful_message(fake: FakeDiscord) -> None:
    with pytest.raises(TimeoutError, match="only 0 of 1 frames"):
        fake.wait_for_frames(1, timeout=0.01)
    assert fake.wait_until(lambda f: f.frames(), timeout=0.01) is False


def test_captured_packets_are_recorded_when_the_capture_ends(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    assert fake.wait_until(lambda f: f.voice_sessions[0].speaking)
    client.send_audio(1, b"\xfcbefore", counter=1)
    fake.wait_for_frames(1)
    fake.capture_udp()
    client.send_audio(2, b"\xfccaptured-1", counter=2)
    client.send_audio(3, b"\xfccaptured-2", counter=3)
    with pytest.raises(TimeoutError):  # kept, not recorded yet
        fake.wait_for_frames(2, timeout=0.2)
    fake.capture_udp(False)
    client.send_audio(4, b"\xfcafter", counter=4)
    frames = fake.wait_for_frames(4, timeout=LONG)
    assert [f.sequence for f in frames] == [1, 2, 3, 4]  # the backlog before anything newer
    assert [f.opus for f in frames] == [
        b"\xfcbefore",
        b"\xfccaptured-1",
        b"\xfccaptured-2",
        b"\xfcafter",
    ]
    assert frames[1].arrival <= frames[2].arrival <= frames[3].arrival  # stamped on arrival
    assert fake.udp_errors == []
    client.close()
    main.close()

"""RTP header: exact send bytes, counter wrap-around, parsing (CSRCs, extension), bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voice.core.rtp import (
    OPUS_PAYLOAD_TYPE,
    RTP_HEADER_SIZE,
    RTP_VERSION_BYTE,
    SAMPLES_PER_FRAME,
    RtpHeader,
    encode_header,
    next_sequence,
    next_timestamp,
)
from discord_voice.errors import InvalidPacket, LocalProtocolError

# A header with two CSRCs and a one-byte-header extension of 2 words, then 8 bytes of
# extension body and a 3-byte payload: V=2 X=1 CC=2 -> 0x92; marker + PT 120 -> 0xF8.
PACKET_WITH_CSRCS_AND_EXTENSION = bytes.fromhex(
    "92f8 0102 0a0b0c0d 11223344"  # fixed header
    "00000001 00000002"  # two csrcs
    "bede 0002"  # extension preamble: profile 0xBEDE, 2 words
    "1122334455667788"  # extension body (encrypted in rtpsize modes)
    "f8fffe"  # payload
)


def test_constants() -> None:
    assert (RTP_HEADER_SIZE, RTP_VERSION_BYTE, OPUS_PAYLOAD_TYPE) == (12, 0x80, 0x78)
    assert SAMPLES_PER_FRAME == 48_000 * 20 // 1000


def test_encode_header_exact_bytes() -> None:
    header = encode_header(0x1234, 0x56789ABC, 0xDEADBEEF)
    assert header == bytes.fromhex("80 78 1234 56789abc deadbeef")


def test_encode_header_limits() -> None:
    assert encode_header(0, 0, 0) == b"\x80\x78" + bytes(10)
    assert encode_header(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF) == b"\x80\x78" + b"\xff" * 10


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-1, 0, 0), "sequence"),
        ((0x10000, 0, 0), "sequence"),
        ((0, -1, 0), "timestamp"),
        ((0, 2**32, 0), "timestamp"),
        ((0, 0, 2**32), "ssrc"),
        ((0, 0, -5), "ssrc"),
        ((0, 1.5, 0), "timestamp"),
    ],
)
def test_encode_header_rejects_out_of_range(args: tuple[int, int, int], field: str) -> None:
    with pytest.raises(LocalProtocolError, match=f"rtp {field} must be an integer"):
        encode_header(*args)


def test_sequence_wraps_at_2_16() -> None:
    assert next_sequence(0) == 1
    assert next_sequence(65534) == 65535
    assert next_sequence(65535) == 0


def test_timestamp_wraps_at_2_32() -> None:
    assert next_timestamp(0) == 960
    assert next_timestamp(2**32 - 960) == 0
    assert next_timestamp(2**32 - 1) == 959
    assert next_timestamp(2**32 - 1000, 1920) == 920


def test_parse_our_header() -> None:
    data = encode_header(0x1234, 0x56789ABC, 0xDEADBEEF) + b"payload"
    header = RtpHeader.parse(data)
    assert header == RtpHeader(sequence=0x1234, timestamp=0x56789ABC, ssrc=0xDEADBEEF)
    assert (header.version, header.padding, header.extension, header.marker) == (
        2,
        False,
        False,
        False,
    )
    assert (header.csrc_count, header.csrcs, header.payload_type) == (0, (), 0x78)
    assert header.size == 12
    assert bytes(header) == data[:12]


def test_parse_csrcs_and_extension() -> None:
    header = RtpHeader.parse(PACKET_WITH_CSRCS_AND_EXTENSION)
    assert header.marker is True
    assert header.payload_type == 120
    assert (header.sequence, header.timestamp, header.ssrc) == (0x0102, 0x0A0B0C0D, 0x11223344)
    assert header.csrc_count == 2
    assert header.csrcs == (1, 2)
    assert header.extension is True
    assert header.extension_profile == 0xBEDE
    assert header.extension_length == 2
    assert header.extension_body_size == 8
    # SRTP rule: 12 fixed + 2*4 CSRC + 4 preamble; the body is not part of the AAD.
    assert header.size == 24
    assert bytes(header) == PACKET_WITH_CSRCS_AND_EXTENSION[:24]
    body_end = header.size + header.extension_body_size
    assert PACKET_WITH_CSRCS_AND_EXTENSION[body_end:] == b"\xf8\xff\xfe"


def test_parse_padding_flag_and_bare_extension_header() -> None:
    # P=1, X=1, CC=0: the parser only needs the 16 header bytes, not the 4*len body.
    data = bytes.fromhex("b0 78 0001 00000002 00000003 bede 0005")
    header = RtpHeader.parse(data)
    assert header.padding is True
    assert header.extension_length == 5
    assert header.size == 16
    assert bytes(header) == data


def test_parse_accepts_memoryview() -> None:
    data = encode_header(7, 8, 9)
    assert RtpHeader.parse(memoryview(data)).sequence == 7


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "rtp packet is 0 bytes, shorter than the 12-byte header"),
        (bytes(11), "rtp packet is 11 bytes, shorter than the 12-byte header"),
        (b"\x40" + bytes(15), "rtp version is 1, expected 2"),
        (b"\x00" + bytes(15), "rtp version is 0, expected 2"),
        (b"\xc0" + bytes(15), "rtp version is 3, expected 2"),
        (b"\x83" + bytes(19), r"rtp packet is 20 bytes, too short for a header with 3 csrcs \(24"),
        (
            b"\x90" + bytes(13),
            r"rtp packet is 14 bytes, too short for a header with 0 csrcs and extension "
            r"preamble \(16",
        ),
        (
            b"\x91" + bytes(18),
            r"19 bytes, too short for a header with 1 csrcs and extension preamble \(20",
        ),
    ],
)
def test_parse_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(InvalidPacket, match=message) as info:
        RtpHeader.parse(data)
    assert info.value.data == data[:64]


def test_invalid_packet_keeps_at_most_64_bytes() -> None:
    data = b"\x40" + bytes(199)
    with pytest.raises(InvalidPacket) as info:
        RtpHeader.parse(data)
    assert info.value.data == data[:64]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"csrcs": tuple(range(16))}, "at most 15 csrcs"),
        ({"csrcs": (2**32,)}, "rtp csrc must be"),
        ({"extension_length": 1}, "without the extension bit"),
        ({"extension": True, "extension_profile": 0x10000}, "rtp extension profile must be"),
        ({"payload_type": 128}, "rtp payload type must be"),
        ({"version": 4}, "rtp version must be"),
        ({"sequence": 65536}, "rtp sequence must be"),
    ],
)
def test_header_construction_is_validated(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"sequence": 1, "timestamp": 2, "ssrc": 3, **kwargs}
    with pytest.raises(LocalProtocolError, match=message):
        RtpHeader(**fields)  # type: ignore[arg-type]


@settings(database=None, deadline=None, max_examples=300)
@given(st.binary(max_size=100))
def test_parse_raises_only_invalid_packet_and_round_trips(data: bytes) -> None:
    try:
        header = RtpHeader.parse(data)
    except InvalidPacket:
        return
    # Every bit of the parsed header is kept: re-encoding gives back the same prefix.
    assert bytes(header) == data[: header.size]
    assert header.size == 12 + 4 * header.csrc_count + (4 if header.extension else 0)


@settings(database=None, deadline=None, max_examples=300)
@given(
    prefix=st.integers(0, 255),
    rest=st.binary(min_size=11, max_size=90),
)
def test_parse_with_version_2_raises_only_invalid_packet(prefix: int, rest: bytes) -> None:
    # Force version 2 so the CSRC/extension length checks get exercised.
    data = bytes([0x80 | (prefix & 0x3F)]) + rest
    try:
        header = RtpHeader.parse(data)
    except InvalidPacket as err:
        assert "too short" in str(err)
        return
    assert bytes(header) == data[: header.size]


@settings(database=None, deadline=None)
@given(
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    payload_type=st.integers(0, 127),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))),
)
def test_header_round_trip(
    sequence: int,
    timestamp: int,
    ssrc: int,
    marker: bool,
    payload_type: int,
    csrcs: tuple[int, ...],
    extension: tuple[int, int] | None,
) -> None:
    profile, length = extension or (0, 0)
    header = RtpHeader(
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        marker=marker,
        payload_type=payload_type,
        csrcs=csrcs,
        extension=extension is not None,
        extension_profile=profile,
        extension_length=length,
    )
    data = bytes(header)
    assert len(data) == header.size
    assert RtpHeader.parse(data) == header
    # The fixed part is laid out as RFC 3550 says, checked with an independent unpack.
    first, second, seq, ts, src = struct.unpack_from(">BBHII", data)
    assert first == 0x80 | (0x10 if extension else 0) | len(csrcs)
    assert second == (0x80 if marker else 0) | payload_type
    assert (seq, ts, src) == (sequence, timestamp, ssrc)

"""The opus_send rule: packet durations from the TOC byte (RFC 6716 section 3.1) and what
`check_opus_frame` accepts.

Expectations come from RFC 6716 Table 2 as printed in the RFC (parsed below, in milliseconds),
from hand-computed byte vectors, and, when PyAV with libopus is installed, from packets libopus
itself encoded at each frame duration; never from `discord_voice.core.frames`' own tables.
"""

from __future__ import annotations

import fractions
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voice.core.frames import (
    OPUS_SILENCE_FRAME,
    check_opus_frame,
    frame_samples,
)
from discord_voice.errors import InvalidFrame
from tests.frames import opus_frame

# RFC 6716 section 3.1, Table 2 ("TOC Byte Configuration Parameters"): config range, mode,
# bandwidth, frame sizes in ms.
RFC_6716_TABLE_2 = """
0...3   | SILK-only | NB  | 10, 20, 40, 60
4...7   | SILK-only | MB  | 10, 20, 40, 60
8...11  | SILK-only | WB  | 10, 20, 40, 60
12...13 | Hybrid    | SWB | 10, 20
14...15 | Hybrid    | FB  | 10, 20
16...19 | CELT-only | NB  | 2.5, 5, 10, 20
20...23 | CELT-only | WB  | 2.5, 5, 10, 20
24...27 | CELT-only | SWB | 2.5, 5, 10, 20
28...31 | CELT-only | FB  | 2.5, 5, 10, 20
"""


def frame_ms_by_config() -> dict[int, Fraction]:
    sizes: dict[int, Fraction] = {}
    for line in RFC_6716_TABLE_2.strip().splitlines():
        configs, _mode, _bandwidth, ms = (part.strip() for part in line.split("|"))
        first, last = (int(n) for n in configs.split("..."))
        values = [Fraction(v) for v in ms.split(",")]
        assert last - first + 1 == len(values)
        for config, value in zip(range(first, last + 1), values, strict=True):
            sizes[config] = value
    return sizes


FRAME_MS = frame_ms_by_config()
ACCEPTED_MS = {10, 20, 40, 60}


def test_the_table_covers_every_configuration() -> None:
    assert sorted(FRAME_MS) == list(range(32))


@pytest.mark.parametrize("config", range(32))
@pytest.mark.parametrize(("code", "frames"), [(0, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("stereo", [0, 1])
def test_codes_0_to_2(config: int, code: int, frames: int, stereo: int) -> None:
    toc = config << 3 | stereo << 2 | code
    packet = bytes([toc]) + bytes(range(1, 20))
    ms = FRAME_MS[config] * frames
    assert frame_samples(packet) == ms * 48
    if ms in ACCEPTED_MS:
        assert check_opus_frame(packet) is packet
    else:
        with pytest.raises(InvalidFrame, match=f"opus packet lasts {float(ms):g} ms"):
            check_opus_frame(packet)


@pytest.mark.parametrize("config", range(32))
@pytest.mark.parametrize("flags", [0x00, 0x40, 0x80, 0xC0])  # padding and VBR bits
def test_code_3_every_count(config: int, flags: int) -> None:
    for count in range(1, 64):
        packet = bytes([config << 3 | 3, flags | count]) + b"\x10\x20"
        ms = FRAME_MS[config] * count
        if ms > 120:
            with pytest.raises(InvalidFrame, match="more than the 120 ms"):
                frame_samples(packet)
            with pytest.raises(InvalidFrame, match="more than the 120 ms"):
                check_opus_frame(packet)
            continue
        assert frame_samples(packet) == ms * 48
        if ms in ACCEPTED_MS:
            assert check_opus_frame(packet) == packet
        else:
            with pytest.raises(InvalidFrame, match="opus_send takes packets of 10, 20, 40"):
                check_opus_frame(packet)


# Computed by hand from the RFC: TOC = config << 3 | s << 2 | code.
@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (OPUS_SILENCE_FRAME, 960),  # F8: config 31, CELT FB 20 ms, code 0
        (bytes.fromhex("00"), 480),  # config 0, SILK NB 10 ms, one frame
        (bytes.fromhex("01aabb"), 960),  # config 0, code 1: two 10 ms frames
        (bytes.fromhex("18"), 2880),  # config 3, SILK NB 60 ms
        (bytes.fromhex("50"), 1920),  # config 10, SILK WB 40 ms
        (bytes.fromhex("0b03"), 2880),  # config 1 (20 ms), code 3, 3 frames
        (bytes.fromhex("6c"), 960),  # config 13, stereo, code 0: Hybrid SWB 20 ms
        (bytes.fromhex("e0"), 120),  # config 28, CELT FB 2.5 ms
        (bytes.fromhex("e304"), 480),  # 4 x 2.5 ms
        (bytes.fromhex("ff03"), 2880),  # config 31, code 3, 3 x 20 ms: what libopus makes for 60 ms
        (bytes.fromhex("7b83"), 2880),  # config 15 (Hybrid FB 20 ms), VBR flag, 3 frames
        (bytes.fromhex("ff06"), 5760),  # 6 x 20 ms = 120 ms, the longest packet
        (bytes.fromhex("19"), 5760),  # config 3, code 1: 2 x 60 ms
    ],
)
def test_known_vectors(packet: bytes, samples: int) -> None:
    assert frame_samples(packet) == samples


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (
            bytes.fromhex("e0aa"),
            r"^opus packet lasts 2\.5 ms \(TOC 0xe0\); opus_send takes packets "
            r"of 10, 20, 40 or 60 ms$",
        ),
        (bytes.fromhex("e8aa"), r"lasts 5 ms"),  # config 29: CELT FB 5 ms
        (bytes.fromhex("11aaaa"), r"lasts 80 ms \(TOC 0x11\)"),  # 2 x 40 ms
        (bytes.fromhex("19aaaa"), r"lasts 120 ms"),  # 2 x 60 ms
        (bytes.fromhex("e305"), r"lasts 12\.5 ms"),  # 5 x 2.5 ms
        (bytes.fromhex("fb"), r"TOC 0xfb \(frame count code 3\) has no frame-count byte"),
        (bytes.fromhex("fbc0aa"), r"TOC 0xfb \(frame count code 3\) says it holds 0 frames"),
        (bytes.fromhex("ff07"), r"holds 7 frames of 20 ms: 140 ms, more than the 120 ms"),
        (bytes.fromhex("1b3f"), r"holds 63 frames of 60 ms: 3780 ms"),
    ],
)
def test_invalid_packets_are_named(packet: bytes, match: str) -> None:
    with pytest.raises(InvalidFrame, match=match):
        check_opus_frame(packet)
    with pytest.raises(ValueError):  # InvalidFrame is also a ValueError
        check_opus_frame(bytearray(packet))


def test_two_short_frames_make_an_accepted_packet() -> None:
    assert check_opus_frame(bytes.fromhex("e9aaaa")) == bytes.fromhex("e9aaaa")  # 2 x 5 ms


def test_frame_samples_of_nothing() -> None:
    with pytest.raises(InvalidFrame, match="empty opus packet"):
        frame_samples(b"")


def test_the_existing_checks_come_first() -> None:
    with pytest.raises(InvalidFrame, match="must not be empty"):
        check_opus_frame(b"")
    with pytest.raises(InvalidFrame, match=r"must be bytes.*str"):
        check_opus_frame("\xf8")
    with pytest.raises(InvalidFrame, match="larger than any Opus packet"):
        check_opus_frame(b"\xf8" * 4000)


def test_mutable_buffers_are_copied_then_checked() -> None:
    buffer = bytearray(b"\xf8abc")
    frame = check_opus_frame(memoryview(buffer))
    buffer[0] = 0xE0  # 2.5 ms now, but the copy was taken and checked before
    assert frame == b"\xf8abc" and type(frame) is bytes


@pytest.mark.parametrize("ms", [10, 20, 40, 60])
def test_the_test_helper_makes_valid_frames(ms: int) -> None:
    frame = opus_frame(b"tag", ms)
    assert check_opus_frame(frame) == frame
    assert frame_samples(frame) == 48 * ms
    assert frame.endswith(b"tag")


@given(st.binary(min_size=1, max_size=8))
def test_any_packet_gives_a_duration_or_invalid_frame(packet: bytes) -> None:
    """Every TOC byte, with anything after it: a duration, or InvalidFrame; nothing else."""
    try:
        samples = frame_samples(packet)
    except InvalidFrame:
        samples = None
    if samples is not None:
        assert 120 <= samples <= 5760 and samples % 120 == 0
    try:
        accepted = check_opus_frame(packet) == packet
    except InvalidFrame:
        accepted = False
    assert accepted == (samples in (480, 960, 1920, 2880))


@given(st.integers(0, 255))
def test_every_toc_byte_alone(toc: int) -> None:
    try:
        samples = frame_samples(bytes([toc]))
    except InvalidFrame as err:
        assert toc & 3 == 3 and "no frame-count byte" in str(err)
    else:
        assert toc & 3 != 3 and samples == FRAME_MS[toc >> 3] * (1 if toc & 3 == 0 else 2) * 48


# -- cross-check against libopus (PyAV), when it is installed ---------------------------------


@pytest.mark.parametrize("application", ["audio", "voip", "lowdelay"])
@pytest.mark.parametrize("duration", ["2.5", "5", "10", "20", "40", "60"])
def test_packets_libopus_encodes(application: str, duration: str) -> None:
    av = pytest.importorskip("av")
    np = pytest.importorskip("numpy")
    try:
        context = av.CodecContext.create("libopus", "w")
    except (ValueError, av.error.FFmpegError):  # pragma: no cover - an ffmpeg without libopus
        pytest.skip("PyAV has no libopus encoder")
    context.sample_rate = 48_000
    context.layout = "stereo"
    context.format = "s16"
    context.time_base = fractions.Fraction(1, 48_000)
    context.options = {"frame_duration": duration, "application": application}
    context.open()
    size = context.frame_size
    packets = []
    for index in range(3):
        t = np.arange(index * size, (index + 1) * size) / 48_000
        mono = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(mono[None, :], 2, axis=0).T.reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = 48_000
        frame.pts = index * size
        packets.extend(context.encode(frame))
    packets.extend(context.encode(None))
    assert len(packets) >= 3
    # FFmpeg trims the duration of the last packet to the input's end; its TOC still says
    # how long the packet is.
    assert all(packet.duration == size for packet in packets[:-1])
    for packet in packets:
        data = bytes(packet)
        assert frame_samples(data) == size
        if Fraction(duration) in ACCEPTED_MS:
            assert check_opus_frame(data) == data
        else:
            with pytest.raises(InvalidFrame, match=f"lasts {duration} ms"):
                check_opus_frame(data)

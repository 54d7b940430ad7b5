"""discord_voice.ogg: reading back what FFmpeg's Ogg muxer (via PyAV) wrote, and rejecting damage.

Positive cases use files written by FFmpeg (an independent Ogg implementation, including its
CRC). Negative cases edit those files, or build pages with the small writer below, whose CRC is
a bit-by-bit loop rather than the reader's table.
"""

from __future__ import annotations

import gc
import io
import struct
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voice import ogg
from discord_voice.errors import InvalidPacket
from discord_voice.ogg import iter_opus_packets, ogg_crc32, read_opus_head
from tests import make_assets

ASSET: Path = make_assets.ASSET
FUZZ = settings(max_examples=150, deadline=None, database=None)


def bitwise_crc(data: bytes) -> int:
    """Ogg's CRC computed bit by bit (no table), to check the reader's table."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def split_pages(data: bytes) -> list[bytearray]:
    """Cut a well-formed Ogg file into its pages (test helper, trusts the input)."""
    pages = []
    offset = 0
    while offset < len(data):
        count = data[offset + 26]
        size = 27 + count + sum(data[offset + 27 : offset + 27 + count])
        pages.append(bytearray(data[offset : offset + size]))
        offset += size
    return pages


def fix_crc(page: bytearray) -> bytearray:
    page[22:26] = b"\0\0\0\0"
    page[22:26] = struct.pack("<I", bitwise_crc(bytes(page)))
    return page


def build_page(
    segments: list[bytes],
    *,
    flags: int = 0,
    serial: int = 7,
    sequence: int = 0,
    lacing: list[int] | None = None,
) -> bytes:
    """One page; ``segments`` are whole packets unless ``lacing`` is given explicitly."""
    if lacing is None:
        lacing = []
        for packet in segments:
            lacing += [255] * (len(packet) // 255) + [len(packet) % 255]
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, 0, serial, sequence, 0, len(lacing))
    return bytes(fix_crc(bytearray(header + bytes(lacing) + b"".join(segments))))


HEAD = make_assets.opus_head()
TAGS = b"OpusTags" + struct.pack("<I", 4) + b"test" + struct.pack("<I", 0)


def built_file(*audio_pages: bytes) -> bytes:
    return build_page([HEAD], flags=2) + build_page([TAGS], sequence=1) + b"".join(audio_pages)


def write(tmp_path: Path, packets: list[bytes], name: str = "x.opus") -> Path:
    path = tmp_path / name
    make_assets.write_ogg_opus(path, [packets])
    return path


def read_all(data: bytes) -> list[bytes]:
    return list(iter_opus_packets(io.BytesIO(data)))


FAKE_PACKETS = [bytes([0xFC, i]) + bytes([i]) * (i * 7) for i in range(40)]


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ogg") / "small.opus"
    make_assets.write_ogg_opus(path, [FAKE_PACKETS[:12]])
    return path.read_bytes()


# --- reading what FFmpeg wrote -------------------------------------------------------------


def test_round_trip_of_encoded_tone(tmp_path: Path) -> None:
    from discord_voice.opus import Encoder, encode_frames, tone

    packets = list(encode_frames(tone(seconds=1.0), Encoder()))
    path = write(tmp_path, packets)
    assert list(iter_opus_packets(path)) == packets
    assert list(iter_opus_packets(str(path))) == packets
    with open(path, "rb") as file:
        assert list(iter_opus_packets(file)) == packets
    head = read_opus_head(path)
    assert (head.channels, head.pre_skip, head.input_sample_rate) == (2, 312, 48000)
    assert (head.version, head.output_gain, head.mapping_family) == (1, 0, 0)


@pytest.mark.parametrize("size", [1, 254, 255, 256, 510, 65025, 65026, 200_000])
def test_packet_sizes_around_lacing_boundaries(tmp_path: Path, size: int) -> None:
    packets = [b"\xfc" + bytes([n % 251 for n in range(size - 1)]), b"\xfc\x01", b"\xfc"]
    assert read_all(write(tmp_path, packets).read_bytes()) == packets


def test_packets_continued_across_pages(tmp_path: Path) -> None:
    # FFmpeg splits a packet only when it cannot fit on one page (255 segments = 65025 bytes)
    sizes = [70_000, 100, 70_000, 300, 140_000, 5, 65_025]
    packets = [bytes([0xFC, i]) + bytes([i]) * (size - 2) for i, size in enumerate(sizes)]
    data = write(tmp_path, packets).read_bytes()
    continued = [page for page in split_pages(data) if page[5] & 0x01]
    assert len(continued) >= 4
    assert read_all(data) == packets


def test_one_packet_over_several_pages(tmp_path: Path) -> None:
    big = bytes(range(256)) * 800  # 204800 bytes: 804 segments, at least 4 pages
    data = write(tmp_path, [big, b"\xfc\x00"]).read_bytes()
    assert len(split_pages(data)) >= 2 + 4
    assert read_all(data) == [big, b"\xfc\x00"]


def test_first_of_two_multiplexed_opus_streams(tmp_path: Path) -> None:
    first, second = FAKE_PACKETS[:20], [b"\xf8" + bytes([i]) for i in range(25)]
    path = tmp_path / "two.opus"
    make_assets.write_ogg_opus(path, [first, second])
    data = path.read_bytes()
    assert read_all(data) == first
    # make the first stream some other codec: the reader then picks the second one
    pages = split_pages(data)
    pages[0][28:36] = b"OtherHdr"
    assert read_all(b"".join(bytes(fix_crc(page)) for page in pages)) == second


def test_reader_crc_matches_bitwise_crc_and_ffmpeg(small_file: bytes) -> None:
    for page in split_pages(small_file):
        stored = struct.unpack_from("<I", page, 22)[0]
        page[22:26] = b"\0\0\0\0"
        assert ogg_crc32(bytes(page)) == bitwise_crc(bytes(page)) == stored


@given(st.binary(max_size=300))
@FUZZ
def test_crc_table_matches_bitwise_crc(data: bytes) -> None:
    assert ogg_crc32(data) == bitwise_crc(data)


def test_path_is_closed_when_iteration_stops_early(tmp_path: Path) -> None:
    path = write(tmp_path, FAKE_PACKETS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packets = iter_opus_packets(path)
        assert next(packets) == FAKE_PACKETS[0]
        packets.close()
        del packets
        read_opus_head(path)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_text_mode_file_is_a_type_error(tmp_path: Path) -> None:
    path = write(tmp_path, FAKE_PACKETS)
    with open(path, encoding="latin-1") as file, pytest.raises(TypeError, match="binary mode"):
        read_opus_head(file)  # type: ignore[arg-type]


# --- the bundled asset ---------------------------------------------------------------------


def test_bundled_asset_has_250_packets_of_a_440_hz_tone() -> None:
    packets = list(iter_opus_packets(ASSET))
    assert len(packets) == 250
    assert 30_000 < ASSET.stat().st_size < 50_000  # about 64 kbit/s for 5 s
    head = read_opus_head(ASSET)
    assert (head.channels, head.input_sample_rate) == (2, 48000)
    assert all(packet[0] & 0x04 and packet[0] & 0x03 == 0 for packet in packets)
    context = av.CodecContext.create("opus", "r")  # FFmpeg's native decoder, not libopus
    context.sample_rate = 48000
    context.layout = "stereo"
    chunks = [f.to_ndarray() for p in packets for f in context.decode(av.Packet(p))]
    samples = np.concatenate(chunks, axis=1)
    assert samples.shape == (2, 250 * 960)
    left = samples[0, 4800:].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(left * np.hanning(len(left))))
    assert abs(float(np.argmax(spectrum)) * 48000 / len(left) - 440) <= 5


def test_make_tone_asset_writes_what_the_reader_reads(tmp_path: Path) -> None:
    packets = make_assets.make_tone_asset(tmp_path / "tone.opus")
    assert list(iter_opus_packets(tmp_path / "tone.opus")) == packets


# --- damage --------------------------------------------------------------------------------


def expect_invalid(data: bytes, match: str) -> None:
    with pytest.raises(InvalidPacket, match=match):
        read_all(data)


def test_bad_crc(small_file: bytes) -> None:
    data = bytearray(small_file)
    data[-5] ^= 0x40
    expect_invalid(bytes(data), "bad page CRC at offset")


@pytest.mark.parametrize("cut", [1, 20, 27, 30, 100])
def test_truncated_inside_a_page(small_file: bytes, cut: int) -> None:
    expect_invalid(small_file[:-cut], "file ends inside the page")


def test_truncated_at_a_page_boundary(small_file: bytes) -> None:
    pages = split_pages(small_file)
    expect_invalid(b"".join(pages[:-1]), "before the end-of-stream page")


def test_wrong_capture_pattern(small_file: bytes) -> None:
    expect_invalid(b"OggT" + small_file[4:], "no OggS capture pattern at offset 0")
    expect_invalid(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40), "capture pattern")


def test_empty_file() -> None:
    expect_invalid(b"", "no Ogg Opus stream")


def test_wrong_version_and_flags(small_file: bytes) -> None:
    pages = split_pages(small_file)
    pages[1][4] = 1
    expect_invalid(b"".join(bytes(fix_crc(p)) for p in pages), "version 1")
    pages = split_pages(small_file)
    pages[1][5] |= 0x08
    expect_invalid(b"".join(bytes(fix_crc(p)) for p in pages), "unknown Ogg page flags")


def test_lost_page(tmp_path: Path) -> None:
    packets = [b"\xfc" + bytes(2999)] * 60
    pages = split_pages(write(tmp_path, packets).read_bytes())
    assert len(pages) >= 4
    expect_invalid(b"".join(pages[:2] + pages[3:]), "page sequence jumps from 1 to 3")


def test_no_opus_stream(small_file: bytes) -> None:
    pages = split_pages(small_file)
    pages[0][28:36] = b"OtherHdr"
    expect_invalid(b"".join(bytes(fix_crc(p)) for p in pages), "no Opus stream")


def test_bad_opus_head() -> None:
    head = bytearray(HEAD)
    head[9] = 3  # three channels with mapping family 0
    data = build_page([bytes(head)], flags=2) + build_page([TAGS], sequence=1, flags=4)
    expect_invalid(data, "mapping family 0 allows 1 or 2 channels")
    expect_invalid(build_page([HEAD[:18]], flags=2), "at least 19")


def test_header_layout_rules() -> None:
    audio = build_page([b"\xfc\x01"], sequence=2, flags=4)
    assert read_all(built_file(audio)) == [b"\xfc\x01"]
    expect_invalid(build_page([HEAD, TAGS], flags=2) + audio, "OpusHead is not alone and complete")
    shared = build_page([TAGS, b"\xfc\x01"], sequence=1, flags=4)
    expect_invalid(build_page([HEAD], flags=2) + shared, "audio shares the OpusTags")
    no_tags = build_page([b"\xfc\x02"], sequence=1, flags=4)
    expect_invalid(build_page([HEAD], flags=2) + no_tags, "not OpusTags")
    expect_invalid(build_page([HEAD], flags=6), "before its headers are complete")
    expect_invalid(build_page([TAGS], sequence=0) + audio, "does not begin a logical stream")


def test_continuation_rules() -> None:
    part = b"\xfc" + bytes(254)
    start = build_page([part], sequence=2, lacing=[255])
    end_ok = build_page([b"\x01"], sequence=3, flags=0x05, lacing=[1])
    assert read_all(built_file(start, end_ok)) == [part + b"\x01"]
    end_missing_flag = build_page([b"\x01"], sequence=3, flags=0x04, lacing=[1])
    expect_invalid(built_file(start, end_missing_flag), "continued-packet flag missing")
    stray = build_page([b"\xfc"], sequence=2, flags=0x05)
    expect_invalid(built_file(stray), "continued-packet flag set")
    expect_invalid(built_file(build_page([part], sequence=2, flags=4, lacing=[255])), "inside")


def test_second_bos_and_empty_packet() -> None:
    again = build_page([b"\xfc"], sequence=2, flags=0x06)
    expect_invalid(built_file(again), "second beginning-of-stream")
    expect_invalid(built_file(build_page([b""], sequence=2, flags=4)), "audio packet 0 is empty")


def test_oversized_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ogg, "MAX_PACKET_BYTES", 1000)
    pages = [
        build_page([bytes(255 * 4)], sequence=2 + i, flags=int(i > 0), lacing=[255] * 4)
        for i in range(3)
    ]
    expect_invalid(built_file(*pages), "packet longer than 1000 bytes")


def test_other_streams_pages_are_skipped() -> None:
    other_bos = build_page([b"OtherHdr"], flags=2, serial=99)
    other = build_page([b"junk"], sequence=1, serial=99)
    data = (
        build_page([HEAD], flags=2)
        + other_bos
        + build_page([TAGS], sequence=1)
        + other
        + build_page([b"\xfc\x05"], sequence=2, flags=4)
    )
    assert read_all(data) == [b"\xfc\x05"]


# --- fuzzing: only InvalidPacket ever comes out --------------------------------------------


def read_or_reject(data: bytes) -> None:
    try:
        packets = read_all(data)
    except InvalidPacket as exc:
        assert str(exc)
    else:
        assert all(isinstance(p, bytes) and p for p in packets)


@given(st.data())
@FUZZ
def test_fuzz_byte_mutations(small_file: bytes, data: st.DataObject) -> None:
    mutated = bytearray(small_file)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    read_or_reject(bytes(mutated[:cut]) if data.draw(st.booleans()) else bytes(mutated))


@given(st.data())
@FUZZ
def test_fuzz_header_mutations_with_valid_crc(small_file: bytes, data: st.DataObject) -> None:
    """Damage page headers and lacing but fix the CRC, so the structural checks are reached."""
    pages = split_pages(small_file)
    for _ in range(data.draw(st.integers(1, 3))):
        page = pages[data.draw(st.integers(0, len(pages) - 1))]
        header_size = 27 + page[26]
        position = data.draw(st.integers(4, min(len(page), header_size + 8) - 1))
        page[position] = data.draw(st.integers(0, 255))
        fix_crc(page)
    if data.draw(st.booleans()):
        del pages[data.draw(st.integers(0, len(pages) - 1))]
    read_or_reject(b"".join(bytes(p) for p in pages))


@given(st.binary(max_size=400))
@FUZZ
def test_fuzz_random_bytes_after_a_capture_pattern(tail: bytes) -> None:
    read_or_reject(b"OggS" + tail)
    read_or_reject(tail)


def test_a_file_made_by_the_ffmpeg_program_reads_as_its_demuxer_reads_it(tmp_path: Path) -> None:
    # another encoder and muxer than the other tests' (the ffmpeg command line, libopus inside
    # it, 60 ms frames and VBR): our packets are the ones FFmpeg's own Ogg demuxer returns
    import subprocess

    from discord_voice.audio.ffmpeg import find_ffmpeg

    made = tmp_path / "made-by-ffmpeg.opus"
    command = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"]
    command += ["sine=frequency=330:duration=1.5", "-c:a", "libopus", "-frame_duration", "60"]
    subprocess.run([*command, "-b:a", "48k", str(made)], check=True, timeout=60)
    with av.open(str(made)) as container:
        expected = [bytes(p) for p in container.demux(audio=0) if p.size]
    ours = list(iter_opus_packets(made))
    assert ours == expected
    assert len(ours) in (25, 26)  # 1.5 s of 60 ms packets (+ one for the encoder delay)
    assert ogg.stream_duration(made) == pytest.approx(1.5, abs=0.001)

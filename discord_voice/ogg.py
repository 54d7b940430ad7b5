"""Read Opus packets out of an Ogg Opus file (``.opus``), for passthrough to ``opus_send``.

Pure Python, strict, no libopus and no ffmpeg: RFC 3533 pages (capture pattern, version 0,
CRC-32, lacing, packets continued across pages, page sequence) and RFC 7845 headers
(OpusHead alone on the first page, OpusTags ending its page). Every malformation raises
`InvalidPacket`; I/O errors (a missing file, a failing disk) propagate as `OSError`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from .errors import InvalidPacket

__all__ = [
    "BinaryReader",
    "OpusHead",
    "Source",
    "iter_opus_packets",
    "ogg_crc32",
    "parse_opus_head",
    "read_opus_head",
    "stream_duration",
]

#: Audio packets larger than this are rejected (a real Opus packet is at most ~61 KB).
MAX_PACKET_BYTES = 1 << 20

_CAPTURE = b"OggS"
_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, nsegs
_CONTINUED, _BOS, _EOS = 0x01, 0x02, 0x04
_TAGS_KEPT = 8  # of the comment header only the magic is needed


def _crc_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        value = index << 24
        for _ in range(8):
            value = (value << 1) ^ 0x04C11DB7 if value & 0x80000000 else value << 1
        table.append(value & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def ogg_crc32(data: bytes, crc: int = 0) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, init 0, not reflected, no final xor."""
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


@dataclass(frozen=True)
class OpusHead:
    """The Opus identification header (RFC 7845 §5.1)."""

    version: int
    channels: int
    pre_skip: int
    #: The sample rate of the original input, for information only (0: unknown).
    input_sample_rate: int
    #: Gain to apply when decoding, in Q7.8 dB.
    output_gain: int
    mapping_family: int


def parse_opus_head(packet: bytes) -> OpusHead:
    """Parse and check an ``OpusHead`` packet."""
    if not packet.startswith(b"OpusHead"):
        raise InvalidPacket("first packet of the stream is not an OpusHead header", packet)
    if len(packet) < 19:
        raise InvalidPacket(f"OpusHead is {len(packet)} bytes, at least 19 needed", packet)
    version, channels, pre_skip, rate, gain, family = struct.unpack_from("<BBHIhB", packet, 8)
    if version >> 4:
        raise InvalidPacket(f"unsupported Ogg Opus major version (version byte {version})", packet)
    if channels == 0:
        raise InvalidPacket("OpusHead says 0 channels", packet)
    if family == 0 and channels > 2:
        raise InvalidPacket(f"mapping family 0 allows 1 or 2 channels, got {channels}", packet)
    if family != 0 and len(packet) < 21 + channels:
        raise InvalidPacket(f"OpusHead channel mapping table is cut short ({len(packet)} bytes)")
    return OpusHead(version, channels, pre_skip, rate, gain, family)


class BinaryReader(Protocol):
    """Anything with a binary ``read(size)``, such as ``open(path, "rb")`` or ``io.BytesIO``."""

    def read(self, size: int, /) -> bytes: ...


#: A path, or a binary file object positioned at the first page.
Source = str | os.PathLike[str] | BinaryReader


@dataclass(frozen=True)
class _Page:
    offset: int
    flags: int
    serial: int
    sequence: int
    lacing: bytes
    body: bytes


def _read(stream: BinaryReader, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of the file."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = stream.read(size)
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError("the Ogg source must be a file opened in binary mode")
        if not chunk:
            break
        chunks.append(bytes(chunk))
        size -= len(chunk)
    return b"".join(chunks)


def _pages(stream: BinaryReader) -> Iterator[_Page]:
    """Every page of the file, checked (capture pattern, version, flags, length, CRC)."""
    offset = 0
    while True:
        header = _read(stream, _HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise InvalidPacket(f"file ends inside the page header at offset {offset}", header)
        capture, version, flags, _granule, serial, sequence, crc, count = _HEADER.unpack(header)
        if capture != _CAPTURE:
            raise InvalidPacket(f"no OggS capture pattern at offset {offset}", header)
        if version != 0:
            raise InvalidPacket(f"Ogg page version {version} at offset {offset}, expected 0")
        if flags & ~(_CONTINUED | _BOS | _EOS):
            raise InvalidPacket(f"unknown Ogg page flags {flags:#04x} at offset {offset}")
        lacing = _read(stream, count)
        body = _read(stream, sum(lacing))
        if len(lacing) < count or len(body) < sum(lacing):
            raise InvalidPacket(f"file ends inside the page at offset {offset}", header)
        checked = ogg_crc32(header[:22] + b"\0\0\0\0" + header[26:] + lacing + body)
        if checked != crc:
            raise InvalidPacket(
                f"bad page CRC at offset {offset}: stored {crc:#010x}, computed {checked:#010x}"
            )
        yield _Page(offset, flags, serial, sequence, lacing, body)
        offset += len(header) + count + len(body)


def _stream_packets(stream: BinaryReader) -> Generator[bytes, None, None]:
    """All packets of the first Opus logical stream: OpusHead, OpusTags (cut short), audio."""
    serial: int | None = None
    first = True
    expected_sequence = 0
    pending: list[bytes] | None = None  # a packet that continues on the stream's next page
    pending_size = 0
    index = 0  # packets completed so far
    for page in _pages(stream):
        where = f"page at offset {page.offset}"
        if first and not page.flags & _BOS:
            raise InvalidPacket("the first page does not begin a logical stream")
        first = False
        if serial is None:
            if not page.flags & _BOS:
                raise InvalidPacket("no Opus stream among the streams in this file")
            if not page.body.startswith(b"OpusHead"):
                continue  # some other codec's stream
            serial, expected_sequence = page.serial, page.sequence
            if _packet_count(page) != 1 or page.lacing[-1] == 255:
                raise InvalidPacket(f"OpusHead is not alone and complete on its {where}")
        elif page.serial != serial:
            continue
        elif page.flags & _BOS:
            raise InvalidPacket(f"second beginning-of-stream flag for the Opus stream at {where}")
        if page.sequence != expected_sequence:
            raise InvalidPacket(
                f"page sequence jumps from {expected_sequence - 1} to {page.sequence} at {where}"
            )
        expected_sequence = (page.sequence + 1) & 0xFFFFFFFF
        if page.lacing and bool(page.flags & _CONTINUED) != (pending is not None):
            state = "set" if pending is None else "missing"
            raise InvalidPacket(f"continued-packet flag {state} at {where}")
        position = 0
        for segment_index, lace in enumerate(page.lacing):
            segment = page.body[position : position + lace]
            position += lace
            if pending is None:
                pending, pending_size = [], 0
            pending_size += lace
            if index != 1:
                pending.append(segment)
            elif pending_size - lace < _TAGS_KEPT:
                pending.append(segment[:_TAGS_KEPT])
            if index >= 2 and pending_size > MAX_PACKET_BYTES:
                raise InvalidPacket(f"packet longer than {MAX_PACKET_BYTES} bytes at {where}")
            if lace == 255:
                continue
            packet, pending = b"".join(pending), None
            last_on_page = segment_index == len(page.lacing) - 1
            if index == 1:
                if not packet.startswith(b"OpusTags"):
                    raise InvalidPacket("second packet of the stream is not OpusTags", packet)
                if not last_on_page:
                    raise InvalidPacket(f"audio shares the OpusTags header's {where}")
            index += 1
            yield packet
        if page.flags & _EOS:
            if pending is not None:
                raise InvalidPacket(f"stream ends inside a packet at {where}")
            if index < 2:
                raise InvalidPacket(f"stream ends before its headers are complete at {where}")
            return
    if serial is None:
        raise InvalidPacket("no Ogg Opus stream in this file (it is empty or has no OpusHead)")
    raise InvalidPacket("file ends before the end-of-stream page (is it truncated?)")


def _packet_count(page: _Page) -> int:
    """How many packets end on the page (0 if its only packet continues on the next page)."""
    return sum(1 for lace in page.lacing if lace < 255)


def _open(source: Source) -> tuple[BinaryReader, IO[bytes] | None]:
    """The reader, and the file to close afterwards if we opened it."""
    if isinstance(source, str | os.PathLike):
        file = open(source, "rb")  # noqa: SIM115 - closed by the caller
        return file, file
    return source, None


def iter_opus_packets(source: Source) -> Generator[bytes, None, None]:
    """Yield the Opus audio packets of the first Opus stream of an Ogg file, in order.

    ``source`` is a path or a binary file object. The OpusHead and OpusTags headers are checked
    and skipped; reading stops at the stream's end-of-stream page. Packets are exactly the bytes
    stored in the file (20 ms each for files made for Discord). A path is closed when the
    iterator finishes or is closed.
    """
    stream, owned = _open(source)
    try:
        for index, packet in enumerate(_stream_packets(stream)):
            if index == 0:
                parse_opus_head(packet)
            elif index >= 2:
                if not packet:
                    raise InvalidPacket(f"audio packet {index - 2} is empty")
                yield packet
    finally:
        if owned is not None:
            owned.close()


def read_opus_head(source: Source) -> OpusHead:
    """Read and parse the OpusHead of the first Opus stream (channels, pre-skip, sample rate)."""
    stream, owned = _open(source)
    packets = _stream_packets(stream)
    try:
        for packet in packets:
            return parse_opus_head(packet)
        raise InvalidPacket("no OpusHead found")  # unreachable: _stream_packets raises first
    finally:
        packets.close()
        if owned is not None:
            owned.close()


_TAIL_BYTES = 1 << 16  # the last page of an Opus stream is well within this


def stream_duration(path: str | os.PathLike[str]) -> float | None:
    """Seconds of audio in an Ogg Opus file, from its last complete page's granule position
    minus the pre-skip (RFC 7845 §4); None if no complete page of the stream is found at the
    end (a truncated file gives the duration of what is left, or None).

    Reads the first page and the last 64 KiB only, so it is cheap on a long file; the packets
    are not checked here (`iter_opus_packets` does that while playing).
    """
    with open(path, "rb") as file:
        head = read_opus_head(file)
        file.seek(0)
        first = file.read(_HEADER.size)
        serial = _HEADER.unpack(first)[4]
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - _TAIL_BYTES))
        tail = file.read()
    position = len(tail)
    while (position := tail.rfind(_CAPTURE, 0, position)) >= 0:
        header = tail[position : position + _HEADER.size]
        if len(header) < _HEADER.size:
            continue
        _, version, _, granule, page_serial, _, crc, count = _HEADER.unpack(header)
        lacing = tail[position + _HEADER.size : position + _HEADER.size + count]
        end = position + _HEADER.size + count + sum(lacing)
        if len(lacing) < count or end > len(tail):
            continue  # cut short: not a complete page
        page = tail[position:end]
        if ogg_crc32(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            continue  # not a page (the capture pattern inside some packet), or damaged
        if version == 0 and page_serial == serial and granule >= 0:
            return max(0, int(granule) - head.pre_skip) / 48000
    return None

"""Writes Ogg Opus files from raw Opus packets with PyAV (FFmpeg's Ogg muxer), and the bundled
asset ``discord_voice/assets/tone-440hz-5s.opus``.

Regenerate the asset from the repository root with ``python -m tests.make_assets``.
FFmpeg's muxer is an implementation independent of ``discord_voice.ogg``, so the tests use it to
produce the files our reader must read back byte-identically.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av

ASSET = Path(__file__).resolve().parent.parent / "discord_voice" / "assets" / "tone-440hz-5s.opus"


def opus_head(channels: int = 2, pre_skip: int = 312, input_sample_rate: int = 48000) -> bytes:
    """A 19-byte OpusHead (RFC 7845 §5.1, version 1, mapping family 0)."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_sample_rate, 0, 0)


def write_ogg_opus(
    path: str | Path,
    streams: Sequence[Iterable[bytes]],
    *,
    channels: int = 2,
    pre_skip: int = 312,
    frame_samples: int = 960,
) -> None:
    """Mux each sequence of raw Opus packets as one logical Opus stream, without re-encoding."""
    time_base = Fraction(1, 48000)
    # bitexact: fixed stream serials and vendor string, so the same packets give the same file
    options = {"fflags": "+bitexact"}
    with av.open(str(path), "w", format="ogg", container_options=options) as container:
        outs = []
        for _ in streams:
            stream = container.add_stream("libopus", rate=48000)
            stream.codec_context.layout = "stereo" if channels == 2 else "mono"
            stream.codec_context.extradata = opus_head(channels, pre_skip)
            stream.time_base = time_base
            outs.append(stream)
        iterators = [iter(packets) for packets in streams]
        index = 0
        while iterators:
            for stream, packets in list(zip(outs, iterators, strict=True)):
                data = next(packets, None)
                if data is None:
                    iterators.remove(packets)
                    outs.remove(stream)
                    continue
                packet = av.Packet(data)
                packet.pts = packet.dts = index * frame_samples
                packet.duration = frame_samples
                packet.time_base = time_base
                packet.stream = stream
                container.mux(packet)
            index += 1


def make_tone_asset(path: Path = ASSET) -> list[bytes]:
    """Encode 5 s of a 440 Hz tone at 64 kbit/s with our Encoder and write it to ``path``."""
    from discord_voice.opus import Encoder, encode_frames, tone

    encoder = Encoder(bitrate=64000)
    packets = list(encode_frames(tone(440.0, seconds=5.0), encoder))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_ogg_opus(path, [packets], pre_skip=encoder.lookahead)
    return packets


if __name__ == "__main__":
    written = make_tone_asset()
    print(f"wrote {ASSET} ({ASSET.stat().st_size} bytes, {len(written)} packets)")

"""Which source plays a path or URL best: passthrough when it is already Opus, else FFmpeg."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from discord_voice.audio.ffmpeg import FFmpegOpusSource, FFmpegSource, Options
from discord_voice.audio.ogg_source import OggOpusSource
from discord_voice.audio.source import Source
from discord_voice.audio.wave_source import WaveSource
from discord_voice.opus import Encoder

__all__ = ["Probe", "ProbeKind", "open_source", "probe"]

_SNIFF_BYTES = 64


class ProbeKind(enum.Enum):
    OGG_OPUS = "ogg_opus"  # an Ogg file whose first stream is Opus: passthrough
    WAVE = "wave"  # a RIFF/WAVE file
    OPUS_URL = "opus_url"  # a URL ending in .opus: FFmpeg remuxes it without decoding
    OTHER = "other"  # anything else: FFmpeg decodes, libopus encodes


@dataclass(frozen=True)
class Probe:
    """What `probe` found, and whether playing it needs libopus (re-encoding)."""

    kind: ProbeKind
    target: str

    @property
    def passthrough(self) -> bool:
        return self.kind in (ProbeKind.OGG_OPUS, ProbeKind.OPUS_URL)


def _is_url(target: str) -> bool:
    parts = urlsplit(target)
    return bool(parts.scheme) and len(parts.scheme) > 1 and (bool(parts.netloc) or ":" in target)


def probe(path_or_url: str | os.PathLike[str]) -> Probe:
    """Look at a file's first bytes (or a URL's path): Ogg Opus, WAV, an .opus URL, or other.

    Raises `FileNotFoundError` (and other `OSError`) for a local file that cannot be read.
    """
    target = os.fspath(path_or_url)
    if _is_url(target):
        kind = ProbeKind.OPUS_URL if urlsplit(target).path.endswith(".opus") else ProbeKind.OTHER
        return Probe(kind, target)
    with open(target, "rb") as file:
        head = file.read(_SNIFF_BYTES)
    if head.startswith(b"OggS") and len(head) > 27:
        body = 27 + head[26]  # the first page's body follows its lacing values
        if head[body : body + 8] == b"OpusHead":
            return Probe(ProbeKind.OGG_OPUS, target)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return Probe(ProbeKind.WAVE, target)
    return Probe(ProbeKind.OTHER, target)


def open_source(
    path_or_url: str | os.PathLike[str],
    *,
    encoder: Encoder | None = None,
    before_options: Options = None,
    options: Options = None,
) -> Source:
    """The best source for a path or URL: Ogg Opus files pass through (no libopus, no
    subprocess), .opus URLs are remuxed by FFmpeg without decoding, WAV files in Discord's
    format are read directly, and everything else is decoded by FFmpeg and encoded with libopus.
    FFmpeg options force the FFmpeg path (they may filter the audio)."""
    found = probe(path_or_url)
    if before_options is None and options is None:
        if found.kind is ProbeKind.OGG_OPUS:
            return OggOpusSource(found.target)
        if found.kind is ProbeKind.OPUS_URL:
            return FFmpegOpusSource(found.target)
        if found.kind is ProbeKind.WAVE:
            return WaveSource(found.target, encoder=encoder)
    return FFmpegSource(
        found.target, before_options=before_options, options=options, encoder=encoder
    )

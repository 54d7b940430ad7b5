"""Playing audio: sources (files, URLs, PCM, Ogg Opus) and the `Player` that feeds
``opus_send``. Nothing in the core depends on it."""

from discord_voice.audio.ffmpeg import FFmpegOpusSource, FFmpegSource, find_ffmpeg
from discord_voice.audio.listen import Listener, ListenStats, Sink
from discord_voice.audio.mixer import MixerStats
from discord_voice.audio.ogg_source import OggOpusSource
from discord_voice.audio.player import Player, PlayerState
from discord_voice.audio.probe import Probe, ProbeKind, open_source, probe
from discord_voice.audio.sinks import MixSink, MultiSink, WaveSink
from discord_voice.audio.source import OpusPacketSource, OpusSource, PCMSource, Source
from discord_voice.audio.wave_source import WaveSource

__all__ = [
    "FFmpegOpusSource",
    "FFmpegSource",
    "ListenStats",
    "Listener",
    "MixSink",
    "MixerStats",
    "MultiSink",
    "OggOpusSource",
    "OpusPacketSource",
    "OpusSource",
    "PCMSource",
    "Player",
    "PlayerState",
    "Probe",
    "ProbeKind",
    "Sink",
    "Source",
    "WaveSink",
    "WaveSource",
    "find_ffmpeg",
    "open_source",
    "probe",
]

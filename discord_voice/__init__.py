"""discord_voice: synchronous, threaded Discord voice, after arikawa's voice package.

gw = discord_voice.Gateway(token)
gw.connect()
voice = discord_voice.Voice(gw)
conn = voice.join_channel(guild_id, channel_id)
conn.speaking(discord_voice.SpeakingFlag.MICROPHONE)
conn.opus_send.put(opus_frame)        # one 20 ms Opus packet (bytes)
conn.stop_speaking()
conn.play(discord_voice.open_source("song.mp3")).wait()   # any file FFmpeg reads
conn.disconnect()
gw.close()
"""

from discord_voice._shell.identify_limiter import IdentifyLimiter
from discord_voice._shell.rest import fetch_gateway_bot
from discord_voice._version import __version__
from discord_voice.audio import (
    FFmpegOpusSource,
    FFmpegSource,
    Listener,
    ListenStats,
    MixerStats,
    MixSink,
    MultiSink,
    OggOpusSource,
    OpusPacketSource,
    OpusSource,
    PCMSource,
    Player,
    PlayerState,
    Probe,
    ProbeKind,
    Sink,
    Source,
    WaveSink,
    WaveSource,
    open_source,
    probe,
)
from discord_voice.clock import Clock, Signal, SystemClock
from discord_voice.connection import (
    Connection,
    ConnectionState,
    ConnectionStats,
    default_voice_plan,
)
from discord_voice.core.frames import MAX_OPUS_PACKET_SIZE, OPUS_SILENCE_FRAME
from discord_voice.core.gateway_bot import GatewayBot
from discord_voice.core.opcodes import Intents, SpeakingFlag
from discord_voice.core.receive_flow import VoicePacket
from discord_voice.core.reconnect import (
    Action,
    Attempt,
    AttemptKind,
    ClosePolicy,
    ReconnectPlan,
    RetryBudget,
)
from discord_voice.core.sharding import SessionStartLimit, Shard, shard_for
from discord_voice.errors import (
    AlreadyPlaying,
    ApiError,
    AudioError,
    ConnectionClosed,
    DaveRequired,
    Disconnected,
    EncryptionError,
    FFmpegFailed,
    FFmpegNotFound,
    GatewayClosed,
    GatewayTimeout,
    HeartbeatTimeout,
    InvalidFrame,
    InvalidPacket,
    JoinError,
    JoinTimeout,
    LocalProtocolError,
    MainGatewayClosed,
    OpusError,
    OpusNotAvailable,
    ProtocolError,
    RemoteProtocolError,
    ShutdownTimeout,
    UnsupportedEncryptionMode,
    VoiceError,
    VoiceGatewayClosed,
    WrongShard,
)
from discord_voice.gateway import Gateway
from discord_voice.main_gateway import MainGateway, ShardedGateway, VoiceEventHandler
from discord_voice.shard_group import ShardGroup
from discord_voice.voice import Voice

__all__ = [
    "Action",
    "Attempt",
    "AttemptKind",
    "ClosePolicy",
    "ReconnectPlan",
    "RetryBudget",
    "default_voice_plan",
    "AlreadyPlaying",
    "AudioError",
    "FFmpegFailed",
    "FFmpegNotFound",
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
    "open_source",
    "probe",
    "VoicePacket",
    "MAX_OPUS_PACKET_SIZE",
    "OPUS_SILENCE_FRAME",
    "Clock",
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "ConnectionStats",
    "DaveRequired",
    "EncryptionError",
    "Gateway",
    "IdentifyLimiter",
    "ApiError",
    "GatewayBot",
    "ShardGroup",
    "fetch_gateway_bot",
    "SessionStartLimit",
    "Shard",
    "ShardedGateway",
    "WrongShard",
    "shard_for",
    "GatewayClosed",
    "GatewayTimeout",
    "Disconnected",
    "HeartbeatTimeout",
    "Intents",
    "InvalidFrame",
    "InvalidPacket",
    "JoinError",
    "JoinTimeout",
    "LocalProtocolError",
    "MainGateway",
    "MainGatewayClosed",
    "OpusError",
    "OpusNotAvailable",
    "ProtocolError",
    "RemoteProtocolError",
    "ShutdownTimeout",
    "Signal",
    "SpeakingFlag",
    "SystemClock",
    "UnsupportedEncryptionMode",
    "Voice",
    "VoiceError",
    "VoiceEventHandler",
    "VoiceGatewayClosed",
    "__version__",
]

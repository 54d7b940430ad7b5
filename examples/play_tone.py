"""Encode a tone with libopus (through opuslib) and play it on real Discord.

    DISCORD_TOKEN=... python examples/play_tone.py GUILD_ID CHANNEL_ID [SECONDS]

Needs a libopus: `apt-get install libopus0`, `brew install opus`, or
`pip install "discord-voice[libopus]"`; without one, discord_voice.opus raises OpusNotAvailable
explaining exactly that.
"""

from __future__ import annotations

import os
import sys

import discord_voice as dv
from discord_voice import opus


def main() -> None:
    guild_id, channel_id = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    encoder = opus.Encoder(bitrate=64000)
    with dv.Gateway(os.environ["DISCORD_TOKEN"]) as gw:
        gw.connect()
        with dv.Voice(gw) as voice, voice.join_channel(guild_id, channel_id) as conn:
            conn.speaking(dv.SpeakingFlag.MICROPHONE)
            for frame in opus.encode_frames(opus.tone(440.0, seconds), encoder):
                conn.opus_send.put(frame)
            conn.stop_speaking()
            print(
                f"sent {conn.stats.frames_sent} frames, {conn.stats.late_frames} late, "
                f"heartbeat latency {conn.latency}"
            )


if __name__ == "__main__":
    main()

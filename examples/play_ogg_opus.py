"""Play an Ogg Opus file in a voice channel on real Discord (no libopus, no ffmpeg needed).

    DISCORD_TOKEN=... python examples/play_ogg_opus.py GUILD_ID CHANNEL_ID music.opus

The bot needs the GUILD_VOICE_STATES intent (not privileged) and the Connect and Speak
permissions in the channel. Make a file with: ffmpeg -i song.mp3 -c:a libopus -b:a 96k song.opus
(20 ms frames are ffmpeg's default for libopus).
"""

from __future__ import annotations

import os
import sys

import discord_voice as dv
from discord_voice.ogg import iter_opus_packets


def main() -> None:
    guild_id, channel_id, path = sys.argv[1], sys.argv[2], sys.argv[3]
    with dv.Gateway(os.environ["DISCORD_TOKEN"]) as gw:
        gw.connect(timeout=30)
        voice = dv.Voice(gw)
        conn = voice.join_channel(guild_id, channel_id, timeout=10)
        try:
            conn.speaking(dv.SpeakingFlag.MICROPHONE)
            for packet in iter_opus_packets(path):
                conn.opus_send.put(packet)  # blocks while the queue is full: paced by the sender
            conn.stop_speaking()
        finally:
            conn.disconnect()


if __name__ == "__main__":
    main()

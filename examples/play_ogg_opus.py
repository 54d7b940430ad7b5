"""Play an Ogg Opus file as it is: its packets go straight to Discord (no libopus, no FFmpeg).

    DISCORD_TOKEN=... python examples/play_ogg_opus.py FILE GUILD_ID CHANNEL_ID
    python examples/play_ogg_opus.py [FILE]  # no token: offline, against a local fake Discord

Offline without FILE it plays the 5 s tone bundled with the package. Make a file with
``ffmpeg -i song.mp3 -c:a libopus -b:a 96k song.opus`` (20 ms frames are FFmpeg's default).
The bot needs the Connect and Speak permissions in the channel.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
from pathlib import Path

import discord_voice as dv
from discord_voice.offline import OFFLINE_CHANNEL_ID, OFFLINE_GUILD_ID, discord_or_fake

#: A 5 s 440 Hz tone shipped inside the package (``discord_voice/assets``).
BUNDLED_TONE = importlib.resources.files("discord_voice") / "assets" / "tone-440hz-5s.opus"


def play(path: Path, token: str | None, guild_id: str | int, channel_id: str | int) -> int:
    source = dv.OggOpusSource(path)  # opens the file now; its duration comes from the last page
    with (
        source,
        discord_or_fake(token) as session,
        dv.Voice(session.gateway) as voice,
        voice.join_channel(guild_id, channel_id) as conn,  # leaving the `with` disconnects
    ):
        length = "?" if source.duration is None else f"{source.duration:.2f}"
        print(f"playing {path.name} ({length} s of Opus, passed through)")
        player = conn.play(source)
        try:
            player.wait()  # raises the player's error (InvalidPacket for a damaged file)
        except KeyboardInterrupt:
            player.stop()  # silence and Speaking off are still sent
            player.wait(10.0)
            return 130
        print(f"sent {conn.stats.frames_sent} packets, {conn.stats.late_frames} late")
        if session.fake is not None:  # offline: what the fake Discord received
            session.fake.wait_for_frames(conn.stats.frames_sent, 10.0, ssrc=conn.ssrc)
            print(session.received_summary(conn.ssrc))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Play an Ogg Opus file without re-encoding.")
    parser.add_argument("file", nargs="?", help="an Ogg Opus file (offline: the bundled tone)")
    parser.add_argument("guild_id", nargs="?", help="required with DISCORD_TOKEN")
    parser.add_argument("channel_id", nargs="?", help="required with DISCORD_TOKEN")
    args = parser.parse_args(argv)
    token = os.environ.get("DISCORD_TOKEN")
    if token and not (args.file and args.guild_id and args.channel_id):
        parser.error("with DISCORD_TOKEN set, give FILE, GUILD_ID and CHANNEL_ID")
    guild_id = args.guild_id or OFFLINE_GUILD_ID
    channel_id = args.channel_id or OFFLINE_CHANNEL_ID
    if args.file:
        return play(Path(args.file), token, guild_id, channel_id)
    with importlib.resources.as_file(BUNDLED_TONE) as path:  # a real file even from a zip
        return play(path, token, guild_id, channel_id)


if __name__ == "__main__":
    raise SystemExit(main())

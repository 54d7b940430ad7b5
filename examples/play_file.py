"""Play an audio file (MP3, FLAC, WAV, Ogg, a URL...) in a voice channel, printing progress.

    DISCORD_TOKEN=... python examples/play_file.py FILE GUILD_ID CHANNEL_ID
    python examples/play_file.py FILE        # no token: offline, against a local fake Discord

`dv.open_source` picks the cheapest way to play the file: Ogg Opus passes through as it is, a
WAV in Discord's format (48 kHz stereo 16-bit) is read directly, anything else is decoded by
FFmpeg (on PATH, or ``pip install "discord-voice[ffmpeg]"``) and encoded with libopus.
Ctrl-C stops the player cleanly: silence and Speaking off are sent, FFmpeg is reaped.
"""

from __future__ import annotations

import argparse
import os
import sys

import discord_voice as dv
from discord_voice.offline import OFFLINE_CHANNEL_ID, OFFLINE_GUILD_ID, discord_or_fake


def progress(player: dv.Player) -> str:
    """``12.3 s / 180.0 s`` (the duration when the source knows it)."""
    duration = player.duration
    total = f" / {duration:.1f} s" if duration is not None else ""
    return f"{player.position:.1f} s{total}"


def play(conn: dv.Connection, source: dv.Source) -> int:
    """Play `source` to its end, printing the position every second; Ctrl-C stops it."""
    player = conn.play(source)
    try:
        while not player.wait(1.0):  # False while playing; raises the player's error, if any
            print(f"  {progress(player)}", flush=True)
    except KeyboardInterrupt:
        player.stop()  # the queued audio is dropped, silence and Speaking off are sent
        player.wait(10.0)
        print(f"stopped at {progress(player)}")
        return 130
    except dv.VoiceError as exc:  # FFmpegFailed (with FFmpeg's last lines), ConnectionClosed...
        print(f"playing failed: {exc}", file=sys.stderr)
        return 1
    print(f"done: {progress(player)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Play an audio file in a voice channel.")
    parser.add_argument("file", help="a path or URL FFmpeg can read")
    parser.add_argument("guild_id", nargs="?", help="required with DISCORD_TOKEN")
    parser.add_argument("channel_id", nargs="?", help="required with DISCORD_TOKEN")
    args = parser.parse_args(argv)
    token = os.environ.get("DISCORD_TOKEN")
    if token and not (args.guild_id and args.channel_id):
        parser.error("with DISCORD_TOKEN set, give GUILD_ID and CHANNEL_ID")

    guild_id, channel_id = args.guild_id or OFFLINE_GUILD_ID, args.channel_id or OFFLINE_CHANNEL_ID
    # the source is ours until it is played: the `with` closes it if joining fails (closing it
    # twice is harmless: the player closes it at the end too)
    with (
        dv.open_source(args.file) as source,
        discord_or_fake(token) as session,
        dv.Voice(session.gateway) as voice,
        voice.join_channel(guild_id, channel_id) as conn,  # leaving the `with` disconnects
    ):
        print(f"playing {args.file} with {source!r}", flush=True)
        status = play(conn, source)
        if session.fake is not None:  # offline: what the fake Discord received
            session.fake.wait_for_frames(conn.stats.frames_sent, 10.0, ssrc=conn.ssrc)
            print(session.received_summary(conn.ssrc))
    return status


if __name__ == "__main__":
    raise SystemExit(main())

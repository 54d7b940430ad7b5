"""Record what everyone says in a voice channel: one WAV file per speaker, and the mix.

    DISCORD_TOKEN=... python examples/record_channel.py DIR GUILD_ID CHANNEL_ID [--seconds N]
    python examples/record_channel.py [DIR]  # no token: offline, a fake member speaks a tone

Joins with ``receive=True`` and listens into a `dv.WaveSink` (``DIR/<user_id>.wav`` per member,
48 kHz stereo, from their first packet, pauses as silence) and a `dv.MixSink` (``DIR/mix.wav``,
everyone mixed on one timeline), both through a `dv.MultiSink`. The bot needs the GUILD_VOICE_STATES
intent and the Connect permission; it must not be deafened.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading

import discord_voice as dv
from discord_voice.offline import OFFLINE_CHANNEL_ID, OFFLINE_GUILD_ID, discord_or_fake
from discord_voice.opus import encode_frames, tone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", default=None)
    parser.add_argument("ids", nargs="*", help="GUILD_ID CHANNEL_ID (with a token)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    token = os.environ.get("DISCORD_TOKEN")
    if token and len(args.ids) != 2:
        parser.error("with DISCORD_TOKEN, give DIR GUILD_ID CHANNEL_ID")
    guild, channel = args.ids if token else (OFFLINE_GUILD_ID, OFFLINE_CHANNEL_ID)
    directory = args.directory or tempfile.mkdtemp(prefix="recording-")
    waves = dv.WaveSink(directory)
    mixed = dv.MixSink(waves.directory / "mix.wav")
    sink = dv.MultiSink(waves, mixed)
    with discord_or_fake(token) as session, dv.Voice(session.gateway) as voice:
        conn = voice.join_channel(guild, channel, receive=True, timeout=20)
        conn.wait_for_e2ee(20)
        conn.listen(sink)
        seconds = args.seconds
        if session.fake is not None:  # offline: someone to record, a 1 s tone
            speaker = session.fake.add_speaker()
            conn.wait_for_e2ee(20)  # a new member: a new epoch
            speaker.send(list(encode_frames(tone(440.0, 1.0))))
            seconds = min(seconds, 1.0)
        threading.Event().wait(seconds)  # record for that long
        conn.stop_listening()  # decodes what was received and finishes the files
        conn.disconnect()
    for user, path in waves.paths().items():
        print(f"recorded {user} in {path}")
    print(f"mixed everyone in {mixed.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

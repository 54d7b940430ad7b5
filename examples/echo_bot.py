"""Echo: when a member stops speaking, play back what they said.

    DISCORD_TOKEN=... python examples/echo_bot.py GUILD_ID CHANNEL_ID [--seconds N]
    python examples/echo_bot.py  # no token: offline, a fake member speaks and is echoed

Joins with ``receive=True``, keeps each member's Opus packets from ``conn.opus_recv`` while they
speak, and when the speaking listener says they stopped, plays those packets back as they are
(`dv.OpusPacketSource`: no decoding, no re-encoding). Speaking listeners run on the library's
receive thread and must not block, so this one only hands the user id to the main thread.
"""

from __future__ import annotations

import argparse
import os
import queue
import time

import discord_voice as dv
from discord_voice.offline import OFFLINE_CHANNEL_ID, OFFLINE_GUILD_ID, discord_or_fake
from discord_voice.opus import encode_frames, tone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="GUILD_ID CHANNEL_ID (with a token)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run")
    args = parser.parse_args(argv)
    token = os.environ.get("DISCORD_TOKEN")
    if token and len(args.ids) != 2:
        parser.error("with DISCORD_TOKEN, give GUILD_ID CHANNEL_ID")
    guild, channel = args.ids if token else (OFFLINE_GUILD_ID, OFFLINE_CHANNEL_ID)
    with discord_or_fake(token) as session, dv.Voice(session.gateway) as voice:
        conn = voice.join_channel(guild, channel, receive=True, timeout=20)
        conn.wait_for_e2ee(20)
        stopped: queue.Queue[int] = queue.Queue()
        conn.add_speaking_listener(lambda user, speaking: None if speaking else stopped.put(user))
        said: dict[int, list[bytes]] = {}
        if session.fake is not None:  # offline: a member says something (a 0.5 s tone)
            speaker = session.fake.add_speaker()
            conn.wait_for_e2ee(20)
            speaker.send(list(encode_frames(tone(330.0, 0.5))))
        echoes = 0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and not (session.fake is not None and echoes):
            try:
                packet = conn.opus_recv.get(timeout=0.1)
                said.setdefault(packet.user_id, []).append(packet.opus)
            except queue.Empty:
                pass
            while not stopped.empty():
                words = said.pop(stopped.get(), [])
                if words:
                    conn.play(dv.OpusPacketSource(words)).wait()
                    echoes += 1
        print(f"echoed {echoes} time(s)")
        if session.fake is not None:
            session.fake.wait_for_frames(conn.stats.frames_sent, 10, ssrc=conn.ssrc)
            print(session.received_summary(conn.ssrc))
        conn.disconnect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

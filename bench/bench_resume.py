"""Resume and reconnect figures: frames lost and the longest gap at the receiver.

One connection streams real Opus frames in real time (DAVE on, a libdave listener decrypting);
mid-stream the fake closes the voice websocket with 4015 (voice server crashed) or drops the TCP
connection (the library resumes on a new socket while UDP audio goes on), closes it with 4006
(a full reconnect: fresh op 4, new session, SSRC, key and DAVE group; frames are held meanwhile)
or moves the bot to another voice server. Reported: frames lost or altered (over every SSRC, in
order), and the longest inter-arrival gap at the receiver (kernel timestamps).

Run: ``python -m bench.bench_resume``.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from bench.bench_send import asset_frames
from discord_voice import OPUS_SILENCE_FRAME, Gateway, Voice
from discord_voice.testing import FakeDiscord

GUILD, CHANNEL = 41771983423143937, 127121515262115840


def run(fault: str, frames: list[bytes]) -> str:
    with FakeDiscord() as fake:
        gateway = Gateway(fake.token, url=fake.gateway_url)
        gateway.connect(timeout=10)
        voice = Voice(gateway)
        conn = voice.join_channel(GUILD, CHANNEL, timeout=10)
        at = len(frames) * 2 // 5
        for index, frame in enumerate(frames):
            if index == at:
                if fault == "drop":
                    fake.drop_voice()
                elif fault == "move":
                    fake.move_user(new_server=True)
                else:
                    fake.close_voice(int(fault), "injected")
            conn.opus_send.put(frame)  # real-time pacing through the bounded queue
        conn.stop_speaking(timeout=10)
        got = fake.wait_for_frames(len(frames), timeout=10)  # every session, in arrival order
        got = [f for f in got if f.opus != OPUS_SILENCE_FRAME]
        resumes, reconnects = conn.resumes, conn.reconnects
        conn.disconnect()
        gateway.close()
    intact = sum(1 for f, sent in zip(got, frames, strict=False) if f.opus == sent)
    gap = max((b.arrival - a.arrival) * 1000 for a, b in itertools.pairwise(got))
    return (
        f"{fault:>5}: {len(frames)} frames, {len(frames) - intact} lost or altered, "
        f"longest inter-arrival {gap:.1f} ms, resumes {resumes}, reconnects {reconnects}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    frames = asset_frames(args.seconds)
    for fault in ("4015", "drop", "4006", "move"):
        print(run(fault, frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())

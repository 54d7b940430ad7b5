"""DAVE figures: join time with end-to-end encryption, and frames lost across epoch changes.

Against the fake Discord with DAVE on (a libdave listener in the channel): ``--joins`` joins and
leaves measure the join time; then one connection streams real Opus frames in real time while
libdave members join and leave (each an MLS epoch change), and the libdave side decrypts every
frame. A frame counts as lost if it never arrives decrypted; the gap is the longest silence
between two decrypted frames around each transition.

Run: ``python -m bench.bench_dave`` (from the repository root, in the project's .venv).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

from bench.bench_send import asset_frames
from discord_voice import Gateway, Voice
from discord_voice.testing import FakeDiscord

GUILD, CHANNEL = 41771983423143937, 127121515262115840


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    frames = asset_frames(args.seconds)
    with FakeDiscord() as fake:
        gateway = Gateway(fake.token, url=fake.gateway_url)
        gateway.connect(timeout=10)
        voice = Voice(gateway)
        joins = []
        for _ in range(args.joins):
            started = time.perf_counter()
            conn = voice.join_channel(GUILD, CHANNEL, timeout=10)
            joins.append(time.perf_counter() - started)
            assert conn.voice_privacy_code is not None  # the group key is there
            conn.disconnect()
        print(
            f"join with DAVE (libdave member present): p50 {statistics.median(joins) * 1000:.1f}"
            f" ms, max {max(joins) * 1000:.1f} ms over {len(joins)} joins"
        )

        conn = voice.join_channel(GUILD, CHANNEL, timeout=10)
        epochs = [conn.dave_epoch]
        script = {
            len(frames) // 5: "join",
            2 * len(frames) // 5: "join",
            3 * len(frames) // 5: "leave",
            4 * len(frames) // 5: "leave",
        }
        members: list[int] = []
        marks: list[tuple[int, str]] = []
        for index, frame in enumerate(frames):
            action = script.get(index)
            if action == "join":
                members.append(fake.add_member(CHANNEL))
                marks.append((index, "member joins"))
            elif action == "leave":
                fake.remove_member(members.pop())
                marks.append((index, "member leaves"))
            conn.opus_send.put(frame)  # blocks while the queue is full: real-time pacing
            if conn.dave_epoch != epochs[-1]:
                epochs.append(conn.dave_epoch)
        conn.stop_speaking(timeout=10)
        got = fake.wait_for_frames(len(frames), timeout=10, ssrc=conn.ssrc)
        intact = [f for f, sent in zip(got, frames, strict=False) if f.opus == sent]
        print(
            f"streamed {len(frames)} frames over {len(marks)} epoch changes (epochs seen "
            f"{epochs}): {len(frames) - len(intact)} lost or altered, "
            f"{sum(1 for f in got if f.dave == 'decrypted')} decrypted by libdave, "
            f"{len(fake.udp_errors)} udp errors, {len(fake.violations)} violations"
        )
        for index, what in marks:
            window = got[max(0, index - 25) : index + 50]
            gaps = [(b.arrival - a.arrival) * 1000 for a, b in itertools.pairwise(window)]
            print(
                f"  frame {index:4d}: {what:14s} longest inter-arrival around it {max(gaps):.1f} ms"
            )
        conn.disconnect()
        gateway.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

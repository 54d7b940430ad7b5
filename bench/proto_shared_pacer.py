"""Prototype for the proposed design: one pacing thread for every connection of a process.

The library runs one sender thread per connection (arikawa's model). On this 2-core VM every
wake-up of a thread costs 100-300 us of CPU and the woken threads then queue for the GIL, so with
many connections the per-thread model misses the jitter and CPU targets (see bench_send.py). This
prototype measures the alternative with the library's real pieces: it joins N connections through
`Voice`, then drives their real `Packetizer`s and UDP sockets from ONE thread that wakes once per
20 ms tick, sends every connection's prepared packet, and prepares the next ones while warm
(the discord.js / songbird model). The receiver is the same fake Discord in another process.

It reaches into private attributes (``_sender``, ``_udp``): it is a measurement, not an API.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from bench.bench_send import _percentile, asset_frames, receiver_figures, remote_fake
from discord_voice import Voice


def run(count: int, frames: list[bytes]) -> dict[str, float]:
    with remote_fake() as (gateway, pipe):
        voice = Voice(gateway)
        conns = [voice.join_channel(400000000000000000 + i, 500000000000000000 + i, timeout=120)
                 for i in range(count)]
        for conn in conns:
            conn.speaking()
        # the prototype borrows each connection's current session (its socket and packetizer)
        transports = [conn._sender._transport for conn in conns]  # type: ignore[union-attr]
        packetizers = [t.packetizer for t in transports]
        sockets = [t.sock for t in transports]
        prepared = [p.packetize(frames[0]) for p in packetizers]
        cpu_start = time.thread_time()
        origin = math.ceil(time.monotonic() / 0.020) * 0.020 + 0.020
        for n in range(len(frames)):
            delay = origin + n * 0.020 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for sock, packet in zip(sockets, prepared, strict=True):
                sock.send(packet)
            if n + 1 < len(frames):
                prepared = [p.packetize(frames[n + 1]) for p in packetizers]
        cpu = time.thread_time() - cpu_start
        ssrcs = [conn.ssrc for conn in conns if conn.ssrc is not None]
        for conn in conns:
            conn.disconnect()
        pipe.send("frames")
        by_ssrc, digests, _ = pipe.recv()
    deviations, lost, altered = receiver_figures(by_ssrc, digests, ssrcs, frames, len(frames))
    return {"connections": count, "p50": _percentile(deviations, 50),
            "p99": _percentile(deviations, 99), "max": max(deviations, default=0.0),
            "lost": lost, "altered": altered,
            "cpu_us": cpu / (count * len(frames)) * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    frames = asset_frames(args.seconds)
    print(f"{'conns':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'lost':>5} {'altered':>7} "
          f"{'cpu us/pkt':>10}")
    for count in args.counts:
        r = run(count, frames)
        print(f"{r['connections']:>5.0f} {r['p50']:>7.3f} {r['p99']:>7.3f} {r['max']:>7.3f} "
              f"{r['lost']:>5.0f} {r['altered']:>7.0f} {r['cpu_us']:>10.1f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

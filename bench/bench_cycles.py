"""Leak check: many join / stream / leave cycles in one process, threads and fds before and after.

The fake Discord runs in a child process, so every thread and file descriptor counted here is
the library's (or the interpreter's). One warm-up cycle runs first (imports, lazy init).

Run: ``python -m bench.bench_cycles --cycles 100``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from bench.bench_send import asset_frames, remote_fake
from discord_voice import Voice


def counts() -> tuple[int, int]:
    """(live threads, open file descriptors) of this process."""
    return threading.active_count(), len(os.listdir("/proc/self/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()
    frames = asset_frames(0.2)
    with remote_fake() as (gateway, _):
        voice = Voice(gateway)

        def cycle(index: int) -> None:
            conn = voice.join_channel(
                600000000000000000 + index % 7, 700000000000000000, timeout=30
            )
            for frame in frames:
                conn.opus_send.put(frame)
            conn.stop_speaking(timeout=10)
            conn.disconnect()

        cycle(0)
        before = counts()
        started = time.perf_counter()
        peak_threads = 0
        for index in range(1, args.cycles + 1):
            cycle(index)
            peak_threads = max(peak_threads, threading.active_count())
        elapsed = time.perf_counter() - started
        after = counts()
        voice.close()
    print(
        f"{args.cycles} cycles of join + {len(frames)} frames + stop_speaking + leave in "
        f"{elapsed:.1f} s ({elapsed / args.cycles * 1000:.0f} ms each)"
    )
    print(
        f"threads before {before[0]}, after {after[0]} (peak between cycles {peak_threads}); "
        f"fds before {before[1]}, after {after[1]}"
    )
    return 0 if after == before else 1


if __name__ == "__main__":
    sys.exit(main())

"""Sharding figures (issue 12): Identify pacing of many shards, and streams per machine with one
process per shard group.

``pacing``
    ``--shards`` (16) `Gateway` objects of one bot sharing one `IdentifyLimiter`
    (``max_concurrency`` ``--max-concurrency``, default 1) connect to a fake Discord that
    enforces the same limit, on one `FakeClock`: the clock is moved to each next Identify slot
    as soon as the previous shard is READY. Reports the fake time from the first Identify to
    the last READY (Discord's rule: at least 5 s x (shards / max_concurrency - 1)), the real
    time it took, and what the fake said of it (op 9 answers, closes: none expected).

``scale``
    Streams per machine: ``python -m bench.bench_send --counts N`` (issue 5's send benchmark:
    one process, one `Voice`, N connections streaming paced real Opus frames to a fake Discord
    in a child process, DAVE on) run alone, then as two processes at once (two shard groups'
    worth of voice on one machine, each with its own fake Discord process). Reports each
    process's p50 / p99 / max deviation from the 20 ms grid and lost packets, and the scaling
    ratio: streams carried with nothing lost at two processes over one.

Run (repository root, .venv, a quiet machine)::

    python -m bench.bench_shards pacing [--shards 16] [--max-concurrency 1]
    python -m bench.bench_shards scale [--conns 100] [--seconds 10] [--runs 2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from discord_voice import Gateway, IdentifyLimiter
from discord_voice.core.opcodes import GatewayOp

ROW = re.compile(
    r"^\s*(?P<conns>\d+)\s+\S+ms\s+\S+ms\s+(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)\s+(?P<max>[\d.]+)"
    r"\s+(?P<lost>\d+)\s+(?P<altered>\d+)",
    re.MULTILINE,
)


# -- pacing ---------------------------------------------------------------------------------------


def pacing(shards: int, max_concurrency: int) -> None:
    from discord_voice.testing import FakeClock, FakeDiscord

    clock = FakeClock(start=1000.0)
    limiter = IdentifyLimiter(max_concurrency)
    started = time.perf_counter()
    with FakeDiscord(
        dave=False, shards=shards, max_concurrency=max_concurrency, clock=clock
    ) as fake:
        gateways = [
            Gateway(
                fake.token, url=fake.gateway_url, shard=(n, shards), clock=clock,
                identify_limiter=limiter,
            )
            for n in range(shards)
        ]  # fmt: skip
        done = threading.Semaphore(0)
        failures: list[BaseException] = []

        def start(gateway: Gateway) -> None:
            try:
                gateway.connect(timeout=30.0)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)
            done.release()

        threads = [
            threading.Thread(target=start, args=(gw,), name=f"bench-shard-{n}")
            for n, gw in enumerate(gateways)
        ]
        for thread in threads:
            thread.start()
        try:
            rounds = -(-shards // max_concurrency)
            for n in range(rounds):
                if n:
                    clock.wait_for_deadline(1000.0 + 5.0 * n, 30.0)
                    clock.advance(5.0)
                for _ in range(min(max_concurrency, shards - n * max_concurrency)):
                    if not done.acquire(timeout=30.0):
                        raise TimeoutError("a shard did not get READY")
            fake_seconds = clock.monotonic() - 1000.0
            real_seconds = time.perf_counter() - started
            identifies = sum(
                1
                for m in fake.main_messages
                if m.direction == "client" and m.op == GatewayOp.IDENTIFY
            )
            print(
                f"{shards} shards, max_concurrency {max_concurrency}: all READY after "
                f"{fake_seconds:g} s of fake time (Discord's minimum: "
                f"{5.0 * (rounds - 1):g} s), {real_seconds:.2f} s of real time; "
                f"{identifies} Identifies, {len(fake.violations)} refused with op 9 or "
                f"otherwise wrong, {sum(s.closed for s in fake.main_sessions)} closed, "
                f"failures {failures or 'none'}"
            )
        finally:
            for gw in gateways:
                gw.close()
            for thread in threads:
                thread.join(10.0)


# -- scale ----------------------------------------------------------------------------------------


@dataclass
class Row:
    conns: int
    p50: float
    p99: float
    max: float
    lost: int
    altered: int


def bench_send(conns: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_send", "--counts", str(conns), "--seconds",
         str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def result(process: subprocess.Popen[str], seconds: float) -> Row:
    out, err = process.communicate(timeout=120 + 10 * seconds)
    match = ROW.search(out)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"bench_send failed ({process.returncode}):\n{out}\n{err}")
    return Row(
        int(match["conns"]), float(match["p50"]), float(match["p99"]), float(match["max"]),
        int(match["lost"]), int(match["altered"]),
    )  # fmt: skip


def scale(conns: int, seconds: float, runs: int) -> None:
    print(f"streams per machine: bench_send --counts {conns} --seconds {seconds:g}, DAVE on")
    print(f"{'run':>3} {'processes':>9} {'streams':>7}  {'p50 ms':>13} {'p99 ms':>13} "
          f"{'max ms':>13} {'lost':>9}")  # fmt: skip
    ratios = []
    for run in range(1, runs + 1):
        alone = result(bench_send(conns, seconds), seconds)
        pair = [bench_send(conns, seconds) for _ in range(2)]
        both = [result(p, seconds) for p in pair]
        for label, rows in (("1", [alone]), ("2", both)):
            streams = sum(r.conns for r in rows)
            print(
                f"{run:>3} {label:>9} {streams:>7}  "
                f"{' / '.join(f'{r.p50:.3f}' for r in rows):>13} "
                f"{' / '.join(f'{r.p99:.3f}' for r in rows):>13} "
                f"{' / '.join(f'{r.max:.3f}' for r in rows):>13} "
                f"{' / '.join(str(r.lost + r.altered) for r in rows):>9}"
            )
        carried = sum(r.conns for r in both if r.lost == r.altered == 0)
        ratios.append(carried / alone.conns if alone.lost == alone.altered == 0 else 0.0)
        sys.stdout.flush()
    print(f"scaling ratio (streams with nothing lost, 2 processes / 1): {ratios}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("pacing")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--max-concurrency", type=int, default=1)
    s = sub.add_parser("scale")
    s.add_argument("--conns", type=int, default=100)
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if args.part == "pacing":
        pacing(args.shards, args.max_concurrency)
    else:
        scale(args.conns, args.seconds, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

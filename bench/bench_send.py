"""Send-path benchmark: join latency, receiver-side pacing jitter, CPU per packet.

The fake Discord (the receiver) runs in a separate process, so the sender's own threads cannot
distort the arrival times; its UDP server stamps packets with the kernel receive time
(SO_TIMESTAMPNS) and, while streaming, only keeps them (``FakeDiscord.capture_udp``): they are
decrypted (transport and DAVE, by libdave) after the run, so the receiver keeps up with hundreds
of connections. For each connection count N, N connections in this process each stream the same
real Opus frames (the bundled 440 Hz asset), then stop speaking; the report gives:

* join latency (p50 / max) per join, on loopback;
* the deviation of each packet's inter-arrival time from 20 ms (p50 / p99 / max) over all
  connections, and packets lost or altered (payloads compared by digest);
* CPU time per packet of the sender threads (from /proc/self/task/<tid>/schedstat), and of the
  bare packetize + send() path in a tight loop.

Run: ``python3 dev.py bench`` or ``python -m bench.bench_send --counts 1 20 100 --seconds 5``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import multiprocessing
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from importlib import resources
from multiprocessing.connection import Connection as Pipe
from typing import Any

from discord_voice import Gateway, Voice
from discord_voice.core.crypto import choose_mode, make_cipher
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP
from discord_voice.core.main_gateway_timing import SendRateLimiter
from discord_voice.core.packetizer import Packetizer
from discord_voice.ogg import iter_opus_packets


def _serve(pipe: Pipe, dave: bool = True) -> None:
    """Child process: run a FakeDiscord and answer the parent's requests."""
    from discord_voice.testing import FakeDiscord

    with FakeDiscord(dave=dave, main_rate_limit=100_000) as fake:
        pipe.send((fake.gateway_url, fake.token))
        while True:
            request = pipe.recv()
            if request == "stop":
                return
            if request == "capture":  # stamp and keep packets; decrypt them afterwards
                fake.capture_udp()
                pipe.send("ok")
                continue
            fake.capture_udp(False)
            expected = request[1] if isinstance(request, tuple) else 0
            with contextlib.suppress(TimeoutError):  # what is missing is reported as lost
                fake.wait_for_frames(expected, timeout=300)
            frames = fake.frames()
            by_ssrc: dict[int, list[tuple[int, float]]] = {}
            digests: dict[int, Any] = {}
            for frame in frames:
                by_ssrc.setdefault(frame.ssrc, []).append((frame.sequence, frame.arrival))
                digests.setdefault(frame.ssrc, hashlib.sha256()).update(
                    len(frame.opus).to_bytes(2, "big") + frame.opus
                )
            pipe.send(
                (by_ssrc, {k: v.hexdigest() for k, v in digests.items()}, len(fake.udp_errors))
            )


@contextlib.contextmanager
def remote_fake(dave: bool = True) -> Iterator[tuple[Gateway, Pipe]]:
    """A FakeDiscord in a child process and a connected `Gateway` to it.

    After the block the gateway is closed; ask the child for ``"frames"`` inside the block.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, dave), name="fake-discord-bench")
    server.start()
    try:
        url, token = parent.recv()
        gateway = Gateway(token, url=url)
        # A measurement, not an API: lift the 120/60 s send budget so that hundreds of joins
        # (one op 4 each) do not wait minutes; the fake does not enforce it.
        gateway._limiter = SendRateLimiter(limit=100_000, period=60.0)
        gateway.connect(timeout=30)
        try:
            yield gateway, parent
        finally:
            gateway.close()
        parent.send("stop")
    finally:
        server.join(60)
        if server.is_alive():
            server.kill()


def stream_digest(frames: list[bytes]) -> str:
    """The digest `_serve` reports for a stream that received exactly `frames`."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(len(frame).to_bytes(2, "big") + frame)
    return digest.hexdigest()


def _sender_cpu_ns() -> dict[int, int]:
    """On-CPU nanoseconds of every live sender thread, by native thread id."""
    result = {}
    for thread in threading.enumerate():
        if thread.name.startswith("dv-udp-sender") and thread.native_id is not None:
            try:
                with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
                    result[thread.native_id] = int(f.read().split()[0])
            except OSError:
                pass
    return result


def _percentile(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def receiver_figures(
    by_ssrc: dict[int, list[tuple[int, float]]],
    digests: dict[int, str],
    ssrcs: list[int],
    expected: list[bytes],
    audio_frames: int,
) -> tuple[list[float], int, int]:
    """(inter-arrival deviations from 20 ms in ms over the audio frames, lost, altered streams)."""
    expected_digest = stream_digest(expected)
    deviations: list[float] = []
    lost = altered = 0
    for ssrc in ssrcs:
        arrivals = by_ssrc.get(ssrc, [])
        lost += len(expected) - len(arrivals)
        altered += digests.get(ssrc) != expected_digest
        audio = arrivals[:audio_frames]
        deviations += [abs((b[1] - a[1]) - 0.020) * 1000 for a, b in itertools.pairwise(audio)]
    return deviations, lost, altered


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _library_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("dv-"))


CAPTURE = True

#: How many frames the paced producer keeps queued ahead on each connection.
AHEAD = 5


def produce(conns: list[Any], frames: list[bytes], bulk: bool) -> None:
    """Feed every connection `frames`.

    Paced (the default), as a live bot's mixer would: `AHEAD` frames on every queue, then one
    producer thread wakes every 20 ms and puts the next frame on each. Bulk: everything is put
    at once (the queues hold it all); the first ~150 ms of puts then compete with the sender for
    the GIL (each send releases it), which shows as one stall of every stream at the start.
    """
    if bulk:
        for frame_index in range(len(frames)):  # interleave, as live producers would
            for conn in conns:
                conn.opus_send.put(frames[frame_index])
        return
    for frame in frames[:AHEAD]:  # a few frames ahead, then one per connection per 20 ms
        for conn in conns:
            conn.opus_send.put(frame)
    tick = time.monotonic()
    for frame in frames[AHEAD:]:
        tick += 0.020
        time.sleep(max(0.0, tick - time.monotonic()))
        for conn in conns:
            conn.opus_send.put(frame)


def run(count: int, frames: list[bytes], dave: bool = True, bulk: bool = False) -> dict[str, Any]:
    with remote_fake(dave) as (gateway, pipe):
        voice = Voice(gateway, queue_size=len(frames) + 8)
        joins = []
        conns = []
        rss_before = _rss_kib()
        for i in range(count):
            started = time.perf_counter()
            conns.append(
                voice.join_channel(200000000000000000 + i, 300000000000000000 + i, timeout=120)
            )
            joins.append(time.perf_counter() - started)
        rss_after = _rss_kib()
        threads = _library_threads()
        if CAPTURE:
            pipe.send("capture")  # the receiver only stamps packets while we stream
            pipe.recv()
        cpu_before = _sender_cpu_ns()
        process_before = time.process_time()
        for conn in conns:
            conn.speaking()
        produce(conns, frames, bulk)
        for conn in conns:
            conn.stop_speaking(timeout=len(frames) * 0.02 + 30)
        process_cpu = time.process_time() - process_before
        cpu_after = _sender_cpu_ns()
        stats = [conn.stats for conn in conns]
        ssrcs = [conn.ssrc for conn in conns if conn.ssrc is not None]
        for conn in conns:
            conn.disconnect()
        expected = frames + [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
        pipe.send(("frames", len(expected) * len(ssrcs)))
        by_ssrc, digests, udp_errors = pipe.recv()
    deviations, lost, altered = receiver_figures(by_ssrc, digests, ssrcs, expected, len(frames))
    packets = sum(s.frames_sent for s in stats)
    cpu_ns = sum(cpu_after.get(t, 0) - cpu_before.get(t, 0) for t in cpu_before)
    return {
        "connections": count,
        "join_p50_ms": statistics.median(joins) * 1000,
        "join_max_ms": max(joins) * 1000,
        "p50_ms": _percentile(deviations, 50),
        "p99_ms": _percentile(deviations, 99),
        "max_ms": max(deviations, default=0.0),
        "lost": lost,
        "altered": altered,
        "udp_errors": udp_errors,
        "late_frames": sum(s.late_frames for s in stats),
        "stalls": sum(s.stalls for s in stats),
        "cpu_us_per_packet": cpu_ns / max(packets, 1) / 1000,
        "process_cpu_us_per_packet": process_cpu / max(packets, 1) * 1e6,
        "rss_kib_per_connection": (rss_after - rss_before) / max(count, 1),
        "threads": threads,
    }


def tight_loop_cost(frames: list[bytes], rounds: int = 20000) -> tuple[float, float]:
    """CPU microseconds per packet of packetize + send() alone, for both transport modes."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.connect(sink.getsockname())
    results = []
    try:
        for mode in ("aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"):
            chosen = choose_mode([mode])
            packetizer = Packetizer(1234, make_cipher(chosen, bytes(32)))
            start = time.thread_time()
            for i in range(rounds):
                out.send(packetizer.packetize(frames[i % len(frames)]))
            results.append((time.thread_time() - start) / rounds * 1e6)
    finally:
        out.close()
        sink.close()
    return results[0], results[1]


def asset_frames(seconds: float) -> list[bytes]:
    """`seconds` of real Opus frames from the bundled 440 Hz asset (repeated if needed)."""
    asset = resources.files("discord_voice") / "assets" / "tone-440hz-5s.opus"
    with asset.open("rb") as fileobj:
        opus_frames = list(iter_opus_packets(fileobj))
    count = int(seconds * 50)
    return (opus_frames * (count // len(opus_frames) + 1))[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", "--conns", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1, help="runs per connection count")
    parser.add_argument(
        "--no-dave",
        dest="dave",
        action="store_false",
        help="channels without DAVE (transport encryption only)",
    )
    parser.add_argument(
        "--bulk", action="store_true", help="put every frame at once instead of a paced producer"
    )
    args = parser.parse_args()
    frames = asset_frames(args.seconds)
    aes, xchacha = tight_loop_cost(frames)
    print(
        f"packetize + send(), tight loop: AES-256-GCM {aes:.2f} us/packet, "
        f"XChaCha20-Poly1305 {xchacha:.2f} us/packet"
    )
    print(
        f"DAVE {'on' if args.dave else 'off'}; {args.seconds:g} s of audio per connection; "
        f"{'bulk' if args.bulk else 'paced'} producer"
    )
    header = (
        f"{'conns':>5} {'join p50':>9} {'join max':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'lost':>5} {'altered':>7} {'late':>5} {'stalls':>6} "
        f"{'sender us/pkt':>13} {'process us/pkt':>14} {'KiB/conn':>8}  threads"
    )
    print(header)
    for count in args.counts:
        for _ in range(args.runs):
            r = run(count, frames, args.dave, args.bulk)
            kinds = sorted({name.split(":")[0] for name in r["threads"]})
            summary = ", ".join(
                f"{sum(n.split(':')[0] == k for n in r['threads'])} {k}" for k in kinds
            )
            print(
                f"{r['connections']:>5} {r['join_p50_ms']:>8.1f}ms {r['join_max_ms']:>8.1f}ms "
                f"{r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f} {r['max_ms']:>7.3f} {r['lost']:>5} "
                f"{r['altered']:>7} {r['late_frames']:>5} {r['stalls']:>6} "
                f"{r['cpu_us_per_packet']:>13.1f} {r['process_cpu_us_per_packet']:>14.1f} "
                f"{r['rss_kib_per_connection']:>8.0f}  {summary}"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

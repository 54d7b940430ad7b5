"""Soak benchmark: stream real Opus frames in real time for minutes and look for slow decay.

The fake Discord (the receiver) runs in a separate process (`bench.bench_send.remote_fake`), so
our threads cannot distort its kernel receive timestamps (SO_TIMESTAMPNS). N connections join
through `Gateway` + `Voice` and stream the bundled 440 Hz asset, looped to fill the duration,
through ``conn.opus_send`` (the bounded queue paces the producer), then stop speaking. Reported:

* frames sent vs received, lost / altered / duplicated / reordered (payloads compared per frame);
* drift of RTP time against wall time: ``(timestamp - first) / 48000`` (mod 2**32) versus
  ``arrival - first_arrival`` at the receiver, anchored on the best-placed packet of the first
  second (a late first packet is reported apart, not as drift), max absolute and final, in ms.
  RTP time only stays continuous while the producer never underruns, so the producer keeps the
  queue full;
* inter-arrival p50 / p99 / max, late frames, underruns and stalls (``conn.stats``), voice
  heartbeats sent / acked, latency, resumes / reconnects, main-gateway heartbeats (as the fake
  counted them), Python threads and open file descriptors (before the join, after it, at the end,
  after disconnect), and process CPU time per packet (and the sender threads' alone).

Exit code 1 if a frame was lost, altered or duplicated, drift reached 20 ms, or the connection
failed. Progress lines go to stderr every ``--progress`` seconds, library warnings too.

Run: ``python -m bench.bench_soak [--minutes 10] [--connections 1]`` (from the repository root).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any
from unittest import mock

from bench import bench_send
from bench.bench_send import _percentile, _sender_cpu_ns, asset_frames, remote_fake
from discord_voice import Connection, ConnectionClosed, ConnectionState, Gateway, Voice
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP

GUILD, CHANNEL = 200000000000000000, 300000000000000000
DRIFT_LIMIT_MS = 20.0
PUT_TIMEOUT = 30.0  # longer than a reconnect attempt (10 s): frames are held meanwhile

#: One received packet as the child reports it: (sequence, rtp timestamp, arrival, payload).
Packet = tuple[int, int, float, bytes]


def _serve_soak(pipe: Pipe, dave: bool = True) -> None:
    """Child process: a FakeDiscord answering ``("count",)``, ``("wait", n, timeout)``,
    ``("frames",)`` and ``"stop"`` (the protocol `remote_fake` speaks: address first)."""
    from discord_voice.testing import FakeDiscord

    with FakeDiscord(dave=dave) as fake:
        pipe.send((fake.gateway_url, fake.token))
        while True:
            request = pipe.recv()
            if request == "stop":
                return
            if request[0] == "capture":  # stamp packets now, decrypt them when it ends
                fake.capture_udp(request[1])
                pipe.send(None)
            elif request[0] == "count":
                pipe.send((len(fake.frames()), len(fake.udp_errors), len(fake.violations)))
            elif request[0] == "wait":
                with contextlib.suppress(TimeoutError):
                    fake.wait_for_frames(request[1], timeout=request[2])
                pipe.send(None)
            else:
                frames = fake.frames()
                packets: dict[int, list[Packet]] = {}
                for f in frames:
                    packets.setdefault(f.ssrc, []).append(
                        (f.sequence, f.timestamp, f.arrival, f.opus)
                    )
                pipe.send(
                    {
                        "packets": packets,
                        "dave": dict(collections.Counter(f.dave for f in frames)),
                        "udp_errors": fake.udp_errors,
                        "violations": fake.violations,
                        "voice_sessions": [
                            (s.ssrc, s.heartbeats, s.resumes, s.close_code)
                            for s in fake.voice_sessions
                        ],
                        "main_heartbeats": sum(s.heartbeats for s in fake.main_sessions),
                        "main_sessions": len(fake.main_sessions),
                    }
                )


@contextlib.contextmanager
def soak_fake() -> Iterator[tuple[Gateway, Pipe]]:
    """`remote_fake`, with a child that also reports RTP timestamps and per-frame payloads.

    `remote_fake` has no hook for the child's body, so its module-level `_serve` is swapped
    for the duration of the spawn (the child unpickles `_serve_soak` from this module).
    """
    with mock.patch.object(bench_send, "_serve", _serve_soak), remote_fake() as (gateway, pipe):
        yield gateway, pipe


@dataclass(frozen=True)
class Usage:
    """Python threads and open file descriptors of this process at one moment."""

    threads: int
    fds: int

    @classmethod
    def now(cls) -> Usage:
        return cls(threading.active_count(), len(os.listdir("/proc/self/fd")))


class LogCounter(logging.Handler):
    """Counts library log records at WARNING and above (they are printed by basicConfig)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@dataclass
class StreamFigures:
    """Receiver-side figures of one connection (all its SSRCs, in the order they were used)."""

    received: int = 0
    lost: int = 0
    altered: int = 0
    duplicated: int = 0
    reordered: int = 0
    drift_max_ms: float = 0.0
    drift_final_ms: float = 0.0
    first_late_ms: float = 0.0  # how late the first packet was against the first second's best


#: Packets (the first second) among which the best-placed one anchors the drift.
_ANCHOR_PACKETS = 50


def stream_figures(
    segments: list[list[Packet]], expected: list[bytes], gaps: list[float], drifts: list[float]
) -> StreamFigures:
    """Compare the packets of each SSRC (arrival order) with `expected`; appends the
    inter-arrival times (ms) to `gaps` and each frame's absolute drift (ms) to `drifts`.

    Drift is RTP time against wall time, per SSRC (a reconnect starts a new RTP clock), from
    the best-placed of its first `_ANCHOR_PACKETS` packets: a first packet sent late (the sender
    busy at the start) would otherwise show as a constant offset for the whole run, which is no
    drift; how late it was is reported apart (``first_late_ms``)."""
    r = StreamFigures()
    offset = 0
    for packets in segments:
        if not packets:
            continue
        r.received += len(packets)
        seq0, ts0, at0, _ = packets[0]
        seen: set[int] = set()
        index = top = 0
        previous = seq0
        offsets: list[float] = []
        for seq, ts, arrival, opus in packets:
            delta = (seq - previous) % 0x10000
            index += delta - 0x10000 if delta >= 0x8000 else delta  # unwrap the 16-bit sequence
            previous = seq
            if index in seen:
                r.duplicated += 1
                continue
            seen.add(index)
            r.reordered += index < top
            top = max(top, index)
            position = offset + index
            r.altered += not (0 <= position < len(expected) and expected[position] == opus)
            offsets.append(((arrival - at0) - ((ts - ts0) % 0x100000000) / 48000) * 1000)
        start = min(range(min(len(offsets), _ANCHOR_PACKETS)), key=offsets.__getitem__)
        anchor = offsets[start]
        r.first_late_ms = max(r.first_late_ms, -anchor)
        for offset_ms in offsets[start:]:  # the start-up before the anchor is not drift
            drift = offset_ms - anchor
            r.drift_max_ms = max(r.drift_max_ms, abs(drift))
            drifts.append(abs(drift))
            r.drift_final_ms = drift
        gaps += [(b[2] - a[2]) * 1000 for a, b in itertools.pairwise(packets)]
        offset += len(seen)
    r.lost = max(0, len(expected) - offset)
    return r


def _watch_ssrcs(conn: Connection, ssrcs: list[int]) -> None:
    """Record every SSRC `conn` uses (a reconnect gets a new one)."""
    ssrcs.append(conn.ssrc or 0)

    def on_state(old: ConnectionState, new: ConnectionState, reason: BaseException | None) -> None:
        print(f"state {old.value} -> {new.value} ({reason})", file=sys.stderr, flush=True)
        ssrc = conn.ssrc
        if new is ConnectionState.READY and ssrc is not None and ssrc not in ssrcs:
            ssrcs.append(ssrc)

    conn.add_state_listener(on_state)


def _progress(started: float, conns: list[Connection], pipe: Pipe, latencies: list[float]) -> None:
    pipe.send(("count",))
    received, udp_errors, violations = pipe.recv()
    stats = [c.stats for c in conns]
    latencies += [s.latency for s in stats if s.latency is not None]
    usage = Usage.now()
    minutes, seconds = divmod(int(time.monotonic() - started), 60)
    print(
        f"[{minutes:3d}:{seconds:02d}] sent {sum(s.frames_sent for s in stats)}"
        f" received {received} late {sum(s.late_frames for s in stats)}"
        f" underruns {sum(s.underruns for s in stats)} stalls {sum(s.stalls for s in stats)}"
        f" heartbeats {sum(s.heartbeats_sent for s in stats)}/"
        f"{sum(s.heartbeat_acks for s in stats)} udp errors {udp_errors}"
        f" violations {violations} threads {usage.threads} fds {usage.fds}"
        f" states {','.join(c.state.value for c in conns)}",
        file=sys.stderr,
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    frames = asset_frames(args.minutes * 60)
    expected = frames + [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
    counter = LogCounter()
    logging.getLogger("discord_voice").addHandler(counter)
    latencies: list[float] = []
    failure: BaseException | None = None
    with soak_fake() as (gateway, pipe):
        voice = Voice(gateway, queue_size=args.queue_size)
        idle = Usage.now()
        conns = [
            voice.join_channel(GUILD + i, CHANNEL + i, timeout=30) for i in range(args.connections)
        ]
        ssrcs: list[list[int]] = [[] for _ in conns]
        for conn, used in zip(conns, ssrcs, strict=True):
            _watch_ssrcs(conn, used)
        joined = Usage.now()
        if args.capture:
            pipe.send(("capture", True))
            pipe.recv()
        started, cpu0, sender0 = time.monotonic(), time.process_time(), _sender_cpu_ns()
        every = max(1, round(args.progress * 50))
        try:
            for conn in conns:
                conn.speaking()
            for index, frame in enumerate(frames):
                if index and index % every == 0:
                    _progress(started, conns, pipe, latencies)
                for conn in conns:
                    conn.opus_send.put(frame, timeout=PUT_TIMEOUT)  # blocks: real-time pacing
            # in parallel: a connection waiting for another's stop would underrun meanwhile
            with ThreadPoolExecutor(len(conns), thread_name_prefix="soak-stop") as pool:
                list(pool.map(lambda c: c.stop_speaking(timeout=PUT_TIMEOUT), conns))
        except (ConnectionClosed, TimeoutError, queue.Full) as exc:
            failure = exc
            print(
                f"SOAK FAILURE after {time.monotonic() - started:.1f} s: "
                f"{type(exc).__name__}: {exc!r}",
                file=sys.stderr,
                flush=True,
            )
            for conn in conns:
                print(f"  {conn!r} error={conn.error!r}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu0
        sender1 = _sender_cpu_ns()
        sender_ns = sum(sender1.get(t, 0) - sender0.get(t, 0) for t in sender0)
        _progress(started, conns, pipe, latencies)
        stats = [c.stats for c in conns]
        end = Usage.now()
        sent = sum(s.frames_sent for s in stats)
        if args.capture:
            pipe.send(("capture", False))
            pipe.recv()
        pipe.send(("wait", sent, 600.0 if args.capture else 10.0))
        pipe.recv()
        pipe.send(("frames",))
        report: dict[str, Any] = pipe.recv()
        for conn, used in zip(conns, ssrcs, strict=True):
            if conn.ssrc is not None and conn.ssrc not in used:
                used.append(conn.ssrc)
            conn.disconnect()
        after = Usage.now()
        gateway_latency = gateway.latency

    gaps: list[float] = []
    drifts: list[float] = []
    figures = [
        stream_figures([report["packets"].get(s, []) for s in used], expected, gaps, drifts)
        for used in ssrcs
    ]
    lost = sum(f.lost for f in figures)
    altered = sum(f.altered for f in figures)
    duplicated = sum(f.duplicated for f in figures)
    drift_max = max(f.drift_max_ms for f in figures)
    drift_final = max((f.drift_final_ms for f in figures), key=abs)
    latencies += [s.latency for s in stats if s.latency is not None]
    ok = failure is None and lost == altered == duplicated == 0 and drift_max < DRIFT_LIMIT_MS
    sessions = report["voice_sessions"]

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.2f}"

    rows = [
        (
            "duration",
            f"{elapsed / 60:.2f} min streamed, {args.connections} connection(s), "
            f"{len(frames)} frames each + {SILENCE_FRAMES_ON_STOP} silence, "
            f"queue {args.queue_size}",
            "",
        ),
        ("mode / DAVE", f"{conns[0].mode} / frames by DAVE status {report['dave']}", ""),
        (
            "frames expected / sent / received",
            f"{len(expected) * len(conns)} / {sent} / {sum(f.received for f in figures)}",
            "",
        ),
        (
            "lost / altered / duplicated / reordered",
            f"{lost} / {altered} / {duplicated} / {sum(f.reordered for f in figures)}",
            "0",
        ),
        (
            "drift RTP vs wall: max|d| / p99|d| / final",
            f"{drift_max:.3f} / {_percentile(drifts, 99):.3f} / {drift_final:+.3f} ms "
            f"(first packet up to {max(f.first_late_ms for f in figures):.1f} ms late)",
            f"max < {DRIFT_LIMIT_MS:g}",
        ),
        (
            "inter-arrival p50 / p99 / max (ms)",
            f"{_percentile(gaps, 50):.3f} / {_percentile(gaps, 99):.3f} / "
            f"{max(gaps, default=0):.3f}",
            "",
        ),
        (
            "late frames / max lateness (ms)",
            f"{sum(s.late_frames for s in stats)} / "
            f"{max(s.max_lateness for s in stats) * 1000:.2f}",
            "",
        ),
        (
            "underruns / stalls / discarded",
            f"{sum(s.underruns for s in stats)} / {sum(s.stalls for s in stats)} / "
            f"{sum(s.frames_discarded for s in stats)}",
            "0",
        ),
        (
            "voice heartbeats sent / acked (fake saw)",
            f"{sum(s.heartbeats_sent for s in stats)} / {sum(s.heartbeat_acks for s in stats)} "
            f"({sum(v[1] for v in sessions)})",
            "",
        ),
        (
            "voice latency last / max (ms), main gw",
            f"{ms(stats[0].latency)} / {ms(max(latencies, default=None))}, {ms(gateway_latency)}",
            "",
        ),
        (
            "main heartbeats (fake saw) / sessions",
            f"{report['main_heartbeats']} / {report['main_sessions']}",
            "",
        ),
        (
            "resumes / reconnects (fake: resumes)",
            f"{sum(s.resumes for s in stats)} / {sum(s.reconnects for s in stats)} "
            f"({sum(v[2] for v in sessions)}), voice sessions {len(sessions)}",
            "0",
        ),
        (
            "threads idle / joined / end / after",
            f"{idle.threads} / {joined.threads} / {end.threads} / {after.threads}",
            "",
        ),
        (
            "fds idle / joined / end / after",
            f"{idle.fds} / {joined.fds} / {end.fds} / {after.fds}",
            "",
        ),
        (
            "CPU us/packet: process / sender threads",
            f"{cpu / max(sent, 1) * 1e6:.1f} / {sender_ns / max(sent, 1) / 1000:.1f}",
            "",
        ),
        (
            "udp errors / violations / log warnings",
            f"{len(report['udp_errors'])} / {len(report['violations'])} / {counter.count}",
            "0",
        ),
        ("failure", "none" if failure is None else f"{type(failure).__name__}: {failure}", ""),
        ("result", "PASS" if ok else "FAIL", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value}" + (f"   (target {target})" if target else ""))
    for text in report["udp_errors"][:5] + report["violations"][:5]:
        print(f"  receiver: {text}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument(
        "--queue-size",
        type=int,
        default=50,
        help="opus_send capacity in frames (default 50: 1 s, so the producer never underruns)",
    )
    parser.add_argument(
        "--progress", type=float, default=60.0, help="seconds between progress lines on stderr"
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="the receiver only stamps packets while streaming and decrypts them at the end "
        "(FakeDiscord.capture_udp): for many connections; progress lines then show 0 received",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    if args.minutes <= 0 or args.connections < 1:
        parser.error("--minutes must be > 0 and --connections >= 1")
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""The offline demo: the whole connection flow against the fake Discord, with a report.

No token and no network: `FakeDiscord` runs a main gateway, a voice gateway and a UDP voice
server on 127.0.0.1. The demo joins, streams a tone encoded with libopus (or the bundled Ogg Opus
asset when libopus is missing), stops speaking, leaves, and checks what the server decrypted.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import resources
from typing import TextIO

from discord_voice import Gateway, OpusPacketSource, Voice
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP
from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20
from discord_voice.errors import OpusNotAvailable

__all__ = ["DemoReport", "demo_succeeded", "run_demo"]

GUILD_ID = 41771983423143937
CHANNEL_ID = 127121515262115840


@dataclass(frozen=True)
class DemoReport:
    join_seconds: float
    mode: str
    source: str
    frames_sent: int
    frames_received: int
    frames_intact: int
    silence_frames: int
    jitter_p50_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    late_frames: int
    underruns: int
    threads_left: int
    e2ee: str


def _audio(seconds: float, frequency: float) -> tuple[list[bytes], str]:
    try:
        from discord_voice import opus

        frames = list(opus.encode_frames(opus.tone(frequency, seconds)))
        library = os.path.basename(opus.find_libopus() or "libopus")
        version = opus.libopus_version().removeprefix("libopus ")
        return frames, f"{frequency:g} Hz tone encoded with libopus {version} ({library})"
    except OpusNotAvailable as exc:
        from discord_voice.ogg import iter_opus_packets

        asset = resources.files("discord_voice") / "assets" / "tone-440hz-5s.opus"
        with asset.open("rb") as fileobj:
            frames = list(iter_opus_packets(fileobj))[: round(seconds * 50)]
        first_line = str(exc).splitlines()[0]
        return frames, f"bundled 440 Hz Ogg Opus asset (libopus unavailable: {first_line})"


def run_demo(
    *,
    seconds: float = 5.0,
    frequency: float = 440.0,
    mode: str | None = None,
    dave: bool = True,
    out: TextIO = sys.stdout,
) -> DemoReport:
    """Run the flow once and print progress and the report to `out`."""
    import threading

    from discord_voice.testing import FakeDiscord

    modes = (mode,) if mode else (MODE_AES256_GCM, MODE_XCHACHA20)
    frames, source = _audio(seconds, frequency)
    before = {t.ident for t in threading.enumerate()}
    with FakeDiscord(modes=modes, dave=dave) as fake:
        print(
            f"fake Discord: main gateway {fake.gateway_url}, voice {fake.voice_endpoint}", file=out
        )
        gateway = Gateway(fake.token, url=fake.gateway_url)
        try:
            gateway.connect(timeout=10.0)
            voice = Voice(gateway)
            started = time.perf_counter()
            conn = voice.join_channel(GUILD_ID, CHANNEL_ID, timeout=10.0)
            join_seconds = time.perf_counter() - started
            print(
                f"joined in {join_seconds * 1000:.1f} ms, mode {conn.mode}, ssrc {conn.ssrc}",
                file=out,
            )
            if conn.e2ee_active:
                conn.wait_for_e2ee(10.0)  # the group key, shared with the channel's listener
                member = fake.dave_listeners.get(CHANNEL_ID)  # a libdave member in the call
                e2ee = (
                    f"DAVE v{conn.dave_protocol_version}, epoch {conn.dave_epoch}, "
                    f"privacy code {conn.voice_privacy_code}, decrypted by a libdave member "
                    f"(user {member})"
                )
            else:
                e2ee = "off (no DAVE)"
            print(f"end-to-end encryption: {e2ee}", file=out)
            print(f"playing {len(frames)} frames ({len(frames) / 50:g} s): {source}", file=out)
            player = conn.play(OpusPacketSource(frames, duration=len(frames) / 50))
            player.wait(timeout=len(frames) / 50 + 10.0)  # ends with silence and Speaking 0
            expected = len(frames) + SILENCE_FRAMES_ON_STOP
            fake.wait_for_frames(expected, timeout=10.0, ssrc=conn.ssrc)
            stats = conn.stats
            mode_used = conn.mode or "?"
            received = fake.frames(ssrc=conn.ssrc)
            conn.disconnect()
        finally:
            gateway.close()
    threads_left = sum(1 for t in threading.enumerate() if t.ident not in before)
    audio = received[: len(frames)]
    intact = sum(1 for got, sent in zip(audio, frames, strict=False) if got.opus == sent)
    silences = sum(1 for got in received[len(frames) :] if got.opus == OPUS_SILENCE_FRAME)
    deviations = [abs((b.arrival - a.arrival) - 0.020) * 1000 for a, b in itertools.pairwise(audio)]
    quantiles = statistics.quantiles(deviations, n=100) if len(deviations) >= 2 else [0.0] * 99
    report = DemoReport(
        join_seconds=join_seconds,
        mode=mode_used,
        source=source,
        frames_sent=stats.frames_sent,
        frames_received=len(received),
        frames_intact=intact,
        silence_frames=silences,
        jitter_p50_ms=quantiles[49],
        jitter_p99_ms=quantiles[98],
        jitter_max_ms=max(deviations, default=0.0),
        late_frames=stats.late_frames,
        underruns=stats.underruns,
        threads_left=threads_left,
        e2ee=e2ee,
    )
    _print_report(report, len(frames), out)
    return report


def _print_report(r: DemoReport, audio_frames: int, out: TextIO) -> None:
    ok = r.frames_intact == audio_frames and r.silence_frames == SILENCE_FRAMES_ON_STOP
    print("\nreport", file=out)
    print(f"  join time            {r.join_seconds * 1000:8.1f} ms", file=out)
    print(f"  transport mode       {r.mode}", file=out)
    print(f"  end-to-end (DAVE)    {r.e2ee}", file=out)
    print(
        f"  frames sent          {r.frames_sent:8d}  ({audio_frames} audio + "
        f"{SILENCE_FRAMES_ON_STOP} silence)",
        file=out,
    )
    print(
        f"  frames received      {r.frames_received:8d}  ({r.frames_intact} audio "
        f"byte-identical, {r.silence_frames} silence)",
        file=out,
    )
    print(
        f"  inter-arrival jitter p50 {r.jitter_p50_ms:.3f} ms, p99 {r.jitter_p99_ms:.3f} ms, "
        f"max {r.jitter_max_ms:.3f} ms (deviation from 20 ms, same process)",
        file=out,
    )
    print(
        f"  late frames {r.late_frames}, underruns {r.underruns}, library threads left "
        f"{r.threads_left}",
        file=out,
    )
    print(f"  result               {'OK' if ok else 'MISMATCH'}", file=out)


def demo_succeeded(report: DemoReport, seconds: float) -> bool:
    """Every audio frame arrived byte-identical and no library thread was left."""
    ok = report.frames_intact == min(report.frames_received, round(seconds * 50))
    return ok and report.threads_left == 0

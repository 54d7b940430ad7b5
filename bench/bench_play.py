"""What playing a file costs: CPU per second of audio and memory over time, for each source path.

Plays ``--seconds`` of a generated 440 Hz tone into a fake Discord (in this process, DAVE on)
three ways: a 44.1 kHz mono WAV through FFmpeg and libopus (`FFmpegSource`), 48 kHz stereo PCM
encoded with libopus (`PCMSource`, no subprocess), and Ogg Opus passthrough (`OggOpusSource`).
For each it reports the player thread's CPU (``/proc/self/task/<tid>/schedstat``), FFmpeg's CPU
(``RUSAGE_CHILDREN``), the whole process's CPU (the fake Discord's work included), per second
of audio, and the library's heap every 5 s (tracemalloc, in a second run: everything but the
fake Discord, which keeps every frame it received): the bounded ``opus_send`` queue is the
backpressure, so it should stay flat whatever the length of the file.

Run: ``python -m bench.bench_play [--seconds 30]`` (repository root, .venv), on a quiet machine.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import resource
import tempfile
import threading
import time
import tracemalloc
import wave
from array import array
from collections.abc import Callable
from pathlib import Path

import discord_voice as dv
from discord_voice.offline import OFFLINE_CHANNEL_ID, OFFLINE_GUILD_ID, discord_or_fake
from discord_voice.opus import encode_frames, tone
from tests import make_assets


def thread_cpu(thread: threading.Thread) -> float:
    with open(f"/proc/self/task/{thread.native_id}/schedstat") as stat:
        return int(stat.read().split()[0]) / 1e9


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_wav(path: Path, seconds: float) -> None:
    rate = 44100
    samples = array(
        "h",
        (round(8000 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(int(seconds * rate))),
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def library_heap(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes allocated from anywhere but the fake Discord (which keeps every frame it got)."""
    fake = tracemalloc.Filter(False, "*/discord_voice/testing/*", all_frames=True)
    return sum(stat.size for stat in snapshot.filter_traces([fake]).statistics("filename"))


def measure(name: str, make: Callable[[], dv.Source], memory: bool) -> None:
    """CPU per second played; with `memory`, the library's heap growth instead (tracemalloc
    slows everything down, so the two are separate runs)."""
    with discord_or_fake(None) as session:
        voice = dv.Voice(session.gateway)
        try:
            conn = voice.join_channel(OFFLINE_GUILD_ID, OFFLINE_CHANNEL_ID, timeout=10)
            source = make()
            if memory:
                tracemalloc.start(25)
            children, process = children_cpu(), time.process_time()
            player = conn.play(source)
            heap: list[int] = []
            player_cpu = 0.0
            while not player.wait(5.0):
                player_cpu = thread_cpu(player.thread)
                if memory:
                    heap.append(library_heap(tracemalloc.take_snapshot()))
            played = player.position
            process = time.process_time() - process
            children = children_cpu() - children
            if memory:
                tracemalloc.stop()
            conn.disconnect()
        finally:
            voice.close()
    if memory:
        samples = " ".join(f"{(h - heap[0]) / 1024:+.0f}" for h in heap)
        print(f"{name:28} library heap vs 5 s, KiB every 5 s: {samples}")
    else:
        print(
            f"{name:28} {played:6.1f} s  player {player_cpu / played * 1000:6.2f} ms/s  "
            f"ffmpeg {children / played * 1000:6.2f} ms/s  "
            f"process {process / played * 1000:6.2f} ms/s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    seconds: float = args.seconds
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "tone.wav"
        write_wav(wav, seconds)
        pcm = b"".join(tone(440.0, seconds))
        ogg = Path(folder) / "tone.opus"
        make_assets.write_ogg_opus(ogg, [list(encode_frames(tone(440.0, seconds)))])
        sources: list[tuple[str, Callable[[], dv.Source]]] = [
            ("FFmpegSource (44.1k WAV)", lambda: dv.FFmpegSource(wav)),
            ("PCMSource (libopus)", lambda: dv.PCMSource(io.BytesIO(pcm))),
            ("OggOpusSource (passthrough)", lambda: dv.OggOpusSource(ogg)),
        ]
        print(f"{seconds:g} s of audio each, {os.cpu_count()} CPUs; CPU in ms per second played")
        for name, make in sources:
            measure(name, make, memory=False)
        for name, make in sources:
            measure(name, make, memory=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

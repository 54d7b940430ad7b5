"""Say a sentence in a voice channel: a TTS engine's raw PCM played with `dv.PCMSource`.

    DISCORD_TOKEN=... python examples/speak_tts.py "TEXT" GUILD_ID CHANNEL_ID
    python examples/speak_tts.py ["TEXT"]  # no token: offline, against a local fake Discord

The speech comes from ``espeak-ng --stdout`` (a WAV) piped through FFmpeg into 48 kHz stereo
16-bit PCM, the format every `PCMSource` holds. Without espeak-ng or FFmpeg, a stand-in is
synthesised in pure Python (one gliding tone per word) so the example still runs. Any engine
that writes PCM fits the same way: wrap its output in a binary file object. libopus encodes it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import subprocess
import sys
from array import array

import discord_voice as dv
from discord_voice.audio import find_ffmpeg
from discord_voice.offline import OFFLINE_CHANNEL_ID, OFFLINE_GUILD_ID, discord_or_fake

SAMPLE_RATE = 48000
BYTES_PER_SECOND = SAMPLE_RATE * 2 * 2  # stereo, 16-bit: what a PCMSource holds


def espeak_pcm(text: str) -> bytes | None:
    """espeak-ng's speech as 48 kHz stereo s16le, or None without espeak-ng or FFmpeg."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return None
    try:
        ffmpeg = find_ffmpeg()
    except dv.FFmpegNotFound:
        return None
    wav = subprocess.run(
        [espeak, "--stdout", text], stdout=subprocess.PIPE, check=True, timeout=60
    ).stdout
    convert = [ffmpeg, "-loglevel", "error", "-i", "pipe:0"]
    convert += ["-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "2", "pipe:1"]
    return subprocess.run(convert, input=wav, stdout=subprocess.PIPE, check=True, timeout=60).stdout


def speech_stand_in(text: str) -> bytes:
    """A stand-in for speech as 48 kHz stereo s16le: a gliding, fading tone per word (12 at
    most), with a short pause after each."""
    samples = array("h")
    for word in text.split()[:12]:
        pitch = 140.0 + 12.0 * (sum(map(ord, word)) % 10)  # 140-248 Hz, the same for a word
        count = int(SAMPLE_RATE * min(0.12 + 0.03 * len(word), 0.35))
        phase = 0.0
        for n in range(count):
            phase += 2 * math.pi * pitch * (1.0 + 0.25 * n / count) / SAMPLE_RATE  # rising
            envelope = math.sin(math.pi * n / count)  # fades in and out: no clicks
            voiced = math.sin(phase) + 0.5 * math.sin(2 * phase) + 0.25 * math.sin(3 * phase)
            value = int(9000 * envelope * voiced)
            samples.extend((value, value))  # left, right
        samples.extend(bytes(2 * int(SAMPLE_RATE * 0.08)))  # 80 ms of silence, both channels
    if sys.byteorder == "big":
        samples.byteswap()  # PCM is little-endian
    return samples.tobytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Say something in a voice channel.")
    parser.add_argument("text", nargs="?", default="Hello from discord voice")
    parser.add_argument("guild_id", nargs="?", help="required with DISCORD_TOKEN")
    parser.add_argument("channel_id", nargs="?", help="required with DISCORD_TOKEN")
    parser.add_argument("--volume", type=float, default=0.8, help="0.0 to 2.0 (default 0.8)")
    args = parser.parse_args(argv)
    token = os.environ.get("DISCORD_TOKEN")
    if token and not (args.guild_id and args.channel_id):
        parser.error("with DISCORD_TOKEN set, give TEXT, GUILD_ID and CHANNEL_ID")
    if not 0.0 <= args.volume <= 2.0:
        parser.error("--volume must be between 0.0 and 2.0")

    pcm = espeak_pcm(args.text)
    if pcm is None:
        print("espeak-ng or FFmpeg not found: playing a synthesised stand-in for the speech")
        pcm = speech_stand_in(args.text)
    else:
        print("espeak-ng spoke, FFmpeg converted")
    seconds = len(pcm) / BYTES_PER_SECOND
    # PCMSource reads any binary file object (a pipe too); its duration is what we tell it
    source = dv.PCMSource(io.BytesIO(pcm), duration=seconds)

    with discord_or_fake(token) as session, dv.Voice(session.gateway) as voice:
        conn = voice.join_channel(
            args.guild_id or OFFLINE_GUILD_ID, args.channel_id or OFFLINE_CHANNEL_ID
        )
        try:
            print(f"saying {args.text!r} ({seconds:.2f} s) at volume {args.volume}")
            # volume= scales the PCM before encoding; player.volume changes it while playing
            player = conn.play(source, volume=args.volume)
            player.wait()
            if session.fake is not None:  # offline: what the fake Discord received
                session.fake.wait_for_frames(conn.stats.frames_sent, 10.0, ssrc=conn.ssrc)
                print(session.received_summary(conn.ssrc))
        finally:
            conn.disconnect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A bot that plays queued tracks one after another on one voice connection.

    DISCORD_TOKEN=... python examples/queue_bot.py --guild GUILD_ID --channel CHANNEL_ID FILE...
    python examples/queue_bot.py [FILE...]  # no token: offline, against a local fake Discord

`QueueBot` runs a thread that takes track paths from a `queue.Queue` and plays each to its end
(``player.wait()``) on the same connection; any thread may `add` tracks meanwhile. ``None`` on
the queue is the sentinel: `finish` puts it after the last track and waits for them to play,
`stop` (also on leaving the ``with``, or at Ctrl-C) stops the current track and skips the rest.
Offline without files it plays two short tones written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
import wave
from pathlib import Path
from types import TracebackType

import discord_voice as dv
from discord_voice.offline import OFFLINE_CHANNEL_ID, OFFLINE_GUILD_ID, discord_or_fake
from discord_voice.opus import tone


class QueueBot:
    """Plays the tracks added to it in order on `conn`, on a thread of its own."""

    def __init__(self, conn: dv.Connection) -> None:
        self._conn = conn
        self._tracks: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()  # stop() cannot slip in between the check and a play
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="queue-bot")
        self._thread.start()

    def add(self, path: str) -> None:
        self._tracks.put(path)

    def finish(self) -> None:
        """Play every track added so far, then end: returns when the last one has played."""
        self._tracks.put(None)  # the sentinel
        self._thread.join()

    def stop(self) -> None:
        """End now: the current track stops (with silence and Speaking off), the rest are
        skipped. Idempotent."""
        with self._lock:
            self._stopping = True
            player = self._conn.player
        if player is not None:
            player.stop()
        self._tracks.put(None)  # wakes the thread if it waits for a track
        self._thread.join()

    def __enter__(self) -> QueueBot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while (path := self._tracks.get()) is not None and not self._stopping:
                self._play(path)
        except dv.ConnectionClosed as exc:  # no track can play any more
            print(f"the connection ended: {exc}")

    def _play(self, path: str) -> None:
        try:
            source = dv.open_source(path)
        except (OSError, dv.AudioError) as exc:  # a missing file, no FFmpeg...
            print(f"skipping {path}: {exc}")
            return
        with source:  # closed however this ends (the player closes it too)
            with self._lock:
                if self._stopping:
                    return
                player = self._conn.play(source)
            print(f"playing {path}", flush=True)
            try:
                player.wait()
            except dv.AudioError as exc:  # e.g. FFmpegFailed for a file it cannot read
                print(f"{path} failed: {exc}")


def write_tones(folder: Path) -> list[str]:
    """Two 0.4 s tones (440 Hz, then 660 Hz) as WAV files in Discord's format."""
    paths = []
    for frequency in (440, 660):
        path = folder / f"tone-{frequency}hz.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(48000)
            out.writeframes(b"".join(tone(frequency, seconds=0.4)))
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Play audio files one after another.")
    parser.add_argument("files", nargs="*", help="paths or URLs (offline: two generated tones)")
    parser.add_argument("--guild", help="the guild id (required with DISCORD_TOKEN)")
    parser.add_argument("--channel", help="the voice channel id (required with DISCORD_TOKEN)")
    args = parser.parse_args(argv)
    token = os.environ.get("DISCORD_TOKEN")
    if token and not (args.files and args.guild and args.channel):
        parser.error("with DISCORD_TOKEN set, give --guild, --channel and FILEs")

    status = 0
    with tempfile.TemporaryDirectory(prefix="queue-bot-") as folder:  # for the generated tones
        tracks = args.files or write_tones(Path(folder))
        with discord_or_fake(token) as session, dv.Voice(session.gateway) as voice:
            guild, channel = args.guild or OFFLINE_GUILD_ID, args.channel or OFFLINE_CHANNEL_ID
            # leaving the `with` stops the bot, then disconnects
            with voice.join_channel(guild, channel) as conn, QueueBot(conn) as bot:
                for path in tracks:
                    bot.add(path)
                try:
                    bot.finish()
                except KeyboardInterrupt:
                    print("stopping")
                    status = 130
                if session.fake is not None:  # offline: what the fake Discord received
                    session.fake.wait_for_frames(conn.stats.frames_sent, 10.0, ssrc=conn.ssrc)
                    print(session.received_summary(conn.ssrc))
    return status


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m discord_voice`` (also installed as ``discord-voice``): the command line.

    discord-voice play FILE --guild G --channel C [--volume V] [--bitrate B]   (DISCORD_TOKEN)
    discord-voice play FILE --fake          plays into a local fake Discord (offline, no token)
    discord-voice probe --guild G --channel C [--trace FILE]
    discord-voice record DIR --guild G --channel C --seconds N [--mix]   a WAV file per speaker
    discord-voice demo                      the offline demo (see discord_voice.demo)
    (play, probe and record take --shard ID/COUNT: identify as that shard of the main gateway)

Exit codes: 0 done; 1 a failure, said in one line on stderr (never a traceback); 2 bad usage;
130 interrupted (Ctrl-C: the player stops, silence and the leave are sent first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from discord_voice.audio.listen import Sink
from discord_voice.audio.probe import open_source, probe
from discord_voice.audio.sinks import MixSink, MultiSink, WaveSink
from discord_voice.audio.source import Source
from discord_voice.connection import Connection
from discord_voice.core.sharding import Shard, parse_shard
from discord_voice.errors import (
    FFmpegFailed,
    LocalProtocolError,
    MainGatewayClosed,
    VoiceError,
)
from discord_voice.offline import (
    OFFLINE_CHANNEL_ID,
    OFFLINE_GUILD_ID,
    OfflineSession,
    discord_or_fake,
)
from discord_voice.opus import Encoder
from discord_voice.trace import JsonLinesTrace
from discord_voice.voice import Voice

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
PROG = "discord-voice"

#: Main gateway close codes a user can act on.
_MAIN_CLOSE_HINTS = {
    4004: "Discord refused the token: check DISCORD_TOKEN (the bot token, without 'Bot ')",
    4013: "Discord refused the intents value",
    4014: "the bot is not allowed an intent it asked for (enable it in the developer portal)",
}


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see (exit code 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        parser.error(str(exc))  # exits with 2
    except (VoiceError, OSError) as exc:
        print(f"{PROG}: error: {describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def describe(exc: BaseException) -> str:
    """One line a user can act on, for the usual failures."""
    if isinstance(exc, MainGatewayClosed) and exc.code in _MAIN_CLOSE_HINTS:
        return f"{_MAIN_CLOSE_HINTS[exc.code]} (main gateway closed with {exc.code})"
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        return f"no such file: {exc.filename}"
    if isinstance(exc, FFmpegFailed):
        last = exc.stderr_tail.strip().splitlines()[-1:] or [f"exit code {exc.returncode}"]
        return f"ffmpeg could not play it: {last[0]}"
    return " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever it was


# -- the parser ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Discord voice from the command line (token in DISCORD_TOKEN)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    play = sub.add_parser("play", help="play a file (or URL) into a voice channel")
    play.add_argument("file", help="any file or URL FFmpeg reads; Ogg Opus passes through")
    _add_connection_options(play)
    play.add_argument("--volume", type=float, default=1.0, help="0.0-2.0 (default 1.0)")
    play.add_argument("--bitrate", type=int, default=None, help="Opus bitrate in bit/s")
    play.set_defaults(run=run_play)

    probe_cmd = sub.add_parser("probe", help="join, report the connection's details, leave")
    _add_connection_options(probe_cmd)
    probe_cmd.add_argument(
        "--trace", metavar="FILE", help="write a redacted protocol trace (JSON lines) to FILE"
    )
    probe_cmd.add_argument(
        "--latency-wait",
        type=float,
        default=20.0,
        help="seconds to wait for the first heartbeat round trip (default 20)",
    )
    probe_cmd.set_defaults(run=run_probe)

    record = sub.add_parser("record", help="record each speaker of a channel to a WAV file")
    record.add_argument("directory", help="where <user_id>.wav files are written")
    _add_connection_options(record)
    record.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    record.add_argument(
        "--mix", action="store_true", help="also write every speaker mixed into DIR/mix.wav"
    )
    record.set_defaults(run=run_record)

    demo = sub.add_parser("demo", help="stream a tone to a local fake Discord and report")
    demo.add_argument("--seconds", type=float, default=5.0)
    demo.add_argument("--frequency", type=float, default=440.0)
    demo.add_argument("--mode", choices=("aes", "xchacha"), default=None)
    demo.add_argument("--no-dave", action="store_true", help="a channel without DAVE")
    demo.set_defaults(run=run_demo_command)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guild", help="guild (server) id")
    parser.add_argument("--channel", help="voice channel id")
    parser.add_argument("--gateway-url", help="main gateway URL (default: Discord's)")
    parser.add_argument(
        "--fake", action="store_true", help="use a local fake Discord (offline, no token)"
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="join timeout (seconds)")
    parser.add_argument(
        "--shard",
        type=_shard_argument,
        default=None,
        metavar="ID/COUNT",
        help="identify as this shard of the main gateway (the guild must be one of its own)",
    )


def _shard_argument(text: str) -> Shard:
    try:
        return parse_shard(text)
    except LocalProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- connecting ---------------------------------------------------------------------------------


def _token_and_target(args: argparse.Namespace) -> tuple[str | None, str | int, str | int]:
    if args.fake:
        if args.gateway_url:
            raise UsageError("--fake and --gateway-url exclude each other")
        return None, args.guild or OFFLINE_GUILD_ID, args.channel or OFFLINE_CHANNEL_ID
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        raise UsageError("set DISCORD_TOKEN to the bot token (or use --fake to play offline)")
    if not args.guild or not args.channel:
        raise UsageError("--guild and --channel are required (unless --fake)")
    return token, args.guild, args.channel


def _join(
    session: OfflineSession, voice: Voice, guild: str | int, channel: str | int, timeout: float
) -> Connection:
    conn = voice.join_channel(guild, channel, timeout=timeout)
    if conn.e2ee_active:
        conn.wait_for_e2ee(timeout)
    where = "a local fake Discord" if session.fake is not None else conn.endpoint
    print(f"joined channel {conn.channel_id} on {where} ({conn.mode})", file=sys.stderr)
    return conn


# -- play ---------------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Source:
    if not (0.0 <= args.volume <= 2.0):
        raise UsageError(f"--volume must be between 0.0 and 2.0, got {args.volume}")
    found = probe(args.file)
    encoder = None
    if args.bitrate is not None and not found.passthrough:
        try:
            encoder = Encoder(bitrate=args.bitrate)
        except ValueError as exc:
            raise UsageError(f"--bitrate: {exc}") from None
    return open_source(found.target, encoder=encoder)


def run_play(args: argparse.Namespace) -> int:
    token, guild, channel = _token_and_target(args)
    source = _open(args)  # before connecting: a missing file or ffmpeg fails fast
    interrupted = False
    with source, discord_or_fake(token, gateway_url=args.gateway_url, shard=args.shard) as session:
        voice = Voice(session.gateway)
        try:
            conn = _join(session, voice, guild, channel, args.timeout)
            player = conn.play(source, volume=args.volume)
            bar = Progress(player.duration, sys.stderr)
            try:
                while not player.wait(0.25):  # raises the player's error at the end
                    bar.update(player.position)
            except KeyboardInterrupt:
                interrupted = True
                player.stop()  # silence and Speaking 0, then the leave below
                player.wait(10.0)
            finally:
                bar.close(player.position)
            if session.fake is not None and conn.ssrc is not None:
                _wait_for_arrival(session, conn.ssrc, conn.stats.frames_sent)
                print(session.received_summary(conn.ssrc))
            conn.disconnect()
        finally:
            voice.close()
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def _wait_for_arrival(session: OfflineSession, ssrc: int, sent: int) -> None:
    """Offline: wait (bounded) until the fake has every packet we sent (the silence included:
    the player returns once the last one left, not once it arrived)."""
    fake = session.fake
    assert fake is not None
    fake.wait_until(lambda f: len(f.frames(ssrc)) >= sent, 5.0)


class Progress:
    """Elapsed / total on `stream`: tqdm's bar when tqdm is installed and `stream` is a
    terminal, else a plain line redrawn in place (or written once at the end when not a tty)."""

    def __init__(self, total: float | None, stream: TextIO) -> None:
        self._total = total
        self._stream = stream
        self._tty = stream.isatty()
        self._tqdm = None
        self._shown = 0.0
        if self._tty:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm(
                    total=round(total, 1) if total else None,
                    unit="s",
                    file=stream,
                    bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s",
                )

    def update(self, position: float) -> None:
        if self._tqdm is not None:
            self._tqdm.update(round(position - self._shown, 2))
            self._shown = position
        elif self._tty:
            self._stream.write(f"\r{self._line(position)}")
            self._stream.flush()

    def close(self, position: float) -> None:
        if self._tqdm is not None:
            self.update(position)
            self._tqdm.close()
        elif self._tty:
            self._stream.write(f"\r{self._line(position)}\n")
        else:
            self._stream.write(f"{self._line(position)}\n")
        self._stream.flush()

    def _line(self, position: float) -> str:
        total = "?" if self._total is None else _clock(self._total)
        return f"played {_clock(position)} / {total}"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"


# -- probe --------------------------------------------------------------------------------------


def run_record(args: argparse.Namespace) -> int:
    """Join with receive=True, decode every speaker into WaveSink files (and with --mix all of
    them into one MixSink file), leave; Ctrl-C stops early and keeps what was recorded.
    Offline (`--fake`), a fake member speaks a tone."""
    token, guild, channel = _token_and_target(args)
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be positive, got {args.seconds}")
    waves = WaveSink(args.directory)
    mixed = MixSink(waves.directory / "mix.wav") if args.mix else None
    sink: Sink = waves if mixed is None else MultiSink(waves, mixed)
    interrupted = False
    with discord_or_fake(token, gateway_url=args.gateway_url, shard=args.shard) as session:
        voice = Voice(session.gateway)
        try:
            conn = voice.join_channel(guild, channel, receive=True, timeout=args.timeout)
            if conn.e2ee_active:
                conn.wait_for_e2ee(args.timeout)
            print(f"recording channel {conn.channel_id} for {args.seconds:g} s", file=sys.stderr)
            listener = conn.listen(sink)
            if session.fake is not None:  # someone to hear: a member speaking a tone
                _fake_speaker(session, conn, args.seconds)
            started = time.monotonic()
            reported = 0
            try:
                while (elapsed := time.monotonic() - started) < args.seconds:
                    heard = len(listener.stats().users)
                    if sys.stderr.isatty():
                        sys.stderr.write(f"\r{_clock(elapsed)} recorded, {heard} speaker(s)")
                        sys.stderr.flush()
                    elif heard != reported:  # a log: one line per new speaker
                        print(f"{_clock(elapsed)} {heard} speaker(s) heard", file=sys.stderr)
                        sys.stderr.flush()
                    reported = heard
                    time.sleep(min(0.25, args.seconds - elapsed))
            except KeyboardInterrupt:
                interrupted = True
            conn.stop_listening()  # decodes what was received, finishes the files
            conn.disconnect()
        finally:
            voice.close()
    files = waves.paths()
    for user, path in files.items():
        print(f"{user}\t{path}")
    if mixed is not None:
        print(f"mix\t{mixed.path}")
    print(f"{len(files)} speaker(s) recorded in {args.directory}", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def _fake_speaker(session: OfflineSession, conn: Connection, seconds: float) -> None:
    """Offline: a member of the fake's call speaks a 440 Hz tone (sent at once, unpaced)."""
    from discord_voice.opus import encode_frames, tone

    fake = session.fake
    assert fake is not None
    speaker = fake.add_speaker()
    if conn.e2ee_active:
        conn.wait_for_e2ee(10.0)  # the speaker's arrival is a new epoch
    speaker.send(list(encode_frames(tone(440.0, min(seconds, 5.0)))))


def run_probe(args: argparse.Namespace) -> int:
    token, guild, channel = _token_and_target(args)
    trace = JsonLinesTrace(args.trace).install() if args.trace else None
    try:
        # offline, a 1 s voice heartbeat so that the first round trip comes quickly
        fake_options = {"voice_heartbeat_interval": 1.0}
        with discord_or_fake(
            token, gateway_url=args.gateway_url, shard=args.shard, **fake_options
        ) as session:
            voice = Voice(session.gateway)
            try:
                conn = _join(session, voice, guild, channel, args.timeout)
                latency = _first_latency(conn, args.latency_wait)
                _report(conn, latency, sys.stdout)
                conn.disconnect()
            finally:
                voice.close()
    finally:
        if trace is not None:
            trace.close()
            print(
                f"trace: {trace.records} records in {args.trace} (tokens, session ids, keys "
                "and our address redacted)",
                file=sys.stderr,
            )
    return EXIT_OK


def _first_latency(conn: Connection, wait: float) -> float | None:
    """The first voice heartbeat round trip, waiting up to `wait` seconds for it."""
    deadline = time.monotonic() + wait
    while conn.latency is None and conn.error is None and time.monotonic() < deadline:
        time.sleep(0.05)  # no event tells a new round trip: poll, for a bounded time
    return conn.latency


def _report(conn: Connection, latency: float | None, out: TextIO) -> None:
    udp = conn.udp_server
    external = conn.external_address
    if conn.e2ee_active:
        e2ee = (
            f"DAVE protocol v{conn.dave_protocol_version}, epoch {conn.dave_epoch}, "
            f"privacy code {conn.voice_privacy_code}"
        )
    else:
        e2ee = "off (no DAVE in this channel)"
    rows = [
        ("voice server", f"{conn.endpoint} (udp {udp[0]}:{udp[1]})" if udp else conn.endpoint),
        ("transport", conn.mode or "?"),
        ("end-to-end", e2ee),
        ("ssrc", str(conn.ssrc)),
        ("ip discovery", f"{external[0]}:{external[1]}" if external else "?"),
        ("latency", f"{latency * 1000:.1f} ms (voice heartbeat)" if latency else "no ack yet"),
    ]
    for name, value in rows:
        print(f"{name:14}{value}", file=out)


# -- demo ---------------------------------------------------------------------------------------


def run_demo_command(args: argparse.Namespace) -> int:
    from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20
    from discord_voice.demo import demo_succeeded, run_demo

    mode = {"aes": MODE_AES256_GCM, "xchacha": MODE_XCHACHA20}.get(args.mode)
    report = run_demo(
        seconds=args.seconds, frequency=args.frequency, mode=mode, dave=not args.no_dave
    )
    return EXIT_OK if demo_succeeded(report, args.seconds) else EXIT_FAILURE

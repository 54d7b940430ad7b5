"""A sharded bot as N processes: one shard group per process, restarted when it crashes.

    # one machine, 4 shards in 2 processes, joining each listed guild's channel on its shard:
    DISCORD_TOKEN=... python examples/sharded_bot.py supervise --shards 4 --processes 2 \\
        --join GUILD_ID:CHANNEL_ID --join GUILD_ID:CHANNEL_ID
    # one shard group (what a process manager runs, one per machine or container):
    DISCORD_TOKEN=... python examples/sharded_bot.py group --shard-ids 0,1 --shards 4 --join ...
    python examples/sharded_bot.py supervise   # no token: offline, 4 shards, a fake Discord

``group`` runs a `dv.ShardGroup` for its shard ids, one `dv.Voice` across them, and joins the
channel of every ``--join`` guild its shards own (the others belong to another process), then
stays until SIGTERM or SIGINT, when it leaves and exits 0. ``supervise`` starts one ``group``
process per slice of the shards (shard ids split into ``--processes`` contiguous runs, so each
process starts its buckets in order), and when one exits on its own (a crash, a kill) starts it
again after a backoff (1 s doubling to 30 s; a process that ran 60 s starts the ladder over);
on SIGTERM or SIGINT it stops them all (SIGTERM, a bounded wait, then SIGKILL). Each process
has its own Identify limiter: the supervisor starts them one bucket round (5 s) apart per shard
before it, so their first Identifies keep to ``max_concurrency`` 1 across processes too.

The same ``group`` command is what systemd, a container or any process manager runs per machine
(``Restart=on-failure`` is the supervisor's job there)::

    [Service]
    Environment=DISCORD_TOKEN=...
    ExecStart=/usr/bin/python3 /srv/bot/sharded_bot.py group --shard-ids 0,1 --shards 4 --join ...
    Restart=on-failure
    RestartSec=5
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

import discord_voice as dv

#: Seconds a group process that exits on its own waits before it is started again (doubling).
FIRST_BACKOFF, MAX_BACKOFF, STEADY = 1.0, 30.0, 60.0


def parse_join(text: str) -> tuple[int, int]:
    guild, _, channel = text.partition(":")
    if not (guild.isdecimal() and channel.isdecimal()):
        raise argparse.ArgumentTypeError(f"--join takes GUILD_ID:CHANNEL_ID, got {text!r}")
    return int(guild), int(channel)


def slices(shards: int, processes: int) -> list[list[int]]:
    """Shard ids 0..shards-1 in `processes` contiguous runs, as even as they come."""
    if not 1 <= processes <= shards:
        raise ValueError("need 1 <= processes <= shards")
    return [list(range(shards))[p * shards // processes : (p + 1) * shards // processes] for p in
            range(processes)]  # fmt: skip


# -- one shard group (one process) --------------------------------------------------------------


def run_group(
    token: str,
    shard_ids: list[int],
    shards: int,
    joins: Sequence[tuple[int, int]],
    gateway_url: str | None,
    max_concurrency: int = 1,
) -> int:
    """Connect the group, join the voice channels of its guilds, stay until told to stop."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stop.set())
    mine = [(g, c) for g, c in joins if dv.shard_for(g, shards) in shard_ids]
    with dv.ShardGroup(
        token, shard_ids, shards, url=gateway_url, max_concurrency=max_concurrency
    ) as group:
        group.connect(timeout=30)
        with dv.Voice(group) as voice:
            connections = [voice.join_channel(g, c, timeout=20) for g, c in mine]
            print(f"shards {shard_ids}: in {len(connections)} voice channel(s)", flush=True)
            while not stop.wait(1.0) and group.error is None:
                pass
            for conn in connections:
                conn.disconnect()
    return 0 if group.error is None else 1


# -- the supervisor ------------------------------------------------------------------------------


@dataclass
class Child:
    """One group process: its shard ids, the process, and its restart ladder."""

    shard_ids: list[int]
    delay: float = 0.0  # before its first start: its place in the Identify order
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    backoff: float = FIRST_BACKOFF
    started_at: float = 0.0


class Supervisor:
    """Runs one ``group`` process per slice and restarts the ones that exit; `stop` ends it.

    `command(shard_ids)` is the argument list of a group process (the same script). A waiter
    thread per process puts ``("exit", child, code)`` on one queue, so the supervisor blocks on
    that queue instead of polling. `stagger` is the Identify interval that spaces the first
    starts (5 s, Discord's; 0 against a fake that does not limit Identifies), one round per
    `max_concurrency` shards before a process.
    """

    def __init__(
        self,
        groups: list[list[int]],
        command: Callable[[list[int]], list[str]],
        env: dict[str, str],
        *,
        first_backoff: float = FIRST_BACKOFF,
        stagger: float = 5.0,
        max_concurrency: int = 1,
    ) -> None:
        # a process starts once the shards before it have had their Identify slots: one
        # round of `stagger` seconds per `max_concurrency` of them
        self.children = [
            Child(
                ids,
                delay=stagger * math.ceil(sum(len(g) for g in groups[:n]) / max_concurrency),
                backoff=first_backoff,
            )
            for n, ids in enumerate(groups)
        ]
        self._command = command
        self._env = env
        self._first_backoff = first_backoff
        self._events: queue.Queue[tuple[str, Child | None, int]] = queue.Queue()
        self._stopping = threading.Event()
        self._waiters: list[threading.Thread] = []
        self.restarts = 0

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(self._command(child.shard_ids), env=self._env)
        child.starts += 1
        child.started_at = _now()
        process = child.process
        waiter = threading.Thread(
            target=lambda: self._events.put(("exit", child, process.wait())),
            name=f"supervisor-wait:{process.pid}",
        )
        waiter.start()
        self._waiters.append(waiter)

    def run(self) -> None:
        """Start every group (one Identify round apart), then restart those that exit, until
        `stop`."""
        begun = _now()
        for first in self.children:
            if self._stopping.wait(max(0.0, begun + first.delay - _now())):
                break
            self._start(first)
        while not self._stopping.is_set():
            kind, exited, code = self._events.get()
            if kind == "stop" or exited is None:
                break
            child = exited
            if self._stopping.is_set():
                continue
            if _now() - child.started_at >= STEADY:
                child.backoff = self._first_backoff  # it had been running well
            print(f"shards {child.shard_ids} exited with {code}; again in {child.backoff:g} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            if self._stopping.wait(child.backoff):
                break
            child.backoff = min(child.backoff * 2, MAX_BACKOFF)
            self.restarts += 1
            self._start(child)
        self._stop_children()

    def stop(self) -> None:
        self._stopping.set()
        self._events.put(("stop", None, 0))

    def _stop_children(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        for child in self.children:
            if child.process is not None:
                try:
                    child.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait(timeout=10)
        for waiter in self._waiters:
            waiter.join(10)


def _now() -> float:
    return dv.SystemClock().monotonic()


def group_command(
    shards: int,
    joins: Sequence[tuple[int, int]],
    gateway_url: str | None,
    max_concurrency: int = 1,
) -> Callable[[list[int]], list[str]]:
    """The argument list of a ``group`` process of this script, for some shard ids."""

    def command(shard_ids: list[int]) -> list[str]:
        args = [sys.executable, __file__, "group", "--shards", str(shards)]
        args += ["--max-concurrency", str(max_concurrency)]
        args += ["--shard-ids", ",".join(map(str, shard_ids))]
        args += [a for g, c in joins for a in ("--join", f"{g}:{c}")]
        return args + (["--gateway-url", gateway_url] if gateway_url else [])

    return command


def supervise(
    token: str,
    shards: int,
    processes: int,
    joins: Sequence[tuple[int, int]],
    gateway_url: str | None,
    stagger: float = 5.0,
    max_concurrency: int = 1,
) -> int:
    supervisor = Supervisor(
        slices(shards, processes),
        group_command(shards, joins, gateway_url, max_concurrency),
        {**os.environ, "DISCORD_TOKEN": token},
        stagger=stagger,
        max_concurrency=max_concurrency,
    )

    def on_signal(number: int, frame: FrameType | None) -> None:
        supervisor.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    supervisor.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("supervise", "group"))
    parser.add_argument("--shards", type=int, default=4, help="shard count of the bot")
    parser.add_argument("--processes", type=int, default=2, help="supervise: group processes")
    parser.add_argument("--shard-ids", default="", help="group: its shard ids, e.g. 0,1")
    parser.add_argument("--join", type=parse_join, action="append", default=[])
    parser.add_argument("--gateway-url", default=None)
    parser.add_argument(
        "--max-concurrency", type=int, default=1, help="Get Gateway Bot's max_concurrency"
    )
    args = parser.parse_args(argv)
    token = os.environ.get("DISCORD_TOKEN")
    if args.role == "group":
        if not token:
            parser.error("a group process needs DISCORD_TOKEN")
        ids = [int(n) for n in args.shard_ids.split(",") if n]
        return run_group(token, ids, args.shards, args.join, args.gateway_url, args.max_concurrency)
    if token:
        return supervise(
            token, args.shards, args.processes, args.join, args.gateway_url,
            5.0, args.max_concurrency,
        )  # fmt: skip
    from discord_voice.testing import FakeDiscord  # offline: one fake for every process

    with FakeDiscord(dave=False, shards=args.shards) as fake:
        joins = args.join or [((1_000_000 + n) << 22, 1000 + n) for n in range(args.shards)]
        # the fake does not limit Identifies: no need to space the processes' first ones
        return supervise(
            fake.token, args.shards, args.processes, joins, fake.gateway_url, 0.0, args.shards
        )


if __name__ == "__main__":
    raise SystemExit(main())

"""The voice heartbeat thread body: beat on the pacemaker's schedule, die loudly when ACKs stop."""

from __future__ import annotations

import threading
from collections.abc import Callable

from discord_voice.clock import Clock, Signal
from discord_voice.core.pacemaker import Pacemaker
from discord_voice.errors import HeartbeatTimeout

__all__ = ["run_heartbeat"]


def run_heartbeat(
    *,
    clock: Clock,
    stop: Signal,
    lock: threading.Lock,
    pacemaker: Pacemaker,
    make_frame: Callable[[int], str],
    send: Callable[[str], None],
) -> None:
    """Loop until `stop` is set; raise `HeartbeatTimeout` when the pacemaker says dead.

    `make_frame(nonce)` runs under `lock` (it reads protocol state); `send` runs outside it.
    """
    while True:
        with lock:
            due = pacemaker.next_due
        if clock.wait_until(due, stop):
            return
        now = clock.monotonic()
        with lock:
            if pacemaker.is_dead(now):
                raise HeartbeatTimeout(
                    f"no heartbeat ACK for {pacemaker.dead_after:g} intervals "
                    f"({pacemaker.interval:g}s each)",
                    pacemaker.interval,
                )
            frame = make_frame(pacemaker.beat(now))
        send(frame)

"""The reconnect watchdog: a bound on how long a reconnect may wait for READY or RESUMED.

After the gateway has been READY once, every new connection (a resume or a fresh identify)
gets a ``dv-gateway-watchdog`` thread that waits on the clock until `deadline`. If READY or
RESUMED has not arrived by then (and the connection is still up), it raises `GatewayTimeout`:
the connection is closed with 4000 (the session stays resumable) and the `ReconnectPlan`
counts a failed attempt. Heartbeats and their ACKs do not move the deadline: a server that
answers heartbeats but never the Identify/Resume still trips it. The first connection has no
watchdog: ``Gateway.connect(timeout)`` bounds it.
"""

from __future__ import annotations

from typing import Final

from discord_voice.clock import Clock, Signal
from discord_voice.errors import GatewayTimeout

__all__ = ["DEFAULT_RECONNECT_TIMEOUT", "run_reconnect_watchdog"]

#: Default seconds from opening a reconnect's websocket to READY/RESUMED.
DEFAULT_RECONNECT_TIMEOUT: Final = 15.0


def run_reconnect_watchdog(
    clock: Clock, deadline: float, timeout: float, *, settled: Signal, stop: Signal, resume: bool
) -> None:
    """Return once `settled` (READY/RESUMED arrived) or `stop` is set; else raise at `deadline`.

    `settled` must also be set when `stop` is, so that the wait ends at once either way.
    Raises `GatewayTimeout` naming RESUMED (if `resume`) or READY, with `timeout` seconds.
    """
    if clock.wait_until(deadline, settled) or stop.is_set():
        return
    answer = "RESUMED" if resume else "READY"
    raise GatewayTimeout(f"main gateway {answer} on a reconnect", timeout)

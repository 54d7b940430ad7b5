"""When the main gateway connection ends, whether and how `Gateway` comes back.

`Recovery` feeds each failure to a `ReconnectPlan` over `ClosePolicy.main_default()`: a close
code, a dropped connection, our own zombie close, our close of a reconnect that got no
READY/RESUMED in time (the watchdog), op 7 Reconnect and op 9 Invalid Session become the plan's
next `Attempt` (resume on ``resume_gateway_url``, or identify afresh) or a
`GiveUp`. Failures that are not about the connection (a malformed READY, a raising callback)
are not recovered from.
"""

from __future__ import annotations

from discord_voice.core.opcodes import ClientCloseCode, GatewayCloseCode
from discord_voice.core.reconnect import (
    Attempt,
    ClosePolicy,
    GatewayAction,
    GiveUp,
    ReconnectPlan,
)
from discord_voice.errors import (
    ConnectionClosed,
    GatewayTimeout,
    HeartbeatTimeout,
    MainGatewayClosed,
)

__all__ = ["ServerAskedToReconnect", "Recovery", "default_plan"]


class ServerAskedToReconnect(ConnectionClosed):
    """op 7 Reconnect or op 9 Invalid Session: end this websocket and come back.

    `code` is what the plan should treat it as: None (no verdict: resume) or, for op 9 with
    ``d: false``, 4009 (the session is gone: identify afresh).
    """

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


def invalid_session(resumable: bool) -> ServerAskedToReconnect:
    """The signal for op 9 with ``d: resumable``."""
    if resumable:
        return ServerAskedToReconnect("main gateway sent op 9 Invalid Session (resumable)", None)
    code = int(GatewayCloseCode.SESSION_TIMED_OUT)
    return ServerAskedToReconnect("main gateway sent op 9 Invalid Session (not resumable)", code)


def reconnect_requested() -> ServerAskedToReconnect:
    """The signal for op 7 Reconnect."""
    return ServerAskedToReconnect("main gateway sent op 7 Reconnect", None)


def default_plan() -> ReconnectPlan[GatewayAction]:
    """Resume up to 3 times, then up to 5 fresh sessions, with capped backoff and jitter."""
    return ReconnectPlan(ClosePolicy.main_default())


class Recovery:
    """The attempt in progress (None while connected) and the plan that picks the next one.

    Not thread-safe: the owner calls it under its lock.
    """

    def __init__(self, plan: ReconnectPlan[GatewayAction]) -> None:
        self.plan = plan
        self.attempt: Attempt | None = None

    def next_step(self, error: BaseException, *, ready: bool = True) -> Attempt | GiveUp | None:
        """The step after `error` ended the connection; None: not a connection failure, or,
        before the first READY (`ready` False), anything but an Identify refused with op 9
        (over ``max_concurrency``: another process's shard took the slot), which ends
        ``connect()`` instead."""
        if not ready and not (isinstance(error, ServerAskedToReconnect) and error.code is not None):
            return None
        if isinstance(error, ServerAskedToReconnect):
            code, reason, ours = error.code, str(error), False
        elif isinstance(error, HeartbeatTimeout):
            code, reason, ours = ClientCloseCode.RECOVERING, "heartbeat ACK overdue (zombie)", True
        elif isinstance(error, GatewayTimeout):  # the reconnect watchdog
            code, reason, ours = ClientCloseCode.RECOVERING, f"no {error.stage} in time", True
        elif isinstance(error, MainGatewayClosed):
            code, reason, ours = error.code, error.reason, False
        else:
            return None
        if self.attempt is None:
            step = self.plan.first(code, reason, we_closed=ours)
        else:
            step = self.plan.after_failure(self.attempt, code, reason)
        if isinstance(step, Attempt):
            self.attempt = step
        return step

    def succeeded(self) -> Attempt | None:
        """READY or RESUMED arrived: the attempt (if any) worked; the next failure starts anew."""
        attempt, self.attempt = self.attempt, None
        return attempt

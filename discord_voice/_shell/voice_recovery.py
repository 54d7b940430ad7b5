"""The recovery loop of a voice connection: resume, reconnect or wait for a move, bounded.

`run_recovery` walks a `ReconnectPlan`: each `Attempt` is reported, then carried out through the
connection's `RecoverySteps` (resume the websocket, reconnect with a fresh op 4, or wait for the
new VOICE_SERVER_UPDATE of a move and go there); a failure gives the plan's next step, until an
attempt succeeds or the plan gives up, and then the connection fails with a typed error. The
backoff before an attempt waits on the connection's clock and ends at once when the connection
closes. It runs on the connection's ``dv-voice-recover:<guild>`` thread and knows nothing else
of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from discord_voice.clock import Clock, Signal
from discord_voice.core.opcodes import ClientCloseCode
from discord_voice.core.reconnect import (
    Action,
    Attempt,
    AttemptKind,
    GiveUp,
    ReconnectPlan,
    StopCause,
)
from discord_voice.errors import (
    ConnectionClosed,
    Disconnected,
    HeartbeatTimeout,
    VoiceError,
    VoiceGatewayClosed,
)

__all__ = ["RecoverySteps", "first_step", "move_attempt", "run_recovery"]

#: The code a client-side close stands for in the plan (we closed a zombie: not 1000/1001).
_OUR_RECOVERY_CLOSE = ClientCloseCode.RECOVERING


@dataclass(frozen=True)
class RecoverySteps:
    """What the recovery loop can ask of its connection (each may raise a `VoiceError`)."""

    closed: Signal  #: set when the connection ends: the loop stops at once
    clock: Clock  #: the backoff before each attempt waits on it (a FakeClock in tests)
    #: enter RESUMING/RECONNECTING because of the error; False: closing
    begin: Callable[[Attempt, BaseException], bool]
    resume: Callable[[], None]  #: op 7 on a new websocket
    reconnect: Callable[[], None]  #: fresh op 4, then a new session from its updates
    await_move: Callable[[float], bool]  #: wait for a new VOICE_SERVER_UPDATE; False: none
    move: Callable[[], None]  #: a new session from the latest updates
    #: back to READY; returns a loss that happened meanwhile, to recover from in turn
    recovered: Callable[[Attempt], BaseException | None]
    give_up: Callable[[BaseException], None]  #: end the connection with this error


def first_step(plan: ReconnectPlan[Action], error: BaseException) -> Attempt | GiveUp:
    """The plan's first step after the voice websocket was lost with `error`."""
    if isinstance(error, VoiceGatewayClosed):
        return plan.first(error.code, error.reason)
    if isinstance(error, HeartbeatTimeout):  # we closed a zombie socket ourselves
        return plan.first(_OUR_RECOVERY_CLOSE, str(error), we_closed=True)
    if isinstance(error, ConnectionClosed):  # dropped without a close frame
        return plan.first(None, str(error))
    return GiveUp(StopCause.FATAL_CODE, None, str(error))  # not a connection failure


def move_attempt(plan: ReconnectPlan[Action], reason: str) -> Attempt:
    """The step for a VOICE_SERVER_UPDATE that arrived while connected (a move)."""
    return Attempt(AttemptKind.WAIT_FOR_MOVE, 1, plan.move_timeout, None, reason)


def run_recovery(
    steps: RecoverySteps,
    plan: ReconnectPlan[Action],
    step: Attempt | GiveUp,
    error: BaseException,
) -> None:
    """Recover until an attempt succeeds, the plan gives up, or the connection closes."""
    while True:
        if isinstance(step, GiveUp):
            steps.give_up(_give_up_error(step, error))
            return
        attempt = step
        if not steps.begin(attempt, error):
            return
        try:
            if attempt.kind is AttemptKind.WAIT_FOR_MOVE:
                if not steps.await_move(attempt.delay):
                    if steps.closed.is_set():
                        return
                    step = plan.wait_expired(attempt)
                    continue
                steps.move()
            else:
                clock = steps.clock
                if clock.wait_until(clock.monotonic() + attempt.delay, steps.closed):
                    return
                if attempt.kind is AttemptKind.RESUME:
                    steps.resume()
                else:
                    steps.reconnect()
        except VoiceError as exc:
            if steps.closed.is_set():
                return
            error = exc
            code = exc.code if isinstance(exc, VoiceGatewayClosed) else None
            step = plan.after_failure(attempt, code, str(exc))
            continue
        lost = steps.recovered(attempt)
        if lost is None:
            return
        error = lost
        step = first_step(plan, lost)


def _give_up_error(step: GiveUp, error: BaseException) -> BaseException:
    if step.cause is StopCause.NOT_MOVED:
        what = "no close code" if step.code is None else f"close code {step.code}"
        return Disconnected(
            "not_moved",
            f"disconnected from voice ({what}) and no new voice server was assigned in time",
            step.code,
        )
    return error

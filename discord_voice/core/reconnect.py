"""What to do when a websocket closes: the close-code policy of both gateways, and retry budgets.

Pure: no sockets, threads or clocks. The shell reports a close (code, reason, whether it closed the
socket itself) and gets back an `Action`, or, through `ReconnectPlan`, the next `Attempt` to make
(with its delay) or a `GiveUp` naming why to stop. Every attempt is a record the shell can emit.

Two enums, so that each gateway's shell can match its actions exhaustively: `Action` for the voice
gateway (RESUME, RECONNECT, WAIT_FOR_MOVE, FATAL) and `GatewayAction` for the main gateway
(RESUME, REIDENTIFY, FATAL). RECONNECT means a new voice session: a fresh Voice State Update on the
main gateway, then new VOICE_STATE/SERVER_UPDATEs and a new voice websocket. FATAL means "do not
retry"; the shell turns it into a typed error (or, for our own 1000/1001, a clean end).

Voice gateway (`ClosePolicy.voice_default()`):

=====================  ==============  =========================================================
code                   action          why
=====================  ==============  =========================================================
none (TCP dropped)     RESUME          no verdict on the session; it stays resumable a while
< 4000 (1001, 1006..)  RESUME          transport-level closes, not a verdict on the session
1000/1001 sent by us   FATAL (stop)    we ended the session on purpose
other code sent by us  RESUME          we closed to recover (e.g. a zombie socket)
4001 unknown opcode    FATAL           client bug: a retry sends the same thing again
4002 failed to decode  FATAL           client bug
4003 not authed        FATAL           client bug (a payload before Identify)
4004 auth failed       FATAL           the token came from VOICE_SERVER_UPDATE: a bug, not luck
4005 already authed    FATAL           client bug
4006 session invalid   RECONNECT       cannot be resumed: only a new session helps
4009 session timeout   RECONNECT       same
4011 server not found  RECONNECT       the main gateway assigns another server
4012 unknown protocol  FATAL           client bug (Select Protocol)
4014 disconnected      WAIT_FOR_MOVE   kicked or moved: "should not reconnect"; a move sends a
                                       new VOICE_SERVER_UPDATE, a kick does not
4015 server crashed    RESUME          Discord's docs say resume
4016 unknown mode      FATAL           client bug (a mode the server did not offer)
4017 DAVE required     FATAL           every retry without DAVE ends the same way (join loops)
4020 bad request       FATAL           client bug
4021 rate limited      FATAL           "should not reconnect": retrying deepens the limit
4022 call terminated   WAIT_FOR_MOVE   channel deleted or voice server changed; a change comes
                                       with a new VOICE_SERVER_UPDATE
other >= 4000          RECONNECT       a code newer than this table: a new session recovers from
                                       more than a resume can, the budget bounds it, and the
                                       final error carries the code; FATAL would turn every new
                                       benign code into an outage
=====================  ==============  =========================================================

Main gateway (`ClosePolicy.main_default()`): none, < 4000 and 4000-4003, 4005, 4008 and unknown
codes RESUME (Discord: "Reconnect: true"); 4007 (invalid seq) and 4009 (session timed out)
REIDENTIFY (a new session); 4004, 4010, 4011, 4012, 4013, 4014 FATAL (bad token, shard or intents
settings: a retry cannot fix them); our own 1000/1001 FATAL (stop: they invalidate the session).

Override any row: ``ClosePolicy.voice_default().with_overrides({4006: Action.FATAL})`` returns a
new policy; the default rows (none, < 4000, unknown, ours) change with `dataclasses.replace`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Generic, Literal, TypeVar

from discord_voice.core.opcodes import GatewayCloseCode, describe_voice_close

__all__ = [
    "Action",
    "GatewayAction",
    "ClosePolicy",
    "RetryBudget",
    "AttemptKind",
    "Attempt",
    "StopCause",
    "GiveUp",
    "ReconnectPlan",
    "describe",
]


class Action(enum.Enum):
    """What the voice connection does after its websocket closed."""

    RESUME = "resume"  #: op 7 on a new websocket, same session, UDP socket, SSRC and keys
    RECONNECT = "reconnect"  #: a new session: fresh Voice State Update on the main gateway
    WAIT_FOR_MOVE = "wait_for_move"  #: wait briefly for a new VOICE_SERVER_UPDATE, else end
    FATAL = "fatal"  #: do not retry


class GatewayAction(enum.Enum):
    """What the main gateway client does after its websocket closed."""

    RESUME = "resume"  #: op 6 on ``resume_gateway_url``
    REIDENTIFY = "reidentify"  #: a new session: op 2 Identify on the cached gateway URL
    FATAL = "fatal"  #: do not retry


A = TypeVar("A", Action, GatewayAction)
GatewayName = Literal["voice", "main"]

_NORMAL_CLOSES = (1000, 1001)
_TRANSPORT_CLOSES = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1006: "abnormal closure",
    1007: "invalid payload data",
    1008: "policy violation",
    1009: "message too big",
    1011: "internal server error",
    1012: "service restart",
    1013: "try again later",
}


def describe(code: int | None, *, gateway: GatewayName = "voice") -> str:
    """A short human description of a close code of the voice or the main gateway."""
    if code is None or code < 4000:
        if code in _TRANSPORT_CLOSES:
            return _TRANSPORT_CLOSES[code]
        return describe_voice_close(code) if code is None else "transport-level close"
    if gateway == "voice":
        return describe_voice_close(code)
    try:
        return GatewayCloseCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "unknown close code"


@dataclass(frozen=True)
class ClosePolicy(Generic[A]):
    """One gateway's close-code table plus the defaults for the codes it does not list.

    Frozen: `with_overrides` and `dataclasses.replace` return new policies, the defaults stay.
    """

    gateway: GatewayName
    table: Mapping[int, A]
    dropped: A  #: no close frame (TCP dropped), or a non-normal code we sent ourselves
    normal_by_us: A  #: a 1000/1001 we sent ourselves
    below_4000: A  #: any other code < 4000 (also nonsense such as negative codes)
    unknown: A  #: any code >= 4000 not in `table`

    def __post_init__(self) -> None:
        if self.gateway not in ("voice", "main"):
            raise ValueError(f"gateway must be 'voice' or 'main', not {self.gateway!r}")
        kind = Action if self.gateway == "voice" else GatewayAction
        values = [self.dropped, self.normal_by_us, self.below_4000, self.unknown]
        for code, action in self.table.items():
            if not isinstance(code, int):
                raise TypeError(f"close codes must be ints, not {code!r}")
            values.append(action)
        for action in values:
            if not isinstance(action, kind):
                raise TypeError(
                    f"the {self.gateway} gateway policy takes {kind.__name__} "
                    f"values, not {action!r}"
                )
        object.__setattr__(self, "table", MappingProxyType(dict(self.table)))

    @staticmethod
    def voice_default() -> ClosePolicy[Action]:
        """The voice gateway policy documented in this module's table."""
        table = {
            code: Action.FATAL
            for code in (4001, 4002, 4003, 4004, 4005, 4012, 4016, 4017, 4020, 4021)
        }
        table.update(
            {
                4006: Action.RECONNECT,
                4009: Action.RECONNECT,
                4011: Action.RECONNECT,
                4014: Action.WAIT_FOR_MOVE,
                4022: Action.WAIT_FOR_MOVE,
                4015: Action.RESUME,
            }
        )
        return ClosePolicy(
            "voice",
            table,
            dropped=Action.RESUME,
            normal_by_us=Action.FATAL,
            below_4000=Action.RESUME,
            unknown=Action.RECONNECT,
        )

    @staticmethod
    def main_default() -> ClosePolicy[GatewayAction]:
        """The main gateway policy documented in this module's docstring."""
        table = {code: GatewayAction.RESUME for code in (4000, 4001, 4002, 4003, 4005, 4008)}
        table.update({code: GatewayAction.FATAL for code in (4004, 4010, 4011, 4012, 4013, 4014)})
        table.update({4007: GatewayAction.REIDENTIFY, 4009: GatewayAction.REIDENTIFY})
        return ClosePolicy(
            "main",
            table,
            dropped=GatewayAction.RESUME,
            normal_by_us=GatewayAction.FATAL,
            below_4000=GatewayAction.RESUME,
            unknown=GatewayAction.RESUME,
        )

    def with_overrides(self, overrides: Mapping[int, A]) -> ClosePolicy[A]:
        """A new policy whose table has `overrides` on top of this one's."""
        return replace(self, table={**self.table, **overrides})

    def decide(self, code: int | None, *, we_closed: bool = False) -> A:
        """The action for a close with `code` (None: no close frame). Never raises."""
        if code is None:
            return self.dropped
        if we_closed:
            return self.normal_by_us if code in _NORMAL_CLOSES else self.dropped
        action = self.table.get(code)
        if action is not None:
            return action
        return self.below_4000 if code < 4000 else self.unknown

    def describe(self, code: int | None) -> str:
        """`describe` for this policy's gateway."""
        return describe(code, gateway=self.gateway)


@dataclass(frozen=True)
class RetryBudget:
    """Bounded attempts with capped exponential backoff and jitter.

    Attempts are numbered from 1. Attempt n waits ``min(max_delay, base_delay * 2**(n-1))``
    shortened by up to `jitter` (a fraction) at random, so delays never exceed `max_delay` and
    many clients spread out. With `immediate_first`, attempt 1 waits 0 and the series starts
    at attempt 2. `rng` returns floats in [0, 1); inject one to make delays exact in tests.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.2
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    immediate_first: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.max_attempts < 0:
            raise ValueError("max_attempts must not be negative")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError("delays must satisfy 0 <= base_delay <= max_delay")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be a fraction in [0, 1]")

    def next_delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempts are numbered from 1")
        steps = attempt - 2 if self.immediate_first else attempt - 1
        if steps < 0:
            return 0.0
        capped = min(self.max_delay, self.base_delay * 2.0 ** min(steps, 1000))
        spread = min(max(self.rng(), 0.0), 1.0)  # a misbehaving rng cannot break the bounds
        return capped * (1.0 - self.jitter * spread)

    def exhausted(self, attempt: int) -> bool:
        """True when attempt number `attempt` would go over the budget."""
        return attempt > self.max_attempts


class AttemptKind(enum.Enum):
    """What an attempt does."""

    RESUME = "resume"
    RECONNECT = "reconnect"  #: voice: a new session via the main gateway
    WAIT_FOR_MOVE = "wait"  #: wait up to `Attempt.delay` for a new VOICE_SERVER_UPDATE
    REIDENTIFY = "reidentify"  #: main gateway: a new session


@dataclass(frozen=True)
class Attempt:
    """One recovery attempt, for the shell to carry out after `delay` seconds and to report."""

    kind: AttemptKind
    number: int  #: 1-based, counted per kind; a new kind starts again at 1
    delay: float  #: seconds to wait first (for WAIT_FOR_MOVE: how long to wait for a move)
    code: int | None  #: the close code that led here (None: no close frame)
    reason: str = ""  #: the close reason text, if any
    max_attempts: int = 1

    def summary(self, gateway: GatewayName = "voice") -> str:
        """One line for logs and events, e.g. ``resume 1/3 in 0.00s after 4015 (...)``."""
        what = "no close frame" if self.code is None else str(self.code)
        text = f"{self.kind.value} {self.number}/{self.max_attempts} in {self.delay:.2f}s after "
        text += f"{what} ({describe(self.code, gateway=gateway)})"
        return text + (f": {self.reason}" if self.reason else "")


class StopCause(enum.Enum):
    """Why a `ReconnectPlan` stopped."""

    FATAL_CODE = "fatal close code"
    EXHAUSTED = "attempts exhausted"
    NOT_MOVED = "no new voice server arrived"
    CLOSED_BY_US = "closed by us"  #: a clean end, not an error


@dataclass(frozen=True)
class GiveUp:
    """Stop recovering; the shell raises a typed error (for `StopCause.CLOSED_BY_US`, none)."""

    cause: StopCause
    code: int | None
    reason: str = ""


@dataclass(frozen=True)
class ReconnectPlan(Generic[A]):
    """The recovery ladder: resume while the budget lasts, then new sessions, then give up.

    `first` turns a close into the first step; `after_failure` is called when the connection
    made for an attempt failed (closed with `code`, None if it never got a close frame). The
    ladder never goes down: once a new session was needed, a later RESUME decision becomes
    another new-session attempt. A failed resume escalates to a new session at once when the
    policy says so (4006) and after `resume.max_attempts` failures otherwise.
    """

    policy: ClosePolicy[A]
    resume: RetryBudget = field(
        default_factory=lambda: RetryBudget(max_attempts=3, base_delay=0.25, immediate_first=True)
    )
    new_session: RetryBudget = field(default_factory=lambda: RetryBudget(immediate_first=True))
    move_timeout: float = 10.0

    def first(
        self, code: int | None, reason: str = "", *, we_closed: bool = False
    ) -> Attempt | GiveUp:
        """The first step after the websocket closed."""
        kind = self._kind(self.policy.decide(code, we_closed=we_closed))
        if kind is None:
            normal = we_closed and code in _NORMAL_CLOSES
            return GiveUp(StopCause.CLOSED_BY_US if normal else StopCause.FATAL_CODE, code, reason)
        return self._step(kind, 1, code, reason)

    def after_failure(
        self, previous: Attempt, code: int | None, reason: str = ""
    ) -> Attempt | GiveUp:
        """The next step after the connection made for `previous` failed."""
        kind = self._kind(self.policy.decide(code))
        if kind is None:
            return GiveUp(StopCause.FATAL_CODE, code, reason)
        if kind is AttemptKind.RESUME and previous.kind is not AttemptKind.RESUME:
            kind = self._new_session_kind()  # no session left to resume
        number = previous.number + 1 if kind is previous.kind else 1
        return self._step(kind, number, code, reason)

    def wait_expired(self, previous: Attempt) -> GiveUp:
        """A WAIT_FOR_MOVE attempt ended without a new VOICE_SERVER_UPDATE."""
        return GiveUp(StopCause.NOT_MOVED, previous.code, previous.reason)

    def _new_session_kind(self) -> AttemptKind:
        return AttemptKind.RECONNECT if self.policy.gateway == "voice" else AttemptKind.REIDENTIFY

    def _kind(self, action: Action | GatewayAction) -> AttemptKind | None:
        if action in (Action.FATAL, GatewayAction.FATAL):
            return None
        if action in (Action.RESUME, GatewayAction.RESUME):
            return AttemptKind.RESUME
        if action is Action.WAIT_FOR_MOVE:
            return AttemptKind.WAIT_FOR_MOVE
        return self._new_session_kind()

    def _step(
        self, kind: AttemptKind, number: int, code: int | None, reason: str
    ) -> Attempt | GiveUp:
        if kind is AttemptKind.WAIT_FOR_MOVE:
            return Attempt(kind, 1, self.move_timeout, code, reason)
        if kind is AttemptKind.RESUME:
            if self.resume.exhausted(number):  # resumes used up: escalate to a new session
                return self._step(self._new_session_kind(), 1, code, reason)
            budget = self.resume
        else:
            if self.new_session.exhausted(number):
                return GiveUp(StopCause.EXHAUSTED, code, reason)
            budget = self.new_session
        return Attempt(kind, number, budget.next_delay(number), code, reason, budget.max_attempts)

"""The send schedule: each frame of a run is due when the frames before it have played out.

Pure arithmetic on ``now`` values, so it is exact under a fake clock:

* Absolute schedule: frame k of a run is due at ``origin + (samples of frames 0..k-1) / 48 kHz``;
  a late send does not push later frames back (no drift). Frames may last 10, 20, 40 or 60 ms.
* Grid: with ``grid`` > 0 a run starts on the next multiple of ``grid`` (seconds on the clock's
  scale), so the runs of many connections share a few instants and one thread can send their
  frames in one wake-up (a grid that divides 10 ms keeps every frame duration on it). Without a
  grid a run starts at ``now``.
* Start slots: runs of many streams paced by one thread may share a `StartSlots`; a new run then
  starts at the first grid point of the next cycle that has room (fewer than ``burst`` runs on
  its phase), else at the least occupied one, so streams that start together spread over the
  cycle instead of all going out in one burst.
* Underrun (nothing to send when a frame was due): the run ends; the next frame starts a new run
  at its arrival, so the sender never bursts to make up for the producer's gap.
* A new run never starts before the last frame of the previous one has played out: a frame
  queued right after stop_speaking's last silence frame, or released right after a hold, goes
  one frame duration after it, not with it.
* Due times are whole nanoseconds, so one instant is one float however it was reached
  (``1000.01 + 1.32`` is ``1001.33``, ``1000.02 + 1.31`` is ``1001.3299999999999``): the frames
  of many streams due at the same instant compare equal, and a sender can order them by
  something stable. A frame is due when the clock reads its due time within `TOLERANCE` (a
  nanosecond), so a float reading an ulp early counts as on time; otherwise a sender woken at its
  deadline could find nothing due and wait for that same deadline again, forever.
* Stall (the sender itself fell behind, e.g. a GIL or scheduler hiccup): it catches up by
  sending back to back, but at most ``max_catch_up`` frames (of ``frame_duration``) late; beyond
  that the run restarts at the grid point at or before ``now`` (the frame in hand goes at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["SAMPLE_RATE", "TOLERANCE", "PacingStats", "Pacer", "StartSlots"]

#: RTP clock rate of Opus: samples per second of audio.
SAMPLE_RATE: Final = 48_000
_DEFAULT_SAMPLES: Final = 960
#: Seconds within which two instants are the same (float rounding of due times and grid points).
TOLERANCE: Final = 1e-9
_NS_PER_S: Final = 1_000_000_000


def _instant(t: float) -> float:
    """`t` rounded to a whole nanosecond: equal instants become equal floats."""
    return round(t * _NS_PER_S) / _NS_PER_S


@dataclass(frozen=True)
class PacingStats:
    """Counters of one sender since the connection started."""

    frames_sent: int = 0
    late_frames: int = 0  # sent more than `late_threshold` after their due time
    max_lateness: float = 0.0  # seconds
    underruns: int = 0  # runs ended because the queue was empty when a frame was due
    stalls: int = 0  # schedule resets because the sender fell too far behind


class StartSlots:
    """How many runs started on each phase of a cycle, so that new runs spread over it.

    The cycle (20 ms, the usual frame duration) is cut into ``cycle / grid`` phases. A run
    occupies the phase of its origin until it ends. A new run starts at the first grid point,
    from its earliest start to one cycle later, whose phase has fewer than ``burst`` runs; if
    every phase has that many, at the least occupied one (the earliest on a tie). So a lone
    stream is never delayed, a small bot's streams share one wake-up, and a big bot's streams
    go out in bursts of about ``burst`` packets instead of one burst of all of them (the last
    packet of a burst is late by the time the others took, and that time varies). One thread
    uses it: the sender whose streams share it.

    Frames of 10 ms also land on the phase half a cycle later, and 40/60 ms frames skip cycles;
    the count is a load estimate for spreading, not a schedule.
    """

    __slots__ = ("_counts", "burst", "grid")

    def __init__(self, grid: float, cycle: float = 0.020, burst: int = 16) -> None:
        phases = round(cycle / grid) if grid > 0 else 0
        if phases < 1 or not math.isclose(phases * grid, cycle):
            raise ValueError("the cycle must be a whole number of grid steps")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.grid = grid
        self.burst = burst
        self._counts = [0] * phases

    def __repr__(self) -> str:
        return f"StartSlots(grid={self.grid}, runs per phase={self._counts})"

    @property
    def counts(self) -> tuple[int, ...]:
        """Runs in progress per phase, phase 0 being the multiples of the cycle."""
        return tuple(self._counts)

    def phase(self, instant: float) -> int:
        """The phase of a grid point."""
        return round(instant / self.grid) % len(self._counts)

    def choose(self, earliest: float) -> float:
        """Where a run that may start at grid point `earliest` starts (see the class)."""
        counts = self._counts
        phases = len(counts)
        first = self.phase(earliest)
        best = 0
        for step in range(phases):
            count = counts[(first + step) % phases]
            if count < self.burst:
                return earliest + step * self.grid
            if count < counts[(first + best) % phases]:
                best = step
        return earliest + best * self.grid

    def occupy(self, instant: float) -> int:
        """A run starts at grid point `instant`; returns its phase (give it back to `vacate`)."""
        phase = self.phase(instant)
        self._counts[phase] += 1
        return phase

    def vacate(self, phase: int) -> None:
        """The run that occupied `phase` ended."""
        self._counts[phase] -= 1


class Pacer:
    """Decides when each frame is sent; the sender thread does the waiting and sending."""

    __slots__ = (
        "_due",
        "_elapsed",
        "_late",
        "_max_lateness",
        "_next",
        "_not_before",
        "_origin",
        "_phase",
        "_sent",
        "_slots",
        "_stalls",
        "_underruns",
        "frame_duration",
        "grid",
        "late_threshold",
        "max_catch_up",
    )

    def __init__(
        self,
        frame_duration: float = 0.020,
        *,
        max_catch_up: int = 3,
        late_threshold: float = 0.002,
        grid: float = 0.0,
        slots: StartSlots | None = None,
    ) -> None:
        if grid < 0:
            raise ValueError("grid must not be negative")
        if slots is not None and not math.isclose(slots.grid, grid):
            raise ValueError("start slots must use the pacer's grid")
        self.frame_duration = frame_duration
        self.max_catch_up = max_catch_up
        self.late_threshold = late_threshold
        self.grid = grid
        self._origin: float | None = None
        self._elapsed = 0  # samples of the run sent so far
        self._due = 0.0
        self._next = 0.0  # the due time of the run's next frame (valid while running)
        self._not_before = -math.inf  # when the last frame of the previous run ends
        self._sent = 0
        self._late = 0
        self._max_lateness = 0.0
        self._underruns = 0
        self._stalls = 0
        self._slots = slots
        self._phase: int | None = None  # the phase of `slots` the run occupies

    @property
    def origin(self) -> float | None:
        """When the current run's first frame was due (None between runs)."""
        return self._origin

    @property
    def running(self) -> bool:
        """Whether a run is in progress (a next due time exists)."""
        return self._origin is not None

    def start(self, now: float) -> float:
        """Begin a new run; its first frame is due at the first grid point at or after `now`
        (or after the end of the previous run's last frame, if that is later); with start slots,
        at the point of the cycle from there that `StartSlots.choose` picks."""
        origin = self._grid_ceil(max(now, self._not_before))
        if self._slots is not None:
            self._vacate()
            origin = self._slots.choose(_instant(origin))
        return self._restart(origin)

    def next_due(self, now: float) -> float:
        """The due time of the next frame of the current run (starting one if needed).

        If the sender is more than ``max_catch_up`` frames behind, the run restarts at the grid
        point at or before `now` (the frame is due at once) and a stall is counted.
        """
        if self._origin is None:
            return self.start(now)
        due = self._next  # computed once per frame, by `sent` or `_restart`
        if now - due > self.max_catch_up * self.frame_duration + TOLERANCE:
            self._stalls += 1
            return self._restart(self._grid_floor(now))
        self._due = due
        return due

    def due_by(self, now: float) -> bool:
        """Whether the next frame of the run is due at `now` (within `TOLERANCE`)."""
        return self.next_due(now) <= now + TOLERANCE

    def sent(self, now: float, samples: int = _DEFAULT_SAMPLES) -> None:
        """Record that the frame due at the last `next_due` (`samples` long) went out at `now`."""
        lateness = max(0.0, now - self._due)
        self._sent += 1
        if lateness > self.late_threshold:
            self._late += 1
        if lateness > self._max_lateness:
            self._max_lateness = lateness
        self._elapsed += samples
        if self._origin is not None:
            self._next = _instant(self._origin + self._elapsed / SAMPLE_RATE)

    def underrun(self) -> None:
        """Nothing was queued when a frame was due: end the run."""
        self._underruns += 1
        self._end_run()

    def pause(self) -> None:
        """End the run without counting an underrun (speaking stopped on purpose, or held)."""
        self._end_run()

    def stats(self) -> PacingStats:
        return PacingStats(
            frames_sent=self._sent,
            late_frames=self._late,
            max_lateness=self._max_lateness,
            underruns=self._underruns,
            stalls=self._stalls,
        )

    def _end_run(self) -> None:
        if self._origin is not None:
            self._not_before = max(self._not_before, self._origin + self._elapsed / SAMPLE_RATE)
        self._origin = None
        self._vacate()

    def _vacate(self) -> None:
        if self._phase is not None and self._slots is not None:
            self._slots.vacate(self._phase)
        self._phase = None

    def _restart(self, origin: float) -> float:
        origin = _instant(origin)
        if self._slots is not None:
            self._vacate()
            self._phase = self._slots.occupy(origin)
        self._origin = origin
        self._elapsed = 0
        self._due = self._next = origin
        return origin

    def _grid_ceil(self, now: float) -> float:
        if not self.grid:
            return now
        return math.ceil((now - TOLERANCE) / self.grid) * self.grid

    def _grid_floor(self, now: float) -> float:
        if not self.grid:
            return now
        return math.floor((now + TOLERANCE) / self.grid) * self.grid

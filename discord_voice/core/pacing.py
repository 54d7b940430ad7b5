"""The send schedule: frame n of a run is due at ``origin + n * frame_duration``.

Pure arithmetic on ``now`` values, so it is exact under a fake clock:

* Absolute schedule: a late send does not push later frames back (no drift).
* Underrun (nothing to send when a frame was due): the run ends; the next frame starts a new run
  at its arrival, so the sender never bursts to make up for the producer's gap.
* Stall (the sender itself fell behind, e.g. a GIL or scheduler hiccup): it catches up by
  sending back to back, but at most ``max_catch_up`` frames late; beyond that the origin resets.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PacingStats", "Pacer"]


@dataclass(frozen=True)
class PacingStats:
    """Counters of one sender since the connection started."""

    frames_sent: int = 0
    late_frames: int = 0  # sent more than `late_threshold` after their due time
    max_lateness: float = 0.0  # seconds
    underruns: int = 0  # runs ended because the queue was empty when a frame was due
    stalls: int = 0  # schedule resets because the sender fell too far behind


class Pacer:
    """Decides when each frame is sent; the sender thread does the waiting and sending."""

    def __init__(
        self,
        frame_duration: float = 0.020,
        *,
        max_catch_up: int = 3,
        late_threshold: float = 0.002,
    ) -> None:
        self.frame_duration = frame_duration
        self.max_catch_up = max_catch_up
        self.late_threshold = late_threshold
        self._origin: float | None = None
        self._index = 0
        self._due = 0.0
        self._sent = 0
        self._late = 0
        self._max_lateness = 0.0
        self._underruns = 0
        self._stalls = 0

    @property
    def running(self) -> bool:
        """Whether a run is in progress (a next due time exists)."""
        return self._origin is not None

    def start(self, now: float) -> float:
        """Begin a new run at `now`; the first frame is due immediately."""
        self._origin = now
        self._index = 0
        self._due = now
        return now

    def next_due(self, now: float) -> float:
        """The due time of the next frame of the current run (starting one if needed).

        If the sender is more than ``max_catch_up`` frames behind, the run restarts at `now`.
        """
        if self._origin is None:
            return self.start(now)
        due = self._origin + self._index * self.frame_duration
        if now - due > self.max_catch_up * self.frame_duration:
            self._stalls += 1
            return self.start(now)
        self._due = due
        return due

    def sent(self, now: float) -> None:
        """Record that the frame due at the last `next_due` went out at `now`."""
        lateness = max(0.0, now - self._due)
        self._sent += 1
        if lateness > self.late_threshold:
            self._late += 1
        if lateness > self._max_lateness:
            self._max_lateness = lateness
        self._index += 1

    def underrun(self) -> None:
        """Nothing was queued when a frame was due: end the run."""
        self._underruns += 1
        self._origin = None

    def pause(self) -> None:
        """End the run without counting an underrun (speaking stopped on purpose)."""
        self._origin = None

    def stats(self) -> PacingStats:
        return PacingStats(
            frames_sent=self._sent,
            late_frames=self._late,
            max_lateness=self._max_lateness,
            underruns=self._underruns,
            stalls=self._stalls,
        )

"""What the UDP sender does next for one connection: send the frame in hand, wait, or hold.

Rules (everything that decides whether a connection's audio goes out lives here):

1. A stream is in exactly one `Phase`:

   - ``IDLE``: no run; nothing in hand. The sender looks again when a frame is queued.
   - ``PLAYING``: a run is in progress; the next frame is due at `wake_at`.
   - ``HELD``: the owner holds the stream (a new voice session is being made, or Speaking cannot
     be sent yet). Nothing is sent; a frame in hand stays in hand.
   - ``NO_KEY``: the frame in hand cannot be end-to-end encrypted yet (DAVE has no group key).
     Nothing is sent until the key is there.
   - ``CLOSED``: the connection ended; every input is ignored from then on.

2. Transitions (input: from -> to; any pair not listed leaves the phase as it is):

   ==================  ==========================================================
   `frame_ready`       IDLE -> PLAYING: a run starts (`Pacer.start`)
   `frame_missing`     PLAYING, due -> IDLE: an underrun ends the run
   `sent`              PLAYING -> PLAYING: the next frame is due one duration later
   `paused`            PLAYING -> IDLE: the run ended on purpose (stop_speaking)
   `hold`              IDLE, PLAYING, NO_KEY -> HELD (the run ends)
   `release`           HELD -> PLAYING with a frame in hand, else IDLE
   `no_key`            IDLE, PLAYING -> NO_KEY (the run ends)
   `key_ready`         NO_KEY -> PLAYING with a frame in hand, else IDLE
   `close`             any -> CLOSED
   ==================  ==========================================================

3. A frame in hand is sent only in PLAYING, once it is due (`send_now`). It is never dropped:
   only `sent` or `close` lets go of it. Held and key-less time does not count as an underrun,
   and a run never bursts to make up for it: the next run starts afresh. Two misuses raise
   `RuntimeError` and change nothing: `sent` without a frame in hand in PLAYING, and
   `frame_ready` with a frame already in hand (the first would be lost).

4. The stream is written by one thread (the sender); other threads ask for `hold`/`release`
   through the sender, never by touching the stream. Pure: every input takes ``now``.
"""

from __future__ import annotations

import enum

from discord_voice.core.pacing import Pacer, PacingStats

__all__ = ["Phase", "SendState"]


class Phase(enum.Enum):
    """Where one connection's audio stream is (see the module rules)."""

    IDLE = "idle"
    PLAYING = "playing"
    HELD = "held"
    NO_KEY = "no_key"
    CLOSED = "closed"


class SendState:
    """The sending state of one connection: its phase, the frame in hand and its schedule.

    Thread safety: none; one thread (the sender) owns it.
    """

    __slots__ = ("_in_hand", "_pacer", "_phase")

    def __init__(self, pacer: Pacer | None = None) -> None:
        self._pacer = pacer or Pacer()
        self._phase = Phase.IDLE
        self._in_hand: int | None = None  # samples of the frame in hand, if any

    def __repr__(self) -> str:
        return f"<SendState {self._phase.value} in_hand={self._in_hand}>"

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def has_frame(self) -> bool:
        """Whether a frame is in hand (packetized, or waiting for the key)."""
        return self._in_hand is not None

    @property
    def wants_frame(self) -> bool:
        """Whether the sender should take the next frame from the queue now."""
        return self._in_hand is None and self._phase in (Phase.IDLE, Phase.PLAYING)

    def wake_at(self, now: float) -> float | None:
        """When the sender must come back for this stream (None: only when woken).

        In PLAYING this is the due time of the next frame (and may restart the run after a
        stall: see `Pacer.next_due`).
        """
        if self._phase is not Phase.PLAYING:
            return None
        return self._pacer.next_due(now)

    def send_now(self, now: float) -> bool:
        """Whether the frame in hand is due and may go out at `now`."""
        if self._phase is not Phase.PLAYING or self._in_hand is None:
            return False
        return self._pacer.due_by(now)

    def stats(self) -> PacingStats:
        return self._pacer.stats()

    # -- inputs -------------------------------------------------------------------------------

    def frame_ready(self, now: float, samples: int) -> None:
        """A frame lasting `samples` is in hand (taken from the queue and prepared)."""
        if self._phase is Phase.CLOSED:
            return
        if self._in_hand is not None:
            raise RuntimeError(f"frame_ready() with a frame already in hand ({self!r})")
        self._in_hand = samples
        if self._phase is Phase.IDLE:
            self._start(now)

    def frame_missing(self, now: float) -> None:
        """The queue was empty when looked at: an underrun if a frame was due by `now`."""
        playing = self._phase is Phase.PLAYING and self._in_hand is None
        if playing and self._pacer.due_by(now):
            self._pacer.underrun()
            self._phase = Phase.IDLE

    def sent(self, now: float) -> None:
        """The frame in hand went out at `now`."""
        if self._phase is not Phase.PLAYING or self._in_hand is None:
            raise RuntimeError(f"sent() without a frame to send ({self!r})")
        self._pacer.sent(now, self._in_hand)
        self._in_hand = None

    def paused(self) -> None:
        """The run ended on purpose (the silence after stop_speaking went out)."""
        if self._phase is Phase.PLAYING and self._in_hand is None:
            self._pacer.pause()
            self._phase = Phase.IDLE

    def hold(self) -> None:
        if self._phase in (Phase.IDLE, Phase.PLAYING, Phase.NO_KEY):
            self._pacer.pause()
            self._phase = Phase.HELD

    def release(self, now: float) -> None:
        if self._phase is Phase.HELD:
            self._resume(now)

    def no_key(self) -> None:
        if self._phase in (Phase.IDLE, Phase.PLAYING):
            self._pacer.pause()
            self._phase = Phase.NO_KEY

    def key_ready(self, now: float) -> None:
        if self._phase is Phase.NO_KEY:
            self._resume(now)

    def close(self) -> None:
        self._phase = Phase.CLOSED
        self._in_hand = None
        self._pacer.pause()

    # -- helpers ------------------------------------------------------------------------------

    def _resume(self, now: float) -> None:
        if self._in_hand is None:
            self._phase = Phase.IDLE
        else:
            self._start(now)

    def _start(self, now: float) -> None:
        self._pacer.start(now)
        self._phase = Phase.PLAYING

"""Connection: one guild's voice connection (arikawa's ``*Connection``).

It owns one thread, the voice websocket's reader ``dv-voice-reader:<guild>`` (in the
`VoiceSocketSession` of its current `VoiceLink`); its heartbeat and its audio run on the threads
its `Voice` shares between connections (``dv-heartbeat`` from Hello, ``dv-udp-sender``, which
paces ``opus_send``, from the end of the join), handed back when it is joined. A lost
websocket, a move or a voice server change starts ``dv-voice-recover:<guild>``, which resumes or
reconnects (see `discord_voice._connection_core`, the engine beneath the public API here).

The first failure that cannot be recovered from is stored, ends the connection, and is re-raised
by `wait()` and by the next public call (``opus_send.put`` included). No lock is held across
network I/O.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from discord_voice._connection_core import (
    AttemptListener,
    ConnectionCore,
    ConnectionState,
    StateListener,
    as_connection_closed,
    default_voice_plan,
)
from discord_voice._shell.exit_hook import close_at_exit
from discord_voice._shell.threads import join_all
from discord_voice._shell.udp_sender import StopSpeakingMarker
from discord_voice.clock import Signal, SystemClock
from discord_voice.core.ids import snowflake
from discord_voice.core.opcodes import SpeakingFlag
from discord_voice.core.pacing import PacingStats
from discord_voice.errors import (
    JoinTimeout,
    ShutdownTimeout,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "Connection",
    "ConnectionState",
    "ConnectionStats",
    "StateListener",
    "AttemptListener",
    "default_voice_plan",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionStats:
    """A snapshot of a connection's counters (see `Connection.stats`)."""

    frames_sent: int
    late_frames: int
    max_lateness: float
    underruns: int
    stalls: int
    frames_discarded: int
    bytes_sent: int
    heartbeats_sent: int
    heartbeat_acks: int
    latency: float | None
    ignored_messages: int
    malformed_messages: int
    resumes: int
    reconnects: int


class Connection(ConnectionCore):
    """A voice connection that can carry audio; returned by `Voice.join_channel`.

    It outlives the voice sessions beneath it: resumes, reconnects and moves keep the same
    `Connection` and ``opus_send``. Thread safety: every public method may be called from any
    thread.
    """

    # -- public surface ---------------------------------------------------------------------


    @property
    def endpoint(self) -> str:
        """The voice server of the current session."""
        return self._link.info.endpoint

    @property
    def mode(self) -> str | None:
        """The transport encryption mode of the current session."""
        return self._link.mode

    @property
    def ssrc(self) -> int | None:
        """Our SSRC in the current session (a reconnect gets a new one)."""
        return self._link.ssrc

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def error(self) -> BaseException | None:
        """The failure that ended the connection, or None."""
        return self._error

    @property
    def latency(self) -> float | None:
        """The last voice heartbeat round trip in seconds (None before the first ACK)."""
        return self._link.session.latency

    @property
    def stats(self) -> ConnectionStats:
        """Counters for sending and the websocket (a consistent-enough snapshot, not atomic)."""
        stream = self._stream
        session = self._link.session
        sent = stream.stats() if stream else None
        pacing = sent.pacing if sent else PacingStats()
        beats, acks = session.heartbeat_counts()
        return ConnectionStats(
            frames_sent=pacing.frames_sent,
            late_frames=pacing.late_frames,
            max_lateness=pacing.max_lateness,
            underruns=pacing.underruns,
            stalls=pacing.stalls,
            frames_discarded=self._discarded + (sent.held + sent.discarded if sent else 0),
            bytes_sent=sent.bytes_sent if sent else 0,
            heartbeats_sent=beats,
            heartbeat_acks=acks,
            latency=session.latency,
            ignored_messages=session.ignored,
            malformed_messages=session.malformed,
            resumes=self.resumes,
            reconnects=self.reconnects,
        )

    # -- DAVE end-to-end encryption ---------------------------------------------------------

    @property
    def e2ee_active(self) -> bool:
        """Whether the audio we send is end-to-end encrypted with DAVE right now."""
        dave = self._link.dave
        with dave.lock:
            return dave.protocol.active

    @property
    def dave_protocol_version(self) -> int:
        """The DAVE protocol version in effect (0: the call is not end-to-end encrypted)."""
        dave = self._link.dave
        with dave.lock:
            return dave.protocol.protocol_version

    @property
    def dave_epoch(self) -> int | None:
        """The MLS epoch of the call's group (changes when members join or leave)."""
        dave = self._link.dave
        with dave.lock:
            return dave.protocol.epoch

    @property
    def voice_privacy_code(self) -> str | None:
        """The code every member of the call sees; compare it to check the call is private."""
        dave = self._link.dave
        with dave.lock:
            return dave.protocol.privacy_code

    def wait_for_e2ee(self, timeout: float = 10.0, *, encrypted: bool = True) -> bool:
        """Block until the audio we send is end-to-end encrypted with a group key (or, with
        ``encrypted=False``, until it is not, after a downgrade).

        Returns False after `timeout` seconds (for example while alone in the call: the DAVE
        group needs a second member). Raises the connection's error if it ends meanwhile.
        """
        self._raise_if_failed()
        dave = self._link.dave
        if encrypted:
            ok = dave.wait(lambda d: d.ready, timeout)
        else:
            ok = dave.wait(lambda d: not d.active, timeout)
        self._raise_if_failed()
        return ok

    def verification_code(self, user_id: int | str) -> str:
        """The code to compare with `user_id` out of band (`EncryptionError` if there is none)."""
        dave = self._link.dave
        with dave.lock:
            return dave.protocol.verification_code(user_id)

    def __repr__(self) -> str:
        return (
            f"<Connection guild={self.guild_id} channel={self.channel_id} "
            f"state={self._state.value} mode={self.mode}>"
        )

    # -- observing --------------------------------------------------------------------------

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(old, new, reason)`` on every state change; returns a remover.

        States go CONNECTING -> READY; READY -> RESUMING -> READY while the voice websocket is
        resumed (audio goes on); READY -> RECONNECTING -> READY while a new voice session is
        made (after 4006/4009/4011, a failed resume, a move or a voice server change: frames
        are held); and anything -> CLOSED (``reason`` is the failure, None after `disconnect`).
        ``reason`` on the other changes is what started the recovery, if anything.
        Listeners run on the library's threads and must not block; one that raises ends the
        connection with its exception (it is never only logged).
        """
        return _add(self._lock, self._listeners, listener)

    def add_attempt_listener(self, listener: AttemptListener) -> Callable[[], None]:
        """Call ``listener(attempt)`` before each recovery attempt; returns a remover.

        An `Attempt` says what is tried (resume, reconnect, wait for a move), its number and
        budget, the delay before it and the close code that led there. Same rules as state
        listeners: must not block; one that raises ends the connection.
        """
        return _add(self._lock, self._attempt_listeners, listener)

    def wait_for_state(self, state: ConnectionState, timeout: float) -> bool:
        """Block until the connection is in `state` (or closed); return whether it is."""
        with self._state_changed:
            self._state_changed.wait_for(
                lambda: self._state in (state, ConnectionState.CLOSED), timeout)
            return self._state is state

    # -- speaking ---------------------------------------------------------------------------

    def speaking(self, flags: SpeakingFlag | int = SpeakingFlag.MICROPHONE) -> None:
        """Send Speaking (op 5) with `flags`; required (and sent for you) before audio.

        While the connection recovers the flags are kept and sent once it is back.
        """
        self._raise_if_failed()
        flags = SpeakingFlag(flags)
        with self._lock:
            self._flags = flags  # with no flags, the next frame queued announces MICROPHONE
            ready = self._state is ConnectionState.READY
        if ready:
            self._link.session.send_speaking(flags)

    def stop_speaking(self, timeout: float = 5.0) -> None:
        """Send every frame already queued, then 5 silence frames, then Speaking with flags 0.

        Blocks until done (at most `timeout` seconds, then `TimeoutError`).
        """
        self._raise_if_failed()
        done = Signal()
        self._closed.add_listener(done.set)  # a connection that ends meanwhile wakes us too
        try:
            self.opus_send.put_control(StopSpeakingMarker(done), timeout=timeout)
            if not done.wait(timeout):
                raise TimeoutError(f"queued frames were not sent within {timeout:g}s")
        finally:
            self._closed.remove_listener(done.set)
        self._raise_if_failed()
        with self._lock:
            self._flags = SpeakingFlag.NONE  # the next frame queued announces Speaking again
            ready = self._state is ConnectionState.READY
        if ready:
            self._link.session.send_speaking(SpeakingFlag.NONE)

    # -- moving and ending ------------------------------------------------------------------

    def move_to(self, channel_id: int | str, timeout: float = 10.0) -> None:
        """Move to another voice channel of the guild; block until audio flows there.

        Sends op 4 with the new channel; Discord answers with a new voice session, which the
        connection switches to (frames queued meanwhile are held, then sent). Raises
        `JoinTimeout` if the connection is not ready in the new channel within `timeout`.
        """
        channel = snowflake(channel_id, "channel_id")
        self._raise_if_failed()
        if self.channel_id == channel and self._state is ConnectionState.READY:
            return
        self._owner._request_voice_state(self.guild_id, channel, *self._mute_deaf)
        with self._state_changed:
            moved = self._state_changed.wait_for(
                lambda: self._closing or (self._state is ConnectionState.READY
                                          and self._link.info.channel_id == channel),
                timeout)
        self._raise_if_failed()
        if not moved:
            raise JoinTimeout("move", timeout, f"not ready in channel {channel} yet")

    def wait(self, timeout: float | None = None) -> None:
        """Block until the connection ends; raise its failure (return None after `disconnect`).

        Raises `TimeoutError` if it is still open after `timeout` seconds.
        """
        if not self._closed.wait(timeout):
            raise TimeoutError(f"the connection is still open after {timeout:g}s")
        self._join(self._close_timeout)
        if self._error is not None:
            raise as_connection_closed(self._error)

    def disconnect(self, timeout: float | None = None) -> None:
        """Leave the channel (op 4 with no channel), close the websocket and UDP, join threads.

        Idempotent and safe from any thread (from the library's own threads it signals but does
        not join them). Frames still queued are discarded and counted in
        ``stats.frames_discarded``; call `stop_speaking` first to send them. Waits (within
        `timeout`) for Discord to confirm the leave, so that an immediate rejoin cannot race it.
        Raises `ShutdownTimeout` if a thread cannot be joined within `timeout` seconds.
        """
        timeout = self._close_timeout if timeout is None else timeout
        real = SystemClock()  # a shutdown bound: real time whatever the clock (see clock.py)
        deadline = real.monotonic() + timeout
        confirmed = self._owner._forget(self, leave=True) if self._begin_close(None) else None
        self._join(timeout)
        if confirmed is not None:  # bounded: an immediate rejoin must not race our leave
            try:
                confirmed.result(max(0.0, deadline - real.monotonic()))
            except concurrent.futures.TimeoutError:
                log.info("guild %s: Discord did not confirm the leave within %gs",
                         self.guild_id, timeout)

    def _join(self, timeout: float) -> None:
        """Join every thread (the reader gets half the time to see the server's close frame,
        then the socket is aborted), then release the sockets."""
        with self._lock:
            links = [*self._retired_links, self._link]
            threads = [*self._threads, *(t for link in links for t in link.threads())]
        try:
            join_all(threads, timeout / 2)
        except ShutdownTimeout:
            for link in links:
                link.abort()
            join_all(threads, timeout / 2)
        self._detach_stream(timeout)
        for link in links:
            link.release()

    close = disconnect

    def _close_at_exit(self) -> None:
        if not self._closing:
            log.warning("voice connection in guild %s still open at interpreter exit: "
                        "disconnecting", self.guild_id)
        self.disconnect(timeout=2.0)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect()

    # -- join (runs on the caller's thread) ------------------------------------------------

    def _open(self, deadline: float, timeout: float) -> None:
        """Run the voice handshake; raise the real reason or `JoinTimeout` naming the stage."""
        close_at_exit(self, Connection._close_at_exit)
        transport = self._link.establish(deadline, timeout)
        self._set_state(ConnectionState.READY, None)
        if self._flags:  # set by a producer or `speaking()` during the join
            self._link.session.send_speaking(self._flags)
        self._attach_stream(transport)
        self._raise_if_failed()
        if self._updates.server.generation > self._link_generation:
            self._on_server_changed("the voice server changed during the join")


T = TypeVar("T")


def _add(lock: threading.Lock, listeners: list[T], listener: T) -> Callable[[], None]:
    with lock:
        listeners.append(listener)

    def remove() -> None:
        with lock:
            if listener in listeners:
                listeners.remove(listener)

    return remove

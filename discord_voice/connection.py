"""Connection: one guild's voice connection (arikawa's ``*Connection``).

It owns three threads, started in this order and stopped in reverse: the voice websocket's
reader and heartbeat (in its `VoiceSocketSession`) and ``dv-udp-sender:<guild>``, started on
Session Description, which sends ``opus_send`` paced.

The first failure of any of them is stored, ends the connection, and is re-raised by `wait()`
and by the next public call (``opus_send.put`` included). No lock is held across network I/O.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from discord_voice._shell.dave_channel import DaveChannel
from discord_voice._shell.exit_hook import close_at_exit
from discord_voice._shell.opus_queue import OpusQueue
from discord_voice._shell.threads import ServiceThread, join_all
from discord_voice._shell.udp import discover_ip, open_udp
from discord_voice._shell.udp_sender import StopSpeakingMarker, UdpSender
from discord_voice._shell.voice_session import VoiceSocketSession
from discord_voice.clock import Clock, Signal
from discord_voice.core import crypto
from discord_voice.core.opcodes import SpeakingFlag
from discord_voice.core.packetizer import Packetizer
from discord_voice.core.reconnect import Action, ClosePolicy, RetryBudget
from discord_voice.core.voice_gateway import VoiceServerInfo
from discord_voice.errors import (
    ConnectionClosed,
    HeartbeatTimeout,
    ShutdownTimeout,
    VoiceError,
    VoiceGatewayClosed,
)

if TYPE_CHECKING:
    from discord_voice.voice import Voice

__all__ = ["Connection", "ConnectionState", "ConnectionStats", "StateListener"]

log = logging.getLogger(__name__)


class ConnectionState(enum.Enum):
    """Lifecycle of a `Connection`."""

    CONNECTING = "connecting"
    READY = "ready"
    RESUMING = "resuming"  # the voice websocket is being resumed; UDP audio goes on
    CLOSED = "closed"


#: ``listener(old_state, new_state, reason)``; reason is the exception behind the change, if any.
StateListener = Callable[[ConnectionState, ConnectionState, "BaseException | None"], None]


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


class Connection:
    """A voice connection that can carry audio; returned by `Voice.join_channel`.

    Thread safety: every public method may be called from any thread.
    """

    def __init__(
        self,
        owner: Voice,
        info: VoiceServerInfo,
        *,
        clock: Clock,
        queue_size: int,
        close_timeout: float,
        max_dave_protocol_version: int,
    ) -> None:
        self._owner = owner
        self._info = info
        self._clock = clock
        self._close_timeout = close_timeout
        #: Queue Opus frames here (bytes, one 20 ms packet each); `put` checks each item and
        #: raises `InvalidFrame` for bad ones, `ConnectionClosed` once the connection has ended.
        self.opus_send = OpusQueue(queue_size)
        self._lock = threading.Lock()  # guards state, error and closing; never held for I/O
        self._state = ConnectionState.CONNECTING
        self._error: BaseException | None = None
        self._closing = False
        self._closed = Signal()
        self._stop_sender = Signal()
        self._threads: list[ServiceThread] = []
        self._dave = DaveChannel(info.user_id, info.channel_id)
        self._max_dave = max_dave_protocol_version
        self._session = self._new_session(None)
        self._old_sessions: list[VoiceSocketSession] = []
        self._flags = SpeakingFlag.NONE
        self._listeners: list[StateListener] = []
        #: How many times the voice websocket was resumed.
        self.resumes = 0
        self._udp: socket.socket | None = None
        self._sender: UdpSender | None = None
        self._discarded = 0
        self.mode: str | None = None
        self.ssrc: int | None = None

    # -- public surface ---------------------------------------------------------------------

    @property
    def guild_id(self) -> str:
        return self._info.guild_id

    @property
    def channel_id(self) -> str:
        return self._info.channel_id

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
        return self._session.latency

    @property
    def stats(self) -> ConnectionStats:
        """Counters for sending and the websocket (a consistent-enough snapshot, not atomic)."""
        sender = self._sender
        pacing = sender.pacer.stats() if sender else None
        beats, acks = self._session.heartbeat_counts()
        return ConnectionStats(
            frames_sent=pacing.frames_sent if pacing else 0,
            late_frames=pacing.late_frames if pacing else 0,
            max_lateness=pacing.max_lateness if pacing else 0.0,
            underruns=pacing.underruns if pacing else 0,
            stalls=pacing.stalls if pacing else 0,
            frames_discarded=self._discarded + (sender.held if sender else 0),
            bytes_sent=sender.bytes_sent if sender else 0,
            heartbeats_sent=beats,
            heartbeat_acks=acks,
            latency=self._session.latency,
            ignored_messages=self._session.ignored,
            malformed_messages=self._session.malformed,
        )

    # -- DAVE end-to-end encryption ---------------------------------------------------------

    @property
    def e2ee_active(self) -> bool:
        """Whether the audio we send is end-to-end encrypted with DAVE right now."""
        with self._dave.lock:
            return self._dave.protocol.active

    @property
    def dave_protocol_version(self) -> int:
        """The DAVE protocol version in effect (0: the call is not end-to-end encrypted)."""
        with self._dave.lock:
            return self._dave.protocol.protocol_version

    @property
    def dave_epoch(self) -> int | None:
        """The MLS epoch of the call's group (changes when members join or leave)."""
        with self._dave.lock:
            return self._dave.protocol.epoch

    @property
    def voice_privacy_code(self) -> str | None:
        """The code every member of the call sees; compare it to check the call is private."""
        with self._dave.lock:
            return self._dave.protocol.privacy_code

    def wait_for_e2ee(self, timeout: float = 10.0, *, encrypted: bool = True) -> bool:
        """Block until the audio we send is end-to-end encrypted with a group key (or, with
        ``encrypted=False``, until it is not, after a downgrade).

        Returns False after `timeout` seconds (for example while alone in the call: the DAVE
        group needs a second member). Raises the connection's error if it ends meanwhile.
        """
        self._raise_if_failed()
        if encrypted:
            ok = self._dave.wait(lambda d: d.ready, timeout)
        else:
            ok = self._dave.wait(lambda d: not d.active, timeout)
        self._raise_if_failed()
        return ok

    def verification_code(self, user_id: int | str) -> str:
        """The code to compare with `user_id` out of band (`EncryptionError` if there is none)."""
        with self._dave.lock:
            return self._dave.protocol.verification_code(user_id)

    def __repr__(self) -> str:
        return (
            f"<Connection guild={self.guild_id} channel={self.channel_id} "
            f"state={self._state.value} mode={self.mode}>"
        )

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(old, new, reason)`` on every state change; returns a remover.

        States go CONNECTING -> READY, READY -> RESUMING -> READY while the voice websocket is
        resumed, and anything -> CLOSED (``reason`` is the failure, None after `disconnect`).
        Listeners run on the library's threads and must not block; one that raises ends the
        connection with its exception (it is never only logged).
        """
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _notify(self, old: ConnectionState, reason: BaseException | None) -> None:
        with self._lock:
            new, listeners = self._state, list(self._listeners)
        if new is old:
            return
        for listener in listeners:
            try:
                listener(old, new, reason)
            except Exception as exc:
                log.exception("state listener of voice connection (guild %s) failed",
                              self.guild_id)
                if new is not ConnectionState.CLOSED:
                    self._fail(exc)

    def speaking(self, flags: SpeakingFlag | int = SpeakingFlag.MICROPHONE) -> None:
        """Send Speaking (op 5) with `flags`; required (and sent for you) before audio.

        During a resume the flags are kept and sent once the websocket is back.
        """
        self._raise_if_failed()
        flags = SpeakingFlag(flags)
        self._flags = flags
        if self._state is not ConnectionState.RESUMING:
            self._session.send_speaking(flags)
        if self._sender is not None:
            self._sender.announced = bool(flags)

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
        self._flags = SpeakingFlag.NONE
        if self._state is not ConnectionState.RESUMING:
            self._session.send_speaking(SpeakingFlag.NONE)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the connection ends; raise its failure (return None after `disconnect`).

        Raises `TimeoutError` if it is still open after `timeout` seconds.
        """
        if not self._closed.wait(timeout):
            raise TimeoutError(f"the connection is still open after {timeout:g}s")
        self._join(self._close_timeout)
        if self._error is not None:
            raise _as_connection_closed(self._error)

    def disconnect(self, timeout: float | None = None) -> None:
        """Leave the channel (op 4 with no channel), close the websocket and UDP, join threads.

        Idempotent and safe from any thread (from the library's own threads it signals but does
        not join them). Frames still queued are discarded and counted in
        ``stats.frames_discarded``; call `stop_speaking` first to send them. Waits (within
        `timeout`) for Discord to confirm the leave, so that an immediate rejoin cannot race it.
        Raises `ShutdownTimeout` if a thread cannot be joined within `timeout` seconds.
        """
        timeout = self._close_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        confirmed = self._owner._forget(self, leave=True) if self._begin_close(None) else None
        self._join(timeout)
        if confirmed is not None:  # bounded: an immediate rejoin must not race our leave
            try:
                confirmed.result(max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                log.info("guild %s: Discord did not confirm the leave within %gs",
                         self.guild_id, timeout)

    def _join(self, timeout: float) -> None:
        """Join every thread (the reader gets half the time to see the server's close frame,
        then the socket is aborted), then release the sockets."""
        try:
            join_all(self._threads, timeout / 2)
        except ShutdownTimeout:
            self._session.abort()
            join_all(self._threads, timeout / 2)
        self._release()

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
        session = self._session
        session.open(deadline, timeout)
        ready = session.await_ready(deadline, timeout)
        self.ssrc = ready.ssrc
        mode = crypto.choose_mode(ready.modes)
        self._udp = open_udp(ready.ip, ready.port)
        address, port = discover_ip(self._udp, ready.ssrc, deadline=deadline, timeout=timeout)
        description = session.select_protocol(address, port, mode, deadline=deadline,
                                              timeout=timeout)
        session.await_e2ee(deadline, timeout)  # at once when the call has no DAVE
        self.mode = description.mode
        packetizer = Packetizer(
            ready.ssrc,
            crypto.make_cipher(description.mode, description.secret_key),
            sequence=random.getrandbits(16),
            timestamp=random.getrandbits(32),
            transform=self._dave,
        )
        self._sender = UdpSender(
            sock=self._udp, packetizer=packetizer, frames=self.opus_send, clock=self._clock,
            stop=self._stop_sender, announce=self._announce,
            wait_e2ee=self._dave.wait_e2ee,
        )
        thread = ServiceThread(f"dv-udp-sender:{self.guild_id}", self._sender.run, self._fail)
        self._threads.append(thread)
        thread.start()
        with self._lock:
            old = self._state
            if self._error is None and not self._closing:
                self._state = ConnectionState.READY
        self._notify(old, None)
        self._raise_if_failed()

    # -- the voice websocket: sessions and resume ------------------------------------------

    def _new_session(self, resume_from: VoiceSocketSession | None) -> VoiceSocketSession:
        holder: list[VoiceSocketSession] = []
        session = VoiceSocketSession(
            self._info, clock=self._clock, max_dave_protocol_version=self._max_dave,
            on_failure=lambda exc: self._on_session_lost(holder[0], exc),
            threads=self._threads, dave=self._dave, resume_from=resume_from,
        )
        holder.append(session)
        return session

    def _announce(self) -> None:
        self._flags = SpeakingFlag.MICROPHONE
        self._session.send_speaking(SpeakingFlag.MICROPHONE)

    def _on_session_lost(self, session: VoiceSocketSession, exc: BaseException) -> None:
        """A voice websocket ended: resume it when the policy says so, else fail."""
        with self._lock:
            if session is not self._session or self._closing:
                return  # a replaced socket ending late, or we are closing anyway
            if self._state is ConnectionState.RESUMING:
                return  # the resume loop sees this failure through session.resume()
            resume = self._state is ConnectionState.READY and _resumable(exc)
            if resume:
                self._state = ConnectionState.RESUMING
        if not resume:
            self._fail(exc)
            return
        self._notify(ConnectionState.READY, exc)
        log.warning("voice connection (guild %s): %s; resuming", self.guild_id, exc)
        thread = ServiceThread(f"dv-voice-resume:{self.guild_id}",
                               lambda: self._resume_loop(session, exc), self._fail)
        self._threads.append(thread)
        thread.start()

    def _resume_loop(self, old: VoiceSocketSession, error: BaseException) -> None:
        """Resume on a new websocket (UDP, key and DAVE state carry over); fail when spent."""
        old.stop(error)
        budget = RetryBudget(max_attempts=5, base_delay=0.25, max_delay=5.0,
                             immediate_first=True)
        for attempt in range(1, budget.max_attempts + 1):
            if self._closed.wait(budget.next_delay(attempt)):
                return
            new = self._new_session(old)
            with self._lock:
                if self._closing:
                    return
                self._old_sessions.append(self._session)
                self._session = new
            try:
                new.resume(time.monotonic() + self._close_timeout, self._close_timeout)
            except VoiceError as exc:
                new.stop(exc)
                error = exc
                if isinstance(exc, VoiceGatewayClosed) and not _resumable(exc):
                    break  # e.g. 4006: this session cannot be resumed
                continue
            with self._lock:
                if self._closing:
                    return
                self._state = ConnectionState.READY
                self.resumes += 1
            self._notify(ConnectionState.RESUMING, None)
            if self._flags:
                new.send_speaking(self._flags)
            log.info("voice connection (guild %s) resumed (attempt %d)", self.guild_id, attempt)
            return
        self._fail(error)

    # -- failure and shutdown ---------------------------------------------------------------

    def _fail(self, exc: BaseException, *, report: bool = True) -> None:
        """Record the first failure and end the connection (from any thread, never blocks).

        `report` logs it too; a failed join does not, since the caller gets the exception.
        """
        if self._begin_close(exc):
            if report:
                log.error("voice connection (guild %s) failed: %s", self.guild_id, exc)
            self._owner._forget(self, leave=False)

    def _begin_close(self, error: BaseException | None) -> bool:
        """Signal every thread to stop; True for the first caller. Does not join."""
        with self._lock:
            if self._closing:
                return False
            self._closing = True
            if error is not None:
                self._error = error
            old, self._state = self._state, ConnectionState.CLOSED
        discarded = self.opus_send.close(_as_connection_closed(error))
        if discarded:
            self._discarded += len(discarded)
            log.warning("voice connection (guild %s): %d queued frames discarded at close",
                        self.guild_id, len(discarded))
        self._stop_sender.set()
        self._session.stop(error)
        self._closed.set()
        self._notify(old, error)
        return True

    def _release(self) -> None:
        for old in self._old_sessions:
            old.release()
        self._session.release()
        if self._udp is not None:
            self._udp.close()

    # -- helpers ----------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is None:
            if self._closing:
                raise ConnectionClosed("the voice connection is closed")
            return
        raise _as_connection_closed(error)


def _resumable(exc: BaseException) -> bool:
    """Whether losing the voice websocket with `exc` calls for a resume (the close policy)."""
    if isinstance(exc, VoiceGatewayClosed):
        return _POLICY.decide(exc.code) is Action.RESUME
    return isinstance(exc, (HeartbeatTimeout, ConnectionClosed))


_POLICY = ClosePolicy.voice_default()


def _as_connection_closed(error: BaseException | None) -> ConnectionClosed:
    if error is None:
        return ConnectionClosed("the voice connection is closed")
    if isinstance(error, ConnectionClosed):
        return error
    wrapped = ConnectionClosed(f"the voice connection failed: {error}")
    wrapped.__cause__ = error
    return wrapped

"""Connection: one guild's voice connection (arikawa's ``*Connection``).

It owns three threads, started in this order and stopped in reverse: the voice websocket's
reader and heartbeat (in the `VoiceSocketSession` of its current `VoiceLink`) and
``dv-udp-sender:<guild>``, started on Session Description, which sends ``opus_send`` paced. A lost
websocket, a move or a voice server change starts ``dv-voice-recover:<guild>``, which resumes or
reconnects (`run_recovery`) while the sender goes on (resume) or holds its frames (reconnect).

The first failure that cannot be recovered from is stored, ends the connection, and is re-raised
by `wait()` and by the next public call (``opus_send.put`` included). No lock is held across
network I/O.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from discord_voice._shell.exit_hook import close_at_exit
from discord_voice._shell.opus_queue import OpusQueue
from discord_voice._shell.threads import ServiceThread, join_all, joined_within
from discord_voice._shell.udp_sender import StopSpeakingMarker, Transport, UdpSender
from discord_voice._shell.voice_link import VoiceLink
from discord_voice._shell.voice_recovery import (
    RecoverySteps,
    first_step,
    move_attempt,
    run_recovery,
)
from discord_voice._shell.voice_session import VoiceSocketSession
from discord_voice._shell.voice_updates import ServerUpdate, StateUpdate, VoiceUpdates
from discord_voice.clock import Clock, Signal
from discord_voice.core.ids import snowflake
from discord_voice.core.opcodes import SpeakingFlag
from discord_voice.core.reconnect import (
    Action,
    Attempt,
    AttemptKind,
    ClosePolicy,
    ReconnectPlan,
    RetryBudget,
)
from discord_voice.core.voice_gateway import VoiceServerInfo
from discord_voice.errors import (
    ConnectionClosed,
    Disconnected,
    JoinTimeout,
    ShutdownTimeout,
)

if TYPE_CHECKING:
    from discord_voice.voice import Voice

__all__ = [
    "Connection",
    "ConnectionState",
    "ConnectionStats",
    "StateListener",
    "AttemptListener",
    "default_voice_plan",
]

log = logging.getLogger(__name__)


class ConnectionState(enum.Enum):
    """Lifecycle of a `Connection`."""

    CONNECTING = "connecting"
    READY = "ready"
    RESUMING = "resuming"  # the voice websocket is being resumed; UDP audio goes on
    RECONNECTING = "reconnecting"  # a new voice session is being made; frames are held
    CLOSED = "closed"


#: ``listener(old_state, new_state, reason)``; reason is the exception behind the change, if any.
StateListener = Callable[[ConnectionState, ConnectionState, "BaseException | None"], None]
#: ``listener(attempt)``: called before each recovery attempt (resume, reconnect, wait).
AttemptListener = Callable[[Attempt], None]

#: How long one reconnect attempt may take: fresh op 4, both updates, the whole handshake.
RECONNECT_ATTEMPT_TIMEOUT = 10.0


def default_voice_plan() -> ReconnectPlan[Action]:
    """The default recovery of a voice connection (see `discord_voice.core.reconnect`):
    `ClosePolicy.voice_default()`; up to 3 resumes (the first at once, then 0.25 s, 0.5 s);
    then up to 5 new sessions (at once, then 0.5 s doubling, capped at 8 s, 20 % jitter);
    a move is waited for 10 s."""
    return ReconnectPlan(
        ClosePolicy.voice_default(),
        resume=RetryBudget(max_attempts=3, base_delay=0.25, max_delay=5.0,
                           immediate_first=True),
        new_session=RetryBudget(max_attempts=5, base_delay=0.5, max_delay=8.0,
                                immediate_first=True),
        move_timeout=10.0,
    )


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


class Connection:
    """A voice connection that can carry audio; returned by `Voice.join_channel`.

    It outlives the voice sessions beneath it: resumes, reconnects and moves keep the same
    `Connection` and ``opus_send``. Thread safety: every public method may be called from any
    thread.
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
        plan: ReconnectPlan[Action] | None = None,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        self._owner = owner
        self._clock = clock
        self._close_timeout = close_timeout
        self._max_dave = max_dave_protocol_version
        self._plan = plan if plan is not None else default_voice_plan()
        self._mute_deaf = (self_mute, self_deaf)
        #: Queue Opus frames here (bytes, one 20 ms packet each); `put` checks each item and
        #: raises `InvalidFrame` for bad ones, `ConnectionClosed` once the connection has ended.
        self.opus_send = OpusQueue(queue_size)
        self._lock = threading.Lock()  # guards the fields below; never held for I/O
        self._state_changed = threading.Condition(self._lock)
        self._state = ConnectionState.CONNECTING
        self._error: BaseException | None = None
        self._closing = False
        self._closed = Signal()
        self._stop_sender = Signal()
        self._threads: list[ServiceThread] = []  # sender and recovery threads
        self._updates = VoiceUpdates(StateUpdate(info.channel_id, info.session_id),
                                     ServerUpdate(info.endpoint, info.token))
        self._link = self._new_link(info)
        self._link_generation = 0  # the server update the current link was made from
        self._retired_links: list[VoiceLink] = []  # threads not joined in time: at release
        self._recovering = False
        self._loss: tuple[VoiceLink, VoiceSocketSession, BaseException] | None = None
        self._flags = SpeakingFlag.NONE
        self._listeners: list[StateListener] = []
        self._attempt_listeners: list[AttemptListener] = []
        #: How many times the voice websocket was resumed (same session).
        self.resumes = 0
        #: How many times a new voice session replaced the old one (reconnects and moves).
        self.reconnects = 0
        self._sender: UdpSender | None = None
        self._discarded = 0

    # -- public surface ---------------------------------------------------------------------

    @property
    def guild_id(self) -> str:
        return self._link.info.guild_id

    @property
    def channel_id(self) -> str:
        """The channel the current voice session is in (changes when the bot is moved)."""
        return self._link.info.channel_id

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
        sender = self._sender
        session = self._link.session
        pacing = sender.pacer.stats() if sender else None
        beats, acks = session.heartbeat_counts()
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
        self._flags = flags
        if self._state is ConnectionState.READY:
            self._link.session.send_speaking(flags)
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
        if self._state is ConnectionState.READY:
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
        with self._lock:
            links = [*self._retired_links, self._link]
            threads = [*self._threads, *(t for link in links for t in link.threads())]
        try:
            join_all(threads, timeout / 2)
        except ShutdownTimeout:
            for link in links:
                link.abort()
            join_all(threads, timeout / 2)
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
        self._sender = UdpSender(
            transport=transport, frames=self.opus_send, clock=self._clock,
            stop=self._stop_sender, announce=self._announce,
        )
        thread = ServiceThread(f"dv-udp-sender:{self.guild_id}", self._sender.run, self._fail)
        self._threads.append(thread)
        thread.start()
        self._set_state(ConnectionState.READY, None)
        self._raise_if_failed()
        if self._updates.server.generation > self._link_generation:
            self._on_server_changed("the voice server changed during the join")

    # -- main gateway events (on its reader thread; never block) -----------------------------

    def _on_voice_state(self, channel_id: str | None, session_id: str) -> None:
        """Our VOICE_STATE_UPDATE in this guild: kicked (no channel) ends the connection."""
        self._updates.post_state(channel_id, session_id)
        if channel_id is None:
            self._fail(Disconnected(
                "kicked", "disconnected from the voice channel by Discord (kicked, or the "
                "channel was deleted)"))

    def _on_voice_server(self, endpoint: str | None, token: str) -> None:
        """A VOICE_SERVER_UPDATE in this guild: a move or a voice server change (or, with no
        endpoint, the server went away: wait for the next one)."""
        self._updates.post_server(endpoint, token)
        reason = ("the voice server went away (null endpoint)" if endpoint is None
                  else "new voice server assigned")
        self._on_server_changed(reason)

    def _on_server_changed(self, reason: str) -> None:
        with self._lock:
            if self._closing or self._recovering or self._state is not ConnectionState.READY:
                return  # a recovery under way picks the update up from the mailbox
            self._recovering = True
            link = self._link
        log.info("voice connection (guild %s): %s; moving", self.guild_id, reason)
        link.stop(None)
        self._start_recovery(move_attempt(self._plan, reason), ConnectionClosed(reason))

    # -- losing the voice websocket, and recovering --------------------------------------

    def _new_link(self, info: VoiceServerInfo) -> VoiceLink:
        return VoiceLink(info, clock=self._clock, max_dave_protocol_version=self._max_dave,
                         on_failure=self._on_link_lost)

    def _announce(self) -> bool:
        """The sender's first frame of a run: send Speaking, or (while recovering) hold the
        sender until the recovery is done and return False."""
        with self._lock:
            self._flags = SpeakingFlag.MICROPHONE
            ready = self._state is ConnectionState.READY
            if not ready and self._sender is not None:
                self._sender.suspend()  # `_recovered` resumes it
        if not ready:
            return False
        try:
            self._link.session.send_speaking(SpeakingFlag.MICROPHONE)
        except ConnectionClosed:
            pass  # the websocket is going: the recovery sends the flags again
        return True

    def _on_link_lost(self, link: VoiceLink, session: VoiceSocketSession,
                      exc: BaseException) -> None:
        """A voice websocket ended: recover when the plan says so, else fail."""
        with self._lock:
            if link is not self._link or session is not link.session or self._closing:
                return  # a replaced socket ending late, or we are closing anyway
            if self._recovering:
                self._loss = (link, session, exc)  # the recovery looks at it when it is done
                return
            # during the join the caller gets the failure; a fatal one ends the connection
            first = None if self._state is ConnectionState.CONNECTING else first_step(
                self._plan, exc)
            step = first if isinstance(first, Attempt) else None
            self._recovering = step is not None
        if step is None:
            self._fail(exc)
            return
        log.warning("voice connection (guild %s): %s; recovering", self.guild_id, exc)
        self._start_recovery(step, exc)

    def _start_recovery(self, step: Attempt, error: BaseException) -> None:
        steps = RecoverySteps(
            closed=self._closed, begin=self._begin_attempt, resume=self._resume,
            reconnect=self._reconnect, await_move=self._await_move, move=self._move,
            recovered=self._recovered, give_up=self._fail,
        )
        thread = ServiceThread(f"dv-voice-recover:{self.guild_id}",
                               lambda: run_recovery(steps, self._plan, step, error), self._fail)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive() or t.ident is None]
            self._threads.append(thread)
        thread.start()

    def _begin_attempt(self, attempt: Attempt, cause: BaseException) -> bool:
        resuming = attempt.kind is AttemptKind.RESUME
        log.info("voice connection (guild %s): %s", self.guild_id, attempt.summary())
        if not resuming and self._sender is not None:
            self._sender.suspend()  # a new session: hold every frame until it is there
        self._link.stop(ConnectionClosed(attempt.summary()))  # idempotent for a stopped link
        with self._lock:
            listeners = list(self._attempt_listeners)
        for listener in listeners:
            listener(attempt)  # raising ends the connection (ServiceThread reports it)
        state = ConnectionState.RESUMING if resuming else ConnectionState.RECONNECTING
        return self._set_state(state, cause)

    def _resume(self) -> None:
        deadline = time.monotonic() + self._close_timeout
        self._link.resume_session(deadline, self._close_timeout)
        with self._lock:
            self.resumes += 1

    def _reconnect(self) -> None:
        """A new session: a fresh op 4 for our channel, then both updates, then the handshake."""
        timeout = RECONNECT_ATTEMPT_TIMEOUT
        deadline = time.monotonic() + timeout
        state, server = self._updates.state, self._updates.server
        channel = state.channel_id or self.channel_id
        self._owner._request_voice_state(self.guild_id, channel, *self._mute_deaf)
        got = self._updates.wait(
            lambda st, sv: st.generation > state.generation
            and sv.generation > server.generation and sv.endpoint is not None,
            deadline - time.monotonic())
        if got is None:
            stage = ("voice_state_update"
                     if self._updates.state.generation == state.generation
                     else "voice_server_update")
            raise JoinTimeout(stage, timeout, "while reconnecting")
        self._switch_link(got[0], got[1], deadline, timeout)

    def _await_move(self, timeout: float) -> bool:
        got = self._updates.wait(
            lambda st, sv: sv.generation > self._link_generation and sv.endpoint is not None,
            timeout)
        return got is not None

    def _move(self) -> None:
        timeout = RECONNECT_ATTEMPT_TIMEOUT
        self._switch_link(self._updates.state, self._updates.server,
                          time.monotonic() + timeout, timeout)

    def _switch_link(self, state: StateUpdate, server: ServerUpdate, deadline: float,
                     timeout: float) -> None:
        """Replace the link with a new session from the updates and hand it to the sender."""
        assert server.endpoint is not None
        old = self._link
        info = VoiceServerInfo(
            guild_id=old.info.guild_id, channel_id=state.channel_id or old.info.channel_id,
            user_id=old.info.user_id, session_id=state.session_id, token=server.token,
            endpoint=server.endpoint,
        )
        new = self._new_link(info)
        with self._lock:
            if self._closing:
                raise ConnectionClosed("the voice connection is closed")
            self._link, self._link_generation = new, server.generation
        self._retire(old)
        transport: Transport = new.establish(deadline, timeout)
        flags = self._flags
        if flags:
            new.session.send_speaking(flags)
        assert self._sender is not None
        self._sender.resume(transport, announced=bool(flags))
        with self._lock:
            self.reconnects += 1
        log.info("voice connection (guild %s): new voice session on %s (channel %s)",
                 self.guild_id, info.endpoint, info.channel_id)

    def _retire(self, link: VoiceLink) -> None:
        """Stop a replaced link, join its threads briefly and close its sockets."""
        link.stop(ConnectionClosed("replaced by a new voice session"))
        if joined_within(link.threads(), 1.0):
            link.release()
            return
        link.abort()
        with self._lock:
            self._retired_links.append(link)

    def _recovered(self, attempt: Attempt) -> BaseException | None:
        """Back to READY after `attempt`; a loss of the new socket meanwhile is returned."""
        with self._lock:
            loss, self._loss = self._loss, None
            link = self._link
            if loss is not None and (loss[0] is not link or loss[1] is not link.session):
                loss = None  # a socket replaced since
            if loss is not None:
                return loss[2]
            self._recovering = False
            if self._closing:
                return None
            old, self._state = self._state, ConnectionState.READY
            self._state_changed.notify_all()
        self._notify(old, None)
        flags = self._flags
        if attempt.kind is AttemptKind.RESUME and flags:
            try:
                link.session.send_speaking(flags)
            except ConnectionClosed:
                pass  # lost again at once: that loss starts the next recovery
        if self._sender is not None:
            self._sender.resume(announced=bool(flags))  # if `_announce` held it
        log.info("voice connection (guild %s) recovered (%s)", self.guild_id,
                 attempt.kind.value)
        if self._updates.server.generation > self._link_generation:
            self._on_server_changed("a new voice server was assigned while recovering")
        return None

    # -- failure and shutdown ---------------------------------------------------------------

    def _set_state(self, state: ConnectionState, reason: BaseException | None) -> bool:
        """Change state unless closing (then False); notify the listeners."""
        with self._lock:
            if self._closing or self._error is not None:
                return False
            old, self._state = self._state, state
            self._state_changed.notify_all()
        self._notify(old, reason)
        return True

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

    def _fail(self, exc: BaseException, *, report: bool = True) -> None:
        """Record the first failure and end the connection (from any thread, never blocks).

        `report` logs it and sends the leave; a failed join does neither, since the caller
        gets the exception and `Voice` sends the leave itself.
        """
        if self._begin_close(exc):
            if report:
                log.error("voice connection (guild %s) failed: %s", self.guild_id, exc)
            # Leave the channel too, so that Discord does not keep the bot there (and a rejoin
            # is not "already connected"); after a kick Discord has done it.
            kicked = isinstance(exc, Disconnected) and exc.why == "kicked"
            self._owner._forget(self, leave=report and not kicked)

    def _begin_close(self, error: BaseException | None) -> bool:
        """Signal every thread to stop; True for the first caller. Does not join."""
        with self._lock:
            if self._closing:
                return False
            self._closing = True
            if error is not None:
                self._error = error
            old, self._state = self._state, ConnectionState.CLOSED
            self._state_changed.notify_all()
            link = self._link
        discarded = self.opus_send.close(_as_connection_closed(error))
        if discarded:
            self._discarded += len(discarded)
            log.warning("voice connection (guild %s): %d queued frames discarded at close",
                        self.guild_id, len(discarded))
        self._stop_sender.set()
        self._updates.close()
        link.stop(error)
        self._closed.set()
        self._notify(old, error)
        return True

    # -- helpers ----------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is None:
            if self._closing:
                raise ConnectionClosed("the voice connection is closed")
            return
        raise _as_connection_closed(error)


T = TypeVar("T")


def _add(lock: threading.Lock, listeners: list[T], listener: T) -> Callable[[], None]:
    with lock:
        listeners.append(listener)

    def remove() -> None:
        with lock:
            if listener in listeners:
                listeners.remove(listener)

    return remove


def _as_connection_closed(error: BaseException | None) -> ConnectionClosed:
    if error is None:
        return ConnectionClosed("the voice connection is closed")
    if isinstance(error, ConnectionClosed):
        return error
    wrapped = ConnectionClosed(f"the voice connection failed: {error}")
    wrapped.__cause__ = error
    return wrapped

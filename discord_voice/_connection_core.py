"""The engine beneath `Connection`: its state machine, failure handling and recovery.

`ConnectionCore` owns the current `VoiceLink` (one voice session), the mailbox of main-gateway
updates and the recovery: a lost websocket, a move or a voice server change start
``dv-voice-recover:<guild>``, which runs `run_recovery` over the steps defined here (resume,
reconnect with a fresh op 4, go to a new server) while the sender goes on (resume) or holds its
frames (new session). The first failure that cannot be recovered from is stored and ends the
connection. `Connection` adds the public API on top. No lock is held across network I/O.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from discord_voice._shell.heartbeat import HeartbeatLoop
from discord_voice._shell.opus_queue import OpusQueue
from discord_voice._shell.threads import ServiceThread, joined_within
from discord_voice._shell.udp_sender import OutboundStream, Transport, UdpSender
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
from discord_voice.errors import ConnectionClosed, Disconnected, JoinTimeout

__all__ = [
    "AttemptListener",
    "ConnectionCore",
    "ConnectionState",
    "StateListener",
    "as_connection_closed",
    "default_voice_plan",
]

log = logging.getLogger("discord_voice.connection")


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


class ConnectionOwner(Protocol):
    """What a connection asks of the `Voice` that made it (a protocol, not an import of
    `discord_voice.voice`, which imports this module: no import cycle)."""

    def _forget(
        self, connection: ConnectionCore, *, leave: bool
    ) -> concurrent.futures.Future[None] | None: ...

    def _request_voice_state(self, guild: str, channel: str, mute: bool, deaf: bool) -> None: ...


class ConnectionCore:
    """State, failure and recovery of one guild's voice connection (see the module docstring).

    Thread safety: the ``_on_*`` entry points are called from the library's threads and never
    block; the rest runs on the joining or the recovery thread.
    """

    def __init__(
        self,
        owner: ConnectionOwner,
        info: VoiceServerInfo,
        *,
        clock: Clock,
        heartbeats: HeartbeatLoop,
        sender: UdpSender,
        queue_size: int,
        close_timeout: float,
        max_dave_protocol_version: int,
        plan: ReconnectPlan[Action] | None = None,
        self_mute: bool = False,
        self_deaf: bool = False,
        reconnect_timeout: float = RECONNECT_ATTEMPT_TIMEOUT,
    ) -> None:
        self._owner = owner
        self._clock = clock
        self._heartbeats = heartbeats  # the Voice's heartbeat thread, shared by every link
        self._udp_sender = sender  # the Voice's sender thread, shared by every connection
        self._close_timeout = close_timeout
        self._max_dave = max_dave_protocol_version
        self._plan = plan if plan is not None else default_voice_plan()
        self._mute_deaf = (self_mute, self_deaf)
        self._reconnect_timeout = reconnect_timeout
        #: Queue Opus frames here (bytes, one 20 ms packet each); `put` checks each item and
        #: raises `InvalidFrame` for bad ones, `ConnectionClosed` once the connection has ended.
        self.opus_send = OpusQueue(queue_size, before_put=self._ensure_speaking)
        self._lock = threading.Lock()  # guards the fields below; never held for I/O
        self._state_changed = threading.Condition(self._lock)
        self._state = ConnectionState.CONNECTING
        self._error: BaseException | None = None
        self._closing = False
        self._closed = Signal()
        self._threads: list[ServiceThread] = []  # recovery and failure threads
        self._updates = VoiceUpdates(StateUpdate(info.channel_id, info.session_id),
                                     ServerUpdate(info.endpoint, info.token), clock=clock)
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
        self._stream: OutboundStream | None = None  # our audio in the sender, once READY
        self._attached = False  # whether `_stream` still holds a place in the sender
        self._discarded = 0

    @property
    def guild_id(self) -> str:
        return self._link.info.guild_id

    @property
    def channel_id(self) -> str:
        """The channel the current voice session is in (changes when the bot is moved)."""
        return self._link.info.channel_id

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
        log.info("voice connection (guild %s): %s; moving", self.guild_id, reason)
        self._start_recovery(move_attempt(self._plan, reason), ConnectionClosed(reason))

    # -- losing the voice websocket, and recovering --------------------------------------

    def _new_link(self, info: VoiceServerInfo) -> VoiceLink:
        return VoiceLink(info, clock=self._clock, heartbeats=self._heartbeats,
                         max_dave_protocol_version=self._max_dave, on_failure=self._on_link_lost)

    def _ensure_speaking(self) -> None:
        """Before a frame is queued (on the producer's thread): Speaking must precede audio.

        The first frame of a run sends Speaking (op 5) unless flags are set already; while the
        connection recovers, the stream is held instead and `_recovered` sends the flags first.
        """
        if self._flags:
            return
        with self._lock:
            if self._flags:
                return
            self._flags = SpeakingFlag.MICROPHONE
            ready = self._state is ConnectionState.READY
            if not ready and self._stream is not None:
                self._stream.hold()  # `_recovered` releases it after Speaking
        if ready:
            try:
                self._link.session.send_speaking(SpeakingFlag.MICROPHONE)
            except ConnectionClosed:
                pass  # the websocket is going: the recovery sends the flags again

    def _attach_stream(self, transport: Transport) -> None:
        """Hand ``opus_send`` to the Voice's sender (after the join; once)."""
        stream = self._udp_sender.attach(self.guild_id, self.opus_send, transport,
                                         self._on_send_failure)
        with self._lock:
            self._stream, self._attached = stream, True
            closing = self._closing
        if closing:  # closed during the attach: `_begin_close` did not see the stream
            stream.close()

    def _detach_stream(self, timeout: float) -> None:
        """Take ``opus_send`` back from the sender (once); the last stream stops its thread."""
        with self._lock:
            stream = self._stream if self._attached else None
            self._attached = False
        if stream is not None:
            self._udp_sender.detach(stream, timeout)

    def _on_send_failure(self, exc: BaseException) -> None:
        """Sending failed (on the shared sender thread, which must not block): fail on a
        thread of our own, since failing sends the leave and runs state listeners."""
        thread = ServiceThread(f"dv-voice-fail:{self.guild_id}", lambda: self._fail(exc),
                               self._fail)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive() or t.ident is None]
            self._threads.append(thread)
        thread.start()

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
        self._hold_frames_for(step)  # at once: not one more frame to a session that is gone
        steps = RecoverySteps(
            closed=self._closed, clock=self._clock, begin=self._begin_attempt,
            resume=self._resume, reconnect=self._reconnect, await_move=self._await_move,
            move=self._move, recovered=self._recovered, give_up=self._fail,
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
        self._hold_frames_for(attempt)  # a resume escalated to a new session
        self._link.stop(ConnectionClosed(attempt.summary()))  # idempotent for a stopped link
        with self._lock:
            listeners = list(self._attempt_listeners)
        for listener in listeners:
            listener(attempt)  # raising ends the connection (ServiceThread reports it)
        state = ConnectionState.RESUMING if resuming else ConnectionState.RECONNECTING
        return self._set_state(state, cause)

    def _hold_frames_for(self, attempt: Attempt) -> None:
        """A new session is needed: the sender holds every frame until `_recovered`."""
        if attempt.kind is not AttemptKind.RESUME and self._stream is not None:
            self._stream.hold()

    def _resume(self) -> None:
        deadline = self._clock.monotonic() + self._close_timeout
        self._link.resume_session(deadline, self._close_timeout)
        with self._lock:
            self.resumes += 1

    def _reconnect(self) -> None:
        """A new session: a fresh op 4 for our channel, then both updates, then the handshake."""
        timeout = self._reconnect_timeout
        deadline = self._clock.monotonic() + timeout
        state, server = self._updates.state, self._updates.server
        channel = state.channel_id or self.channel_id
        self._owner._request_voice_state(self.guild_id, channel, *self._mute_deaf)
        got = self._updates.wait(
            lambda st, sv: st.generation > state.generation
            and sv.generation > server.generation and sv.endpoint is not None,
            deadline)
        if got is None:
            stage = ("voice_state_update"
                     if self._updates.state.generation == state.generation
                     else "voice_server_update")
            raise JoinTimeout(stage, timeout, "while reconnecting")
        self._switch_link(got[0], got[1], deadline, timeout)

    def _await_move(self, timeout: float) -> bool:
        got = self._updates.wait(
            lambda st, sv: sv.generation > self._link_generation and sv.endpoint is not None,
            self._clock.monotonic() + timeout)
        return got is not None

    def _move(self) -> None:
        timeout = self._reconnect_timeout
        self._switch_link(self._updates.state, self._updates.server,
                          self._clock.monotonic() + timeout, timeout)

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
        assert self._stream is not None
        self._stream.set_transport(transport)  # still held: `_recovered` sends Speaking first
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
        if flags:  # Speaking on the resumed or new socket before any more audio
            try:
                link.session.send_speaking(flags)
            except ConnectionClosed:
                pass  # lost again at once: that loss starts the next recovery
        if self._stream is not None:
            self._stream.release()  # held for a new session or by `_ensure_speaking`
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
        discarded = self.opus_send.close(as_connection_closed(error))
        if discarded:
            self._discarded += len(discarded)
            log.warning("voice connection (guild %s): %d queued frames discarded at close",
                        self.guild_id, len(discarded))
        if self._stream is not None:
            self._stream.close()
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
        raise as_connection_closed(error)


def as_connection_closed(error: BaseException | None) -> ConnectionClosed:
    if error is None:
        return ConnectionClosed("the voice connection is closed")
    if isinstance(error, ConnectionClosed):
        return error
    wrapped = ConnectionClosed(f"the voice connection failed: {error}")
    wrapped.__cause__ = error
    return wrapped

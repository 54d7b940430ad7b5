"""Connection: one guild's voice connection (arikawa's ``*Connection``), the public face.

A `Connection` contains the three parts of a connection and wires them together:

* its lifecycle, `discord_voice.core.lifecycle.Lifecycle`: every decision about joining,
  resuming, reconnecting, moving and ending, as a pure state machine;
* its `VoiceSupervisor` (``_shell/voice_supervisor.py``), which feeds the machine its events
  and carries out its actions, running blocking steps on ``dv-voice-recover:<guild>``;
* its `VoiceSessions` (``_shell/voice_sessions.py``): the current voice session (websocket
  reader ``dv-voice-reader:<guild>``, UDP socket, keys, DAVE) and ``opus_send``'s place in the
  `Voice`'s shared sender thread.

Its owner (a `Voice`) talks to it one way: it creates it, calls `open`, routes the main gateway's
updates to `on_voice_state` / `on_voice_server`; the connection tells the owner it ended through
the one `ConnectionOwner.connection_ended` callback, and sends op 4 through the
`VoiceStateSender` it was given (the main gateway).

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
from typing import Protocol

from discord_voice._shell.exit_hook import close_at_exit
from discord_voice._shell.heartbeat import HeartbeatLoop
from discord_voice._shell.opus_queue import OpusQueue
from discord_voice._shell.recv_queue import RecvQueue
from discord_voice._shell.udp_receiver import ReceiveStats, UdpReceiver
from discord_voice._shell.udp_sender import StopSpeakingMarker, UdpSender
from discord_voice._shell.voice_sessions import (
    VoiceSessions,
    VoiceStateSender,
    as_connection_closed,
)
from discord_voice._shell.voice_supervisor import (
    AttemptListener,
    StateListener,
    VoiceSupervisor,
)
from discord_voice.audio.listen import Listener, Sink
from discord_voice.audio.player import Player
from discord_voice.audio.source import Source
from discord_voice.clock import Clock, Signal, SystemClock
from discord_voice.core.ids import snowflake
from discord_voice.core.lifecycle import ConnectionState, Lifecycle, default_voice_plan
from discord_voice.core.opcodes import SpeakingFlag
from discord_voice.core.pacing import PacingStats
from discord_voice.core.reconnect import Action, ReconnectPlan
from discord_voice.core.voice_gateway import VoiceServerInfo
from discord_voice.errors import AlreadyPlaying, JoinTimeout, LocalProtocolError

__all__ = [
    "RECONNECT_ATTEMPT_TIMEOUT",
    "AttemptListener",
    "Connection",
    "ConnectionOwner",
    "ConnectionState",
    "ConnectionStats",
    "StateListener",
    "as_connection_closed",
    "default_voice_plan",
]

log = logging.getLogger(__name__)

#: How long one reconnect attempt may take: fresh op 4, both updates, the whole handshake.
RECONNECT_ATTEMPT_TIMEOUT = 10.0


class ConnectionOwner(Protocol):
    """What a connection tells the `Voice` that made it: only that it ended."""

    def connection_ended(
        self, connection: Connection, *, leave: bool
    ) -> concurrent.futures.Future[None] | None:
        """`connection` ended; with `leave`, send the leave (op 4 with no channel) and return
        a future resolved when Discord confirms it (None when nothing was sent)."""
        ...


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
    send_retries: int  # UDP sends retried 1 ms later because the socket's buffer was full
    heartbeats_sent: int
    heartbeat_acks: int
    latency: float | None
    ignored_messages: int
    malformed_messages: int
    resumes: int
    reconnects: int
    receive: ReceiveStats | None = None  # when joined with receive=True


class Connection:
    """A voice connection that can carry audio; returned by `Voice.join_channel`.

    It outlives the voice sessions beneath it: resumes, reconnects and moves keep the same
    `Connection` and ``opus_send``. Thread safety: every public method may be called from any
    thread.
    """

    def __init__(
        self,
        owner: ConnectionOwner,
        info: VoiceServerInfo,
        *,
        voice_states: VoiceStateSender,
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
        receiver: UdpReceiver | None = None,
        receive_queue_size: int,
    ) -> None:
        self._owner = owner
        self._voice_states = voice_states
        self._close_timeout = close_timeout
        self._mute_deaf = (self_mute, self_deaf)
        #: Resolved (once, by the thread that ended the connection) with the leave's
        #: confirmation, or None when no leave was sent.
        self._ended_with: concurrent.futures.Future[concurrent.futures.Future[None] | None] = (
            concurrent.futures.Future()
        )
        self._leave_claim = threading.Lock()  # the first disconnect() waits for the leave
        self._audio_lock = threading.Lock()  # guards the player and listener fields below
        self._player: Player | None = None  # the latest one started by `play`
        # earlier players' threads, maybe still in their `after` (which may call `play`)
        self._player_threads: list[threading.Thread] = []
        self._listener: Listener | None = None  # `listen`'s, until `stop_listening`
        self._listening_threads: list[threading.Thread] = []  # stopped by disconnect
        self._clock = clock
        #: Queue Opus frames here (bytes, one Opus packet each); `put` checks each item and
        #: raises `InvalidFrame` for bad ones, `ConnectionClosed` once the connection has ended.
        self.opus_send = OpusQueue(queue_size, before_put=self._ensure_speaking)
        #: Other members' Opus packets (`VoicePacket`), when joined with ``receive=True``: each
        #: user's in their order of arrival; full, the oldest is discarded (``stats.receive``).
        self.opus_recv = RecvQueue(receive_queue_size)
        self._sessions = VoiceSessions(
            info,
            self.opus_send,
            clock=clock,
            heartbeats=heartbeats,
            sender=sender,
            voice_states=voice_states,
            max_dave_protocol_version=max_dave_protocol_version,
            self_mute=self_mute,
            self_deaf=self_deaf,
            step_timeout=reconnect_timeout,
            resume_timeout=close_timeout,
            on_link_lost=lambda exc, socket: self._supervisor.link_lost(exc, socket),
            on_send_failure=lambda exc: self._supervisor.fail_elsewhere(exc),
            receiver=receiver,
            received=self.opus_recv,
        )
        self._supervisor = VoiceSupervisor(
            Lifecycle(plan),
            self._sessions,
            clock=clock,
            guild_id=info.guild_id,
            on_ended=self._ended,
        )

    # -- the owner's side (package-internal) -------------------------------------------------

    def open(self, deadline: float, timeout: float) -> None:
        """Run the voice handshake (on the joining thread) until audio can flow.

        On failure the connection ends (its owner is told, and sends the leave), its threads
        are joined, and the real reason is raised, or `JoinTimeout` naming the stage.
        """
        close_at_exit(self, Connection._close_at_exit)
        try:
            socket = self._sessions.establish(deadline, timeout)
            self._supervisor.joined(socket)
            self._raise_if_failed()
        except BaseException as exc:
            self._supervisor.fail(exc)  # nothing if it ended already
            self._join(self._close_timeout)
            raise

    def on_voice_state(self, channel_id: str | None, session_id: str) -> None:
        """Our VOICE_STATE_UPDATE in this guild (on the main gateway's thread; never blocks):
        kept for the next session; with no channel, we were kicked."""
        self._sessions.updates.post_state(channel_id, session_id)
        if channel_id is None:
            self._supervisor.kicked()

    def on_voice_server(self, endpoint: str | None, token: str) -> None:
        """A VOICE_SERVER_UPDATE in this guild (on the main gateway's thread): a move or a
        voice server change (or, with no endpoint, the server went away: wait for the next)."""
        update = self._sessions.updates.post_server(endpoint, token)
        self._supervisor.server_update(update.generation)

    def _ended(self, error: BaseException | None, leave: bool) -> None:
        """The supervisor's `on_ended`: tell the owner (once, on the thread that ended us)."""
        with self._audio_lock:
            player = self._player
        if player is not None:  # never blocks: asks the player thread to stop
            player.connection_ended(None if error is None else as_connection_closed(error))
        left = None
        try:
            left = self._owner.connection_ended(self, leave=leave)
        finally:
            self._ended_with.set_result(left)

    # -- public surface ---------------------------------------------------------------------

    @property
    def guild_id(self) -> str:
        return self._sessions.link.info.guild_id

    @property
    def channel_id(self) -> str:
        """The channel the current voice session is in (changes when the bot is moved)."""
        return self._sessions.link.info.channel_id

    @property
    def resumes(self) -> int:
        """How many times the voice websocket was resumed (same session)."""
        return self._sessions.resumes

    @property
    def reconnects(self) -> int:
        """How many times a new voice session replaced the old one (reconnects and moves)."""
        return self._sessions.reconnects

    @property
    def endpoint(self) -> str:
        """The voice server of the current session."""
        return self._sessions.link.info.endpoint

    @property
    def mode(self) -> str | None:
        """The transport encryption mode of the current session."""
        return self._sessions.link.mode

    @property
    def udp_server(self) -> tuple[str, int] | None:
        """The voice server's UDP address (host, port) in the current session."""
        return self._sessions.link.udp_server

    @property
    def external_address(self) -> tuple[str, int] | None:
        """Our address and port as the voice server saw them (IP discovery)."""
        return self._sessions.link.external_address

    @property
    def ssrc(self) -> int | None:
        """Our SSRC in the current session (a reconnect gets a new one)."""
        return self._sessions.link.ssrc

    @property
    def state(self) -> ConnectionState:
        return self._supervisor.state

    @property
    def error(self) -> BaseException | None:
        """The failure that ended the connection, or None."""
        return self._supervisor.error

    @property
    def latency(self) -> float | None:
        """The last voice heartbeat round trip in seconds (None before the first ACK)."""
        return self._sessions.link.session.latency

    @property
    def stats(self) -> ConnectionStats:
        """Counters for sending and the websocket (a consistent-enough snapshot, not atomic)."""
        sessions = self._sessions
        stream = sessions.stream
        session = sessions.link.session
        sent = stream.stats() if stream else None
        pacing = sent.pacing if sent else PacingStats()
        beats, acks = session.heartbeat_counts()
        return ConnectionStats(
            frames_sent=pacing.frames_sent,
            late_frames=pacing.late_frames,
            max_lateness=pacing.max_lateness,
            underruns=pacing.underruns,
            stalls=pacing.stalls,
            frames_discarded=sessions.discarded + (sent.held + sent.discarded if sent else 0),
            bytes_sent=sent.bytes_sent if sent else 0,
            send_retries=sent.send_retries if sent else 0,
            heartbeats_sent=beats,
            heartbeat_acks=acks,
            latency=session.latency,
            ignored_messages=session.ignored,
            malformed_messages=session.malformed,
            resumes=sessions.resumes,
            reconnects=sessions.reconnects,
            receive=sessions.inbound.stats() if sessions.inbound is not None else None,
        )

    # -- DAVE end-to-end encryption ---------------------------------------------------------

    @property
    def e2ee_active(self) -> bool:
        """Whether the audio we send is end-to-end encrypted with DAVE right now."""
        dave = self._sessions.link.dave
        with dave.lock:
            return dave.protocol.active

    @property
    def dave_protocol_version(self) -> int:
        """The DAVE protocol version in effect (0: the call is not end-to-end encrypted)."""
        dave = self._sessions.link.dave
        with dave.lock:
            return dave.protocol.protocol_version

    @property
    def dave_epoch(self) -> int | None:
        """The MLS epoch of the call's group (changes when members join or leave)."""
        dave = self._sessions.link.dave
        with dave.lock:
            return dave.protocol.epoch

    @property
    def voice_privacy_code(self) -> str | None:
        """The code every member of the call sees; compare it to check the call is private."""
        dave = self._sessions.link.dave
        with dave.lock:
            return dave.protocol.privacy_code

    def wait_for_e2ee(self, timeout: float = 10.0, *, encrypted: bool = True) -> bool:
        """Block until the audio we send is end-to-end encrypted with a group key (or, with
        ``encrypted=False``, until it is not, after a downgrade).

        Returns False after `timeout` seconds (for example while alone in the call: the DAVE
        group needs a second member). Raises the connection's error if it ends meanwhile.
        """
        self._raise_if_failed()
        dave = self._sessions.link.dave
        if encrypted:
            ok = dave.wait(lambda d: d.ready, timeout)
        else:
            ok = dave.wait(lambda d: not d.active, timeout)
        self._raise_if_failed()
        return ok

    def verification_code(self, user_id: int | str) -> str:
        """The code to compare with `user_id` out of band (`EncryptionError` if there is none)."""
        dave = self._sessions.link.dave
        with dave.lock:
            return dave.protocol.verification_code(user_id)

    def __repr__(self) -> str:
        return (
            f"<Connection guild={self.guild_id} channel={self.channel_id} "
            f"state={self.state.value} mode={self.mode}>"
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
        return self._supervisor.add_state_listener(listener)

    def add_attempt_listener(self, listener: AttemptListener) -> Callable[[], None]:
        """Call ``listener(attempt)`` before each recovery attempt; returns a remover.

        An `Attempt` says what is tried (resume, reconnect, wait for a move), its number and
        budget, the delay before it and the close code that led there. Same rules as state
        listeners: must not block; one that raises ends the connection.
        """
        return self._supervisor.add_attempt_listener(listener)

    def add_speaking_listener(self, listener: Callable[[int, bool], None]) -> Callable[[], None]:
        """Call ``listener(user_id, speaking)`` when another member starts speaking (True, at
        their first packet after silence) or stops (False, ~200 ms without a packet, or when
        they leave); returns a remover. Needs ``receive=True``. Listeners run on the
        ``dv-udp-receiver`` thread and must not block; one that raises ends the connection.

        Raises:
            LocalProtocolError: the connection was not joined with ``receive=True``.
        """
        inbound = self._sessions.inbound
        if inbound is None:
            raise LocalProtocolError("join the channel with receive=True to hear who speaks")
        return inbound.add_speaking_listener(listener)

    def wait_for_state(self, state: ConnectionState, timeout: float) -> bool:
        """Block until the connection is in `state` (or closed); return whether it is."""
        self._supervisor.wait_for(lambda now: now is state, timeout)
        return self.state is state

    # -- speaking ---------------------------------------------------------------------------

    def speaking(self, flags: SpeakingFlag | int = SpeakingFlag.MICROPHONE) -> None:
        """Send Speaking (op 5) with `flags`; required (and sent for you) before audio.

        While the connection recovers the flags are kept and sent once it is back.
        """
        self._raise_if_failed()
        flags = SpeakingFlag(flags)
        self._sessions.set_flags(flags)  # with no flags, the next frame queued announces it
        if self.state is ConnectionState.READY:
            self._sessions.link.session.send_speaking(flags)

    def stop_speaking(self, timeout: float = 5.0) -> None:
        """Send every frame already queued, then 5 silence frames, then Speaking with flags 0.

        Blocks until done (at most `timeout` seconds, then `TimeoutError`).
        """
        self._raise_if_failed()
        done = Signal()
        closed = self._supervisor.closed
        closed.add_listener(done.set)  # a connection that ends meanwhile wakes us too
        try:
            self.opus_send.put_control(StopSpeakingMarker(done), timeout=timeout)
            if not done.wait(timeout):
                raise TimeoutError(f"queued frames were not sent within {timeout:g}s")
        finally:
            closed.remove_listener(done.set)
        self._raise_if_failed()
        self._sessions.set_flags(SpeakingFlag.NONE)  # the next frame announces Speaking again
        if self.state is ConnectionState.READY:
            self._sessions.link.session.send_speaking(SpeakingFlag.NONE)

    # -- playing ----------------------------------------------------------------------------

    def play(
        self,
        source: Source,
        *,
        after: Callable[[BaseException | None], None] | None = None,
        volume: float = 1.0,
    ) -> Player:
        """Play `source` (see `discord_voice.audio`) on a ``dv-player`` thread; returns its
        `Player` at once (``player.wait()`` blocks until the end).

        At the end, or after ``player.stop()``, the player sends silence and Speaking 0 as
        `stop_speaking` does, closes the source and calls ``after(error_or_None)`` once, on its
        thread. Nothing else should be put on `opus_send` meanwhile.

        Raises:
            AlreadyPlaying: the previous player has not ended (stop it, or wait for it).
            ConnectionClosed: the connection has ended.
        """
        self._raise_if_failed()
        with self._audio_lock:
            if self._player is not None and not self._player.is_done():
                raise AlreadyPlaying(
                    f"guild {self.guild_id} is already playing {self._player.source!r}: "
                    "stop() it or wait() for it first"
                )
            if self._player is not None:
                alive = [t for t in self._player_threads if t.is_alive()]
                self._player_threads = [*alive, self._player.thread]
            player = self._player = Player(self, source, after=after, volume=volume)
        player.start()
        if self.state is ConnectionState.CLOSED:  # ended meanwhile, before it could be told
            player.connection_ended(as_connection_closed(self.error))
        return player

    # -- listening --------------------------------------------------------------------------

    def listen(self, sink: Sink) -> Listener:
        """Decode every member's audio from `opus_recv` into `sink` on a ``dv-listener``
        thread: ``sink.write(user_id, pcm)`` with 3840-byte blocks (20 ms, 48 kHz, stereo,
        s16le), lost packets recovered (FEC) or concealed, pauses as silence; ``sink.close()``
        at `stop_listening` (or `disconnect`). It consumes ``opus_recv``.

        Raises:
            LocalProtocolError: not joined with ``receive=True``, or already listening.
        """
        self._raise_if_failed()
        if self._sessions.inbound is None:
            raise LocalProtocolError("join the channel with receive=True to listen")
        with self._audio_lock:
            if self._listener is not None:
                raise LocalProtocolError("already listening: stop_listening() first")
            listener = self._listener = Listener(
                self.opus_recv, sink, self._clock, name=self.guild_id
            )
        return listener.start()

    def stop_listening(self, timeout: float | None = None) -> None:
        """Flush what each member said, close the sink, join the listener thread; re-raise
        the sink's error if it failed."""
        with self._audio_lock:
            listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.stop()
        listener.thread.join(self._close_timeout if timeout is None else timeout)
        listener.wait(0)

    @property
    def player(self) -> Player | None:
        """The player started last by `play` (it may have ended)."""
        with self._audio_lock:
            return self._player

    # -- moving and ending ------------------------------------------------------------------

    def move_to(self, channel_id: int | str, timeout: float = 10.0) -> None:
        """Move to another voice channel of the guild; block until audio flows there.

        Sends op 4 with the new channel; Discord answers with a new voice session, which the
        connection switches to (frames queued meanwhile are held, then sent). Raises
        `JoinTimeout` if the connection is not ready in the new channel within `timeout`.
        """
        channel = snowflake(channel_id, "channel_id")
        self._raise_if_failed()
        if self.channel_id == channel and self.state is ConnectionState.READY:
            return
        mute, deaf = self._mute_deaf
        self._voice_states.update_voice_state(
            self.guild_id, channel, self_mute=mute, self_deaf=deaf
        )
        self._supervisor.wait_for(
            lambda now: now is ConnectionState.READY and self.channel_id == channel, timeout
        )
        self._raise_if_failed()
        if not (self.state is ConnectionState.READY and self.channel_id == channel):
            raise JoinTimeout("move", timeout, f"not ready in channel {channel} yet")

    def wait(self, timeout: float | None = None) -> None:
        """Block until the connection ends; raise its failure (return None after `disconnect`).

        Raises `TimeoutError` if it is still open after `timeout` seconds.
        """
        if not self._supervisor.closed.wait(timeout):
            raise TimeoutError(f"the connection is still open after {timeout:g}s")
        self._join(self._close_timeout)
        if self.error is not None:
            raise as_connection_closed(self.error)

    def disconnect(self, timeout: float | None = None) -> None:
        """Leave the channel (op 4 with no channel), close the websocket and UDP, join threads.

        Idempotent and safe from any thread (on one of the library's own threads it neither
        joins that thread nor waits for the leave's confirmation). Frames still queued are
        discarded and counted in ``stats.frames_discarded``; call `stop_speaking` first to send
        them. The first call waits (within `timeout`) for Discord to confirm the leave, also
        when the connection was ending on another thread at that moment, so that an immediate
        rejoin cannot race it. Raises `ShutdownTimeout` if a thread cannot be joined within
        `timeout` seconds.
        """
        timeout = self._close_timeout if timeout is None else timeout
        real = SystemClock()  # a shutdown bound: real time whatever the clock (see clock.py)
        deadline = real.monotonic() + timeout
        with self._audio_lock:
            player = self._player
            listener, self._listener = self._listener, None
            if listener is not None:
                self._listening_threads.append(listener.thread)  # joined below
        if player is not None:
            player.stop()  # first: a stop on purpose, not a failure, whatever the player sees
        if listener is not None:
            listener.stop()  # flushes what each member said and closes the sink
        self._supervisor.close()  # the owner is told (and sends the leave) unless it ended
        self._join(timeout)
        if threading.current_thread().name.startswith("dv-"):
            return  # a library thread may be the one ending us, or the one the confirmation needs
        if not self._leave_claim.acquire(blocking=False):
            return  # waited for (or being waited for) by an earlier call
        try:
            confirmed = self._ended_with.result(max(0.0, deadline - real.monotonic()))
            if confirmed is not None:
                confirmed.result(max(0.0, deadline - real.monotonic()))
        except concurrent.futures.TimeoutError:
            log.info(
                "guild %s: Discord did not confirm the leave within %gs", self.guild_id, timeout
            )

    def _join(self, timeout: float) -> None:
        """Join every thread of ours and release the sockets (see `VoiceSessions.join`)."""
        with self._audio_lock:
            player = self._player
            threads: list[threading.Thread] = [
                *self._supervisor.threads(),
                *self._player_threads,
                *self._listening_threads,
            ]
        if player is not None:
            threads.append(player.thread)
        self._sessions.join(threads, timeout)

    close = disconnect

    def _close_at_exit(self) -> None:
        if self.state is not ConnectionState.CLOSED:
            log.warning(
                "voice connection in guild %s still open at interpreter exit: disconnecting",
                self.guild_id,
            )
        self.disconnect(timeout=2.0)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect()

    # -- helpers ----------------------------------------------------------------------------

    def _ensure_speaking(self) -> None:
        """Before a frame is queued (on the producer's thread): Speaking precedes audio."""
        self._sessions.ensure_speaking(lambda: self.state is ConnectionState.READY)

    def _raise_if_failed(self) -> None:
        if self.state is ConnectionState.CLOSED:
            raise as_connection_closed(self.error)

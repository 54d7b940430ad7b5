"""VoiceSessions: the voice sessions beneath one connection, and its audio in the sender.

It keeps the current `VoiceLink` (one voice session) and replaces it: a resume gives the link a
new websocket; a reconnect (a fresh op 4 through the `VoiceStateSender`, then both updates from
the `VoiceUpdates` mailbox) or a move (the newest updates) makes a new link. It hands
``opus_send`` to the `Voice`'s sender once the join succeeded and holds, releases or re-targets
it there. It carries out the `LifecycleSteps` of the connection's supervisor and decides
nothing itself: the lifecycle (`discord_voice.core.lifecycle`) does.

It reports a lost websocket through ``on_link_lost(error, socket number)`` (only the current
socket of the current link, never one it stopped) and a sending failure through
``on_send_failure`` (called on the shared sender thread: it must not block).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from discord_voice._shell.heartbeat import HeartbeatLoop
from discord_voice._shell.opus_queue import OpusQueue
from discord_voice._shell.recv_queue import RecvQueue
from discord_voice._shell.threads import join_all, joined_within
from discord_voice._shell.udp_receiver import InboundStream, UdpReceiver
from discord_voice._shell.udp_sender import OutboundStream, Transport, UdpSender
from discord_voice._shell.voice_link import VoiceLink
from discord_voice._shell.voice_session import Member
from discord_voice._shell.voice_updates import ServerUpdate, StateUpdate, VoiceUpdates
from discord_voice.clock import Clock
from discord_voice.core.opcodes import SpeakingFlag
from discord_voice.core.voice_gateway import VoiceServerInfo
from discord_voice.errors import ConnectionClosed, JoinTimeout, ShutdownTimeout

__all__ = ["VoiceSessions", "VoiceStateSender", "as_connection_closed"]

log = logging.getLogger("discord_voice.connection")


class VoiceStateSender(Protocol):
    """Sends op 4 Voice State Update (a `discord_voice.MainGateway` is one)."""

    def update_voice_state(
        self, guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None: ...


def as_connection_closed(error: BaseException | None) -> ConnectionClosed:
    """The error a caller gets from an ended connection (wrapping a foreign one)."""
    if error is None:
        return ConnectionClosed("the voice connection is closed")
    if isinstance(error, ConnectionClosed):
        return error
    wrapped = ConnectionClosed(f"the voice connection failed: {error}")
    wrapped.__cause__ = error
    return wrapped


class VoiceSessions:
    """The current voice session of a connection, its replacements and its outbound stream.

    Thread safety: `hold_frames`, `stop_link`, `resume_audio`, `end`, the speaking helpers and
    the properties from any thread; `establish` on the joining thread; `resume`, `reconnect`,
    `await_move` and `move` on the recovery thread (one at a time, as the lifecycle says).
    One lock guards the fields; it is never held across network I/O.
    """

    def __init__(
        self,
        info: VoiceServerInfo,
        frames: OpusQueue,
        *,
        clock: Clock,
        heartbeats: HeartbeatLoop,
        sender: UdpSender,
        voice_states: VoiceStateSender,
        max_dave_protocol_version: int,
        self_mute: bool,
        self_deaf: bool,
        step_timeout: float,
        resume_timeout: float,
        on_link_lost: Callable[[BaseException, int], None],
        on_send_failure: Callable[[BaseException], None],
        receiver: UdpReceiver | None = None,
        received: RecvQueue | None = None,
    ) -> None:
        self._frames = frames
        self._clock = clock
        self._heartbeats = heartbeats  # the Voice's heartbeat thread, shared by every link
        self._sender = sender  # the Voice's sender thread, shared by every connection
        self._voice_states = voice_states
        self._max_dave = max_dave_protocol_version
        self._mute_deaf = (self_mute, self_deaf)
        self._step_timeout = step_timeout
        self._resume_timeout = resume_timeout
        self._on_link_lost = on_link_lost
        self._on_send_failure = on_send_failure
        self._lock = threading.Lock()  # guards the fields below; never held for I/O
        self.updates = VoiceUpdates(
            StateUpdate(info.channel_id, info.session_id),
            ServerUpdate(info.endpoint, info.token),
            clock=clock,
        )
        # Receiving: one stream in the Voice's receiver thread for the connection's lifetime;
        # each voice session (link) hands it its socket and key, and its members' SSRCs.
        self._receiver = receiver
        self._inbound: InboundStream | None = None
        if receiver is not None:
            assert received is not None, "receiving needs its queue"
            self._inbound = receiver.attach(info.guild_id, received, on_send_failure)
        self._link = self._new_link(info)
        self._link_generation = 0  # the server update the current link was made from
        self._retired: list[VoiceLink] = []  # threads not joined in time: at `join`
        self._stopped: set[int] = set()  # numbers of websockets we stopped: not a loss
        self._ended = False
        self._transport: Transport | None = None  # of the join, until the stream is attached
        self._stream: OutboundStream | None = None  # our audio in the sender, once READY
        self._attached = False  # whether `_stream` still holds a place in the sender
        self.flags = SpeakingFlag.NONE
        #: How many times the voice websocket was resumed (same session).
        self.resumes = 0
        #: How many times a new voice session replaced the old one (reconnects and moves).
        self.reconnects = 0
        self.discarded = 0  # frames still queued at the end

    @property
    def link(self) -> VoiceLink:
        with self._lock:
            return self._link

    @property
    def stream(self) -> OutboundStream | None:
        return self._stream

    # -- the join (on the caller's thread) -----------------------------------------------------

    def establish(self, deadline: float, timeout: float) -> int:
        """The first handshake; returns the websocket's number. Raises the real reason or
        `JoinTimeout` naming the stage."""
        link = self.link
        self._transport = link.establish(deadline, timeout)
        self._receive_on(link)
        return link.socket_number

    # -- the steps that never block ------------------------------------------------------------

    def hold_frames(self) -> None:
        if self._stream is not None:
            self._stream.hold()

    def stop_link(self, reason: str) -> None:
        link = self.link
        with self._lock:
            self._stopped.add(link.socket_number)
        link.stop(ConnectionClosed(reason))  # idempotent for a stopped link

    def resume_audio(self) -> None:
        """Speaking on the current websocket, then the frames (at the join: attach them)."""
        flags = self.flags
        if flags:  # Speaking before any more audio
            self.send_speaking(flags)
        if self._stream is not None:
            self._stream.release()  # held for a new session, or by `ensure_speaking`
            return
        transport, self._transport = self._transport, None
        assert transport is not None, "resume_audio before the join's handshake"
        stream = self._sender.attach(
            self.link.info.guild_id, self._frames, transport, self._on_send_failure
        )
        with self._lock:
            self._stream, self._attached = stream, True
            ended = self._ended
        if ended:  # ended during the attach: `end` did not see the stream
            stream.close()

    def end(self, error: BaseException | None) -> None:
        """Stop everything (never blocks): the queue, the stream, the mailbox, the link."""
        with self._lock:
            self._ended = True
            link = self._link
            self._stopped.add(link.socket_number)
        discarded = self._frames.close(as_connection_closed(error))
        if discarded:
            self.discarded += len(discarded)
            log.warning(
                "voice connection (guild %s): %d queued frames discarded at close",
                link.info.guild_id,
                len(discarded),
            )
        if self._stream is not None:
            self._stream.close()
        self.updates.close()
        link.stop(error)

    # -- speaking (any thread) -----------------------------------------------------------------

    def send_speaking(self, flags: SpeakingFlag) -> None:
        """Speaking on the current websocket; a websocket going away is left to the recovery."""
        try:
            self.link.session.send_speaking(flags)
        except ConnectionClosed:
            pass  # lost: the recovery sends the flags again once back

    def ensure_speaking(self, ready: Callable[[], bool]) -> None:
        """Before a frame is queued (on the producer's thread): Speaking must precede audio.

        The first frame of a run sends Speaking (op 5) unless flags are set already; while the
        connection is not `ready`, the stream is held instead and `resume_audio` sends the flags
        first.
        """
        if self.flags:
            return
        with self._lock:
            if self.flags:
                return
            self.flags = SpeakingFlag.MICROPHONE
            now_ready = ready()
            if not now_ready and self._stream is not None:
                self._stream.hold()
        if now_ready:
            self.send_speaking(SpeakingFlag.MICROPHONE)

    def set_flags(self, flags: SpeakingFlag) -> None:
        with self._lock:
            self.flags = flags

    # -- the blocking steps (on the recovery thread) -------------------------------------------

    def resume(self) -> int:
        """Op 7 on a new websocket of the same session; returns its number."""
        deadline = self._clock.monotonic() + self._resume_timeout
        link = self.link
        link.resume_session(deadline, self._resume_timeout)
        with self._lock:
            self.resumes += 1
        return link.socket_number

    def reconnect(self) -> tuple[int, int]:
        """A new session: a fresh op 4 for our channel, then both updates, then the handshake."""
        timeout = self._step_timeout
        deadline = self._clock.monotonic() + timeout
        state, server = self.updates.state, self.updates.server
        link = self.link
        channel = state.channel_id or link.info.channel_id
        self._voice_states.update_voice_state(
            link.info.guild_id, channel, self_mute=self._mute_deaf[0], self_deaf=self._mute_deaf[1]
        )
        got = self.updates.wait(
            lambda st, sv: (
                st.generation > state.generation
                and sv.generation > server.generation
                and sv.endpoint is not None
            ),
            deadline,
        )
        if got is None:
            stage = (
                "voice_state_update"
                if self.updates.state.generation == state.generation
                else "voice_server_update"
            )
            raise JoinTimeout(stage, timeout, "while reconnecting")
        return self._switch_link(got[0], got[1], deadline, timeout)

    def await_move(self, timeout: float) -> bool:
        """Wait up to `timeout` (on the clock) for a server update newer than the session."""
        generation = self._link_generation
        got = self.updates.wait(
            lambda st, sv: sv.generation > generation and sv.endpoint is not None,
            self._clock.monotonic() + timeout,
        )
        return got is not None

    def move(self) -> tuple[int, int]:
        """A new session from the newest updates (a move, or a new voice server)."""
        timeout = self._step_timeout
        return self._switch_link(
            self.updates.state, self.updates.server, self._clock.monotonic() + timeout, timeout
        )

    def _switch_link(
        self, state: StateUpdate, server: ServerUpdate, deadline: float, timeout: float
    ) -> tuple[int, int]:
        """Replace the link with a new session and hand it to the sender (still held)."""
        assert server.endpoint is not None
        old = self.link
        info = VoiceServerInfo(
            guild_id=old.info.guild_id,
            channel_id=state.channel_id or old.info.channel_id,
            user_id=old.info.user_id,
            session_id=state.session_id,
            token=server.token,
            endpoint=server.endpoint,
        )
        new = self._new_link(info)
        with self._lock:
            if self._ended:
                raise ConnectionClosed("the voice connection is closed")
            self._link, self._link_generation = new, server.generation
            self._stopped.add(old.socket_number)
        self._retire(old)
        transport = new.establish(deadline, timeout)
        self._receive_on(new)
        if self._stream is not None:
            self._stream.set_transport(transport)  # held: `resume_audio` sends Speaking first
        with self._lock:
            self.reconnects += 1
        log.info(
            "voice connection (guild %s): new voice session on %s (channel %s)",
            info.guild_id,
            info.endpoint,
            info.channel_id,
        )
        return new.socket_number, server.generation

    # -- links ---------------------------------------------------------------------------------

    def _new_link(self, info: VoiceServerInfo) -> VoiceLink:
        return VoiceLink(
            info,
            clock=self._clock,
            heartbeats=self._heartbeats,
            max_dave_protocol_version=self._max_dave,
            on_failure=self._link_failed,
            on_member=self._link_member,
        )

    def _link_member(self, link: VoiceLink, message: Member) -> None:
        """Op 5/12/13 on a link's websocket reader: for the receiver (never blocks)."""
        if self._inbound is not None:
            self._inbound.member(link.number, message)

    def _receive_on(self, link: VoiceLink) -> None:
        """The link can carry audio: the receiver reads its socket from now on."""
        if self._inbound is None:
            return
        assert link.udp is not None and link.ssrc is not None and link.cipher is not None
        self._inbound.set_session(
            link.number, link.udp, link.ssrc, link.cipher, link.dave.try_decrypt
        )

    @property
    def inbound(self) -> InboundStream | None:
        """Our receiving in the Voice's receiver thread (None when not receiving)."""
        return self._inbound

    def _link_failed(self, link: VoiceLink, socket: int, exc: BaseException) -> None:
        """A websocket of `link` ended: only the current, live one is a loss."""
        with self._lock:
            current = link is self._link and socket == link.socket_number
            if not current or socket in self._stopped or self._ended:
                return  # a replaced socket ending late, one we stopped, or we are closing
        self._on_link_lost(exc, socket)

    def _retire(self, link: VoiceLink) -> None:
        """Stop a replaced link, join its threads briefly and close its sockets."""
        link.stop(ConnectionClosed("replaced by a new voice session"))
        if joined_within(link.threads(), 1.0):
            link.release()
            return
        link.abort()
        with self._lock:
            self._retired.append(link)

    # -- shutdown ------------------------------------------------------------------------------

    def join(self, threads: Sequence[threading.Thread], timeout: float) -> None:
        """Join `threads` and every link's (the reader gets half the time to see the server's
        close frame, then the sockets are aborted); take the stream back; close the sockets."""
        with self._lock:
            links = [*self._retired, self._link]
        every = [*threads, *(t for link in links for t in link.threads())]
        try:
            join_all(every, timeout / 2)
        except ShutdownTimeout:
            for link in links:
                link.abort()
            join_all(every, timeout / 2)
        with self._lock:
            stream = self._stream if self._attached else None
            self._attached = False
            receiver, self._receiver = self._receiver, None  # detached once; stats stay
        if stream is not None:  # the last stream stops the sender thread
            self._sender.detach(stream, timeout)
        if receiver is not None and self._inbound is not None:  # and the receiver's
            receiver.detach(self._inbound, timeout)
        for link in links:
            link.release()

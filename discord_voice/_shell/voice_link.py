"""VoiceLink: everything one voice session owns, replaced as a whole by a full reconnect.

A session is what Discord's VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE describe: one voice
server, token and session id. It owns the voice websocket (a `VoiceSocketSession`; a resume
replaces it with another one over the same session), the UDP socket, the SSRC, the transport
key and the DAVE group. A connection's `VoiceSessions` keeps one link at a time; a reconnect
or a move makes a new link and `establish`\\ es it while the old one is stopped. Each websocket
gets a process-wide number, and a failure names its socket by it (`socket_number`).
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
from collections.abc import Callable

from discord_voice._shell.dave_channel import DaveChannel
from discord_voice._shell.heartbeat import HeartbeatLoop
from discord_voice._shell.threads import ServiceThread, joined_within
from discord_voice._shell.udp import discover_ip, open_udp
from discord_voice._shell.udp_sender import Transport
from discord_voice._shell.voice_session import Member, VoiceSocketSession
from discord_voice.clock import Clock
from discord_voice.core import crypto
from discord_voice.core.packetizer import Packetizer
from discord_voice.core.voice_gateway import VoiceServerInfo

__all__ = ["VoiceLink"]

#: ``on_failure(link, socket_number, error)``: websocket number `socket_number` of `link` ended.
LinkFailure = Callable[["VoiceLink", int, BaseException], None]
#: A member event (op 5, 12, 13) from one of the link's websockets.
LinkMember = Callable[["VoiceLink", Member], None]

#: Numbers every voice websocket of the process (a loss names its socket by number).
_socket_numbers = itertools.count(1)
#: Numbers every voice session (link) of the process: receiving tells sessions apart by it.
_link_numbers = itertools.count(1)


class VoiceLink:
    """One voice session: its websocket(s), UDP socket, SSRC, key and DAVE state.

    Thread safety: `session` may be read from any thread; `establish` and `resume_session`
    run on one thread at a time (the joining or recovering thread); `stop`, `abort` and
    `release` from any thread.
    """

    def __init__(
        self,
        info: VoiceServerInfo,
        *,
        clock: Clock,
        heartbeats: HeartbeatLoop,
        max_dave_protocol_version: int,
        on_failure: LinkFailure,
        on_member: LinkMember = lambda link, message: None,
    ) -> None:
        self.info = info
        self.number = next(_link_numbers)
        self._on_member = on_member
        self._clock = clock
        self._heartbeats = heartbeats  # the Voice's: every session of the link beats on it
        self._max_dave = max_dave_protocol_version
        self._on_failure = on_failure
        self._lock = threading.Lock()  # guards session and the lists below
        self.dave = DaveChannel(info.user_id, info.channel_id)
        self._threads: dict[VoiceSocketSession, list[ServiceThread]] = {}
        self._numbers: dict[VoiceSocketSession, int] = {}
        self.session = self._new_session(None)
        # Replaced sessions whose threads did not end in time: joined again at release.
        self._retired: list[VoiceSocketSession] = []
        self.udp: socket.socket | None = None
        self.mode: str | None = None
        self.ssrc: int | None = None
        #: The voice server's UDP address, and ours as it saw it (IP discovery).
        self.udp_server: tuple[str, int] | None = None
        #: The transport cipher of the session (stateless `open`: the receiver shares it).
        self.cipher: crypto.TransportCipher | None = None
        self.external_address: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return (
            f"<VoiceLink guild={self.info.guild_id} endpoint={self.info.endpoint} "
            f"ssrc={self.ssrc} mode={self.mode}>"
        )

    @property
    def socket_number(self) -> int:
        """The number of the current websocket (a resume gets a new one)."""
        with self._lock:
            return self._numbers[self.session]

    def establish(self, deadline: float, timeout: float) -> Transport:
        """Run the voice handshake to the point where audio can flow; return its transport.

        Raises the real reason (`VoiceGatewayClosed`, ...) or `JoinTimeout` naming the stage.
        """
        session = self.session
        session.open(deadline, timeout)
        ready = session.await_ready(deadline, timeout)
        self.ssrc = ready.ssrc
        mode = crypto.choose_mode(ready.modes)
        self.udp = open_udp(ready.ip, ready.port)
        address, port = discover_ip(
            self.udp, ready.ssrc, clock=self._clock, deadline=deadline, timeout=timeout
        )
        self.udp_server, self.external_address = (ready.ip, ready.port), (address, port)
        description = session.select_protocol(
            address, port, mode, deadline=deadline, timeout=timeout
        )
        session.await_e2ee(deadline, timeout)  # at once when the call has no DAVE
        self.mode = description.mode
        self.cipher = crypto.make_cipher(description.mode, description.secret_key)
        packetizer = Packetizer(
            ready.ssrc,
            self.cipher,
            sequence=random.getrandbits(16),
            timestamp=random.getrandbits(32),
        )
        return Transport(self.udp, packetizer, self.dave)

    def resume_session(self, deadline: float, timeout: float) -> VoiceSocketSession:
        """Replace the websocket with a new one that resumes the session (op 7); the UDP
        socket, SSRC, key and DAVE state carry over. Raises why it failed."""
        old = self.session  # only this thread replaces it
        new = self._new_session(old)
        with self._lock:
            self.session = new
        self._retire(old, min(1.0, max(0.0, deadline - self._clock.monotonic())))
        try:
            new.resume(deadline, timeout)
        except BaseException as exc:
            new.stop(exc)
            raise
        return new

    def _retire(self, session: VoiceSocketSession, timeout: float) -> None:
        """Join a replaced (stopped) session's threads and close its socket; if they do not
        end in `timeout`, keep it for `release`."""
        with self._lock:
            threads = self._threads.get(session, [])
        if joined_within(threads, timeout):
            session.release()
            with self._lock:
                self._threads.pop(session, None)
                self._numbers.pop(session, None)
            return
        session.abort()
        with self._lock:
            self._retired.append(session)

    def threads(self) -> list[ServiceThread]:
        """Every thread of the link's sessions not yet retired (for the owner to join)."""
        with self._lock:
            return [thread for threads in self._threads.values() for thread in threads]

    def stop(self, error: BaseException | None) -> None:
        """Stop every thread of the link (never blocks); sockets stay open until `release`."""
        with self._lock:
            session = self.session
        session.stop(error)

    def abort(self) -> None:
        with self._lock:
            session = self.session
        session.abort()

    def release(self) -> None:
        """Close the sockets (after the threads were joined)."""
        with self._lock:
            sessions = [*self._retired, self.session]
        try:
            for session in sessions:
                session.release()  # may raise ShutdownTimeout (the shared heartbeat thread)
        finally:
            if self.udp is not None:
                self.udp.close()

    def _new_session(self, resume_from: VoiceSocketSession | None) -> VoiceSocketSession:
        number = next(_socket_numbers)
        threads: list[ServiceThread] = []
        session = VoiceSocketSession(
            self.info,
            clock=self._clock,
            heartbeats=self._heartbeats,
            max_dave_protocol_version=self._max_dave,
            on_failure=lambda exc: self._on_failure(self, number, exc),
            threads=threads,
            dave=self.dave,
            resume_from=resume_from,
            on_member=lambda message: self._on_member(self, message),
        )
        with self._lock:
            self._threads[session] = threads
            self._numbers[session] = number
        return session

"""VoiceSocketSession: one voice websocket with its protocol state, its reader and its beats.

The socket is a `WebSocketSession` (`..ws_session`, the main gateway's too), given the voice
protocol:

* ``dv-voice-reader:<guild>`` — the session's reader, the only reader of the socket; each
  message feeds the protocol core, resolves the handshake futures, matches heartbeat ACKs;
  the session's end (a `Close` value) becomes `VoiceGatewayClosed` for the owner.
* its heartbeat — registered on Hello with the `Voice`'s `HeartbeatLoop` (one ``dv-heartbeat``
  thread for every websocket) and attached to the session (cancelled when it stops, by `stop`
  or by the reader's end), handed back by `release`. A failed beat is
  reported from a short ``dv-voice-fail:<guild>`` thread, so the shared thread never waits.

The session knows nothing about UDP or audio: a `Connection` owns one session (and, after a
resume, a new one over the same UDP socket and key). One lock guards the protocol and the
pacemaker; it is never held across network I/O. Failures go to the owner's ``on_failure``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from discord_voice._shell.dave_channel import DaveChannel
from discord_voice._shell.heartbeat import Heartbeat, HeartbeatLoop
from discord_voice._shell.threads import ServiceThread
from discord_voice._shell.websocket import Close, Text
from discord_voice._shell.ws_session import Message, WebSocketSession
from discord_voice.clock import Clock, future_signal
from discord_voice.core import voice_payloads as vp
from discord_voice.core.dave import DaveProtocol
from discord_voice.core.opcodes import (
    ClientCloseCode,
    SpeakingFlag,
    VoiceCloseCode,
    describe_voice_close,
)
from discord_voice.core.pacemaker import Pacemaker
from discord_voice.core.voice_gateway import VoiceGatewayProtocol, VoiceServerInfo
from discord_voice.errors import (
    ConnectionClosed,
    DaveRequired,
    JoinTimeout,
    RemoteProtocolError,
    VoiceError,
    VoiceGatewayClosed,
)

__all__ = ["Member", "VoiceSocketSession"]

log = logging.getLogger("discord_voice.connection")

#: What a voice websocket tells about other members (for receiving their audio).
Member = vp.Speaking | vp.ClientSsrcs | vp.ClientDisconnect
T = TypeVar("T")


class VoiceSocketSession:
    """The voice websocket of one connection attempt.

    Thread safety: `send_*`, `latency` and the counters from any thread; `open` and the
    ``await_*`` methods from the joining thread.
    """

    def __init__(
        self,
        info: VoiceServerInfo,
        *,
        clock: Clock,
        heartbeats: HeartbeatLoop,
        max_dave_protocol_version: int,
        on_failure: Callable[[BaseException], None],
        threads: list[ServiceThread],
        dave: DaveChannel,
        resume_from: VoiceSocketSession | None = None,
        on_member: Callable[[Member], None] = lambda message: None,
    ) -> None:
        self._info = info
        self._on_member = on_member  # who speaks with which SSRC, who left: for receiving
        self._clock = clock
        self._on_failure = on_failure
        self._threads = threads  # the owner's list: it joins them
        self._lock = threading.Lock()
        self._protocol: VoiceGatewayProtocol = (
            VoiceGatewayProtocol(info, max_dave_protocol_version=max_dave_protocol_version)
            if resume_from is None
            else VoiceGatewayProtocol.continue_from(resume_from._protocol)
        )
        self._ws: WebSocketSession | None = None
        self._heartbeats = heartbeats
        self._pacemaker: Pacemaker | None = None
        self._heartbeat: Heartbeat | None = None  # registered on Hello
        self._closing = False
        self._hello: concurrent.futures.Future[vp.Hello] = concurrent.futures.Future()
        self._ready: concurrent.futures.Future[vp.Ready] = concurrent.futures.Future()
        self._session: concurrent.futures.Future[vp.SessionDescription] = (
            concurrent.futures.Future()
        )
        self._resumed: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.malformed = 0
        self.last_protocol_error: str | None = None
        self._dave = dave  # shared with the sender and with a resumed socket

    # -- handshake (on the joining thread) --------------------------------------------------

    def open(self, deadline: float, timeout: float) -> None:
        """Connect the websocket, start the reader and send Identify."""
        self._connect(deadline, timeout)
        self.send_text(self._call(lambda p: p.identify()))

    def resume(self, deadline: float, timeout: float) -> None:
        """Connect a new websocket to the same endpoint, send Resume, wait for Resumed."""
        self._connect(deadline, timeout)
        self.send_text(self._call(lambda p: p.resume()))
        self._await(self._resumed, deadline, timeout, "resumed")

    def _connect(self, deadline: float, timeout: float) -> None:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise JoinTimeout("websocket_connect", timeout)
        self._ws = WebSocketSession.connect(
            self._info.url, timeout=remaining, what="voice websocket"
        )
        reader = self._ws.make_reader(
            f"dv-voice-reader:{self._info.guild_id}",
            on_message=self._receive,
            on_end=self._on_end,
            on_failure=self._on_failure,
        )
        self._threads.append(reader)
        reader.start()

    def await_ready(self, deadline: float, timeout: float) -> vp.Ready:
        """Wait for Hello, then Ready."""
        self._await(self._hello, deadline, timeout, "hello")
        return self._await(self._ready, deadline, timeout, "ready")

    def select_protocol(
        self, address: str, port: int, mode: str, *, deadline: float, timeout: float
    ) -> vp.SessionDescription:
        """Send Select Protocol and wait for the Session Description."""
        self.send_text(self._call(lambda p: p.select_protocol(address, port, mode)))
        return self._await(self._session, deadline, timeout, "session_description")

    def await_e2ee(self, deadline: float, timeout: float) -> None:
        """Wait until DAVE is settled: the group key is there, or we are alone in the call with
        our pending group (returns at once when DAVE is off)."""
        self._await(self._dave.settled, deadline, timeout, "dave_session")

    def _await(
        self, future: concurrent.futures.Future[T], deadline: float, timeout: float, stage: str
    ) -> T:
        """The future's result (or its exception), waiting on the clock until `deadline`."""
        if not self._clock.wait_until(deadline, future_signal(future)):
            hint = self.last_protocol_error
            detail = f"last protocol error: {hint}" if hint else ""
            raise JoinTimeout(stage, timeout, detail)
        return future.result(0)

    # -- sending (any thread) ---------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self._open_ws().send_text(text)

    def send_speaking(self, flags: SpeakingFlag) -> None:
        self.send_text(self._call(lambda p: p.speaking(flags)))

    def _send_frames(self, frames: list[str | bytes]) -> None:
        for frame in frames:
            if isinstance(frame, str):
                self.send_text(frame)
            else:
                self._open_ws().send_binary(frame)

    def _open_ws(self) -> WebSocketSession:
        if self._ws is None:
            raise ConnectionClosed("the voice websocket is not open")
        return self._ws

    # -- state (any thread) -----------------------------------------------------------------

    @property
    def latency(self) -> float | None:
        with self._lock:
            return None if self._pacemaker is None else self._pacemaker.latency

    def heartbeat_counts(self) -> tuple[int, int]:
        """(heartbeats sent, ACKs received)."""
        with self._lock:
            pm = self._pacemaker
            return (pm.beats_sent, pm.acks_received) if pm else (0, 0)

    @property
    def ignored(self) -> int:
        with self._lock:
            return sum(self._protocol.ignored.values())

    # -- shutdown ---------------------------------------------------------------------------

    def stop(self, error: BaseException | None) -> None:
        """Stop the reader and the beats (never blocks): cancel the heartbeat, fail pending
        futures, close or abort the socket."""
        with self._lock:
            self._closing = True
            heartbeat = self._heartbeat
        if heartbeat is not None:
            heartbeat.cancel()
        reason: BaseException = (
            error
            if isinstance(error, VoiceError)
            else ConnectionClosed(f"the voice connection ended: {error}")
            if error is not None
            else ConnectionClosed("the voice connection was closed")
        )
        self._fail_futures(reason)
        if self._ws is not None:
            if error is None:
                self._ws.close(ClientCloseCode.NORMAL)
            else:
                self._ws.stop()
                self._ws.abort()

    def _fail_futures(self, reason: BaseException) -> None:
        for future in (self._hello, self._ready, self._session, self._resumed):
            if not future.done():
                future.set_exception(reason)

    def abort(self) -> None:
        if self._ws is not None:
            self._ws.abort()

    def release(self) -> None:
        """After `stop` and the reader's join: close the socket, hand the heartbeat thread back
        (the `Voice`'s last websocket joins it; `ShutdownTimeout` if it does not end)."""
        if self._ws is not None:
            self._ws.release()
        with self._lock:
            heartbeat = self._heartbeat
        if heartbeat is not None:
            heartbeat.release()

    # -- threads ----------------------------------------------------------------------------

    def _start_thread(self, role: str, body: Callable[[], None]) -> None:
        thread = ServiceThread(f"{role}:{self._info.guild_id}", body, self._on_failure)
        self._threads.append(thread)
        thread.start()

    def _receive(self, frame: Message) -> None:
        """One message, on the reader thread (any exception but a protocol error ends it)."""
        try:
            with self._lock:
                if isinstance(frame, Text):
                    message: vp.ServerMessage = self._protocol.receive_text(frame.data)
                else:
                    message = self._protocol.receive_binary(frame.data)
            self._on_message(message)
        except RemoteProtocolError as exc:
            # Malformed or out-of-order data is survivable: count it, keep reading.
            self.malformed += 1
            self.last_protocol_error = str(exc)
            log.warning("voice gateway (guild %s): %s", self._info.guild_id, exc)

    def _on_end(self, end: Close | Exception) -> None:
        """How the socket ended, on the reader thread: a close, or `_receive`'s exception."""
        if isinstance(end, Close):
            self._on_close(end)
        else:
            self._on_failure(end)

    def _on_message(self, message: vp.ServerMessage) -> None:
        if isinstance(message, vp.Hello):
            if self._pacemaker is None:
                self._start_heartbeat(message.heartbeat_interval)
            _resolve(self._hello, message)
        elif isinstance(message, vp.Ready):
            _resolve(self._ready, message)
        elif isinstance(message, vp.SessionDescription):
            self._dave_input(lambda d: d.start(message.dave_protocol_version), started=True)
            _resolve(self._session, message)
        elif isinstance(message, vp.Resumed):
            _resolve(self._resumed, None)
        elif isinstance(message, (vp.BinaryMessage, vp.DaveMessage)):
            self._dave_input(lambda d: d.receive_message(message))
        elif isinstance(message, vp.ClientsConnect):
            self._dave.clients_connect(message.user_ids)
        elif isinstance(message, vp.ClientDisconnect):
            self._dave.client_disconnect(message.user_id)
            self._on_member(message)
        elif isinstance(message, (vp.Speaking, vp.ClientSsrcs)):
            self._on_member(message)
        elif isinstance(message, vp.HeartbeatAck):
            with self._lock:
                if self._pacemaker is not None:
                    self._pacemaker.ack(message.nonce, self._clock.monotonic())

    def _dave_input(
        self, change: Callable[[DaveProtocol], list[str | bytes]], *, started: bool = False
    ) -> None:
        """Apply one DAVE input to the shared channel and send its replies."""
        try:
            frames = self._dave.apply(change, started=started)
        except RemoteProtocolError as exc:
            self.malformed += 1
            self.last_protocol_error = str(exc)
            log.warning("voice gateway (guild %s): dave: %s", self._info.guild_id, exc)
            return
        self._send_frames(frames)

    def _start_heartbeat(self, interval: float) -> None:
        """Register with the heartbeat loop (on the reader thread, once, on Hello)."""
        with self._lock:
            if self._closing:
                return
            pacemaker = self._pacemaker = Pacemaker(interval, self._clock.monotonic())
        heartbeat = self._heartbeats.add(
            pacemaker=pacemaker,
            lock=self._lock,
            make_frame=self._protocol.heartbeat,
            send=self.send_text,
            on_failure=self._on_beat_failure,
        )
        with self._lock:
            self._heartbeat = heartbeat
        if self._ws is not None:  # cancelled when the socket stops, at once if it has
            self._ws.attach_heartbeat(heartbeat.cancel)

    def _on_beat_failure(self, exc: BaseException) -> None:
        """The heartbeat failed (dead, or the send raised), on the shared ``dv-heartbeat``
        thread: report it from a short thread of this socket (joined with the reader), since
        the owner's handling may fail the connection (leave, state listeners) and must not
        delay the other websockets' beats."""
        with self._lock:
            if self._closing:
                return  # stopped meanwhile: nobody is waiting for this
        self._start_thread("dv-voice-fail", lambda: self._on_failure(exc))

    def _on_close(self, frame: Close) -> None:
        with self._lock:
            self._protocol.receive_close()
            expected = self._closing
        if expected:
            return
        error: VoiceGatewayClosed
        if frame.code == VoiceCloseCode.E2EE_REQUIRED:
            error = DaveRequired(frame.reason)
        else:
            error = VoiceGatewayClosed(frame.code, frame.reason or describe_voice_close(frame.code))
        self._fail_futures(error)  # a join or resume waiting on this socket learns why at once
        self._on_failure(error)

    def _call(self, call: Callable[[VoiceGatewayProtocol], T]) -> T:
        with self._lock:
            return call(self._protocol)


def _resolve(future: concurrent.futures.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)

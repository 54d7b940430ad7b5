"""The UDP receiver: one ``dv-udp-receiver`` thread per `Voice` reads every receiving
connection's socket (``selectors``) and turns datagrams into ``opus_recv`` packets.

Each receiving connection attaches an `InboundStream`: its socket, its `core.receive_flow.
ReceiveFlow` (classification, transport decryption, SSRC -> user with the hold for early audio,
DAVE), its `RecvQueue` and its counters. The thread, at each wake-up:

1. applies the owners' requests (a new voice session's socket and key, a member's SSRC from op 5
   or op 12, a member leaving, a close), re-registering sockets as needed;
2. reads every readable socket without blocking (a non-blocking duplicate of the connection's
   socket, which has a timeout for the handshake; at most `BATCH` datagrams per socket per
   wake-up, so one busy connection cannot starve the others) and offers each
   packet to the connection's queue (full: the oldest is discarded and counted, so a slow
   consumer never slows the thread, nor sending);
3. lets time pass for every stream (holds of never-named SSRCs run out) and waits for the next
   readable socket, request or `TICK`.

Everything the owner asks is a request (written to the stream's inbox, read by this thread,
which alone runs the stream's flow). Malformed datagrams are counted, never raised.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from discord_voice._shell.recv_queue import RecvQueue
from discord_voice._shell.threads import SharedWorker
from discord_voice.clock import Clock, Signal
from discord_voice.core import voice_payloads as vp
from discord_voice.core.crypto import TransportCipher
from discord_voice.core.receive_flow import Decrypt, ReceiveCounters, ReceiveFlow

__all__ = [
    "BATCH",
    "RECEIVE_BUFFER",
    "TICK",
    "InboundStream",
    "ReceiveStats",
    "SpeakingListener",
    "UdpReceiver",
    "enlarge_receive_buffer",
]

log = logging.getLogger(__name__)

#: Datagrams read from one socket per wake-up before the others get their turn.
BATCH: Final = 64
#: How often the thread looks at time passing when nothing arrives (real seconds): a member
#: is told silent within `SPEAKING_TIMEOUT` + this.
TICK: Final = 0.1
_MAX_DATAGRAM: Final = 4096
#: The kernel receive buffer asked for a receiving socket (bytes; Linux caps it at rmem_max):
#: ~1,300 small datagrams, a quarter of a second of 100 members speaking, so a thread held
#: up (the GIL, a busy core) does not lose what arrives meanwhile. The default (~208 KiB on
#: Linux) held ~50 ms of it in the receive benchmark.
RECEIVE_BUFFER: Final = 1 << 20

Member = vp.Speaking | vp.ClientSsrcs | vp.ClientDisconnect
#: ``listener(user_id, speaking)``: see `InboundStream.add_speaking_listener`.
SpeakingListener = Callable[[int, bool], None]


@dataclass(frozen=True)
class ReceiveStats:
    """A snapshot of one connection's receiving."""

    delivered: int
    overflowed: int  # discarded from a full opus_recv (the oldest)
    dropped: dict[str, int]  # by reason: rtcp, not_opus, auth_failed, own_ssrc, ... (non-zero)
    socket_errors: int  # recvfrom failures (ICMP errors surface there on some systems)
    unmapped: int  # held for an SSRC never named in time
    dave_failures: int
    held: int  # waiting for op 5/12 right now


@dataclass(frozen=True)
class _Session:
    number: int  # the voice session's (link's) number: member events name it too
    sock: socket.socket
    own_ssrc: int
    cipher: TransportCipher
    decrypt: Decrypt


@dataclass(frozen=True)
class _Member:
    session: int
    message: Member


#: Member events kept for a voice session the thread has not switched to yet.
_DEFERRED_MAX: Final = 256


class InboundStream:
    """One connection's receiving (see the module docstring).

    Thread safety: `set_session`, `member`, `close` and `stats` from any thread; the rest on
    the receiver thread.
    """

    def __init__(
        self,
        name: str,
        packets: RecvQueue,
        post: Callable[[InboundStream], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self.packets = packets
        self._post = post
        #: Called (on the receiver thread) if the thread itself fails: the owner ends.
        self.on_failure = on_failure
        self.socket_errors = 0
        self._listeners_lock = threading.Lock()
        self._listeners: tuple[SpeakingListener, ...] = ()  # replaced whole: read unlocked
        self._inbox: deque[_Session | _Member | None] = deque()  # None: close
        # the receiver thread's state
        self._flow: ReceiveFlow | None = None
        self._session: int | None = None  # the number of the voice session read now
        self._deferred: deque[_Member] = deque(maxlen=_DEFERRED_MAX)  # for a later session
        self.sock: socket.socket | None = None  # our non-blocking duplicate of the session's
        self.replaced: list[socket.socket] = []  # earlier duplicates, for the thread to close
        self.closed = False
        self.released = Signal()  # set once the thread has let go of the stream

    def __repr__(self) -> str:
        return f"<InboundStream {self.name}>"

    # -- the owner's side -------------------------------------------------------------------

    def set_session(
        self,
        number: int,
        sock: socket.socket,
        own_ssrc: int,
        cipher: TransportCipher,
        decrypt: Decrypt,
    ) -> None:
        """Receive voice session `number` on `sock` (connected to its voice server) with its
        key and DAVE step, from now on."""
        self._inbox.append(_Session(number, sock, own_ssrc, cipher, decrypt))
        self._post(self)

    def member(self, session: int, message: Member) -> None:
        """A member's SSRC (op 5, op 12) or its departure (op 13), from voice session
        `session`'s websocket reader (before the switch to a new session, its events wait for
        it; an old session's late ones are ignored)."""
        self._inbox.append(_Member(session, message))
        self._post(self)

    def close(self) -> None:
        self._inbox.append(None)
        self._post(self)

    def add_speaking_listener(self, listener: SpeakingListener) -> Callable[[], None]:
        """Call ``listener(user_id, speaking)`` on the receiver thread at each change; returns
        a remover. A listener that raises ends the connection (``on_failure``)."""
        with self._listeners_lock:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self._listeners_lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    def stats(self) -> ReceiveStats:
        flow = self._flow
        counters = flow.counters if flow is not None else ReceiveCounters()
        return ReceiveStats(
            delivered=counters.delivered,
            overflowed=self.packets.overflowed,
            dropped={reason: n for reason, n in counters.dropped.items() if n},
            socket_errors=self.socket_errors,
            unmapped=counters.unmapped,
            dave_failures=counters.dave_failures,
            held=flow.ssrcs.held if flow is not None else 0,
        )

    # -- the receiver thread's side ---------------------------------------------------------

    def _apply(self, now: float) -> socket.socket | None:
        """Apply the requests; return the socket to read from now (None: closed or none)."""
        while self._inbox:
            request = self._inbox.popleft()
            if request is None:
                self.closed = True
            elif isinstance(request, _Session):
                server = request.sock.getpeername()[:2]
                if self._flow is None:
                    self._flow = ReceiveFlow(
                        own_ssrc=request.own_ssrc,
                        server=server,
                        cipher=request.cipher,
                        decrypt=request.decrypt,
                    )
                else:
                    self._flow.new_session(
                        own_ssrc=request.own_ssrc,
                        server=server,
                        cipher=request.cipher,
                        decrypt=request.decrypt,
                    )
                self._session = request.number
                early, self._deferred = self._deferred, deque(maxlen=_DEFERRED_MAX)
                for event in early:  # what its websocket said before the switch, in order
                    if event.session == request.number:
                        self._member(self._flow, event.message, now)
                    elif event.session > request.number:
                        self._deferred.append(event)
                if self.sock is not None:  # closed by the thread (`_take_requests`)
                    self.replaced.append(self.sock)
                # A duplicate that never waits: the connection's socket has a timeout, and
                # Python polls for that long before every recvfrom on it, whatever the flags
                self.sock = request.sock.dup()
                self.sock.setblocking(False)
                enlarge_receive_buffer(self.sock)
            elif self._flow is None or self._session is None or request.session > self._session:
                self._deferred.append(request)
            elif request.session == self._session:
                self._member(self._flow, request.message, now)
            # else: a replaced session's late event: ignored
        if self.closed and self.sock is not None:
            self.replaced.append(self.sock)
            self.sock = None
        return self.sock

    def _member(self, flow: ReceiveFlow, message: Member, now: float) -> None:
        if isinstance(message, vp.ClientDisconnect):
            flow.disconnected(int(message.user_id), now)
            self._tell()
            return
        if isinstance(message, vp.Speaking):
            if message.user_id is None:
                return
            user, ssrc = int(message.user_id), message.ssrc
        else:
            user, ssrc = int(message.user_id), message.audio_ssrc
        packets, _ = flow.speaking(user, ssrc, now)
        for packet in packets:
            self.packets.offer(packet)
        self._tell()

    def _read(self, now: float) -> None:
        """Read what the socket has (at most `BATCH` datagrams), never blocking."""
        flow, sock = self._flow, self.sock
        if flow is None or sock is None:
            return
        for _ in range(BATCH):
            try:
                data, source = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors surface here on some systems: not fatal
                self.socket_errors += 1
                log.debug("%r: recvfrom failed: %s", self, exc)
                return
            packets, _ = flow.datagram(data, source[:2], now)
            for packet in packets:
                self.packets.offer(packet)
            self._tell()

    def _tick(self, now: float) -> None:
        if self._flow is not None:
            self._flow.tick(now)
            self._tell()

    def _tell(self) -> None:
        """Give the flow's speaking changes to the listeners (receiver thread)."""
        flow = self._flow
        if flow is None or not flow.speaking_changes:
            return
        changes, flow.speaking_changes = flow.speaking_changes, []
        for user, speaking in changes:
            for listener in self._listeners:
                try:
                    listener(user, speaking)
                except Exception as exc:
                    log.exception("speaking listener of %r failed", self)
                    self.on_failure(exc)


class UdpReceiver:
    """The ``dv-udp-receiver`` thread of one `Voice` and the streams it reads.

    Thread safety: `attach`, `detach`, `close` from any thread but the receiver's own.
    """

    def __init__(self, clock: Clock, *, name: str = "dv-udp-receiver") -> None:
        self._clock = clock
        self._worker = SharedWorker(name, self._run, self._on_thread_failure)
        self._lock = threading.Lock()  # guards the inbox and the wake socket
        self._inbox: deque[InboundStream] = deque()
        self._wake_w: socket.socket | None = None  # the thread's wake-up pair, while it runs
        self._live: dict[InboundStream, socket.socket | None] = {}  # the thread's streams

    def __repr__(self) -> str:
        return f"<UdpReceiver streams={self._worker.clients}>"

    @property
    def thread(self) -> threading.Thread | None:
        return self._worker.thread

    def attach(
        self, name: str, packets: RecvQueue, on_failure: Callable[[BaseException], None]
    ) -> InboundStream:
        """A stream to receive into `packets`; give it a socket with `set_session`.
        `on_failure` is called on the receiver thread if that thread fails (a bug)."""
        stream = InboundStream(name, packets, self._post, on_failure)
        self._worker.acquire()
        self._post(stream)
        return stream

    def detach(self, stream: InboundStream, timeout: float = 5.0) -> None:
        """Stop receiving for `stream` and return once the thread let go of it (its socket is
        no longer read); the last one stops and joins the thread."""
        stream.close()
        thread = self._worker.thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            stream.released.wait(timeout)  # real seconds, bounded, like a join
        self._worker.release(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._worker.close(timeout)

    def _post(self, stream: InboundStream) -> None:
        with self._lock:
            self._inbox.append(stream)
            wake = self._wake_w
        if wake is not None:
            _nudge(wake)

    # -- the thread -------------------------------------------------------------------------

    def _run(self, stop: Signal) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ, None)
        with self._lock:
            self._wake_w = wake_w
        stop.add_listener(lambda: _nudge(wake_w))
        live: dict[InboundStream, socket.socket | None] = {}
        self._live = live
        try:
            while not stop.is_set():
                now = self._clock.monotonic()
                self._take_requests(selector, live, now)
                for key, _ in selector.select(TICK):
                    if key.data is None:
                        _drain(wake_r)
                    else:
                        key.data._read(self._clock.monotonic())
                now = self._clock.monotonic()
                for stream in live:
                    stream._tick(now)
        finally:
            with self._lock:
                self._wake_w = None
                pending = list(self._inbox)
                self._inbox.clear()
            for sock in live.values():
                if sock is not None:
                    sock.close()
            for stream in [*live, *pending]:
                stream.released.set()
            selector.close()
            wake_r.close()
            wake_w.close()

    def _take_requests(
        self,
        selector: selectors.BaseSelector,
        live: dict[InboundStream, socket.socket | None],
        now: float,
    ) -> None:
        with self._lock:
            posted = list(self._inbox)
            self._inbox.clear()
        for stream in dict.fromkeys(posted):  # each once, in posting order
            old = live.get(stream)
            new = stream._apply(now)
            for sock in stream.replaced:  # a new session, or closed: our duplicates go (the
                if sock is old:  # connection's own socket stays open)
                    selector.unregister(sock)
                sock.close()
            stream.replaced.clear()
            if stream.closed:
                live.pop(stream, None)
                stream.released.set()
                continue
            if new is not None and new is not old:
                selector.register(new, selectors.EVENT_READ, stream)
            live[stream] = new

    def _on_thread_failure(self, exc: BaseException) -> None:
        """The thread itself failed (a bug): every receiving connection's owner learns it."""
        log.error("%s failed: %r", self._worker.name, exc)
        for stream in list(self._live):
            stream.on_failure(exc)


def _nudge(wake: socket.socket) -> None:
    """Wake the thread from its select (the wake pair is non-blocking)."""
    try:
        wake.send(b"\0")
    except OSError:  # full (the thread is awake anyway) or closed (it has ended)
        pass


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def enlarge_receive_buffer(sock: socket.socket) -> None:
    """Ask for `RECEIVE_BUFFER` bytes of kernel buffer, never less than the socket has."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError as exc:  # a platform that refuses: the default buffer still works
        log.debug("could not enlarge the receive buffer: %s", exc)

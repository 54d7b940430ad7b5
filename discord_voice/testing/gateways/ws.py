"""websockets' sync server, wrapped so that every thread it runs is named, tracked and joined.

`websockets.sync.server` runs one non-daemon handler thread per connection (unnamed) and, inside
each `ServerConnection`, a *daemon* ``recv_events`` thread. Neither can be configured, so this
module renames them (``fake-<name>-conn-<n>`` and ``...-recv``) the moment a connection is created,
keeps a reference to every connection, and on close makes every handler say goodbye (close code
1001), kills what is left, and joins all of them with a deadline. A handler never blocks longer
than `RECV_SLICE` in ``recv`` so it notices shutdown and queued scripted actions promptly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.server import ServerProtocol
from websockets.sync.server import Server, ServerConnection, serve

__all__ = [
    "RECV_SLICE",
    "CloseWith",
    "Delivery",
    "Dropped",
    "Peer",
    "PeerGone",
    "WsServer",
    "valid_close_code",
]

#: How long a handler blocks in ``recv`` before it looks at its outbox and the stop flag.
RECV_SLICE = 0.05
#: How long a protocol close waits for the client's close frame.
CLOSE_TIMEOUT = 0.5
#: How long a close at shutdown waits for the client's close frame.
SHUTDOWN_CLOSE_TIMEOUT = 0.15
#: Largest message the fake accepts (Discord's own limit on the main gateway is 4096 bytes;
#: the gateway code checks that itself so that it can answer with the right close code).
MAX_MESSAGE = 1 << 20

_log = logging.getLogger("discord_voice.testing.websockets")
# websockets logs every frame, with its first bytes, at DEBUG: that would put bot and voice
# tokens into a test's captured logs. Nothing below INFO is emitted from this logger.
_log.setLevel(logging.INFO)


def valid_close_code(code: int) -> bool:
    """Whether `code` may be sent in a close frame (RFC 6455 §7.4 as websockets enforces it)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013) or (
        3000 <= code <= 4999
    )


class CloseWith(Exception):
    """Raised by gateway logic: close the websocket with `code` and `reason`.

    `violation` says whether the client broke a rule (then it is recorded in ``violations``).
    """

    def __init__(self, code: int, reason: str, *, violation: bool = True) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.violation = violation


class Dropped(Exception):
    """A scripted fault: cut the TCP connection without a close frame (see `Peer.abort`)."""


class PeerGone(Exception):
    """The client closed the connection (``code`` is None when it dropped without a close frame)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"client closed the connection (code {code})")
        self.code = code
        self.reason = reason


class Delivery:
    """Tells whoever posted an item to a handler that the handler has dealt with it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """True once the item was handled successfully; False if it failed or timed out."""
        return self._event.wait(timeout) and self.ok


class Peer:
    """One accepted websocket as the gateway logic sees it; used only by its handler thread.

    Other threads talk to the handler through `post` (the outbox), never by sending directly, so
    that one thread owns the order of everything written to the socket.
    """

    def __init__(self, conn: ServerConnection, number: int, stopping: threading.Event) -> None:
        self._conn = conn
        self.number = number
        self._stopping = stopping
        self._outbox: queue.SimpleQueue[tuple[tuple[Any, ...], Delivery]] = queue.SimpleQueue()
        self._outbox_lock = threading.Lock()
        self._finished = False
        request = conn.request
        self.path = request.path if request is not None else ""
        self.closed = False

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def recv(self) -> str | bytes | None:
        """The next message, or None when `RECV_SLICE` passed without one."""
        try:
            return self._conn.recv(timeout=RECV_SLICE)
        except TimeoutError:
            return None
        except ConnectionClosed as exc:
            raise self._gone(exc) from None

    def send(self, message: str | bytes) -> None:
        try:
            self._conn.send(message)
        except ConnectionClosed as exc:
            raise self._gone(exc) from None

    def close(self, code: int, reason: str) -> None:
        """Send a close frame and wait (bounded; shorter at shutdown) for the client's answer."""
        self.closed = True
        self._conn.close_timeout = SHUTDOWN_CLOSE_TIMEOUT if self.stopping else CLOSE_TIMEOUT
        encoded = reason.encode("utf-8")[:120]
        self._conn.close(code, encoded.decode("utf-8", "ignore"))

    def abort(self) -> None:
        """Cut the TCP connection without a close frame (a scripted network failure)."""
        self.closed = True
        self._conn.close_socket()

    def post(self, item: tuple[Any, ...]) -> Delivery:
        """Queue an item for the handler thread (it picks it up within `RECV_SLICE`)."""
        delivery = Delivery()
        with self._outbox_lock:
            if self._finished:
                delivery.finish(False)
            else:
                self._outbox.put((item, delivery))
        return delivery

    def take_posted(self) -> list[tuple[tuple[Any, ...], Delivery]]:
        items: list[tuple[tuple[Any, ...], Delivery]] = []
        while True:
            try:
                items.append(self._outbox.get_nowait())
            except queue.Empty:
                return items

    def finish_posts(self) -> None:
        """The handler is done: fail whatever is still queued, and all later posts."""
        with self._outbox_lock:
            self._finished = True
            for _, delivery in self.take_posted():
                delivery.finish(False)

    def _gone(self, exc: ConnectionClosed) -> PeerGone:
        self.closed = True
        if exc.rcvd is None:
            return PeerGone(None, "")
        return PeerGone(exc.rcvd.code, exc.rcvd.reason)


class WsServer:
    """A websocket server on 127.0.0.1:0 whose connections each run `handler(peer)`."""

    def __init__(
        self,
        name: str,
        handler: Callable[[Peer], None],
        on_crash: Callable[[str], None],
        numbers: Callable[[], int] | None = None,
    ) -> None:
        self._numbers_from = numbers  # connection numbers shared with other servers, if given
        self._name = name
        self._handler = handler
        self._on_crash = on_crash
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._count = 0
        self._connections: dict[ServerConnection, Peer | None] = {}
        self._numbers: dict[ServerConnection, int] = {}
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("server not started")
        return self._port

    def open_peers(self) -> list[Peer]:
        """The connections whose handler is running and not closed, oldest first."""
        with self._lock:
            peers = [p for p in self._connections.values() if p is not None and not p.closed]
        return sorted(peers, key=lambda p: p.number)

    def post(self, item: tuple[Any, ...], connection: int | None) -> Delivery:
        """Hand a scripted action to an open connection (the newest unless `connection`)."""
        peers = self.open_peers()
        if connection is not None:
            peers = [p for p in peers if p.number == connection]
        if not peers:
            number = "" if connection is None else f" number {connection}"
            raise RuntimeError(f"no open {self._name} gateway connection{number}")
        return max(peers, key=lambda p: p.number).post(item)

    def start(self) -> None:
        owner = self

        class TrackedConnection(ServerConnection):
            def __init__(self, sock: Any, protocol: ServerProtocol, server: Any, **kw: Any) -> None:
                number = owner._admit()
                threading.current_thread().name = f"fake-{owner._name}-conn-{number}"
                super().__init__(sock, protocol, server, **kw)
                self.recv_events_thread.name = f"fake-{owner._name}-conn-{number}-recv"
                owner._track(self, number)

        self._server = serve(
            self._run_handler,
            "127.0.0.1",
            0,
            create_connection=TrackedConnection,
            compression=None,
            ping_interval=None,
            open_timeout=2.0,
            close_timeout=CLOSE_TIMEOUT,
            max_size=MAX_MESSAGE,
            logger=_log,
        )
        self._port = int(self._server.socket.getsockname()[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"fake-{self._name}-serve"
        )
        self._thread.start()

    def begin_close(self) -> None:
        """Stop accepting and ask every handler to say goodbye; returns at once."""
        self._stopping.set()

    def finish_close(self, deadline: float) -> None:
        """Wait (until the monotonic `deadline`) for handlers, then kill and join the rest."""
        self._stopping.set()
        server = self._server
        if server is None:
            return
        with server.lock:
            handlers = list(server.handler_threads)
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close_socket()  # idempotent; ends recv_events and any blocked handshake/recv
        server.shutdown(close_connections=False)  # closes the listener, joins handler threads
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        for conn in connections:
            conn.recv_events_thread.join(max(0.1, deadline - time.monotonic()))

    # -- internals -----------------------------------------------------------------------------

    def _admit(self) -> int:
        with self._lock:
            if self._stopping.is_set():
                raise ConnectionRefusedError("fake server is shutting down")
            self._count += 1
            return self._numbers_from() if self._numbers_from else self._count

    def _track(self, conn: ServerConnection, number: int) -> None:
        with self._lock:
            self._connections[conn] = None
            self._numbers[conn] = number
            stopping = self._stopping.is_set()
        if stopping:
            conn.close_socket()

    def _run_handler(self, conn: ServerConnection) -> None:
        with self._lock:
            peer = Peer(conn, self._numbers[conn], self._stopping)
            self._connections[conn] = peer
        try:
            self._handler(peer)
        except PeerGone:
            pass
        except Exception as exc:
            # A bug in the fake itself: make it visible to the test (violations), then let
            # websockets log it with its traceback.
            self._on_crash(f"{self._name}#{peer.number}: fake internal error: {exc!r}")
            if not peer.closed:
                peer.close(1011, "fake discord internal error")
            raise
        finally:
            peer.finish_posts()
            if not peer.closed:  # safety net: the gateway logic normally closes itself
                peer.close(1001 if peer.stopping else 1000, "")

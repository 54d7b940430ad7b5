"""`WebSocketSession` (the websocket both gateways are built on) against a loopback server.

The server is `websockets`' sync server (not the client's websocket-client), scripted per test
by a function of the connection; it records what it received and the close code it got.
Waits are on events with bounded timeouts; nothing sleeps.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.sync.server import ServerConnection, serve

from discord_voice._shell.websocket import Binary, Close, Text, timed_out
from discord_voice._shell.ws_session import Message, WebSocketSession
from discord_voice.core.opcodes import ClientCloseCode
from discord_voice.errors import ConnectionClosed
from tests.timeouts import LONG

Script = Callable[[ServerConnection], None]


class ScriptedServer:
    """Runs `script` on each connection, then reads until the client closes; records it all."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[str | bytes] = []
        self.close_code: int | None = None
        self.done = threading.Event()  # the connection has ended on the server's side
        self._server = serve(self._handle, "127.0.0.1", 0, ping_interval=None, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-ws-server")
        self._thread.start()

    def _handle(self, conn: ServerConnection) -> None:
        threading.current_thread().name = "fake-ws-connection"
        try:
            self.script(conn)
            for message in conn:
                self.received.append(message)
        except WsConnectionClosed:
            pass
        finally:
            close = conn.protocol.close_rcvd
            self.close_code = None if close is None else close.code
            self.done.set()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(LONG)


@dataclass
class Owner:
    """What a gateway gives its session, recording every call and the thread it ran on."""

    raise_on: str | None = None  # on_message raises for this text
    messages: list[Message] = field(default_factory=list)
    ends: list[Close | Exception] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    reader_names: set[str] = field(default_factory=set)
    exited: threading.Event = field(default_factory=threading.Event)
    closed_before_exit: bool | None = None

    def on_message(self, message: Message) -> None:
        self.reader_names.add(threading.current_thread().name)
        self.messages.append(message)
        if isinstance(message, Text) and message.data == self.raise_on:
            raise ValueError("the protocol rejects this")

    def on_end(self, end: Close | Exception) -> None:
        self.ends.append(end)

    def start(self, session: WebSocketSession, **kwargs: Callable[[], int]) -> threading.Thread:
        def on_exit() -> None:
            try:
                session.send_text("after the end")
            except ConnectionClosed:
                self.closed_before_exit = True
            else:
                self.closed_before_exit = False
            self.exited.set()

        reader = session.make_reader(
            "dv-test-reader",
            on_message=self.on_message,
            on_end=self.on_end,
            on_failure=self.failures.append,
            on_exit=on_exit,
            **kwargs,
        )
        reader.start()
        return reader


@pytest.fixture
def make_server() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def connect(server: ScriptedServer) -> WebSocketSession:
    return WebSocketSession.connect(server.url, timeout=LONG, what="test websocket")


def test_messages_in_order_then_the_peers_close_as_a_value(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    def script(conn: ServerConnection) -> None:
        conn.send("one")
        conn.send(b"\x00two")
        conn.send("three")
        conn.close(4006, "session no longer valid")

    server = make_server(script)
    session, owner = connect(server), Owner()
    reader = owner.start(session)
    assert owner.exited.wait(LONG)
    reader.join(LONG)
    assert owner.messages == [Text("one"), Binary(b"\x00two"), Text("three")]
    assert owner.reader_names == {"dv-test-reader"}
    assert owner.ends == [Close(4006, "session no longer valid")]
    assert owner.closed_before_exit is True  # on_exit runs last, the socket closed
    assert session.stopped.is_set() and not owner.failures
    assert server.done.wait(LONG) and server.close_code == 4006  # our echo carries its code


def test_a_handler_error_ends_the_connection_with_the_exit_code(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    def script(conn: ServerConnection) -> None:
        conn.send("fine")
        conn.send("poison")
        conn.send("never handled")

    server = make_server(script)
    session, owner = connect(server), Owner(raise_on="poison")
    owner.start(session)
    assert owner.exited.wait(LONG)
    assert owner.messages == [Text("fine"), Text("poison")]
    [end] = owner.ends
    assert isinstance(end, ValueError)
    assert server.done.wait(LONG) and server.close_code == ClientCloseCode.RECOVERING


def test_exit_code_is_asked_when_the_reader_closes(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    server = make_server(lambda conn: conn.send("poison"))
    session, owner = connect(server), Owner(raise_on="poison")
    owner.start(session, exit_code=lambda: 4321)
    assert owner.exited.wait(LONG)
    assert server.done.wait(LONG) and server.close_code == 4321


def test_close_sends_our_code_once_and_the_reader_finishes_the_handshake(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    server = make_server(lambda conn: conn.send("hello"))
    session, owner = connect(server), Owner()
    owner.start(session)
    session.send_text("from the client")
    session.send_binary(b"\x01\x02")
    session.close(ClientCloseCode.NORMAL)
    session.close(ClientCloseCode.RECOVERING)  # once: the second close sends nothing
    assert session.stopped.is_set()
    assert owner.exited.wait(LONG)
    assert server.done.wait(LONG) and server.close_code == ClientCloseCode.NORMAL
    assert server.received == ["from the client", b"\x01\x02"]
    assert all(isinstance(end, Close) and end.code == 1000 for end in owner.ends)


def test_messages_the_peer_sent_before_answering_our_close_are_still_handled(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    def script(conn: ServerConnection) -> None:
        for text in ("hello", "late-1", "late-2"):  # on the wire before our close arrives
            conn.send(text)

    server = make_server(script)
    session = connect(server)
    gate, inside = threading.Event(), threading.Event()

    class HeldOwner(Owner):
        def on_message(self, message: Message) -> None:
            super().on_message(message)
            if message == Text("hello"):
                inside.set()
                gate.wait(LONG)  # the reader is busy while the owner closes

    owner = HeldOwner()
    owner.start(session)
    assert inside.wait(LONG)
    session.close(ClientCloseCode.NORMAL)
    gate.set()
    assert owner.exited.wait(LONG)
    assert owner.messages == [Text("hello"), Text("late-1"), Text("late-2")]
    assert owner.ends == []  # the peer's answer to our close is not reported as an end
    assert server.done.wait(LONG) and server.close_code == ClientCloseCode.NORMAL


def test_abort_wakes_a_blocked_reader_which_reports_a_drop(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    server = make_server(lambda conn: conn.send("hello"))
    session, owner = connect(server), Owner()
    owner.start(session)
    session.abort()  # not a stop: the owner hears how the connection ended
    assert owner.exited.wait(LONG)  # well within the 5 s io timeout: the abort woke it
    [end] = owner.ends
    assert isinstance(end, Close) and end.code is None and not end.violation
    assert server.done.wait(LONG)


def test_heartbeat_hook_is_cancelled_on_stop_on_the_readers_end_and_at_once_if_late(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    stopped_here = make_server(lambda conn: None)
    session, owner = connect(stopped_here), Owner()
    owner.start(session)
    cancels: list[str] = []
    session.attach_heartbeat(lambda: cancels.append("attached"))
    assert cancels == []
    session.stop()
    assert cancels == ["attached"]
    session.attach_heartbeat(lambda: cancels.append("late"))
    assert cancels == ["attached", "late"]  # a stopped session cancels a late one at once
    session.abort()  # wakes the reader (a stop alone is seen within the io timeout)
    assert owner.exited.wait(LONG)
    assert cancels == ["attached", "late"]  # each once

    def close_soon(conn: ServerConnection) -> None:
        conn.recv()
        conn.close(4015)

    closed_there = make_server(close_soon)
    session, owner = connect(closed_there), Owner()
    ended_by_reader: list[str] = []
    session.attach_heartbeat(lambda: ended_by_reader.append(threading.current_thread().name))
    owner.start(session)
    session.send_text("go")
    assert owner.exited.wait(LONG)
    assert ended_by_reader == ["dv-test-reader"]


def test_release_without_a_reader_closes_the_socket(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    server = make_server(lambda conn: None)
    session = connect(server)
    session.release()
    assert server.done.wait(LONG)
    with pytest.raises(ConnectionClosed):
        session.send_text("after release")


def test_one_reader_per_session(make_server: Callable[[Script], ScriptedServer]) -> None:
    server = make_server(lambda conn: None)
    session, owner = connect(server), Owner()
    owner.start(session)
    with pytest.raises(RuntimeError):
        owner.start(session)
    session.close(ClientCloseCode.NORMAL)
    assert owner.exited.wait(LONG)


def test_sends_from_many_threads_arrive_whole(
    make_server: Callable[[Script], ScriptedServer],
) -> None:
    server = make_server(lambda conn: None)
    session, owner = connect(server), Owner()
    owner.start(session)
    payloads = {f"{n}:" + "x" * 20_000 for n in range(8)}
    senders = [
        threading.Thread(target=session.send_text, args=(p,), name=f"test-sender-{i}")
        for i, p in enumerate(payloads)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(LONG)
    session.close(ClientCloseCode.NORMAL)
    assert server.done.wait(LONG)
    assert set(server.received) == payloads and len(server.received) == len(payloads)
    assert owner.exited.wait(LONG)


def test_connect_failures_are_typed() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    with pytest.raises(ConnectionClosed, match="could not open the test websocket"):
        WebSocketSession.connect(f"ws://127.0.0.1:{port}", timeout=LONG, what="test websocket")
    with socket.socket() as silent:  # accepts TCP, never answers the websocket handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ConnectionClosed) as caught:
            WebSocketSession.connect(url, timeout=0.2, what="test websocket")
    assert timed_out(caught.value.__cause__)

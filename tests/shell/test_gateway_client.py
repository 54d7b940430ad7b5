"""`discord_voice.Gateway` against a scripted main gateway on real loopback websockets.

The server side is `websockets`' sync server (a different implementation from the client's
websocket-client), scripted per test: Hello, Identify check, READY, ACKs, close codes and
dispatch injection. Heartbeat and rate-limit timing run on `discord_voice.testing.FakeClock`:
a test asserts exactly which deadlines the library's threads are parked on, then advances.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.sync.server import ServerConnection, serve

from discord_voice.core.reconnect import ClosePolicy, ReconnectPlan, RetryBudget
from discord_voice.errors import (
    ConnectionClosed,
    GatewayTimeout,
    HeartbeatTimeout,
    LocalProtocolError,
    MainGatewayClosed,
    RemoteProtocolError,
    ShutdownTimeout,
    VoiceError,
)
from discord_voice.gateway import Gateway
from discord_voice.main_gateway import MainGateway
from discord_voice.testing import FakeClock, FakeDiscord
from tests.timeouts import LONG, SHORT

TOKEN = "MTIzNDU2Nzg5.fake-secret-token"
USER_ID = 80351110224678912
Message = dict[str, Any]
#: These tests see how a connection ends; tests/loopback/test_gateway_resume.py sees recovery.
NO_RETRY = ReconnectPlan(
    ClosePolicy.main_default(),
    resume=RetryBudget(max_attempts=0),
    new_session=RetryBudget(max_attempts=0),
)


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class ScriptedDiscord:
    """A tiny main gateway: Hello on connect, READY after Identify, ACK per heartbeat."""

    def __init__(
        self,
        *,
        hello: bool = True,
        ready: bool = True,
        ack: bool = True,
        interval_ms: int = 41250,
        identify_close: tuple[int, str] | None = None,
    ) -> None:
        self.hello, self.ready, self.ack = hello, ready, ack
        self.interval_ms = interval_ms
        self.identify_close = identify_close
        self.ack_gate: threading.Event | None = None
        self.received: list[Message] = []
        self.close_codes: list[int | None] = []
        self.paths: list[str] = []
        self._cond = threading.Condition()
        self._conn: ServerConnection | None = None
        self._seq = 0
        self._server = serve(self._handle, "127.0.0.1", 0, ping_interval=None, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-gw-server")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(LONG)
        assert not self._thread.is_alive()

    def _handle(self, conn: ServerConnection) -> None:
        threading.current_thread().name = "fake-gw-connection"
        assert conn.request is not None
        with self._cond:
            self._conn = conn
            self.paths.append(conn.request.path)
        try:
            if self.hello:
                conn.send(json.dumps({"op": 10, "d": {"heartbeat_interval": self.interval_ms}}))
            for raw in conn:
                message = json.loads(raw)
                with self._cond:
                    self.received.append(message)
                    self._cond.notify_all()
                self._react(conn, message)
        except WsConnectionClosed:
            pass
        finally:
            close = conn.protocol.close_rcvd
            with self._cond:
                self.close_codes.append(None if close is None else close.code)
                self._cond.notify_all()

    def _react(self, conn: ServerConnection, message: Message) -> None:
        if message["op"] == 2:
            if self.identify_close is not None:
                conn.close(*self.identify_close)
            elif self.ready:
                self.dispatch(
                    "READY",
                    {
                        "v": 10,
                        "user": {"id": str(USER_ID), "username": "bot", "bot": True},
                        "guilds": [],
                        "session_id": "session-1",
                        "resume_gateway_url": "wss://resume.example/",
                    },
                )
        elif message["op"] == 1 and self.ack:
            if self.ack_gate is not None:
                assert self.ack_gate.wait(LONG)
            conn.send(json.dumps({"op": 11}))
            self.dispatch("TEST_ACKED", {})

    def connection(self) -> ServerConnection:
        with self._cond:
            conn = self._conn
        assert conn is not None
        return conn

    def send(self, payload: Message | str) -> None:
        self.connection().send(payload if isinstance(payload, str) else json.dumps(payload))

    def dispatch(self, name: str, data: Any) -> int:
        with self._cond:
            self._seq += 1
            seq = self._seq
        self.send({"op": 0, "t": name, "s": seq, "d": data})
        return seq

    def close_connection(self, code: int, reason: str) -> None:
        self.connection().close(code, reason)

    def ops(self, op: int) -> list[Message]:
        with self._cond:
            return [m for m in self.received if m["op"] == op]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = LONG) -> None:
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = end - time.monotonic()
                assert remaining > 0, "condition not reached on the fake gateway"
                self._cond.wait(remaining)

    def wait_ops(self, op: int, count: int) -> list[Message]:
        self.wait_for(lambda: len([m for m in self.received if m["op"] == op]) >= count)
        return self.ops(op)

    def wait_closed(self) -> int | None:
        self.wait_for(lambda: bool(self.close_codes))
        return self.close_codes[0]


class Recorder:
    """A voice handler and dispatch listener that records everything, with a waitable log."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Mapping[str, Any]]] = []
        self._cond = threading.Condition()

    def _record(self, name: str, data: Mapping[str, Any]) -> None:
        with self._cond:
            self.events.append((name, data))
            self._cond.notify_all()

    def on_voice_state_update(self, data: Mapping[str, Any]) -> None:
        self._record("voice_state", data)

    def on_voice_server_update(self, data: Mapping[str, Any]) -> None:
        self._record("voice_server", data)

    def __call__(self, name: str, data: Mapping[str, Any]) -> None:
        self._record(name, data)

    def wait_for(self, name: str, timeout: float = LONG) -> None:
        end = time.monotonic() + timeout
        with self._cond:
            while not any(n == name for n, _ in self.events):
                remaining = end - time.monotonic()
                assert remaining > 0, f"{name} never delivered: {[n for n, _ in self.events]}"
                self._cond.wait(remaining)


class Harness:
    def __init__(self) -> None:
        self.fakes: list[ScriptedDiscord] = []
        self.gateways: list[Gateway] = []

    def fake(self, **options: Any) -> ScriptedDiscord:
        fake = ScriptedDiscord(**options)
        self.fakes.append(fake)
        return fake

    def gateway(self, url: str, token: str = TOKEN, **options: Any) -> Gateway:
        options.setdefault("rng", FixedRandom(0.5))
        options.setdefault("plan", NO_RETRY)  # resuming is tested against FakeDiscord
        gateway = Gateway(token, url, **options)
        self.gateways.append(gateway)
        return gateway


def library_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dv-")]


@pytest.fixture
def harness() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    for gateway in harness.gateways:
        try:
            gateway.close()
        except ShutdownTimeout:
            pass
    for fake in harness.fakes:
        fake.stop()  # tests/conftest.py then checks that no dv-/fake- thread is left


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which asserts on it
            result["error"] = exc

    thread = threading.Thread(target=run, name="fake-test-worker")
    thread.start()
    return thread, result


# --- connecting -------------------------------------------------------------------------------


def test_connect_identifies_then_close_logs_out(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    assert isinstance(gw, MainGateway)
    assert gw.user_id is None
    gw.connect(timeout=LONG)
    assert gw.user_id == USER_ID
    assert gw.session_id == "session-1"
    assert fake.paths == ["/?v=10&encoding=json"]
    assert fake.received[0] == {
        "op": 2,
        "d": {
            "token": TOKEN,
            "intents": 129,
            "properties": {
                "os": sys.platform,
                "browser": "discord-voice",
                "device": "discord-voice",
            },
        },
    }
    assert sorted(library_threads()) == ["dv-gateway-heartbeat", "dv-gateway-reader"]
    gw.close()
    assert fake.wait_closed() == 1000
    assert library_threads() == []
    assert gw.closed
    gw.wait(timeout=1.0)  # closed on purpose: returns None
    assert gw.error is None


def test_context_manager_closes_and_connect_runs_once(harness: Harness) -> None:
    fake = harness.fake()
    with harness.gateway(fake.url) as gw:
        gw.connect(timeout=LONG)
        with pytest.raises(LocalProtocolError):
            gw.connect(timeout=LONG)
    assert library_threads() == []
    assert fake.wait_closed() == 1000


def test_authentication_failure_names_the_token_without_showing_it(harness: Harness) -> None:
    fake = harness.fake(identify_close=(4004, f"Authentication failed ({TOKEN})"))
    gw = harness.gateway(fake.url)
    with pytest.raises(MainGatewayClosed) as info:
        gw.connect(timeout=LONG)
    error = info.value
    assert error.code == 4004
    assert "token was rejected" in str(error)
    for text in (str(error), repr(error), error.reason, repr(gw)):
        assert TOKEN not in text
    assert "[redacted]" in error.reason
    assert gw.error is error
    assert library_threads() == []
    with pytest.raises(MainGatewayClosed):
        gw.wait(timeout=1.0)


@pytest.mark.parametrize(("hello", "stage"), [(True, "READY"), (False, "Hello")])
def test_connect_timeout_names_the_missing_stage(harness: Harness, hello: bool, stage: str) -> None:
    fake = harness.fake(hello=hello, ready=False)
    clock = FakeClock(start=100.0)
    gw = harness.gateway(fake.url, clock=clock)
    worker, result = in_thread(lambda: gw.connect(timeout=10.0))
    if hello:
        fake.wait_ops(2, 1)  # connect() parks on its deadline, the heartbeat on its first beat
        assert clock.wait_for_sleepers(2, LONG) == [110.0, 120.625]
    else:
        assert clock.wait_for_sleepers(1, LONG) == [110.0]
    assert worker.is_alive()
    clock.advance(10.0)
    worker.join(LONG)
    error = result["error"]
    assert isinstance(error, GatewayTimeout)
    assert isinstance(error, TimeoutError) and isinstance(error, VoiceError)
    assert error.stage == f"main gateway {stage}"
    assert library_threads() == []
    assert fake.wait_closed() == 4000


def test_unreachable_server_raises_connection_closed(harness: Harness) -> None:
    with socket.socket() as bound:  # bound but not listening: the connection is refused
        bound.bind(("127.0.0.1", 0))
        gw = harness.gateway(f"ws://127.0.0.1:{bound.getsockname()[1]}")
        with pytest.raises(ConnectionClosed) as info:
            gw.connect(timeout=LONG)
    assert isinstance(info.value.__cause__, OSError)
    assert TOKEN not in str(info.value)
    assert library_threads() == []


def test_silent_server_times_out_in_the_websocket_handshake(harness: Harness) -> None:
    with socket.socket() as listener:  # accepts TCP (backlog) but never answers the upgrade
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        gw = harness.gateway(f"ws://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(GatewayTimeout) as info:
            gw.connect(timeout=0.2)
    assert info.value.stage == "main gateway websocket handshake"
    assert gw.error is info.value and gw.closed
    assert library_threads() == []


def test_lifecycle_misuse(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    with pytest.raises(LocalProtocolError):
        gw.wait(timeout=SHORT)  # nothing to wait for yet
    gw.connect(timeout=LONG)
    gw.wait(timeout=SHORT)  # still running: returns after the timeout
    assert not gw.closed
    unused = harness.gateway(fake.url)
    unused.close()
    unused.wait()  # closed without ever connecting: nothing to raise
    with pytest.raises(LocalProtocolError):
        unused.connect(timeout=LONG)
    with pytest.raises(LocalProtocolError):
        Gateway(TOKEN, fake.url, intents=-1)


# --- heartbeating -----------------------------------------------------------------------------


def test_heartbeats_follow_jitter_then_interval_and_measure_latency(harness: Harness) -> None:
    fake = harness.fake(interval_ms=1000)
    fake.ack_gate = threading.Event()
    clock = FakeClock(start=100.0)
    seen = Recorder()
    gw = harness.gateway(fake.url, clock=clock, rng=FixedRandom(0.25))
    gw.add_dispatch_listener(seen)
    gw.connect(timeout=LONG)
    assert clock.wait_for_sleepers(1, LONG) == [100.25]  # first beat after interval * jitter
    assert fake.ops(1) == []
    clock.advance(0.25)
    assert fake.wait_ops(1, 1) == [{"op": 1, "d": 1}]  # READY was s=1
    clock.advance(0.1)
    fake.ack_gate.set()
    seen.wait_for("TEST_ACKED")
    assert gw.latency == pytest.approx(0.1)
    fake.dispatch("GUILD_CREATE", {"id": "1"})
    seen.wait_for("GUILD_CREATE")
    assert clock.wait_for_sleepers(1, LONG) == [101.25]  # then every interval on a fixed grid
    clock.advance(0.9)
    assert fake.wait_ops(1, 2)[1] == {"op": 1, "d": 3}


def test_missing_ack_is_a_zombie_closed_with_4000(harness: Harness) -> None:
    fake = harness.fake(interval_ms=1000, ack=False)
    clock = FakeClock(start=100.0)
    gw = harness.gateway(fake.url, clock=clock, rng=FixedRandom(0.0))
    gw.connect(timeout=LONG)
    fake.wait_ops(1, 1)  # jitter 0: the first beat went at once
    assert clock.wait_for_sleepers(1, LONG) == [101.0]
    assert gw.error is None
    clock.advance(1.0)
    with pytest.raises(HeartbeatTimeout) as info:
        gw.wait(timeout=LONG)
    assert info.value.interval == 1.0
    assert fake.wait_closed() == 4000
    assert len(fake.ops(1)) == 1  # no beat after the zombie was detected
    with pytest.raises(ConnectionClosed) as later:
        gw.update_voice_state("1", None, self_mute=False, self_deaf=False)
    assert later.value.__cause__ is info.value


def test_server_heartbeat_request_is_answered_at_once(harness: Harness) -> None:
    fake = harness.fake()
    clock = FakeClock(start=100.0)
    seen = Recorder()
    gw = harness.gateway(fake.url, clock=clock)
    gw.add_dispatch_listener(seen)
    gw.connect(timeout=LONG)
    fake.send({"op": 1, "d": None})
    assert fake.wait_ops(1, 1) == [{"op": 1, "d": 1}]  # without the clock moving
    seen.wait_for("TEST_ACKED")
    assert gw.latency == 0.0 and gw.error is None


# --- dispatches and callbacks -----------------------------------------------------------------


def test_voice_dispatches_reach_handlers_and_every_dispatch_reaches_listeners(
    harness: Harness,
) -> None:
    fake = harness.fake()
    handler, listener = Recorder(), Recorder()
    gw = harness.gateway(fake.url)
    remove_handler = gw.add_voice_handler(handler)
    gw.add_dispatch_listener(listener)
    gw.connect(timeout=LONG)
    state = {"guild_id": "1", "channel_id": "2", "user_id": str(USER_ID), "session_id": "v"}
    server = {"token": "voice-token", "guild_id": "1", "endpoint": "voice.example:443"}
    fake.dispatch("VOICE_STATE_UPDATE", state)
    fake.dispatch("VOICE_SERVER_UPDATE", server)
    fake.dispatch("MARK", None)
    listener.wait_for("MARK")
    assert handler.events == [("voice_state", state), ("voice_server", server)]
    names = [name for name, _ in listener.events]
    assert names == ["READY", "VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE", "MARK"]
    assert listener.events[3][1] == {}
    remove_handler()
    remove_handler()  # idempotent
    fake.dispatch("VOICE_SERVER_UPDATE", server)
    fake.dispatch("MARK2", {})
    listener.wait_for("MARK2")
    assert len(handler.events) == 2


def test_callback_exception_fails_the_gateway(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)

    def explode(name: str, data: Mapping[str, Any]) -> None:
        if name == "BOOM":
            raise ValueError("handler bug")

    gw.add_dispatch_listener(explode)
    gw.connect(timeout=LONG)
    with caplog.at_level(logging.ERROR, logger="discord_voice.gateway"):
        fake.dispatch("BOOM", {})
        with pytest.raises(ConnectionClosed) as info:
            gw.wait(timeout=LONG)
    assert isinstance(info.value.__cause__, ValueError)
    assert "BOOM" in str(info.value)
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)
    assert fake.wait_closed() == 4000
    with pytest.raises(ConnectionClosed) as later:
        gw.update_voice_state("1", "2", self_mute=False, self_deaf=False)
    assert later.value.__cause__ is info.value


def test_close_from_inside_a_callback_does_not_deadlock(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    closed = threading.Event()

    def close_on_bye(name: str, data: Mapping[str, Any]) -> None:
        if name == "BYE":
            gw.close()
            closed.set()

    gw.add_dispatch_listener(close_on_bye)
    gw.connect(timeout=LONG)
    fake.dispatch("BYE", {})
    assert closed.wait(LONG)
    gw.wait(timeout=LONG)
    assert gw.error is None
    assert fake.wait_closed() == 1000


def test_close_is_idempotent_from_many_threads(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    gw.connect(timeout=LONG)
    workers = [in_thread(gw.close) for _ in range(4)]
    gw.close()
    for worker, result in workers:
        worker.join(LONG)
        assert result == {"value": None}
    gw.close()
    assert library_threads() == []
    assert fake.wait_closed() == 1000
    assert fake.close_codes == [1000]
    with pytest.raises(ConnectionClosed):
        gw.update_voice_state("1", None, self_mute=False, self_deaf=False)


def test_close_reports_a_thread_it_cannot_join(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    release, stalled = threading.Event(), threading.Event()

    def stall(name: str, data: Mapping[str, Any]) -> None:
        if name == "STALL":
            stalled.set()
            assert release.wait(LONG)

    gw.add_dispatch_listener(stall)
    gw.connect(timeout=LONG)
    fake.dispatch("STALL", {})
    assert stalled.wait(LONG)
    with pytest.raises(ShutdownTimeout) as info:
        gw.close(timeout=0.1)
    assert info.value.thread_names == ("dv-gateway-reader",)
    release.set()
    gw.close()
    assert library_threads() == []


# --- server-side endings ----------------------------------------------------------------------


def test_server_close_after_ready_is_main_gateway_closed(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    gw.connect(timeout=LONG)
    fake.close_connection(4009, "session timed out")
    with pytest.raises(MainGatewayClosed) as info:
        gw.wait(timeout=LONG)
    assert (info.value.code, info.value.reason) == (4009, "session timed out")
    assert "4009" in str(info.value) and "session timed out" in str(info.value)
    assert fake.wait_closed() == 4009  # the client echoed the code


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        ({"op": 7, "d": None}, "op 7"),
        ({"op": 9, "d": False}, "op 9"),
    ],
)
def test_reconnect_and_invalid_session_end_the_gateway(
    harness: Harness, payload: Message, text: str
) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    gw.connect(timeout=LONG)
    fake.send(payload)
    with pytest.raises(ConnectionClosed, match=text) as info:
        gw.wait(timeout=LONG)
    assert not isinstance(info.value, MainGatewayClosed)
    assert fake.wait_closed() == 4000


def test_malformed_and_unknown_messages_are_skipped_and_counted(harness: Harness) -> None:
    fake = harness.fake()
    seen = Recorder()
    gw = harness.gateway(fake.url)
    gw.add_voice_handler(seen)  # no dispatch listener: other dispatches reach no one
    gw.connect(timeout=LONG)
    fake.send("{not json")
    fake.send({"op": 0, "t": "BAD_BODY", "s": 2, "d": 5})  # a dispatch whose d is no object
    fake.send({"op": 10, "d": {"heartbeat_interval": 1000}})  # a second Hello
    fake.send({"op": 42, "d": None})  # an unknown opcode
    fake.dispatch("NOBODY_LISTENS", {})
    fake.dispatch("VOICE_STATE_UPDATE", {"guild_id": "1"})  # the reader handles them in order
    seen.wait_for("voice_state")
    assert (gw.malformed_messages, gw.ignored_messages) == (3, 2)
    assert gw.last_protocol_error == "main gateway sent a second Hello"
    assert gw.error is None and not gw.closed and fake.close_codes == []
    gw.update_voice_state("1", None, self_mute=False, self_deaf=False)
    assert fake.wait_ops(4, 1)[0]["d"]["guild_id"] == "1"


def test_malformed_ready_is_a_remote_protocol_error(harness: Harness) -> None:
    fake = harness.fake(ready=False)
    gw = harness.gateway(fake.url)
    thread, result = in_thread(lambda: gw.connect(timeout=LONG))
    fake.wait_ops(2, 1)
    fake.dispatch("READY", {"user": {"id": "not a number"}, "session_id": "s"})
    thread.join(LONG)
    assert isinstance(result.get("error"), RemoteProtocolError)
    assert "READY" in str(result["error"]) and gw.malformed_messages == 0
    assert fake.wait_closed() == 4000


def test_fragments_and_pings_are_handled_frame_by_frame(harness: Harness) -> None:
    fake = harness.fake()
    seen = Recorder()
    gw = harness.gateway(fake.url)
    gw.add_dispatch_listener(seen)
    gw.connect(timeout=LONG)
    assert fake.connection().ping(b"are you there").wait(LONG)  # the reader answered the ping
    text = json.dumps({"op": 0, "t": "SPLIT", "s": 2, "d": {"name": "\u00e9t\u00e9 " * 8}})
    fake.connection().send([text[:7], text[7:40], text[40:]])  # one message in three frames
    seen.wait_for("SPLIT")
    assert seen.events[-1] == ("SPLIT", {"name": "\u00e9t\u00e9 " * 8})
    assert gw.error is None


def test_text_that_is_not_utf8_is_a_remote_protocol_error(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    gw.connect(timeout=LONG)
    fake.connection().send(b'{"op": 0, "t": "BAD\xff", "d": {}}', text=True)
    with pytest.raises(RemoteProtocolError, match="invalid frame") as info:
        gw.wait(timeout=LONG)
    assert info.value.__cause__ is not None
    assert fake.wait_closed() == 4000


def test_dropped_connection_is_main_gateway_closed_without_a_code(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    gw.connect(timeout=LONG)
    fake.connection().socket.shutdown(socket.SHUT_RDWR)  # TCP ends, no close frame
    with pytest.raises(MainGatewayClosed, match="dropped") as info:
        gw.wait(timeout=LONG)
    assert info.value.code is None and info.value.__cause__ is not None
    with pytest.raises(ConnectionClosed) as later:
        gw.update_voice_state("1", None, self_mute=False, self_deaf=False)
    assert later.value.__cause__ is info.value


# --- sending ----------------------------------------------------------------------------------


def test_update_voice_state_sends_op_4(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    with pytest.raises(LocalProtocolError):
        gw.update_voice_state("1", None, self_mute=False, self_deaf=False)  # before connect
    gw.connect(timeout=LONG)
    gw.update_voice_state("1234", "5678", self_mute=False, self_deaf=True)
    gw.update_voice_state("1234", None, self_mute=True, self_deaf=False)
    with pytest.raises(LocalProtocolError):
        gw.update_voice_state("not-an-id", None, self_mute=False, self_deaf=False)
    with pytest.raises(LocalProtocolError, match="4096"):
        gw.update_voice_state("1" * 5000, None, self_mute=False, self_deaf=False)
    assert fake.wait_ops(4, 2) == [
        {
            "op": 4,
            "d": {"guild_id": "1234", "channel_id": "5678", "self_mute": False, "self_deaf": True},
        },
        {
            "op": 4,
            "d": {"guild_id": "1234", "channel_id": None, "self_mute": True, "self_deaf": False},
        },
    ]
    assert gw.error is None


def test_sends_beyond_the_burst_wait_on_the_clock(harness: Harness) -> None:
    fake = harness.fake()
    clock = FakeClock(start=100.0)
    gw = harness.gateway(fake.url, clock=clock)
    gw.connect(timeout=LONG)  # Identify used 1 of the 55-token burst
    for _ in range(54):
        gw.update_voice_state("1", None, self_mute=False, self_deaf=False)
    fake.wait_ops(4, 54)
    worker, result = in_thread(
        lambda: gw.update_voice_state("1", "2", self_mute=False, self_deaf=False)
    )
    # the sender waits until one token has refilled (60/55 s); the heartbeat waits too
    assert clock.wait_for_sleepers(2, LONG) == pytest.approx([100.0 + 60.0 / 55.0, 120.625])
    assert worker.is_alive() and len(fake.ops(4)) == 54
    clock.advance(1.1)
    worker.join(LONG)
    assert result == {"value": None}
    assert fake.wait_ops(4, 55)[-1]["d"]["channel_id"] == "2"


def test_repr_and_errors_never_show_the_token(harness: Harness) -> None:
    fake = harness.fake()
    gw = harness.gateway(fake.url)
    assert TOKEN not in repr(gw)
    gw.connect(timeout=LONG)
    assert TOKEN not in repr(gw) and str(USER_ID) in repr(gw)
    with pytest.raises(LocalProtocolError) as info:
        Gateway(TOKEN, "http://example.com")
    assert TOKEN not in str(info.value)


# --- against discord_voice.testing.FakeDiscord (an independent, strict fake) ------------------


def test_gateway_against_fake_discord(harness: Harness) -> None:
    with FakeDiscord(token="fake-bot-token", user_id=USER_ID) as fake:
        wrong = harness.gateway(fake.gateway_url, token="not-the-token")
        with pytest.raises(MainGatewayClosed) as info:
            wrong.connect(timeout=LONG)
        assert info.value.code == 4004 and "not-the-token" not in str(info.value)
        handler = Recorder()
        bare_url = fake.gateway_url.split("?")[0]  # Gateway adds ?v=10&encoding=json itself
        gw = harness.gateway(bare_url, token=fake.token)
        gw.add_voice_handler(handler)
        gw.connect(timeout=LONG)
        assert gw.user_id == USER_ID
        gw.update_voice_state(
            "41771983423143937", "127121515262115840", self_mute=False, self_deaf=True
        )
        handler.wait_for("voice_server")
        kinds = [name for name, _ in handler.events]
        assert kinds == ["voice_state", "voice_server"]
        assert handler.events[0][1]["channel_id"] == "127121515262115840"
        assert handler.events[1][1]["guild_id"] == "41771983423143937"
        gw.close()
        assert fake.wait_until(lambda f: all(s.closed for s in f.main_sessions), LONG)
        assert [(s.close_code, s.closed_by) for s in fake.main_sessions] == [
            (4004, "server"),
            (1000, "client"),
        ]
        assert len(fake.violations) == 1 and "main#1: authentication failed" in fake.violations[0]

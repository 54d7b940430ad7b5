"""A raw DAVE voice client for testing the fake's DAVE role: websocket-client + UDP + davey.

Nothing here uses discord_voice.core: the fake is checked against davey (openmls, the client-side
engine) while its own DAVE peer is libdave. Each `DaveRawClient` runs one reader thread that
answers the DAVE opcodes as a client must; the test waits on its state with bounded waits.
Used by test_fake_dave.py, test_fake_dave_flows.py and test_fake_resume.py.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
import websocket

davey = pytest.importorskip("davey")
pytest.importorskip("dave")

from discord_voice.testing import FakeDiscord  # noqa: E402
from tests.testing.fake_raw_clients import (  # noqa: E402
    XCHACHA,
    discovery_request,
    join,
    main_ready,
    rtp_header,
    seal,
)
from tests.timeouts import LONG  # noqa: E402

GUILD, CHANNEL = 111, 222
SLICE = 0.05  # reader thread's recv timeout, so it notices close() quickly


class DaveRawClient:
    """One voice connection that speaks DAVE with davey, driven by its own reader thread."""

    def __init__(
        self,
        fake: FakeDiscord,
        user_id: int,
        session_id: str,
        token: str,
        *,
        max_dave: int = 1,
        garbage_reaction: bool = True,
    ) -> None:
        self.fake = fake
        self.user_id = user_id
        self.max_dave = max_dave
        self.ws = websocket.create_connection(fake.voice_endpoint + "/?v=8", timeout=LONG)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(LONG)
        self.session_id, self.token = session_id, token
        self.cond = threading.Condition()
        self.dave = davey.DaveSession(1, user_id, CHANNEL)
        self.external_sender = b""
        self.expected: set[int] = set()
        self.messages: list[tuple[str, int, Any]] = []  # ("json"|"binary", op, d or payload)
        self.executed: list[int] = []
        self.sent_invalid: list[int] = []
        self.errors: list[str] = []
        self.close_code: int | None = None
        self.description: dict[str, Any] = {}
        self.ssrc = 0
        self.server = ("", 0)
        self.key = b""
        self.sequence = 0
        self.corrupt_next_commit = False  # flip its last byte (membership tag) once
        self.hold = False  # keep op 27 unprocessed until release() (to script races)
        self.held: list[tuple[bytes, set[int]]] = []  # with the user ids expected back then
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- handshake (test thread) ---------------------------------------------------------------

    def handshake(self) -> dict[str, Any]:
        """Hello, Identify, Ready, IP discovery, Select -> Session Description; starts reading."""
        assert json.loads(self.ws.recv())["op"] == 8
        self._send_json(
            0,
            {
                "server_id": str(GUILD),
                "user_id": str(self.user_id),
                "session_id": self.session_id,
                "token": self.token,
                "max_dave_protocol_version": self.max_dave,
            },
        )
        ready = json.loads(self.ws.recv())
        assert ready["op"] == 2, ready
        self.ssrc, self.server = ready["d"]["ssrc"], (ready["d"]["ip"], ready["d"]["port"])
        self.udp.sendto(discovery_request(self.ssrc), self.server)
        reply = self.udp.recv(100)
        ip = reply[8:72].split(b"\0", 1)[0].decode()
        port = struct.unpack(">H", reply[72:74])[0]
        data = {"address": ip, "port": port, "mode": XCHACHA}
        self._send_json(1, {"protocol": "udp", "data": data})
        description = json.loads(self.ws.recv())
        assert description["op"] == 4, description
        self.description = description["d"]
        self.key = bytes(description["d"]["secret_key"])
        self._send_json(5, {"speaking": 1, "delay": 0, "ssrc": self.ssrc})
        self.ws.settimeout(SLICE)
        self._thread = threading.Thread(target=self._read, name=f"test-dave-{self.user_id}")
        self._thread.start()
        return self.description

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(LONG)
        try:
            self.ws.close(timeout=0.2)
        except (websocket.WebSocketException, OSError):
            pass
        self.ws.shutdown()  # type: ignore[no-untyped-call]  # close() leaves the socket open once the server has closed
        self.udp.close()

    def wait(self, predicate: Callable[[DaveRawClient], object], what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), LONG):
                raise AssertionError(
                    f"user {self.user_id}: timed out waiting for {what}; "
                    f"errors {self.errors}, got {[m[:2] for m in self.messages]}"
                )

    def release(self) -> None:
        """Process the held op 27s in order; send only the commit of the last one, if any."""
        with self.cond:
            self.hold, held, self.held = False, self.held, []
            result = None
            for payload, expected in held:
                result = self._process_proposals(payload, expected)
            if result is not None:
                self._send_binary(28, result.commit + (result.welcome or b""))

    def send_opus(self, opus: bytes) -> bytes:
        """DAVE-encrypt (davey) and send one frame; returns the DAVE frame."""
        with self.cond:
            frame = bytes(self.dave.encrypt_opus(opus))
        self.send_raw(frame)
        return frame

    def send_raw(self, payload: bytes) -> None:
        self.sequence += 1
        header = rtp_header(self.ssrc, self.sequence, self.sequence * 960)
        self.udp.sendto(seal(XCHACHA, self.key, header, self.sequence, payload), self.server)

    @property
    def epoch(self) -> int | None:
        with self.cond:
            epoch: int | None = self.dave.epoch
            return epoch

    # -- reader thread -------------------------------------------------------------------------

    def _send_json(self, op: int, d: Any) -> None:
        self.ws.send(json.dumps({"op": op, "d": d}))

    def _send_binary(self, op: int, payload: bytes) -> None:
        self.ws.send_binary(bytes([op]) + payload)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, OSError):
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                with self.cond:
                    self.close_code = struct.unpack(">H", frame.data[:2])[0]
                    self.cond.notify_all()
                break
            with self.cond:
                try:
                    self._handle(opcode, frame.data)
                except Exception as exc:  # noqa: BLE001 - surfaced through wait()'s message
                    self.errors.append(repr(exc))
                self.cond.notify_all()

    def _handle(self, opcode: int, data: bytes) -> None:
        if opcode == websocket.ABNF.OPCODE_TEXT:
            message = json.loads(data)
            op, d = message["op"], message.get("d")
            self.messages.append(("json", op, d))
            self._on_json(op, d)
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            op, payload = data[2], data[3:]
            self.messages.append(("binary", op, payload))
            self._on_binary(op, payload)

    def _on_json(self, op: int, d: Any) -> None:
        if op == 11:
            self.expected.update(int(u) for u in d["user_ids"])
        elif op == 13:
            self.expected.discard(int(d["user_id"]))
        elif op == 22:
            self.executed.append(d["transition_id"])
        elif op == 21 and d["transition_id"] != 0:
            self._send_json(23, {"transition_id": d["transition_id"]})
        elif op == 24 and d["epoch"] == 1:
            self.dave.reinit(1, self.user_id, CHANNEL)
            self.dave.set_external_sender(self.external_sender)
            self._send_binary(26, self.dave.get_serialized_key_package())

    def _process_proposals(self, payload: bytes, expected: set[int]) -> Any:
        kinds = (davey.ProposalsOperationType.append, davey.ProposalsOperationType.revoke)
        users = sorted(expected | {self.user_id})
        return self.dave.process_proposals(kinds[payload[0]], payload[1:], users)

    def _on_binary(self, op: int, payload: bytes) -> None:
        if op == 25:
            self.external_sender = payload
            self.dave.set_external_sender(payload)
            self._send_binary(26, self.dave.get_serialized_key_package())
        elif op == 27 and self.hold:
            self.held.append((payload, set(self.expected)))
        elif op == 27:
            result = self._process_proposals(payload, self.expected)
            if result is not None:
                commit = bytes(result.commit)
                if self.corrupt_next_commit:
                    self.corrupt_next_commit = False
                    commit = commit[:-1] + bytes([commit[-1] ^ 1])
                self._send_binary(28, commit + (result.welcome or b""))
        elif op in (29, 30):
            tid = struct.unpack(">H", payload[:2])[0]
            try:
                if op == 29:
                    self.dave.process_commit(payload[2:])
                else:
                    self.dave.process_welcome(payload[2:])
            except ValueError:
                self.sent_invalid.append(tid)
                self._send_json(31, {"transition_id": tid})
                self.dave.reinit(1, self.user_id, CHANNEL)
                self.dave.set_external_sender(self.external_sender)
                self._send_binary(26, self.dave.get_serialized_key_package())
                return
            self._send_json(23, {"transition_id": tid})


def bot_client(fake: FakeDiscord, **kw: Any) -> tuple[websocket.WebSocket, DaveRawClient]:
    """The bot user joins GUILD/CHANNEL on the main gateway and connects its voice websocket."""
    main, _ = main_ready(fake)
    state, server = join(fake, main, str(GUILD), str(CHANNEL))
    return main, DaveRawClient(fake, fake.user_id, state["session_id"], server["token"], **kw)


def other_client(fake: FakeDiscord, user_id: int, **kw: Any) -> DaveRawClient:
    """Another user in the same channel (credentials issued by the fake directly)."""
    issued = fake.issue_voice(GUILD, CHANNEL, user_id)
    return DaveRawClient(fake, user_id, issued.session_id, issued.token, **kw)

"""Hand-written raw clients for testing the fake itself: websocket-client, plain UDP, PyNaCl.

Nothing here uses discord_voice.core: the point is to check the fake against an independent
implementation of the client side (PyNaCl here, cryptography/pycryptodome in the fake). Both
directions: `seal` what a client sends, `open_rtp` / `open_rtcp` what the fake's speakers send
(a receive path written from the notes' receive.md §2, not from the fake's code).
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

import websocket
from nacl.bindings import (
    crypto_aead_aes256gcm_decrypt,
    crypto_aead_aes256gcm_encrypt,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import UnavailableError

from discord_voice.testing import FakeDiscord
from tests.timeouts import LONG

AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
TIMEOUT = LONG


def aes_available() -> bool:
    try:
        crypto_aead_aes256gcm_encrypt(b"", b"", bytes(12), bytes(32))
    except UnavailableError:
        return False
    return True


def send_json(ws: websocket.WebSocket, payload: Any) -> None:
    ws.send(json.dumps(payload))


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    raw = ws.recv()
    assert isinstance(raw, str) and raw, f"expected a JSON text message, got {raw!r}"
    data = json.loads(raw)
    assert isinstance(data, dict)
    return data


def recv_close(ws: websocket.WebSocket) -> tuple[int | None, str]:
    """Read until the server's close frame (websocket-client answers it); its (code, reason).

    The socket is shut down afterwards: websocket-client's ``close()`` would not do it any more.
    """
    try:
        while True:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                if len(data) < 2:
                    return None, ""
                return struct.unpack(">H", data[:2])[0], data[2:].decode()
    finally:
        ws.shutdown()  # type: ignore[no-untyped-call]  # websocket-client leaves it unannotated


def connect_main(fake: FakeDiscord, query: str = "/?v=10&encoding=json") -> websocket.WebSocket:
    return websocket.create_connection(fake.gateway_url + query, timeout=TIMEOUT)


def identify_payload(token: str, intents: int = 129) -> dict[str, Any]:
    props = {"os": "linux", "browser": "raw-test", "device": "raw-test"}
    return {"op": 2, "d": {"token": token, "intents": intents, "properties": props}}


def main_ready(fake: FakeDiscord, intents: int = 129) -> tuple[websocket.WebSocket, dict[str, Any]]:
    """A main gateway connection past Hello and READY; returns (ws, READY payload)."""
    ws = connect_main(fake)
    hello = recv_json(ws)
    assert hello["op"] == 10
    send_json(ws, identify_payload(fake.token, intents))
    ready = recv_json(ws)
    assert ready["t"] == "READY"
    return ws, ready


def voice_state_update(guild: str, channel: str | None) -> dict[str, Any]:
    return {
        "op": 4,
        "d": {"guild_id": guild, "channel_id": channel, "self_mute": False, "self_deaf": False},
    }


def join(
    fake: FakeDiscord, ws: websocket.WebSocket, guild: str = "111", channel: str = "222"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send op 4 and return the (VOICE_STATE_UPDATE d, VOICE_SERVER_UPDATE d)."""
    send_json(ws, voice_state_update(guild, channel))
    events = {m["t"]: m["d"] for m in (recv_json(ws), recv_json(ws))}
    return events["VOICE_STATE_UPDATE"], events["VOICE_SERVER_UPDATE"]


def voice_identify(
    guild: str, user: int, state: dict[str, Any], server: dict[str, Any], **override: Any
) -> dict[str, Any]:
    d = {
        "server_id": guild,
        "user_id": str(user),
        "session_id": state["session_id"],
        "token": server["token"],
        "max_dave_protocol_version": 0,
    }
    d.update(override)
    return {"op": 0, "d": {k: v for k, v in d.items() if v is not _DROP}}


_DROP = object()
DROP: Any = _DROP


def discovery_request(ssrc: int) -> bytes:
    return struct.pack(">HHI64sH", 1, 70, ssrc, b"", 0)


def seal(mode: str, key: bytes, header: bytes, counter: int, plaintext: bytes) -> bytes:
    """One rtpsize packet: header (the AAD), ciphertext+tag, 4-byte big-endian counter."""
    nonce4 = struct.pack(">I", counter)
    if mode == AES:
        sealed = crypto_aead_aes256gcm_encrypt(plaintext, header, nonce4 + bytes(8), key)
    else:
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, header, nonce4 + bytes(20), key
        )
    return header + sealed + nonce4


def rtp_header(ssrc: int, sequence: int, timestamp: int, first: int = 0x80) -> bytes:
    return struct.pack(">BBHII", first, 0x78, sequence, timestamp, ssrc)


def unseal(mode: str, key: bytes, aad: bytes, sealed: bytes, nonce4: bytes) -> bytes:
    """Decrypt ciphertext+tag with the 4-byte counter zero-padded to the mode's nonce size."""
    if mode == AES:
        return bytes(crypto_aead_aes256gcm_decrypt(sealed, aad, nonce4 + bytes(8), key))
    return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, aad, nonce4 + bytes(20), key))


@dataclass(frozen=True)
class OpenedRtp:
    """An RTP packet a client received, transport-decrypted and taken apart."""

    first: int  # byte 0 as sent (version, P, X, CC)
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    extension: bytes | None  # the decrypted extension body (None: X bit clear)
    extension_profile: int | None
    payload: bytes  # the Opus (or DAVE) frame, extension body and padding stripped
    padding: bytes  # the RTP padding stripped (its last byte is its length)
    nonce: int
    size: int


def open_rtp(mode: str, key: bytes, data: bytes) -> OpenedRtp:
    """Receive path of receive.md §2: AAD = 12 + 4*CC (+4 with X), nonce = the last 4 bytes,
    tag the 16 before; after decryption strip the extension body (4*LL bytes) and, with the
    P bit, the padding (its length in the last byte)."""
    assert len(data) >= 12 + 16 + 4, f"datagram of {len(data)} bytes"
    first = data[0]
    assert first >> 6 == 2, f"rtp version {first >> 6}"
    count = first & 0x0F
    header = 12 + 4 * count
    words = 0
    profile = None
    if first & 0x10:
        profile, words = struct.unpack_from(">HH", data, header)
        header += 4
    sequence, timestamp, ssrc = struct.unpack_from(">HII", data, 2)
    csrcs = struct.unpack_from(f">{count}I", data, 12)
    plain = unseal(mode, key, data[:header], data[header:-4], data[-4:])
    extension = plain[: 4 * words] if first & 0x10 else None
    body = plain[4 * words :]
    padding = b""
    if first & 0x20:
        size = body[-1]
        assert 1 <= size <= len(body), f"padding length {size} of {len(body)} bytes"
        body, padding = body[:-size], body[-size:]
    return OpenedRtp(
        first=first,
        marker=bool(data[1] & 0x80),
        payload_type=data[1] & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        csrcs=tuple(csrcs),
        extension=extension,
        extension_profile=profile,
        payload=body,
        padding=padding,
        nonce=struct.unpack(">I", data[-4:])[0],
        size=len(data),
    )


def open_rtcp(mode: str, key: bytes, data: bytes) -> bytes:
    """An rtpsize RTCP packet's plaintext: the 8-byte RTCP header (the AAD) then the rest."""
    return data[:8] + unseal(mode, key, data[:8], data[8:-4], data[-4:])


def one_byte_elements(body: bytes) -> list[tuple[int, bytes]]:
    """The (id, data) of each one-byte-form header extension element (RFC 8285), padding
    bytes (0) skipped, id 15 ends the list."""
    elements: list[tuple[int, bytes]] = []
    at = 0
    while at < len(body):
        if body[at] == 0:
            at += 1
            continue
        ident, length = body[at] >> 4, (body[at] & 0x0F) + 1
        if ident == 15:
            break
        elements.append((ident, body[at + 1 : at + 1 + length]))
        at += 1 + length
    return elements


@dataclass
class VoiceClient:
    """A voice websocket plus a UDP socket, driven step by step by a test."""

    fake: FakeDiscord
    ws: websocket.WebSocket
    udp: socket.socket
    guild: str
    state: dict[str, Any]
    server: dict[str, Any]
    ssrc: int = 0
    server_addr: tuple[str, int] = ("", 0)
    external: tuple[str, int] = ("", 0)
    key: bytes = b""
    mode: str = ""
    user_id: int = 0  # 0: the bot's (`fake.user_id`)

    @classmethod
    def connect(
        cls, fake: FakeDiscord, main: websocket.WebSocket, guild: str = "111", query: str = "/?v=8"
    ) -> VoiceClient:
        state, server = join(fake, main, guild)
        ws = websocket.create_connection(server["endpoint"] + query, timeout=TIMEOUT)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(TIMEOUT)
        return cls(fake, ws, udp, guild, state, server)

    @classmethod
    def connect_other(
        cls, fake: FakeDiscord, user_id: int, guild: int = 111, channel: int = 222
    ) -> VoiceClient:
        """Another user's client in the channel (credentials issued by the fake directly)."""
        issued = fake.issue_voice(guild, channel, user_id)
        ws = websocket.create_connection(fake.voice_endpoint + "/?v=8", timeout=TIMEOUT)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(TIMEOUT)
        state = {"session_id": issued.session_id}
        server = {"token": issued.token, "endpoint": fake.voice_endpoint}
        return cls(fake, ws, udp, str(guild), state, server, user_id=user_id)

    def close(self) -> None:
        self.ws.close()
        self.udp.close()

    def identify(self, **override: Any) -> None:
        send_json(
            self.ws,
            voice_identify(
                self.guild, self.user_id or self.fake.user_id, self.state, self.server, **override
            ),
        )

    def ready(self) -> dict[str, Any]:
        """Hello (already expected on connect) then Identify -> Ready."""
        hello = recv_json(self.ws)
        assert hello["op"] == 8, hello
        self.identify()
        ready = recv_json(self.ws)
        assert ready["op"] == 2, ready
        self.ssrc = ready["d"]["ssrc"]
        self.server_addr = (ready["d"]["ip"], ready["d"]["port"])
        return ready

    def discover(self) -> bytes:
        self.udp.sendto(discovery_request(self.ssrc), self.server_addr)
        reply = self.udp.recv(2048)
        ip = reply[8:72].split(b"\0", 1)[0].decode()
        self.external = (ip, struct.unpack(">H", reply[72:74])[0])
        return reply

    def select(self, mode: str, address: tuple[str, int] | None = None) -> None:
        host, port = address or self.external
        send_json(
            self.ws,
            {
                "op": 1,
                "d": {"protocol": "udp", "data": {"address": host, "port": port, "mode": mode}},
            },
        )

    def session(self, mode: str) -> dict[str, Any]:
        """Ready, IP discovery, Select Protocol -> Session Description."""
        self.ready()
        self.discover()
        self.select(mode)
        description = recv_json(self.ws)
        assert description["op"] == 4, description
        self.key = bytes(description["d"]["secret_key"])
        self.mode = mode
        return description

    def speaking(self, mask: int = 1, ssrc: int | None = None) -> None:
        send_json(
            self.ws,
            {
                "op": 5,
                "d": {"speaking": mask, "delay": 0, "ssrc": self.ssrc if ssrc is None else ssrc},
            },
        )

    def recv_datagram(self, timeout: float | None = TIMEOUT) -> tuple[bytes, tuple[str, int]]:
        """The next datagram on the UDP socket and where it came from (None: do not wait,
        BlockingIOError when there is none)."""
        if timeout is None:
            data, address = self.udp.recvfrom(4096, socket.MSG_DONTWAIT)
        else:
            self.udp.settimeout(timeout)
            data, address = self.udp.recvfrom(4096)
        return data, (address[0], address[1])

    def recv_audio(self) -> OpenedRtp:
        """The next datagram, which must come from the voice server, opened as RTP."""
        data, address = self.recv_datagram()
        assert address == self.server_addr, f"datagram from {address}, not {self.server_addr}"
        return open_rtp(self.mode, self.key, data)

    def datagrams_until(self, marker: bytes) -> list[bytes]:
        """Every datagram from the voice server up to the one equal to `marker` (excluded):
        send `marker` last (``fake.send_udp_raw``) to learn that nothing else came before it
        (one socket to another on loopback keeps the order)."""
        got: list[bytes] = []
        while True:
            data, address = self.recv_datagram()
            assert address == self.server_addr, f"datagram from {address}"
            if data == marker:
                return got
            got.append(data)

    def send_audio(self, sequence: int, opus: bytes, counter: int | None = None) -> bytes:
        header = rtp_header(self.ssrc, sequence, sequence * 960)
        packet = seal(self.mode, self.key, header, sequence if counter is None else counter, opus)
        self.udp.sendto(packet, self.server_addr)
        return packet


def full_voice(
    fake: FakeDiscord, mode: str = XCHACHA, guild: str = "111"
) -> tuple[websocket.WebSocket, VoiceClient]:
    """Main gateway joined and a voice session with a key, Speaking already sent."""
    main, _ = main_ready(fake)
    client = VoiceClient.connect(fake, main, guild)
    client.session(mode)
    client.speaking()
    return main, client

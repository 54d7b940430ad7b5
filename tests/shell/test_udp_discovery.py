"""IP discovery on the real UDP socket: only the voice server is heard, resends are bounded."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from discord_voice._shell.udp import discover_ip, open_udp
from discord_voice.clock import SystemClock
from discord_voice.errors import JoinTimeout
from tests.timeouts import LONG

SSRC = 0x01020304


def reply(ssrc: int, ip: str, port: int) -> bytes:
    return struct.pack(">HHI64sH", 2, 70, ssrc, ip.encode(), port)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(LONG)
    yield sock
    sock.close()


def test_replies_from_other_addresses_are_ignored(server: socket.socket) -> None:
    client = open_udp(*server.getsockname())
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:

        def answer() -> None:
            request, address = server.recvfrom(100)
            assert len(request) == 74
            # a forged reply from another address first: the connected socket never sees it
            intruder.sendto(reply(SSRC, "6.6.6.6", 666), address)
            server.sendto(b"\x00\x02junk", address)  # malformed: skipped, not fatal
            server.sendto(reply(SSRC, "203.0.113.7", 50004), address)

        thread = threading.Thread(target=answer, name="fake-discovery")
        thread.start()
        deadline = time.monotonic() + LONG
        assert discover_ip(client, SSRC, clock=SystemClock(), deadline=deadline, timeout=LONG) == (
            "203.0.113.7",
            50004,
        )
        thread.join(LONG)
    finally:
        intruder.close()
        client.close()


def test_no_reply_is_a_join_timeout_after_bounded_resends(server: socket.socket) -> None:
    client = open_udp(*server.getsockname())
    try:
        deadline = time.monotonic() + 0.25
        with pytest.raises(JoinTimeout) as info:
            discover_ip(
                client, SSRC, clock=SystemClock(), deadline=deadline, timeout=0.25, resend_every=0.1
            )
        assert info.value.stage == "ip_discovery"
        requests = 0
        server.settimeout(0.05)
        try:
            while True:
                server.recv(100)
                requests += 1
        except TimeoutError:
            pass
        assert 2 <= requests <= 4  # resent every 0.1 s within 0.25 s
    finally:
        client.close()

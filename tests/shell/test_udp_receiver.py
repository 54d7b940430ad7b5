"""UdpReceiver on real loopback sockets: a 'voice server' socket sends packets sealed by
pycryptodome to a connected client socket, which the dv-udp-receiver thread reads."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from discord_voice._shell.recv_queue import RecvQueue
from discord_voice._shell.udp_receiver import RECEIVE_BUFFER, InboundStream, UdpReceiver
from discord_voice.clock import SystemClock
from discord_voice.core import voice_payloads as vp
from discord_voice.core.crypto import make_cipher
from discord_voice.core.opcodes import MODE_XCHACHA20
from discord_voice.core.receive_flow import VoicePacket
from tests.core.test_receive_packet import KEY, packet
from tests.timeouts import LONG

OWN = 0x0BADBEEF
ALICE, BOB = 501, 502


class CountingQueue(RecvQueue):
    """A RecvQueue whose offers a test can wait for (no sleeping)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.offers = 0
        self.offered = threading.Condition()

    def offer(self, item: object) -> bool:
        room = super().offer(item)
        with self.offered:
            self.offers += 1
            self.offered.notify_all()
        return room

    def wait_offers(self, count: int) -> None:
        with self.offered:
            assert self.offered.wait_for(lambda: self.offers >= count, LONG), self.offers


@dataclass
class Rig:
    server: socket.socket
    client: socket.socket
    receiver: UdpReceiver
    queue: CountingQueue
    stream: InboundStream
    failures: list[BaseException]

    def send(self, data: bytes) -> None:
        self.server.sendto(data, self.client.getsockname())


@pytest.fixture
def rig() -> Iterator[Rig]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2.0)  # as open_udp leaves it: the receiver must not block on it
    client.connect(server.getsockname())
    receiver = UdpReceiver(SystemClock())
    queue = CountingQueue(64)
    failures: list[BaseException] = []
    stream = receiver.attach("g1", queue, failures.append)
    stream.set_session(1, client, OWN, make_cipher(MODE_XCHACHA20, KEY), plain)
    try:
        yield Rig(server, client, receiver, queue, stream, failures)
    finally:
        receiver.detach(stream, LONG)
        server.close()
        client.close()
    assert failures == []


def plain(user: int, frame: bytes) -> bytes | None:
    return frame  # no DAVE in these calls


def speaking(user: int, ssrc: int) -> vp.Speaking:
    return vp.Speaking(user_id=str(user), ssrc=ssrc, speaking=1)


def test_named_members_packets_arrive_in_order_with_their_user(rig: Rig) -> None:
    rig.stream.member(1, speaking(ALICE, 7))
    frames = [b"\xf8alice %d" % n for n in range(10)]
    for n, frame in enumerate(frames):
        rig.send(packet(payload=frame, ssrc=7, sequence=n, timestamp=960 * n))
    got = [rig.queue.get(timeout=LONG) for _ in frames]
    assert all(isinstance(p, VoicePacket) for p in got)
    assert [(p.user_id, p.sequence, p.opus) for p in got] == [
        (ALICE, n, frame) for n, frame in enumerate(frames)
    ]
    assert rig.stream.stats().delivered == 10


def test_early_audio_is_held_until_op_12_then_delivered_first(rig: Rig) -> None:
    rig.stream.member(1, speaking(ALICE, 7))
    for n in range(3):
        rig.send(packet(payload=b"\xf8early %d" % n, ssrc=9, sequence=n))
    rig.send(packet(payload=b"\xf8marker", ssrc=7))  # once it is out, the three were read
    assert rig.queue.get(timeout=LONG).opus == b"\xf8marker"
    assert rig.stream.stats().held == 3
    rig.stream.member(1, vp.ClientSsrcs(user_id=str(BOB), audio_ssrc=9))  # op 12 names it
    got = [rig.queue.get(timeout=LONG) for _ in range(3)]
    assert [(p.user_id, p.opus) for p in got] == [(BOB, b"\xf8early %d" % n) for n in range(3)]
    assert rig.stream.stats().held == 0


def test_a_full_queue_discards_the_oldest_and_counts_it(rig: Rig) -> None:
    small = CountingQueue(2)
    stream = rig.receiver.attach("g2", small, rig.failures.append)
    other_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other_server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(other_server.getsockname())
    try:
        stream.set_session(1, client, OWN, make_cipher(MODE_XCHACHA20, KEY), plain)
        stream.member(1, speaking(ALICE, 7))
        for n in range(5):
            other_server.sendto(packet(ssrc=7, sequence=n), client.getsockname())
        small.wait_offers(5)
        assert [small.get_nowait().sequence for _ in range(2)] == [3, 4]  # the newest kept
        assert stream.stats().overflowed == 3 and small.overflowed == 3
    finally:
        rig.receiver.detach(stream, LONG)
        other_server.close()
        client.close()


def test_drops_are_counted_and_the_thread_goes_on(rig: Rig) -> None:
    rig.stream.member(1, speaking(ALICE, 7))
    rig.send(b"\x81\xc9" + bytes(30))  # RTCP
    rig.send(packet(ssrc=7, payload_type=101))  # video
    rig.send(packet(ssrc=OWN))  # our own
    forged = bytearray(packet(ssrc=7))
    forged[-6] ^= 1
    rig.send(bytes(forged))
    rig.send(b"\x00" * 5)  # not RTP at all
    rig.send(packet(payload=b"\xf8after the junk", ssrc=7, sequence=5))
    assert rig.queue.get(timeout=LONG).opus == b"\xf8after the junk"
    stats = rig.stream.stats()
    assert stats.dropped == {
        "rtcp": 1,
        "not_opus": 1,
        "own_ssrc": 1,
        "auth_failed": 1,
        "short": 1,
    }


def test_a_member_who_leaves_is_forgotten_after_the_in_flight_window(rig: Rig) -> None:
    rig.stream.member(1, speaking(ALICE, 7))
    rig.stream.member(1, vp.ClientDisconnect(user_id=str(ALICE)))
    rig.send(packet(payload=b"\xf8in flight", ssrc=7))
    assert rig.queue.get(timeout=LONG).user_id == ALICE  # within FORGET_AFTER


def test_a_new_session_reads_the_new_socket(rig: Rig) -> None:
    rig.stream.member(1, speaking(ALICE, 7))
    server2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server2.bind(("127.0.0.1", 0))
    client2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client2.connect(server2.getsockname())
    try:
        rig.stream.member(2, speaking(BOB, 8))  # before the switch: waits for session 2
        rig.stream.member(1, speaking(BOB, 99))  # the old session's late news: ignored
        rig.stream.set_session(2, client2, OWN, make_cipher(MODE_XCHACHA20, KEY), plain)
        server2.sendto(packet(payload=b"\xf8new session", ssrc=8), client2.getsockname())
        got = rig.queue.get(timeout=LONG)
        assert (got.user_id, got.opus) == (BOB, b"\xf8new session")
    finally:
        server2.close()
        client2.close()


def test_a_receiving_socket_gets_a_larger_kernel_buffer(rig: Rig) -> None:
    before = rig.client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    rig.stream.member(1, speaking(ALICE, 7))
    rig.send(packet(payload=b"\xf8x", ssrc=7, sequence=1, timestamp=960))
    rig.queue.get(timeout=LONG)  # the thread has taken the socket
    after = rig.client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # the same socket
    limit = Path("/proc/sys/net/core/rmem_max")
    if limit.exists():  # Linux: capped at rmem_max, and reported twice (its bookkeeping)
        assert after >= 2 * min(RECEIVE_BUFFER, int(limit.read_text())) > before
    else:
        assert after >= before

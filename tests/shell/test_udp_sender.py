"""The shared UDP sender (`_shell.udp_sender`): one thread pacing several streams.

Every test runs a real `UdpSender` thread on a `FakeClock` and real loopback UDP sockets; the
packets are parsed and decrypted here with `cryptography` / `pycryptodome`, not with our cipher
code. Time moves only in `Rig.step`: it waits until the sender is parked until the expected
instant, checks that nothing was sent early, moves the clock there, waits until the sender has
parked again and returns what arrived. So each packet's send time is known exactly, without a
sleep, and a sender that cannot park (a busy loop) fails the test instead of passing it.
"""

from __future__ import annotations

import errno
import itertools
import os
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from Crypto.Cipher import ChaCha20_Poly1305
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from discord_voice._shell import udp_sender
from discord_voice._shell.datagram import WOULD_BLOCK, send_datagram
from discord_voice._shell.opus_queue import OpusQueue
from discord_voice._shell.udp_sender import (
    BURST,
    GRID,
    E2ee,
    EncryptBlocked,
    OutboundStream,
    StopSpeakingMarker,
    Transport,
    UdpSender,
)
from discord_voice.clock import Signal
from discord_voice.core.crypto import aes256_gcm_available, make_cipher
from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20
from discord_voice.core.packetizer import Packetizer
from discord_voice.errors import ConnectionClosed, EncryptionError, InvalidFrame
from discord_voice.testing.clock import FakeClock
from tests.frames import opus_frame
from tests.timeouts import LONG

MODE = MODE_AES256_GCM if aes256_gcm_available() else MODE_XCHACHA20
SILENCE = b"\xf8\xff\xfe"
SENDER = "dv-udp-sender"
MS = 0.001


# -- the other side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes  # after transport decryption


def open_packet(data: bytes, keys: dict[int, bytes]) -> Packet:
    """Parse the RTP header and open the rtpsize AEAD layout with an independent library."""
    header, sealed, counter = data[:12], data[12:-4], data[-4:]
    first, payload_type, sequence, timestamp, ssrc = struct.unpack(">BBHII", header)
    assert (first, payload_type) == (0x80, 0x78)
    key = keys[ssrc]
    if MODE == MODE_AES256_GCM:
        plain = AESGCM(key).decrypt(counter + bytes(8), sealed, header)
    else:
        cipher = ChaCha20_Poly1305.new(key=key, nonce=counter + bytes(20))
        cipher.update(header)
        plain = cipher.decrypt_and_verify(sealed[:-16], sealed[-16:])
    return Packet(ssrc, sequence, timestamp, plain)


class Receiver:
    """A bound loopback UDP socket standing for the voice server; knows each SSRC's key."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(LONG)
        self.keys: dict[int, bytes] = {}

    def recv(self) -> Packet:
        """The next packet, waiting for it (bounded)."""
        return open_packet(self.sock.recv(4096), self.keys)

    def drain(self) -> list[Packet]:
        """Every packet that has arrived, in arrival (= send) order, without waiting."""
        got = []
        while select.select([self.sock], [], [], 0)[0]:
            got.append(open_packet(self.sock.recv(4096), self.keys))
        return got


def fail_sends(
    monkeypatch: pytest.MonkeyPatch, sock: socket.socket, errors: Iterator[int]
) -> list[int]:
    """Make the sender's sends on `sock` report the next of `errors` (0: really send) while
    there are any; returns the errors reported, in order."""
    real = send_datagram
    reported: list[int] = []

    def send(target: socket.socket, data: bytes) -> int:
        if target is sock:
            error = next(errors, 0)
            if error:
                reported.append(error)
                return error
        return real(target, data)

    monkeypatch.setattr(udp_sender, "send_datagram", send)
    return reported


@dataclass
class Link:
    """One voice session's sending side: a socket connected to a receiver, and a packetizer."""

    receiver: Receiver
    ssrc: int
    transport: Transport
    sock: socket.socket


class FakeE2ee:
    """An `E2ee` whose key the test hands over; 'encrypts' by prefixing and reversing.

    With `clock` and `busy_until`, its lock is busy (another thread is processing a commit)
    until that instant."""

    def __init__(
        self, *, key: bool = False, clock: FakeClock | None = None, busy_until: float = 0.0
    ) -> None:
        self._lock = threading.Lock()
        self._key = key
        self._clock = clock
        self._busy_until = busy_until
        self.busy_answers = 0
        self._callbacks: list[Callable[[], None]] = []
        self.registered = threading.Event()

    @staticmethod
    def seal(frame: bytes) -> bytes:
        return b"E2EE" + frame[::-1]

    def try_encrypt(self, frame: bytes) -> bytes | EncryptBlocked:
        with self._lock:
            if self._clock is not None and self._clock.monotonic() < self._busy_until:
                self.busy_answers += 1
                return EncryptBlocked.BUSY
            if not self._key:
                return EncryptBlocked.NO_KEY
        return self.seal(frame)

    def on_media_ready(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._key:
                return False
            self._callbacks.append(callback)
        self.registered.set()
        return True

    def give_key(self) -> None:
        with self._lock:
            self._key = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass
class Stream:
    name: str
    frames: OpusQueue
    handle: OutboundStream
    link: Link
    failures: list[BaseException] = field(default_factory=list)
    failed: threading.Event = field(default_factory=threading.Event)


class CountingClock(FakeClock):
    """A FakeClock that counts the sender's parks (one per wake-up of its loop)."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.parks = 0

    def wait_until(self, deadline: float, signal: Signal) -> bool:
        self.parks += 1
        return super().wait_until(deadline, signal)


class Rig:
    """A sender on a fake clock with loopback receivers.

    By default on a 10 ms grid without start slots, so that the tests of pacing, ordering and
    failures can place several streams on one instant; the spread has tests of its own.
    """

    def __init__(
        self,
        start: float,
        *,
        burst: int | None = None,
        grid: float = 0.010,
        clock: CountingClock | None = None,
    ) -> None:
        self.clock = clock or CountingClock(start)
        self.sender = UdpSender(self.clock, grid=grid, burst=burst)
        self.receivers: list[Receiver] = []
        self.socks: list[socket.socket] = []
        self.streams: list[Stream] = []

    def receiver(self) -> Receiver:
        receiver = Receiver()
        self.receivers.append(receiver)
        return receiver

    def link(
        self,
        receiver: Receiver,
        ssrc: int,
        key: bytes,
        *,
        sequence: int = 0,
        timestamp: int = 0,
        nonce: int = 0,
        e2ee: E2ee | None = None,
        sock: socket.socket | None = None,
    ) -> Link:
        sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socks.append(sock)
        sock.connect(receiver.sock.getsockname())
        receiver.keys[ssrc] = key
        packetizer = Packetizer(
            ssrc, make_cipher(MODE, key), sequence=sequence, timestamp=timestamp, nonce=nonce
        )
        return Link(receiver, ssrc, Transport(sock, packetizer, e2ee), sock)

    def attach(self, name: str, link: Link, queue_size: int = 10) -> Stream:
        frames = OpusQueue(queue_size)
        failures: list[BaseException] = []
        failed = threading.Event()

        def on_failure(exc: BaseException) -> None:
            failures.append(exc)
            failed.set()

        handle = self.sender.attach(name, frames, link.transport, on_failure)
        stream = Stream(name, frames, handle, link, failures, failed)
        self.streams.append(stream)
        return stream

    def detach(self, stream: Stream) -> None:
        stream.frames.close(None)  # as the connection does: discard the queue, then detach
        self.sender.detach(stream.handle, LONG)
        self.streams.remove(stream)

    def received(self) -> list[Packet]:
        return [packet for receiver in self.receivers for packet in receiver.drain()]

    def step(self, t: float) -> list[Packet]:
        """Move the clock to `t`, the sender's next deadline; return what was sent at `t`."""
        parked = self.clock.wait_for_deadline(t, LONG)
        assert round(parked[0], 9) == round(t, 9), f"parked until {parked}, expected {t}"
        assert self.received() == [], f"sent before {t}"
        parks = self.clock.parks
        assert round(self.clock.advance_to_next(LONG), 9) == round(t, 9)
        self.clock.wait_for_sleepers(1, LONG)
        assert self.clock.parks == parks + 1, "more than one wake-up for one instant"
        return self.received()

    def settle(self) -> None:
        """Wait until the sender has parked again (after a request or a put woke it)."""
        self.clock.wait_for_sleepers(1, LONG)

    def close(self) -> None:
        for stream in list(self.streams):
            self.detach(stream)
        self.sender.close(LONG)
        for sock in self.socks:
            sock.close()
        for receiver in self.receivers:
            receiver.sock.close()


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    # by default 3 ms past a grid point: the first run starts at 1000.01
    rig = Rig(start=getattr(request, "param", 1000.003))
    try:
        yield rig
    finally:
        rig.close()


def key(n: int) -> bytes:
    return bytes((n + i) % 256 for i in range(32))


def frames(tag: str, count: int, ms: int = 20) -> list[bytes]:
    """Distinct valid Opus packets of `ms` milliseconds."""
    return [opus_frame(f"{tag}{i}".encode() * (i % 5 + 1), ms) for i in range(count)]


def grid(n: int) -> float:
    """The n-th 10 ms grid point after the rig's start."""
    return 1000.0 + n * 10 * MS


# -- one stream --------------------------------------------------------------------------------


def test_frames_go_out_in_order_on_the_grid_with_wrapping_headers(rig: Rig) -> None:
    receiver = rig.receiver()
    link = rig.link(receiver, 0xDEADBEEF, key(1), sequence=65534, timestamp=2**32 - 960)
    stream = rig.attach("a", link)
    sent = frames("a", 4)
    for frame in sent:
        stream.frames.put(frame)
    got = [rig.step(grid(1 + 2 * n)) for n in range(4)]  # 1000.01, .03, .05, .07
    assert [len(g) for g in got] == [1, 1, 1, 1]
    packets = [g[0] for g in got]
    assert [p.payload for p in packets] == sent
    assert [p.sequence for p in packets] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in packets] == [2**32 - 960, 0, 960, 1920]
    assert {p.ssrc for p in packets} == {0xDEADBEEF}
    stream.frames.join()  # every frame accounted for
    stats = stream.handle.stats()
    assert stats.pacing.frames_sent == 4 and stats.pacing.late_frames == 0
    assert stats.bytes_sent == sum(len(f) + 12 + 16 + 4 for f in sent)


@pytest.mark.parametrize(
    "durations",
    [[10] * 6, [20] * 6, [40] * 6, [60] * 6, [60, 10, 40, 20, 10, 60, 20, 40]],
    ids=["10ms", "20ms", "40ms", "60ms", "mixed"],
)
def test_each_packet_is_paced_by_its_duration_and_advances_the_timestamp(
    rig: Rig, durations: list[int]
) -> None:
    receiver = rig.receiver()
    stream = rig.attach("a", rig.link(receiver, 7, key(2), timestamp=1000))
    sent = [opus_frame(bytes([n]) * 9, ms) for n, ms in enumerate(durations)]
    for frame in sent:
        stream.frames.put(frame)
    at, timestamp, got = grid(1), 1000, []
    for ms in durations:
        (packet,) = rig.step(at)
        assert packet.timestamp == timestamp
        got.append(packet.payload)
        at += ms * MS
        timestamp += 48 * ms
    assert got == sent


def test_a_long_run_keeps_its_absolute_schedule(rig: Rig) -> None:
    """A thousand frames of mixed durations, refilled as they go: each at its exact instant."""
    receiver = rig.receiver()
    stream = rig.attach("a", rig.link(receiver, 7, key(3)), queue_size=3)
    durations = [20, 60, 10, 40] * 250
    sent = [opus_frame(n.to_bytes(2, "big"), ms) for n, ms in enumerate(durations)]
    for frame in sent[:3]:
        stream.frames.put(frame)
    at, timestamp = grid(1), 0
    for n, ms in enumerate(durations):
        (packet,) = rig.step(at)
        assert (packet.payload, packet.timestamp) == (sent[n], timestamp)
        if n + 3 < len(sent):
            stream.frames.put(sent[n + 3])  # the stream is playing: the put does not wake it
        at = grid(1) + (timestamp + 48 * ms) / 48_000
        timestamp += 48 * ms
    pacing = stream.handle.stats().pacing
    assert pacing.frames_sent == 1000 and pacing.underruns == 0 and pacing.stalls == 0


def test_an_underrun_ends_the_run_and_the_next_one_starts_afresh(rig: Rig) -> None:
    receiver = rig.receiver()
    stream = rig.attach("a", rig.link(receiver, 7, key(4)))
    first, second = frames("a", 2), frames("b", 3)
    for frame in first:
        stream.frames.put(frame)
    assert [p.payload for p in rig.step(grid(1))] == first[:1]
    assert [p.payload for p in rig.step(grid(3))] == first[1:]
    assert rig.step(grid(5)) == []  # due, nothing queued: the run ends
    assert stream.handle.stats().pacing.underruns == 1
    rig.clock.advance(0.503)  # the producer is away for half a second (nothing is due)
    rig.settle()
    assert rig.received() == []
    for frame in second:
        stream.frames.put(frame)
    # one frame per 20 ms from the next grid point (1000.56), no burst for the gap
    got = [rig.step(grid(56 + 2 * n)) for n in range(3)]
    assert [[p.payload for p in g] for g in got] == [[f] for f in second]
    assert [g[0].timestamp for g in got] == [1920, 2880, 3840]  # the timestamp keeps counting
    assert stream.handle.stats().pacing.underruns == 1


def test_stop_speaking_sends_the_queue_then_five_silences_then_done(rig: Rig) -> None:
    receiver = rig.receiver()
    stream = rig.attach("a", rig.link(receiver, 7, key(5)))
    audio = frames("a", 2)
    done = Signal()
    for frame in audio:
        stream.frames.put(frame)
    stream.frames.put_control(StopSpeakingMarker(done))
    got = []
    for n in range(7):
        assert not done.is_set()  # Speaking 0 must wait for the last silence frame
        got += rig.step(grid(1 + 2 * n))
    assert [p.payload for p in got] == audio + [SILENCE] * 5
    assert done.is_set()  # set in the wake-up that sent the last silence frame
    assert stream.frames.unfinished_tasks == 0
    stream.frames.join()
    # the next frame is not sent with the last silence frame, but once it has played out
    stream.frames.put(opus_frame(b"next"))
    assert [p.payload for p in rig.step(grid(15))] == [opus_frame(b"next")]
    assert stream.handle.stats().pacing.underruns == 0  # a stop is not an underrun


# -- several streams ---------------------------------------------------------------------------


def test_streams_due_together_are_sent_in_attach_order_in_one_wakeup(rig: Rig) -> None:
    """Three streams of 20, 40 and 60 ms packets on one receiver (arrival order = send order),
    started at different grid points and fed in reverse order: whenever several are due at the
    same instant they go out in attach order, in one wake-up (`Rig.step` counts them)."""
    receiver = rig.receiver()
    names = {1: "a", 2: "b", 3: "c"}
    ms = {"a": 20, "b": 40, "c": 60}
    streams = {
        name: rig.attach(name, rig.link(receiver, ssrc, key(ssrc)), queue_size=4)
        for ssrc, name in names.items()
    }
    sent: dict[str, list[bytes]] = {name: [] for name in ms}

    def feed(name: str) -> None:
        while not streams[name].frames.full():
            frame = opus_frame(f"{name}{len(sent[name])}".encode(), ms[name])
            sent[name].append(frame)
            streams[name].frames.put(frame)

    feed("c")  # c and a start at 1000.01
    feed("a")
    got = rig.step(grid(1))
    assert [names[p.ssrc] for p in got] == ["a", "c"]
    rig.clock.advance(15 * MS)  # 1000.025 (nothing due): b starts at 1000.03, with a
    feed("b")
    # a every 2 grid points from 1, b every 4 from 3, c every 6 from 1: a meets b and c often,
    # all three meet every 120 ms; a stream's due times come from its own run's origin
    schedule: dict[int, list[str]] = {}
    for name, first in (("a", 1), ("b", 3), ("c", 1)):
        for point in range(first, 242, ms[name] // 10):
            if point > 1:
                schedule.setdefault(point, []).append(name)
    received: dict[str, list[bytes]] = {"a": [sent["a"][0]], "b": [], "c": [sent["c"][0]]}
    shared = triples = 0
    for point in sorted(schedule):
        got = rig.step(grid(point))
        assert [names[p.ssrc] for p in got] == schedule[point], point
        shared += len(got) > 1
        triples += len(got) == 3
        for packet in got:
            received[names[packet.ssrc]].append(packet.payload)
        for name in "cba":
            feed(name)
    assert shared >= 60 and triples >= 10
    for name, stream in streams.items():
        assert received[name] == sent[name][: len(received[name])]
        assert stream.handle.stats().pacing.late_frames == 0


def test_streams_started_together_spread_over_the_cycle_in_bursts() -> None:
    """Start slots: up to `burst` streams start on a grid point, the next ones on the
    following points of the 20 ms cycle; once every point has `burst`, on the least busy
    (the earliest on a tie). Each stream keeps its point; streams due together go out in
    attach order, in one wake-up."""
    rig = Rig(start=1000.003, burst=2, grid=5 * MS)  # 4 points per cycle, 2 streams each
    try:
        receiver = rig.receiver()
        audio = {i: frames(f"s{i}-", 3) for i in range(9)}
        for i in range(9):  # each fed before the next is attached: they start in this order
            stream = rig.attach(f"s{i}", rig.link(receiver, i, key(i)))
            for frame in audio[i]:
                stream.frames.put(frame)
        groups = [[0, 1, 8], [2, 3], [4, 5], [6, 7]]  # s8: all full, the earliest least busy
        received: dict[int, list[bytes]] = {i: [] for i in range(9)}
        for k in range(12):
            got = rig.step(1000.005 + k * 5 * MS)
            assert [p.ssrc for p in got] == groups[k % 4], k
            for packet in got:
                received[packet.ssrc].append(packet.payload)
        assert received == audio
    finally:
        rig.close()


def test_a_lone_stream_is_never_delayed_by_the_start_slots() -> None:
    """With the library's configuration a stream starts on the next 2.5 ms grid point."""
    rig = Rig(start=1000.003, burst=BURST, grid=GRID)
    try:
        receiver = rig.receiver()
        stream = rig.attach("a", rig.link(receiver, 1, key(1)))
        audio = frames("a", 2)
        for frame in audio:
            stream.frames.put(frame)
        assert [p.payload for p in rig.step(1000.005)] == audio[:1]
        assert [p.payload for p in rig.step(1000.025)] == audio[1:]
    finally:
        rig.close()


class BusyClock(CountingClock):
    """Once `busy` is set, every reading by the sender thread costs `busy` seconds of logical
    time (as if the work between two readings took that long), and the first such reading
    waits for `gate`, so that everything posted before the gate opens is in the inbox at once."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.busy = 0.0
        self.gate = threading.Event()
        self.gate.set()
        self.at_gate = threading.Event()  # the sender has woken and reached the gate

    def monotonic(self) -> float:
        if self.busy and threading.current_thread().name == SENDER:
            self.at_gate.set()
            assert self.gate.wait(LONG)
            self.advance(self.busy)
        return super().monotonic()


def test_taking_in_new_streams_stops_when_a_packet_falls_due() -> None:
    """Ten streams arrive 1 ms before another stream's packet is due, and preparing each
    takes 0.4 ms: the sender sends that packet as soon as it falls due (0.6 ms late), not after
    preparing all ten (3.4 ms late)."""
    clock = BusyClock(1000.003)
    rig = Rig(start=1000.003, clock=clock)
    try:
        receiver = rig.receiver()
        a = rig.attach("a", rig.link(receiver, 1, key(1)))
        audio_a = frames("a", 2)
        for frame in audio_a:
            a.frames.put(frame)
        assert [p.payload for p in rig.step(grid(1))] == audio_a[:1]
        clock.wait_for_deadline(grid(3), LONG)  # a's second packet is due at grid(3)
        clock.advance(grid(3) - MS - clock.monotonic())
        clock.gate.clear()
        clock.busy = 0.4 * MS
        for i in range(10):
            stream = rig.attach(f"n{i}", rig.link(receiver, 10 + i, key(10 + i)))
            stream.frames.put(opus_frame(b"n%d" % i))
            if i == 0:  # the sender woke: from now on it cannot park before the gate opens
                assert clock.at_gate.wait(LONG)
        clock.gate.set()
        clock.wait_for_sleepers(1, LONG)  # all taken in and due packets sent: parked again
        clock.busy = 0.0
        got = rig.received()  # a and the two taken in before it fell due, on grid(3)
        assert [(p.ssrc, p.payload) for p in got] == [
            (1, audio_a[1]),
            (10, opus_frame(b"n0")),
            (11, opus_frame(b"n1")),
        ]
        # the others were taken in after grid(3): they start on the next grid point
        assert [p.ssrc for p in rig.step(grid(4))] == list(range(12, 20))
        pacing = a.handle.stats().pacing
        assert pacing.late_frames == 0 and pacing.max_lateness == pytest.approx(0.6 * MS)
    finally:
        clock.busy = 0.0
        rig.close()


def test_a_producer_blocked_on_a_full_queue_never_delays_another_stream(rig: Rig) -> None:
    """a's producer thread is blocked on a's full queue at every instant; b's frames still go
    out at theirs. The clock only moves once a's queue is full again (the producer thread is
    not on the fake clock: it must not fall behind the test's stepping)."""
    receiver_a, receiver_b = rig.receiver(), rig.receiver()
    a = rig.attach("a", rig.link(receiver_a, 1, key(1)), queue_size=1)
    b = rig.attach("b", rig.link(receiver_b, 2, key(2)), queue_size=2)
    produced = frames("a", 40)
    blocked = threading.Event()
    outcome: list[BaseException] = []
    put = threading.Condition()
    puts = 0

    def producer() -> None:
        nonlocal puts
        try:
            for frame in produced:
                if a.frames.full():
                    blocked.set()
                a.frames.put(frame)
                with put:
                    puts += 1
                    put.notify_all()
        except ConnectionClosed as exc:  # the test closes the queue at the end
            outcome.append(exc)

    thread = threading.Thread(target=producer, name="fake-producer-a")
    thread.start()
    try:
        assert blocked.wait(LONG)
        sent_b = frames("b", 30)
        b.frames.put(sent_b[0])
        b.frames.put(sent_b[1])
        got_b: list[bytes] = []
        got_a: list[bytes] = []
        for n in range(30):
            # n frames of a sent and one in hand: a's queue is full once n + 2 were put
            full_at = n + 2
            with put:
                assert put.wait_for(lambda: puts >= full_at, LONG)  # noqa: B023 - waited on here
            packets = rig.step(grid(1 + 2 * n))
            got_b += [p.payload for p in packets if p.ssrc == 2]
            got_a += [p.payload for p in packets if p.ssrc == 1]
            assert len(got_b) == n + 1  # b's frame went out at its instant
            if n + 2 < len(sent_b):
                b.frames.put(sent_b[n + 2])
        assert got_b == sent_b
        assert got_a == produced[:30]  # a's frames too, in order, one per instant
    finally:
        a.frames.close(ConnectionClosed("test over"))
        thread.join(LONG)
    assert not thread.is_alive()


def test_hold_stops_at_once_and_release_sends_on_the_new_transport_exactly_once(rig: Rig) -> None:
    """A new voice session: nothing reaches the old socket after `hold`, producers block, and
    after `set_transport` + `release` the frame in hand is packetized again for the new session
    (its SSRC, key and counters) and sent first, then the rest, once each, in order."""
    old, new = rig.receiver(), rig.receiver()
    stream = rig.attach("a", rig.link(old, 0xAAAA, key(10)), queue_size=2)
    sent = frames("a", 5)
    stream.frames.put(sent[0])
    stream.frames.put(sent[1])
    assert [p.payload for p in rig.step(grid(1))] == sent[:1]  # sent[1] is in hand, sealed
    stream.frames.put(sent[2])
    stream.frames.put(sent[3])  # the queue is full
    stream.handle.hold()
    put_done = threading.Event()

    def producer() -> None:
        stream.frames.put(sent[4])
        put_done.set()

    thread = threading.Thread(target=producer, name="fake-producer")
    thread.start()
    try:
        rig.clock.advance(1.0)  # long past sent[1]'s due time: still nothing may go out
        rig.settle()
        assert rig.received() == []
        assert not put_done.is_set()  # the producer is blocked on the full queue
        assert stream.handle.stats().held == 1
        link = rig.link(new, 0xBBBB, key(20), sequence=7, timestamp=5000)
        stream.handle.set_transport(link.transport)
        stream.handle.release()  # at 1001.01, a grid point: sent[1] goes at once
        now = rig.clock.monotonic()
        rig.clock.wait_for_deadline(now + 20 * MS, LONG)
        got = new.drain()
        assert put_done.wait(LONG)  # taking sent[2] made room: sent[4] is queued
        for n in range(1, 4):
            got += rig.step(now + 20 * MS * n)
    finally:
        thread.join(LONG)
    assert [(p.payload, p.ssrc, p.sequence, p.timestamp) for p in got] == [
        (sent[1], 0xBBBB, 7, 5000),
        (sent[2], 0xBBBB, 8, 5960),
        (sent[3], 0xBBBB, 9, 6920),
        (sent[4], 0xBBBB, 10, 7880),
    ]
    assert old.drain() == []  # nothing went to the old session after the hold
    stream.frames.join()
    stats = stream.handle.stats()
    assert stats.transports == 2 and stats.held == 0 and stats.pacing.frames_sent == 5


# -- end-to-end encryption ---------------------------------------------------------------------


def test_no_key_holds_the_stream_until_the_key_is_there(rig: Rig) -> None:
    e2ee = FakeE2ee()
    receiver = rig.receiver()
    stream = rig.attach("a", rig.link(receiver, 7, key(7), e2ee=e2ee))
    audio = frames("a", 3)
    for frame in audio:
        stream.frames.put(frame)
    assert e2ee.registered.wait(LONG)  # the sender asked to be told when the key is there
    rig.settle()
    rig.clock.advance(0.997)  # 1001.0: long past the first due time
    rig.settle()
    assert rig.received() == []  # nothing sent, plaintext least of all
    e2ee.give_key()  # on another thread, like DAVE's; the run starts now, on the grid
    rig.clock.wait_for_deadline(1001.02, LONG)
    got = receiver.drain()
    got += rig.step(1001.02)
    got += rig.step(1001.04)
    assert [p.payload for p in got] == [FakeE2ee.seal(f) for f in audio]
    assert [p.sequence for p in got] == [0, 1, 2]
    assert stream.handle.stats().pacing.underruns == 0


@pytest.mark.parametrize(
    ("rig", "first"),
    [(1000.003, 1000.01), (4.023, 4.03)],  # 4.03 + 0.001 reads back as 4.0309999999999997
    indirect=["rig"],
)
def test_a_busy_e2ee_lock_retries_a_millisecond_later_without_blocking_others(
    rig: Rig, first: float
) -> None:
    receiver = rig.receiver()
    e2ee = FakeE2ee(key=True, clock=rig.clock, busy_until=first + 0.5 * MS)
    a = rig.attach("a", rig.link(receiver, 1, key(1), e2ee=e2ee))
    b = rig.attach("b", rig.link(receiver, 2, key(2)))
    audio_a, audio_b = frames("a", 3), frames("b", 3)
    for fa, fb in zip(audio_a, audio_b, strict=True):
        a.frames.put(fa)
        b.frames.put(fb)
    # first: b on time; a's lock is busy (retried while b is prepared): a goes 1 ms later
    assert [(p.ssrc, p.payload) for p in rig.step(first)] == [(2, audio_b[0])]
    assert [(p.ssrc, p.payload) for p in rig.step(first + MS)] == [(1, FakeE2ee.seal(audio_a[0]))]
    # then both on their unchanged schedule: no burst, no shift
    for n in (1, 2):
        got = rig.step(first + 20 * MS * n)
        assert [(p.ssrc, p.payload) for p in got] == [
            (1, FakeE2ee.seal(audio_a[n])),
            (2, audio_b[n]),
        ]
    assert a.handle.stats().pacing.late_frames == 0  # 1 ms: within the lateness threshold
    assert e2ee.busy_answers >= 2  # at the due time while sending, and again while preparing
    assert a.failures == [] and b.failures == []


# -- failures ----------------------------------------------------------------------------------


def _fail_one_of_two(rig: Rig, link_a: Link, after: int) -> tuple[Stream, Stream, list[bytes]]:
    """Stream two streams (a fails after `after` packets, however the test arranged it): b
    keeps its schedule; returns them and what b received."""
    receiver_b = rig.receiver()
    a = rig.attach("a", link_a)
    b = rig.attach("b", rig.link(receiver_b, 2, key(2)))
    for frame in frames("a", 5):
        a.frames.put(frame)
    audio_b = frames("b", 5)
    for frame in audio_b:
        b.frames.put(frame)
    got_b = []
    for n in range(5):
        got = rig.step(grid(1 + 2 * n))
        got_b += [p.payload for p in got if p.ssrc == 2]
        assert len([p for p in got if p.ssrc == 1]) == (1 if n < after else 0)
    assert got_b == audio_b
    assert a.failed.wait(LONG)
    assert b.failures == []
    return a, b, got_b


def test_a_closed_socket_fails_only_its_own_stream(rig: Rig) -> None:
    receiver_a = rig.receiver()
    link_a = rig.link(receiver_a, 1, key(1))
    link_a.sock.close()  # as if the OS took it away
    a, _, _ = _fail_one_of_two(rig, link_a, after=0)
    (failure,) = a.failures
    assert isinstance(failure, ConnectionClosed) and "udp send failed" in str(failure)


def test_a_send_error_fails_only_its_own_stream(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver_a = rig.receiver()
    link_a = rig.link(receiver_a, 1, key(1))
    fail_sends(monkeypatch, link_a.sock, itertools.repeat(errno.ENETUNREACH))  # a dead route
    a, _, _ = _fail_one_of_two(rig, link_a, after=0)
    (failure,) = a.failures
    assert isinstance(failure, ConnectionClosed)
    assert str(failure) == f"udp send failed: {os.strerror(errno.ENETUNREACH)}"
    assert a.handle.stats().discarded == 1  # the frame it could not send


@pytest.mark.parametrize("error", sorted(WOULD_BLOCK))
def test_a_full_send_buffer_retries_the_same_packet_a_millisecond_later(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """The kernel could not queue the datagram: the packet stays in hand and goes 1 ms later,
    exactly once and in order, without blocking the thread; the other stream keeps its time."""
    receiver = rig.receiver()
    link_a = rig.link(receiver, 1, key(1))
    reported = fail_sends(monkeypatch, link_a.sock, iter([error, error]))
    a = rig.attach("a", link_a)
    b = rig.attach("b", rig.link(receiver, 2, key(2)))
    audio_a, audio_b = frames("a", 3), frames("b", 3)
    for frame_a, frame_b in zip(audio_a, audio_b, strict=True):
        a.frames.put(frame_a)
        b.frames.put(frame_b)
    got = rig.step(grid(1))
    assert [(p.ssrc, p.payload) for p in got] == [(2, audio_b[0])]  # a's send would block
    assert [p.payload for p in rig.step(grid(1) + MS)] == []  # blocked again
    got = rig.step(grid(1) + 2 * MS)
    assert [(p.ssrc, p.sequence, p.payload) for p in got] == [(1, 0, audio_a[0])]
    # a's schedule did not move: its next frames are due with b's, a first (attach order)
    for n in (1, 2):
        got = rig.step(grid(1 + 2 * n))
        assert [(p.ssrc, p.payload) for p in got] == [(1, audio_a[n]), (2, audio_b[n])]
    assert reported == [error, error]
    assert a.handle.stats().send_retries == 2 and b.handle.stats().send_retries == 0
    assert a.failures == [] and a.handle.stats().pacing.frames_sent == 3


def test_nonce_exhaustion_fails_only_its_own_stream(rig: Rig) -> None:
    receiver_a = rig.receiver()
    link_a = rig.link(receiver_a, 1, key(1), nonce=2**32 - 1)  # one packet left
    a, _, _ = _fail_one_of_two(rig, link_a, after=1)
    (failure,) = a.failures
    assert isinstance(failure, EncryptionError) and "nonce" in str(failure)
    assert a.handle.stats().pacing.frames_sent == 1


# -- the thread --------------------------------------------------------------------------------


def sender_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == SENDER]


def test_one_thread_from_the_first_attach_to_the_last_detach(rig: Rig) -> None:
    assert rig.sender.thread is None and sender_threads() == []
    receiver = rig.receiver()
    streams = [rig.attach(n, rig.link(receiver, i, key(i))) for i, n in enumerate("abc", 1)]
    (thread,) = sender_threads()
    assert rig.sender.thread is thread and thread.is_alive() and not thread.daemon
    for stream in streams:
        stream.frames.put(opus_frame(stream.name.encode()))
    assert len(rig.step(grid(1))) == 3
    rig.detach(streams[0])
    rig.detach(streams[1])
    assert sender_threads() == [thread]
    rig.detach(streams[2])
    assert not thread.is_alive() and sender_threads() == []  # joined by the last detach
    again = rig.attach("d", rig.link(receiver, 4, key(4)))
    (second,) = sender_threads()
    assert second is not thread and second.is_alive()
    again.frames.put(opus_frame(b"d"))  # at 1000.01, on the grid: sent at once
    assert receiver.recv().ssrc == 4
    rig.detach(again)
    assert sender_threads() == []


@pytest.mark.parametrize("last", [True, False], ids=["last-stream", "other-streams-remain"])
def test_detaching_with_a_frame_in_hand_discards_it_and_join_returns(rig: Rig, last: bool) -> None:
    receiver = rig.receiver()
    other = None if last else rig.attach("other", rig.link(receiver, 9, key(9)))
    stream = rig.attach("a", rig.link(receiver, 1, key(1)))
    for frame in frames("a", 3):
        stream.frames.put(frame)
    assert len(rig.step(grid(1))) == 1  # the second frame is in hand, the third queued
    assert stream.handle.stats().held == 1
    rig.detach(stream)  # closes the queue (the third is discarded there), then detaches
    # once detach returns the sender has let go of the stream: no waiting for it
    assert stream.handle.stats().discarded == 1
    assert stream.frames.unfinished_tasks == 0
    stream.frames.join()
    assert (rig.sender.thread is None or not rig.sender.thread.is_alive()) is last
    if other is not None:
        other.frames.put(opus_frame(b"still paced"))  # at 1000.01: sent at once
        assert receiver.recv().payload == opus_frame(b"still paced")
        assert other.failures == []


def test_a_queue_closed_twice_keeps_its_accounting_and_the_thread_alive(rig: Rig) -> None:
    """A second close used to count the first close's STOP marker as a frame: the sender's
    task_done for the frame in hand then raised on the shared thread, failing every stream."""
    receiver = rig.receiver()
    other = rig.attach("other", rig.link(receiver, 9, key(9)))
    stream = rig.attach("a", rig.link(receiver, 1, key(1)))
    for frame in frames("a", 3):
        stream.frames.put(frame)
    assert len(rig.step(grid(1))) == 1  # one frame in hand, one queued
    assert stream.frames.close(None) == [frames("a", 3)[2]]
    assert stream.frames.close(None) == []
    rig.detach(stream)
    assert stream.handle.stats().discarded == 1 and stream.frames.unfinished_tasks == 0
    assert other.failures == [] and rig.sender.thread is not None
    assert rig.sender.thread.is_alive()
    other.frames.put(opus_frame(b"still paced"))
    assert receiver.recv().payload == opus_frame(b"still paced")


# -- the opus_send queue -----------------------------------------------------------------------


def test_put_checks_items_and_copies_buffers(rig: Rig) -> None:
    receiver = rig.receiver()
    stream = rig.attach("a", rig.link(receiver, 1, key(1)))
    with pytest.raises(InvalidFrame):
        stream.frames.put("not bytes")
    with pytest.raises(InvalidFrame):
        stream.frames.put_nowait(b"")
    with pytest.raises(InvalidFrame):
        stream.frames.put(b"\xe0 2.5 ms")  # a valid TOC of a duration opus_send refuses
    buffer = bytearray(opus_frame(b"abc"))
    stream.frames.put(buffer)
    buffer[1:] = b"zzz"
    assert [p.payload for p in rig.step(grid(1))] == [opus_frame(b"abc")]
    assert stream.failures == []


def test_put_blocks_when_full_and_close_wakes_blocked_producers() -> None:
    frames = OpusQueue(1)
    frames.put(opus_frame(b"a"))
    with pytest.raises(queue.Full):
        frames.put(opus_frame(b"b"), block=False)
    raised: list[BaseException] = []
    entered = threading.Event()

    def producer() -> None:
        entered.set()
        try:
            frames.put(opus_frame(b"c"))
        except ConnectionClosed as exc:
            raised.append(exc)

    thread = threading.Thread(target=producer, name="fake-producer")
    thread.start()
    assert entered.wait(LONG)
    error = ConnectionClosed("gone")
    discarded = frames.close(error)
    thread.join(LONG)
    assert discarded == [opus_frame(b"a")]
    assert len(raised) == 1 and raised[0] is error
    with pytest.raises(ConnectionClosed):
        frames.put(opus_frame(b"d"))
    frames.join()  # discarded frames count as done

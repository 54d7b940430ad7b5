"""The sender thread and opus_send queue, on a fake clock and a real loopback UDP socket pair.

Packets are decrypted in the test with `cryptography` (not our cipher code).
"""

from __future__ import annotations

import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from discord_voice._shell.opus_queue import OpusQueue
from discord_voice._shell.threads import ServiceThread
from discord_voice._shell.udp_sender import StopSpeakingMarker, Transport, UdpSender
from discord_voice.clock import Signal
from discord_voice.core.crypto import Aes256GcmRtpSize
from discord_voice.core.packetizer import Packetizer
from discord_voice.errors import ConnectionClosed, InvalidFrame
from discord_voice.testing.clock import FakeClock
from tests.timeouts import LONG

KEY = bytes(range(32))


@dataclass
class Rig:
    clock: FakeClock
    frames: OpusQueue
    sender: UdpSender
    receiver: socket.socket
    stop: Signal
    announced: list[float]
    failures: list[BaseException]

    def recv(self) -> tuple[int, int, bytes, float]:
        """One packet: (sequence, timestamp, decrypted opus, logical send time)."""
        data = self.receiver.recv(4096)
        header, nonce4 = data[:12], data[-4:]
        opus = AESGCM(KEY).decrypt(nonce4 + bytes(8), data[12:-4], header)
        _, _, seq, ts, _ = struct.unpack(">BBHII", header)
        return seq, ts, opus, self.clock.monotonic()

    def advance_frame(self) -> None:
        self.clock.wait_for_sleepers(1, LONG)
        self.clock.advance(0.020)


@pytest.fixture
def rig() -> Iterator[Rig]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(LONG)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(receiver.getsockname())
    clock = FakeClock(start=1000.0)
    frames = OpusQueue(4)
    stop = Signal()
    announced: list[float] = []
    failures: list[BaseException] = []

    def announce() -> bool:
        # Speaking must be sent before the first packet: nothing may have arrived yet.
        readable, _, _ = select.select([receiver], [], [], 0)
        if readable:
            failures.append(AssertionError("audio was sent before Speaking"))
        announced.append(clock.monotonic())
        return True

    sender = UdpSender(
        transport=Transport(sock, Packetizer(0xDEADBEEF, Aes256GcmRtpSize(KEY), sequence=65534,
                                             timestamp=2**32 - 960)),
        frames=frames, clock=clock, stop=stop,
        announce=announce,
    )
    thread = ServiceThread("dv-udp-sender:test", sender.run, failures.append)
    thread.start()
    try:
        yield Rig(clock, frames, sender, receiver, stop, announced, failures)
    finally:
        stop.set()
        frames.close(None)
        thread.join(LONG)
        sock.close()
        receiver.close()
    assert not thread.is_alive()
    assert failures == []


def test_frames_are_sent_in_order_on_a_20ms_grid_with_wrapping_headers(rig: Rig) -> None:
    payloads = [bytes([i]) * (10 + i) for i in range(4)]
    for p in payloads:
        rig.frames.put(p)
    got = [rig.recv()]  # the first frame of a run goes out at once
    for _ in range(3):
        rig.advance_frame()
        got.append(rig.recv())
    assert [g[2] for g in got] == payloads
    assert [g[0] for g in got] == [65534, 65535, 0, 1]
    assert [g[1] for g in got] == [2**32 - 960, 0, 960, 1920]
    assert [round(g[3] - 1000.0, 6) for g in got] == [0.0, 0.02, 0.04, 0.06]
    assert rig.announced == [1000.0]  # Speaking announced once, before the first audio
    rig.clock.wait_for_sleepers(1, LONG)  # the sender has recorded its last send and parked
    stats = rig.sender.pacer.stats()
    assert stats.frames_sent == 4 and stats.late_frames == 0 and stats.underruns == 0


def test_underrun_restarts_the_schedule_instead_of_bursting(rig: Rig) -> None:
    rig.frames.put(b"a")
    assert rig.recv()[2] == b"a"
    rig.advance_frame()  # due at +20 ms, queue empty: underrun, sender blocks on the queue
    assert rig.frames.wait_for_blocked_consumer(LONG)
    rig.clock.advance(0.5)  # producer is away for 500 ms
    for p in (b"b", b"c"):
        rig.frames.put(p)
    _, _, opus_b, t_b = rig.recv()
    assert opus_b == b"b" and t_b == pytest.approx(1000.52)  # at once, not bursting
    rig.advance_frame()
    _, _, opus_c, t_c = rig.recv()
    assert opus_c == b"c" and t_c == pytest.approx(1000.54)  # then on the new grid
    rig.clock.wait_for_sleepers(1, LONG)
    assert rig.sender.pacer.stats().underruns == 1


def test_stop_speaking_marker_sends_queued_frames_then_five_silences(rig: Rig) -> None:
    done = Signal()
    rig.frames.put(b"x1")
    rig.frames.put(b"x2")
    rig.frames.put_control(StopSpeakingMarker(done))
    sent = [rig.recv()[2]]
    for _ in range(6):
        assert not done.is_set()  # Speaking 0 must wait for the last silence frame
        rig.advance_frame()
        sent.append(rig.recv()[2])
    assert sent == [b"x1", b"x2"] + [b"\xf8\xff\xfe"] * 5
    assert done.wait(LONG)
    assert rig.sender.announced is False  # the next audio announces Speaking again
    rig.frames.join()  # every item accounted for


def test_put_rejects_bad_items_without_touching_the_sender(rig: Rig) -> None:
    with pytest.raises(InvalidFrame):
        rig.frames.put("not bytes")
    with pytest.raises(InvalidFrame):
        rig.frames.put_nowait(b"")
    rig.frames.put(b"ok")
    assert rig.recv()[2] == b"ok"
    assert rig.failures == []


def test_put_blocks_when_full_and_close_wakes_blocked_producers() -> None:
    frames = OpusQueue(1)
    frames.put(b"a")
    with pytest.raises(queue.Full):
        frames.put(b"b", timeout=0.01)
    raised: list[BaseException] = []
    entered = threading.Event()

    def producer() -> None:
        entered.set()
        try:
            frames.put(b"c")
        except ConnectionClosed as exc:
            raised.append(exc)

    t = threading.Thread(target=producer, name="fake-producer")
    t.start()
    assert entered.wait(LONG)
    error = ConnectionClosed("gone")
    discarded = frames.close(error)
    t.join(LONG)
    assert discarded == [b"a"]
    assert raised == [error] or (raised and raised[0] is error)
    with pytest.raises(ConnectionClosed):
        frames.put(b"d")
    frames.join()  # discarded frames count as done


def test_mutable_buffers_are_copied_at_put(rig: Rig) -> None:
    buf = bytearray(b"abc")
    rig.frames.put(buf)
    buf[:] = b"zzz"
    assert rig.recv()[2] == b"abc"


def test_suspend_holds_frames_and_resume_sends_them_once_on_the_new_transport(rig: Rig) -> None:
    """A reconnect: the frame in hand is packetized again for the new session (its SSRC, key
    and counters), nothing goes to the old socket after `suspend`, and no burst follows."""
    new_key = bytes(range(100, 132))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(LONG)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(receiver.getsockname())
    try:
        for frame in (b"a", b"b", b"c"):
            rig.frames.put(frame)
        assert rig.recv()[2] == b"a"
        rig.clock.wait_for_sleepers(1, LONG)  # parked until b is due, b already packetized
        rig.sender.suspend()
        rig.frames.put(b"d")
        rig.clock.advance(1.0)  # long past b's due time: still nothing may be sent
        assert rig.sender.held == 1
        cpu = time.process_time()
        threading.Event().wait(0.2)  # an interval to measure over, not a synchronisation
        assert time.process_time() - cpu < 0.1  # parked, not spinning
        rig.sender.set_transport(
            Transport(sock, Packetizer(0x0BADCAFE, Aes256GcmRtpSize(new_key), sequence=7,
                                       timestamp=5000)))
        rig.sender.resume(announced=False)
        got = []
        for expected_time in (1001.0, 1001.02, 1001.04):
            if got:
                rig.advance_frame()
            data = receiver.recv(4096)
            header, nonce4 = data[:12], data[-4:]
            opus = AESGCM(new_key).decrypt(nonce4 + bytes(8), data[12:-4], header)
            _, _, seq, ts, ssrc = struct.unpack(">BBHII", header)
            got.append((opus, seq, ts, ssrc, round(rig.clock.monotonic(), 6)))
            assert got[-1][4] == pytest.approx(expected_time)
        assert got == [(b"b", 7, 5000, 0x0BADCAFE, 1001.0), (b"c", 8, 5960, 0x0BADCAFE, 1001.02),
                       (b"d", 9, 6920, 0x0BADCAFE, 1001.04)]
        assert rig.announced == [1000.0, 1001.0]  # Speaking again before the new session
        readable, _, _ = select.select([rig.receiver], [], [], 0)
        assert readable == []  # nothing went to the old session after the suspension
        rig.frames.join()
        assert rig.sender.transports == 2 and rig.sender.held == 0
    finally:
        sock.close()
        receiver.close()


def test_a_refused_announce_holds_the_frame_until_resumed(rig: Rig) -> None:
    """While the websocket is recovered Speaking cannot be sent: the owner refuses the
    announce (and suspends); the frame is sent only after `resume`, never before Speaking."""
    refused = threading.Event()
    original = rig.sender._announce

    def announce() -> bool:
        if not refused.is_set():
            rig.sender.suspend()
            refused.set()
            return False
        return original()

    rig.sender._announce = announce  # type: ignore[method-assign]
    rig.frames.put(b"held")
    assert refused.wait(LONG)
    rig.clock.advance(0.5)  # nothing is sent while suspended, however long
    readable, _, _ = select.select([rig.receiver], [], [], 0)
    assert readable == [] and rig.sender.held == 1
    rig.sender.resume(announced=False)
    assert rig.recv()[2] == b"held"
    assert rig.announced == [1000.5]  # announced (for real) right before the frame

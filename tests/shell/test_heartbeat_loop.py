"""HeartbeatLoop in memory: one thread, a timer heap of pacemakers, driven by a FakeClock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from discord_voice._shell.heartbeat import Heartbeat, HeartbeatLoop
from discord_voice.core.pacemaker import Pacemaker
from discord_voice.errors import ConnectionClosed, HeartbeatTimeout
from discord_voice.testing import FakeClock
from tests.timeouts import LONG

START = 100.0


class Socket:
    """One registered 'websocket': records its beats, ACKs them unless told not to."""

    def __init__(self, rig: Rig, name: str, interval: float, *, acks: bool = True) -> None:
        self.rig = rig
        self.name = name
        self.acks = acks
        self.lock = threading.Lock()
        self.pacemaker = Pacemaker(interval, rig.clock.monotonic())
        self.failures: list[BaseException] = []
        self.on_send: Callable[[], None] | None = None  # runs inside the send
        self.fail_send: BaseException | None = None
        self.heartbeat: Heartbeat | None = None

    def register(self) -> Socket:
        self.heartbeat = self.rig.loop.add(
            pacemaker=self.pacemaker,
            lock=self.lock,
            make_frame=self.frame,
            send=self.send,
            on_failure=self.failed,
        )
        return self

    def frame(self, nonce: int) -> str:
        assert self.lock.locked()  # built under the socket's lock
        return f"{self.name}:{nonce}"

    def send(self, frame: str) -> None:
        assert not self.lock.locked()  # sent with no lock held
        assert threading.current_thread().name == "dv-heartbeat"
        if self.fail_send is not None:
            raise self.fail_send
        if self.on_send is not None:
            self.on_send()
        nonce = int(frame.split(":")[1])
        if self.acks:
            with self.lock:
                self.pacemaker.ack(nonce, self.rig.clock.monotonic())
        self.rig.sent(self.name, nonce / 1000)  # the time of the beat (ms nonces)

    def failed(self, exc: BaseException) -> None:
        assert threading.current_thread().name == "dv-heartbeat"
        self.failures.append(exc)
        self.rig.changed()

    def beats(self) -> list[float]:
        return [t for name, t in self.rig.log if name == self.name]


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock(start=START)
        self.loop = HeartbeatLoop(self.clock)
        self.log: list[tuple[str, float]] = []
        self._cond = threading.Condition()

    def sent(self, name: str, now: float) -> None:
        with self._cond:
            self.log.append((name, now))
            self._cond.notify_all()

    def changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, LONG), f"timed out; log: {self.log}"

    def run_until(self, end: float) -> None:
        """Advance to each deadline the loop parks on, up to `end`; return once the loop has
        beaten everything due by then and parked again."""
        while True:
            deadlines = self.clock.wait_for_sleepers(1, LONG)
            if deadlines[0] > end:
                return
            self.clock.advance_to_next(LONG)


@pytest.fixture
def rig() -> Iterator[Rig]:
    rig = Rig()
    try:
        yield rig
    finally:
        rig.loop.close()


def grid(interval: float, end: float) -> list[float]:
    count = int((end - START) // interval)
    return [START + k * interval for k in range(1, count + 1)]


def test_many_intervals_beat_on_their_own_grids_in_time_order(rig: Rig) -> None:
    sockets = [
        Socket(rig, name, interval).register()
        for name, interval in (("a", 2.0), ("b", 3.0), ("c", 5.0), ("d", 0.5))
    ]
    rig.run_until(START + 30.0)
    for socket in sockets:
        assert socket.beats() == grid(socket.pacemaker.interval, START + 30.0), socket.name
        assert socket.pacemaker.beats_sent == socket.pacemaker.acks_received
        assert socket.failures == []
    times = [t for _, t in rig.log]
    assert times == sorted(times)  # one heap: the earliest due always goes first
    assert len(rig.log) == 15 + 10 + 6 + 60


def test_equal_due_times_beat_in_insertion_order(rig: Rig) -> None:
    for name in "qpr":
        Socket(rig, name, 1.0).register()
    rig.run_until(START + 3.0)
    assert [name for name, _ in rig.log] == list("qpr") * 3


def test_a_slow_send_delays_the_others_but_never_shifts_a_grid(rig: Rig) -> None:
    slow = Socket(rig, "slow", 2.0).register()
    other = Socket(rig, "other", 2.0).register()
    first = [True]

    def stall() -> None:  # the first send takes 0.5 s of the loop's time
        if first[0]:
            first[0] = False
            rig.clock.advance(0.5)

    slow.on_send = stall
    rig.run_until(START + 6.0)
    assert slow.beats() == [102.0, 104.0, 106.0]
    assert other.beats() == [102.5, 104.0, 106.0]  # late once, then back on its grid


def test_cancel_from_inside_a_beat(rig: Rig) -> None:
    a = Socket(rig, "a", 1.0).register()
    b = Socket(rig, "b", 1.0).register()  # due at the same instants, after a
    c = Socket(rig, "c", 1.5).register()

    def cancel_self_and_b() -> None:
        if len(a.beats()) == 1:
            assert a.heartbeat is not None and b.heartbeat is not None
            a.heartbeat.cancel()
            b.heartbeat.cancel()  # due now, still in the heap: never beats again
            a.heartbeat.cancel()  # idempotent

    rig.run_until(START + 1.0)
    a.on_send = cancel_self_and_b
    rig.run_until(START + 6.0)
    assert a.beats() == [101.0, 102.0]
    assert b.beats() == [101.0]
    assert c.beats() == [101.5, 103.0, 104.5, 106.0]
    assert a.failures == b.failures == []
    assert rig.loop.thread is not None and rig.loop.thread.is_alive()


def test_an_earlier_entry_wakes_the_waiting_loop(rig: Rig) -> None:
    Socket(rig, "slow", 10.0).register()
    assert rig.clock.wait_for_sleepers(1, LONG) == [110.0]
    fast = Socket(rig, "fast", 1.0).register()  # due at 101, long before 110
    rig.clock.advance(1.0)  # a loop still waiting for 110 would not move
    rig.wait_for(lambda: fast.beats() == [101.0])
    rig.clock.wait_for_deadline(102.0)


def test_a_cancelled_head_wakes_the_loop_to_wait_for_the_next(rig: Rig) -> None:
    early = Socket(rig, "early", 1.0).register()
    late = Socket(rig, "late", 4.0).register()
    assert rig.clock.wait_for_sleepers(1, LONG) == [101.0]
    assert early.heartbeat is not None
    early.heartbeat.cancel()
    rig.clock.wait_for_deadline(104.0)  # no longer waiting for a beat that is gone
    rig.run_until(START + 4.0)
    assert rig.log == [("late", 104.0)]
    assert late.failures == []


def test_a_dead_socket_is_reported_to_its_owner_only_and_the_others_go_on(rig: Rig) -> None:
    mute = Socket(rig, "mute", 1.0, acks=False).register()
    closed = Socket(rig, "closed", 1.0).register()
    live = Socket(rig, "live", 1.0).register()
    rig.run_until(START + 2.0)
    closed.fail_send = ConnectionClosed("the voice websocket is closed")
    rig.run_until(START + 6.0)
    # mute's first unanswered beat (101) is more than 2 intervals old at 104: dead, not sent
    assert mute.beats() == [101.0, 102.0, 103.0]
    assert len(mute.failures) == 1 and isinstance(mute.failures[0], HeartbeatTimeout)
    assert mute.failures[0].interval == 1.0
    assert closed.beats() == [101.0, 102.0]
    assert closed.failures == [closed.fail_send]  # once, then out of the heap
    assert live.beats() == [101.0, 102.0, 103.0, 104.0, 105.0, 106.0]
    assert live.failures == []
    assert mute.heartbeat is not None
    mute.heartbeat.cancel()  # the owner stopping a failed socket: nothing more happens
    mute.heartbeat.release()


def test_the_thread_lives_while_a_socket_is_registered(rig: Rig) -> None:
    assert rig.loop.thread is None  # no thread before the first registration
    a = Socket(rig, "a", 1.0).register()
    first = rig.loop.thread
    assert first is not None and first.name == "dv-heartbeat" and not first.daemon
    b = Socket(rig, "b", 1.0).register()
    assert rig.loop.thread is first  # one thread for both
    assert a.heartbeat is not None and b.heartbeat is not None
    a.heartbeat.release()
    b.heartbeat.cancel()  # cancelled: no beats, but still holding the thread
    assert first.is_alive()
    b.heartbeat.release()  # the last one joins it
    assert not first.is_alive()
    b.heartbeat.release()  # idempotent
    c = Socket(rig, "c", 1.0).register()
    second = rig.loop.thread
    assert second is not None and second is not first and second.is_alive()
    rig.run_until(rig.clock.monotonic() + 1.0)
    assert c.beats() == [START + 1.0]
    assert c.heartbeat is not None
    c.heartbeat.release()
    assert not second.is_alive()


def test_release_from_the_loop_thread_itself_then_close_joins_it(rig: Rig) -> None:
    a = Socket(rig, "a", 1.0)
    a.fail_send = ConnectionClosed("gone")

    def failed(exc: BaseException) -> None:  # an owner that releases from its callback
        a.failures.append(exc)
        assert a.heartbeat is not None
        a.heartbeat.release()
        rig.changed()

    a.heartbeat = rig.loop.add(
        pacemaker=Pacemaker(1.0, START),
        lock=a.lock,
        make_frame=a.frame,
        send=a.send,
        on_failure=failed,
    )
    assert a.heartbeat is not None
    thread = rig.loop.thread
    assert thread is not None
    rig.clock.advance(1.0)
    rig.wait_for(lambda: len(a.failures) == 1)
    rig.loop.close()
    assert not thread.is_alive()


def test_close_releases_every_registration_and_joins_the_thread(rig: Rig) -> None:
    a = Socket(rig, "a", 1.0).register()
    Socket(rig, "b", 2.0).register()
    thread = rig.loop.thread
    assert thread is not None
    rig.loop.close()
    assert not thread.is_alive()
    assert a.heartbeat is not None
    a.heartbeat.release()  # an owner releasing after the Voice closed: no error

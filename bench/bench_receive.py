"""Receive-side benchmarks (issue 11): CPU per received packet, many members decoded to PCM, and
send pacing while receiving.

The fake Discord runs in a child process (spawned), so its work (sealing, libdave encryption,
recording) neither takes this process's GIL nor shows in its CPU figures. Its members who speak
(``FakeDiscord.add_speaker``: libdave members of the channel's DAVE group) are driven by one
thread there, ``fake-bench-chorus``, which every 20 ms sends one real Opus frame per speaker
(``FakeSpeaker.send``: RTP, libdave DAVE encryption, transport seal, ``sendto``). Each part says
what rate that thread actually reached: it is measured, never assumed. The Opus frames are a
1 s 440 Hz tone encoded once with `discord_voice.opus.Encoder` (the bundled Ogg asset when
libopus is missing) and repeated. CPU figures come from ``/proc/self/task/<tid>/schedstat``
(on-CPU time of one thread, Linux) and ``time.process_time`` (the whole process); a share is
CPU seconds per wall second (1.0 = one core busy).

Three parts, each a sub-command (``all`` runs the three with their defaults):

``packet``
    Per-datagram CPU of the receive path. The floor first: the core path alone
    (``ReceiveFlow.datagram``: classify, AEAD open, SSRC map, DAVE decryption through
    ``DaveChannel.try_decrypt`` with frames encrypted by a libdave member) called in a tight loop
    on prepared datagrams, per transport mode, without and with DAVE (``time.thread_time``).
    Then the real ``dv-udp-receiver`` thread of a `Voice` with one connection joined with
    ``receive=True``, fed real loopback datagrams by the fake's speakers in real time: the
    thread's CPU divided by the datagrams it handled, per mode, DAVE off and on, for each
    ``--speakers`` count (1: 50 datagrams a second, a wake-up each; 100: 5000 a second, sent
    one after the other every 20 ms). A ``bench-drain`` thread empties ``opus_recv`` (a
    consumer that keeps up; no decoding). Beside them, what one wake-up costs on this machine:
    a bare selector loop reading one loopback datagram every 20 ms. The core loop runs hot (its
    best of 3 runs); the thread runs its code once per wake-up, cold, as users run it: on a VM
    the difference is several times the core figure.

``speakers``
    ``--speakers`` (100) members speaking at once into one connection (DAVE on), for
    ``--seconds`` (10), decoded to PCM by ``conn.listen(sink)`` (a counting sink, or a
    `WaveSink` in a temporary directory with ``--wave``). After a 1 s warm-up (op 5s, decoders,
    first packets) the measured window: packets delivered against frames sent, what was dropped
    (``conn.stats.receive``: by reason, ``opus_recv`` overflow, DAVE failures; and the kernel's
    drops on the socket, from ``/proc/net/udp``), the CPU share of ``dv-udp-receiver``, of
    ``dv-listener:*`` and of the whole process while the members speak, and the listener's
    figures (blocks written, concealed, bad packets).

``send``
    Send pacing with and without receiving, side by side: the measurement of
    ``bench.bench_send`` (its producer and figures are reused: the fake stamps each packet with
    the kernel arrival time; the deviation of each inter-arrival time from 20 ms, p50 / p99 /
    max, over all connections; lost or altered packets), run twice: ``--conns`` (20) connections
    sending only, then the same with the first ``--receivers`` (1) of them joined with
    ``receive=True`` hearing ``--speakers`` (20) members in all (spread over their channels) who
    speak throughout, decoded by ``conn.listen`` unless ``--no-listen``; ``--runs`` (2) pairs,
    interleaved, so that a change of the machine's load shows. Besides the pacing: the sender
    thread's CPU per packet, the CPU shares of the sender, receiver and listener threads and of
    the process during the send window, and what the receiving connections got.

Run (repository root, .venv; on a quiet machine, ``cat /proc/loadavg``); with the defaults
``packet`` takes about 1.5 minutes (two DAVE groups of 100 members are formed), ``speakers``
about 35 s and ``send`` about 40 s::

    python -m bench.bench_receive packet [--seconds 3] [--speakers 1 100] [--rounds 20000]
    python -m bench.bench_receive speakers [--speakers 100] [--seconds 10] [--queue-size 100]
        [--wave]
    python -m bench.bench_receive send [--conns 20] [--speakers 20] [--receivers 1]
        [--seconds 5] [--runs 2] [--no-listen]
    python -m bench.bench_receive all
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing
import queue
import selectors
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import TYPE_CHECKING, Any

from bench.bench_send import _percentile, asset_frames, produce, receiver_figures
from bench.dave_peer import CHANNEL as DAVE_CHANNEL
from bench.dave_peer import ME, PEER
from discord_voice import Connection, Gateway, Sink, Voice, WaveSink
from discord_voice._shell.dave_channel import DaveChannel
from discord_voice.core.crypto import aes256_gcm_available, make_cipher
from discord_voice.core.frames import OPUS_SILENCE_FRAME, SILENCE_FRAMES_ON_STOP
from discord_voice.core.main_gateway_timing import SendRateLimiter
from discord_voice.core.packetizer import Packetizer
from discord_voice.core.receive_flow import Decrypt, ReceiveFlow
from discord_voice.errors import OpusNotAvailable

if TYPE_CHECKING:
    from discord_voice.testing import FakeDiscord, FakeSpeaker

AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
TICK = 0.020
GUILD, CHANNEL = 41771983423143937, 127121515262115840
#: Part ``send``: connection i joins guild FIRST_GUILD + i, channel FIRST_CHANNEL + i.
FIRST_GUILD, FIRST_CHANNEL = 200000000000000000, 300000000000000000
#: Seconds of speaking before a measured window (op 5s sent, decoders made, epochs settled).
WARMUP = 1.0
#: Bound on waiting for the fake's answer to one request (adding 100 DAVE members is the slowest).
ANSWER_TIMEOUT = 120.0
#: Bound on waiting for what was sent to be handled after a window (datagrams, decoding).
DRAIN_TIMEOUT = 10.0
#: Receiver thread and listener threads, by name prefix (one ``dv-listener:<name>`` per listen).
RECEIVER, LISTENER, SENDER = "dv-udp-receiver", "dv-listener", "dv-udp-sender"


# -- the fake Discord, in a child process ----------------------------------------------------


class Chorus:
    """The child's side: the fake's speakers and the ``fake-bench-chorus`` thread that paces
    them (one frame per speaker per 20 ms)."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.speakers: list[FakeSpeaker] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: dict[str, float] = {}
        self._error = ""

    def handle(self, request: tuple[Any, ...]) -> object:
        kind = request[0]
        if kind == "add":
            return self.add(request[1], request[2])
        if kind == "speak":
            self.speak(request[1], request[2])
            return None
        if kind == "done":
            return self.done(request[1])
        if kind == "capture":
            self.fake.capture_udp(request[1])
            return None
        if kind == "frames":
            return self.frames(request[1], request[2])
        raise ValueError(f"unknown request {kind!r}")

    def add(self, channel_id: int, count: int) -> list[int]:
        """`count` speakers into `channel_id`; with DAVE, returns once the group holds them."""
        new = [self.fake.add_speaker(channel_id) for _ in range(count)]
        self.speakers += new
        if self.fake.dave:
            users = {s.user_id for s in new}

            def settled(fake: FakeDiscord) -> bool:
                state = fake.dave_state(channel_id)
                return state.transition_id is None and users <= set(state.members)

            if not self.fake.wait_until(settled, ANSWER_TIMEOUT):
                raise TimeoutError(f"the DAVE group of {channel_id} did not take the speakers")
        return [s.user_id for s in new]

    def speak(self, seconds: float, frames: list[bytes]) -> None:
        if self._thread is not None:
            raise RuntimeError("the chorus is already speaking")
        self._stop.clear()
        self._result, self._error = {}, ""
        self._thread = threading.Thread(
            target=self._run, args=(seconds, frames), name="fake-bench-chorus"
        )
        self._thread.start()

    def _run(self, seconds: float, frames: list[bytes]) -> None:
        try:
            self._speak(seconds, frames)
        except Exception as exc:  # noqa: BLE001 - reported by `done` to the parent
            self._error = f"{type(exc).__name__}: {exc}"

    def _speak(self, seconds: float, frames: list[bytes]) -> None:
        speakers = list(self.speakers)
        ticks = max(1, round(seconds / TICK))
        sent = late = failed = done = 0
        cpu, started = time.process_time(), time.monotonic()
        origin = started
        for n in range(ticks):
            delay = origin + n * TICK - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            frame = frames[n % len(frames)]
            for speaker in speakers:
                try:
                    speaker.send([frame])
                    sent += 1
                except RuntimeError:  # no DAVE key yet (settling): counted, not fatal
                    failed += 1
            done += 1
            if time.monotonic() > origin + (n + 1) * TICK:
                late += 1
        self._result = {
            "speakers": len(speakers),
            "ticks": done,
            "sent": sent,
            "failed": failed,
            "late_ticks": late,
            "elapsed": time.monotonic() - started,
            "process_cpu": time.process_time() - cpu,
        }

    def done(self, timeout: float) -> dict[str, float]:
        """Wait (bounded) for the speaking to end; what the chorus thread achieved."""
        thread, self._thread = self._thread, None
        if thread is None:
            raise RuntimeError("the chorus is not speaking")
        thread.join(timeout)
        if thread.is_alive():
            self._stop.set()
            thread.join(5.0)
            raise TimeoutError(f"the chorus did not finish within {timeout} s")
        if self._error:
            raise RuntimeError(f"the chorus failed: {self._error}")
        return self._result

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def frames(self, expected: int, timeout: float) -> tuple[Any, ...]:
        """Stop capturing; the clients' frames by SSRC ((sequence, arrival) pairs), a digest of
        each stream, and the count of UDP errors (as ``bench_send`` reports them)."""
        fake = self.fake
        fake.capture_udp(False)
        with contextlib.suppress(TimeoutError):  # what is missing is reported as lost
            fake.wait_for_frames(expected, timeout=timeout)
        by_ssrc: dict[int, list[tuple[int, float]]] = {}
        digests: dict[int, Any] = {}
        for frame in fake.frames():
            by_ssrc.setdefault(frame.ssrc, []).append((frame.sequence, frame.arrival))
            digests.setdefault(frame.ssrc, hashlib.sha256()).update(
                len(frame.opus).to_bytes(2, "big") + frame.opus
            )
        return by_ssrc, {k: v.hexdigest() for k, v in digests.items()}, len(fake.udp_errors)


def _serve(pipe: Pipe, options: dict[str, Any]) -> None:
    """Child process: run a FakeDiscord and answer the parent's requests until "stop"."""
    from discord_voice.testing import FakeDiscord

    with FakeDiscord(main_rate_limit=100_000, **options) as fake:
        chorus = Chorus(fake)
        pipe.send((fake.gateway_url, fake.token))
        try:
            while pipe.poll(3600.0):  # bounded: a parent gone silent for an hour is gone
                request = pipe.recv()
                if request[0] == "stop":
                    return
                try:
                    answer: tuple[str, object] = ("ok", chorus.handle(request))
                except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it
                    answer = ("error", f"{type(exc).__name__}: {exc}")
                pipe.send(answer)
        except EOFError:  # the parent went away
            return
        finally:
            chorus.stop()


class Remote:
    """The parent's side of the child's fake Discord."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe

    def _ask(self, *request: object, timeout: float = ANSWER_TIMEOUT) -> Any:
        self._pipe.send(request)
        if not self._pipe.poll(timeout):
            raise TimeoutError(f"the fake Discord did not answer {request[0]!r} in {timeout} s")
        status, value = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(f"the fake Discord failed on {request[0]!r}: {value}")
        return value

    def add(self, channel_id: int, count: int) -> list[int]:
        result: list[int] = self._ask("add", channel_id, count)
        return result

    def speak(self, seconds: float, frames: list[bytes]) -> None:
        """Start speaking (every speaker, one frame per 20 ms) for `seconds`; returns at once."""
        self._ask("speak", seconds, frames)

    def done(self, timeout: float) -> dict[str, float]:
        result: dict[str, float] = self._ask("done", timeout, timeout=timeout + 30.0)
        return result

    def capture(self, on: bool = True) -> None:
        self._ask("capture", on)

    def frames(self, expected: int, timeout: float = 30.0) -> tuple[Any, ...]:
        result: tuple[Any, ...] = self._ask("frames", expected, timeout, timeout=timeout + 60.0)
        return result


@contextlib.contextmanager
def remote_fake(**options: Any) -> Iterator[tuple[Gateway, Remote]]:
    """A FakeDiscord(**options) in a child process and a connected `Gateway` to it."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, options), name="fake-discord-bench")
    server.start()
    try:
        if not parent.poll(60.0):
            raise TimeoutError("the fake Discord did not start within 60 s")
        url, token = parent.recv()
        gateway = Gateway(token, url=url)
        # A measurement, not an API: lift the 120/60 s send budget (one op 4 per join).
        gateway._limiter = SendRateLimiter(limit=100_000, period=60.0)
        try:
            gateway.connect(timeout=30)
            yield gateway, Remote(parent)
        finally:
            gateway.close()
    finally:
        with contextlib.suppress(OSError, ValueError):  # the child may be gone already
            parent.send(("stop",))
        server.join(60)
        if server.is_alive():
            server.kill()
            server.join(5)


# -- measuring ----------------------------------------------------------------------------


def _task_ns(native_id: int) -> int:
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            return int(f.read().split()[0])
    except OSError:  # the thread ended
        return 0


@dataclass(frozen=True)
class Usage:
    """CPU used so far: the whole process and the library's threads by name prefix."""

    wall: float
    process: float
    threads: dict[str, int]  # prefix -> on-CPU nanoseconds of the live threads with it

    @staticmethod
    def now() -> Usage:
        threads = dict.fromkeys((RECEIVER, LISTENER, SENDER), 0)
        for thread in threading.enumerate():
            prefix = next((p for p in threads if thread.name.startswith(p)), None)
            if prefix is not None and thread.native_id is not None:
                threads[prefix] += _task_ns(thread.native_id)
        return Usage(time.perf_counter(), time.process_time(), threads)

    def since(self, before: Usage) -> dict[str, float]:
        """CPU seconds per wall second since `before`, by prefix, and ``"process"``."""
        wall = max(self.wall - before.wall, 1e-9)
        shares = {p: (ns - before.threads.get(p, 0)) / 1e9 / wall for p, ns in self.threads.items()}
        shares["process"] = (self.process - before.process) / wall
        return shares

    def cpu_ns(self, before: Usage, prefix: str) -> int:
        return self.threads[prefix] - before.threads.get(prefix, 0)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes (the library offers no event for
    "every datagram handled"; a bounded poll at a low rate instead)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def handled(conn: Connection) -> int:
    """Datagrams the receive thread has handled for `conn`: delivered, or counted as dropped."""
    stats = conn.stats.receive
    if stats is None:
        return 0
    return stats.delivered + stats.dave_failures + stats.unmapped + sum(stats.dropped.values())


def delivered(conns: list[Connection]) -> int:
    """Packets the receive thread delivered to `conns`' ``opus_recv``."""
    return sum(s.delivered for c in conns if (s := c.stats.receive) is not None)


def overflowed(conns: list[Connection]) -> int:
    """Packets discarded from `conns`' full ``opus_recv`` (the oldest, for the newest)."""
    return sum(s.overflowed for c in conns if (s := c.stats.receive) is not None)


def accounted(conns: list[Connection]) -> int:
    """Datagrams sent to `conns` that are accounted for: handled by the receive thread, or
    dropped by the kernel (socket buffer full)."""
    return sum(handled(c) + (kernel_drops(local_port(c)) or 0) for c in conns)


def all_accounted(conns: list[Connection], before: int, sent: int) -> Callable[[], bool]:
    """A predicate: `sent` datagrams more than `before` are `accounted` for."""
    return lambda: accounted(conns) - before >= sent


def kernel_drops(port: int | None) -> int | None:
    """Datagrams the kernel dropped on the local UDP socket bound to `port` (receive buffer
    full), from /proc/net/udp; None when it cannot be told."""
    if port is None:
        return None
    try:
        with open("/proc/net/udp") as f:
            lines = f.readlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return int(fields[-1])
    return None


def local_port(conn: Connection) -> int | None:
    """The connection's local UDP port (on loopback, what IP discovery saw)."""
    address = conn.external_address
    return address[1] if address is not None else None


def opus_frames() -> list[bytes]:
    """1 s of real 20 ms Opus frames: a 440 Hz tone encoded with libopus (or the bundled asset)."""
    try:
        from discord_voice.opus import encode_frames, tone

        return list(encode_frames(tone(440.0, 1.0)))
    except OpusNotAvailable:
        return asset_frames(1.0)


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Drain:
    """A ``bench-drain`` thread that takes packets off ``opus_recv`` and drops them."""

    def __init__(self, packets: queue.Queue[Any]) -> None:
        self._packets = packets
        self._stop = threading.Event()
        self.taken = 0
        self.thread = threading.Thread(target=self._run, name="bench-drain")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._packets.get(timeout=0.05)
            except queue.Empty:
                continue
            self.taken += 1

    def __enter__(self) -> Drain:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self.thread.join(5.0)


class CountingSink:
    """A sink that only counts what the listener gives it (no I/O)."""

    def __init__(self) -> None:
        self.blocks = 0
        self.users: set[int] = set()
        self.closed = False

    def write(self, user_id: int, pcm: bytes) -> None:
        self.blocks += 1
        self.users.add(user_id)

    def close(self) -> None:
        self.closed = True


# -- part 1: CPU per datagram ------------------------------------------------------------------

KEY = bytes(range(32))
SPEAKER_SSRC = 0x00C0FFEE
OWN_SSRC = 0x00000042
SERVER = ("127.0.0.1", 50001)


def dave_pair() -> tuple[DaveChannel, Callable[[bytes], bytes]] | None:
    """Our `DaveChannel` in a group with one libdave member, and that member's encryption of an
    Opus frame (its own key ratchet, SSRC `SPEAKER_SSRC`); None without dave-py."""
    try:
        import dave
    except ImportError:
        return None
    from bench.dave_peer import join_with_peer

    channel = DaveChannel(str(ME), str(DAVE_CHANNEL))
    peer = join_with_peer(
        lambda version: channel.apply(lambda d: d.start(version)),
        lambda event: channel.apply(lambda d: d.receive(event)),
        channel.clients_connect,
    )
    assert channel.protocol.ready, "our DAVE session has no key"
    ratchet = peer.get_key_ratchet(str(PEER))
    assert ratchet is not None
    encryptor = dave.Encryptor()
    encryptor.set_key_ratchet(ratchet)
    encryptor.set_passthrough_mode(False)
    encryptor.assign_ssrc_to_codec(SPEAKER_SSRC, dave.Codec.opus)

    def encrypt(frame: bytes) -> bytes:
        _ = peer  # the session outlives the encryptor using its ratchet
        encrypted = encryptor.encrypt(dave.MediaType.audio, SPEAKER_SSRC, frame)
        assert encrypted is not None
        return bytes(encrypted)

    return channel, encrypt


def _as_is(user_id: int, frame: bytes) -> bytes | None:
    return frame


def flow_floor(
    mode: str, dave: bool, frames: list[bytes], rounds: int, runs: int = 3
) -> tuple[float, int]:
    """(us of CPU per datagram, datagrams not delivered) of ``ReceiveFlow.datagram`` alone: the
    best of `runs` runs of `rounds` datagrams (the run least disturbed by other processes)."""
    decrypt: Decrypt = _as_is
    encrypt: Callable[[bytes], bytes] = bytes
    if dave:
        pair = dave_pair()
        if pair is None:
            return float("nan"), 0
        channel, encrypt = pair
        decrypt = channel.try_decrypt
    packetizer = Packetizer(SPEAKER_SSRC, make_cipher(mode, KEY))
    best, lost = float("inf"), 0
    for _ in range(runs):
        # fresh datagrams for each run: DAVE refuses replayed frames
        datagrams = [packetizer.packetize(encrypt(frames[i % len(frames)])) for i in range(rounds)]
        flow = ReceiveFlow(
            own_ssrc=OWN_SSRC, server=SERVER, cipher=make_cipher(mode, KEY), decrypt=decrypt
        )
        flow.speaking(PEER, SPEAKER_SSRC, 0.0)
        datagram = flow.datagram
        started = time.thread_time()
        for data in datagrams:
            datagram(data, SERVER, 0.0)
        best = min(best, time.thread_time() - started)
        lost += rounds - flow.counters.delivered
    return best / rounds * 1e6, lost


def wake_floor(seconds: float) -> float:
    """Microseconds of thread CPU per datagram of a bare loop that waits in a selector for a
    loopback datagram sent every 20 ms and reads it: what one wake-up costs on this machine."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.connect(sink.getsockname())
    ticks = max(1, round(seconds / TICK))
    stop = threading.Event()

    def send() -> None:
        origin = time.monotonic()
        for n in range(ticks):
            if stop.wait(max(0.0, origin + n * TICK - time.monotonic())):
                return
            out.send(b"\x80\x78" + bytes(180))

    sender = threading.Thread(target=send, name="bench-wake-sender")
    selector = selectors.DefaultSelector()
    selector.register(sink, selectors.EVENT_READ)
    got = 0
    try:
        started = time.thread_time()
        sender.start()
        deadline = time.monotonic() + seconds + 5.0
        while got < ticks and time.monotonic() < deadline:
            for _ in selector.select(0.1):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sink.recvfrom(4096)
                        got += 1
        used = time.thread_time() - started
    finally:
        stop.set()
        sender.join(5.0)
        selector.close()
        out.close()
        sink.close()
    return used / max(got, 1) * 1e6


@dataclass
class ThreadCost:
    mode: str
    dave: bool
    speakers: int
    sent: int
    handled: int  # by the receive thread: delivered or dropped with a reason
    failed: int  # of those, not delivered (DAVE failures, drops)
    kernel: int  # dropped by the kernel (socket buffer full)
    us_per_datagram: float
    share: float  # of one core
    fake_rate: float  # frames per second the chorus reached


def thread_costs(
    mode: str, dave: bool, counts: list[int], seconds: float, frames: list[bytes]
) -> list[ThreadCost]:
    """The real receiver thread's CPU per datagram, for each speaker count (added in order)."""
    rows: list[ThreadCost] = []
    with remote_fake(dave=dave, modes=(mode,)) as (gateway, remote):
        voice = Voice(gateway)
        try:
            conn = voice.join_channel(GUILD, CHANNEL, receive=True, timeout=30)
            if conn.mode != mode:
                raise RuntimeError(f"the connection chose {conn.mode}, not {mode}")
            port = local_port(conn)
            with Drain(conn.opus_recv):
                present = 0
                for count in counts:
                    remote.add(CHANNEL, count - present)
                    present = count
                    if dave and not conn.wait_for_e2ee(30):
                        raise RuntimeError("DAVE did not settle")
                    remote.speak(WARMUP, frames)
                    remote.done(WARMUP + 30)
                    time.sleep(0.3)  # let the last of the warm-up be read
                    stats_before, drops_before = conn.stats.receive, kernel_drops(port) or 0
                    before, handled_before = Usage.now(), handled(conn)
                    accounted_before = accounted([conn])
                    remote.speak(seconds, frames)
                    result = remote.done(seconds + 30)
                    sent = int(result["sent"])
                    wait_for(all_accounted([conn], accounted_before, sent), DRAIN_TIMEOUT)
                    after = Usage.now()
                    stats = conn.stats.receive
                    assert stats is not None and stats_before is not None
                    count_handled = handled(conn) - handled_before
                    rows.append(
                        ThreadCost(
                            mode=mode,
                            dave=dave,
                            speakers=count,
                            sent=sent,
                            handled=count_handled,
                            failed=count_handled - (stats.delivered - stats_before.delivered),
                            kernel=(kernel_drops(port) or 0) - drops_before,
                            us_per_datagram=after.cpu_ns(before, RECEIVER)
                            / max(count_handled, 1)
                            / 1000,
                            share=after.since(before)[RECEIVER],
                            fake_rate=sent / max(result["elapsed"], 1e-9),
                        )
                    )
            conn.disconnect()
        finally:
            voice.close()
    return rows


def part_packet(seconds: float, counts: list[int], rounds: int) -> None:
    frames = opus_frames()
    modes = [AES, XCHACHA] if aes256_gcm_available() else [XCHACHA]
    print(f"== packet: CPU per received datagram (load {load()}) ==")
    print(
        f"core path alone: ReceiveFlow.datagram on {rounds} prepared datagrams "
        f"({sum(map(len, frames)) // len(frames)}-byte Opus frames), us of CPU per datagram, "
        "best of 3 runs"
    )
    print(f"  {'mode':34} {'transport':>9} {'+ DAVE':>8}")
    for mode in modes:
        plain, lost = flow_floor(mode, False, frames, rounds)
        with_dave, lost_dave = flow_floor(mode, True, frames, rounds)
        note = f"  ({lost + lost_dave} not delivered!)" if lost or lost_dave else ""
        print(f"  {mode:34} {plain:9.2f} {with_dave:8.2f}{note}")
    print(
        f"one wake-up: a bare selector loop reading a datagram sent every 20 ms costs "
        f"{wake_floor(min(seconds, 2.0)):.1f} us of its thread's CPU per datagram"
    )
    sys.stdout.flush()
    print(
        f"the {RECEIVER} thread (one connection, receive=True, {seconds:g} s per row, real "
        "loopback datagrams from the fake's speakers, one frame each per 20 ms; handled: by "
        "the thread, failed: of those not delivered, kernel: dropped by the kernel):"
    )
    print(
        f"  {'mode':34} {'DAVE':>4} {'speakers':>8} {'sent':>6} {'handled':>7} {'failed':>6} "
        f"{'kernel':>6} {'us/datagram':>11} {'% of a core':>11} {'fake frames/s':>13}"
    )
    for mode in modes:
        for dave in (False, True):
            for row in thread_costs(mode, dave, sorted(set(counts)), seconds, frames):
                print(
                    f"  {row.mode:34} {'on' if row.dave else 'off':>4} {row.speakers:>8} "
                    f"{row.sent:>6} {row.handled:>7} {row.failed:>6} {row.kernel:>6} "
                    f"{row.us_per_datagram:>11.1f} {row.share * 100:>11.2f} "
                    f"{row.fake_rate:>13.0f}"
                )
                sys.stdout.flush()


# -- part 2: many speakers decoded to PCM ------------------------------------------------------


def decode_floor(frames: list[bytes], count: int = 500) -> float:
    """Microseconds of CPU per ``Decoder.decode`` of one 20 ms frame, alone in a loop."""
    from discord_voice.opus import Decoder

    decoder = Decoder()
    started = time.thread_time()
    for n in range(count):
        decoder.decode(frames[n % len(frames)])
    return (time.thread_time() - started) / count * 1e6


def part_speakers(speakers: int, seconds: float, queue_size: int, wave: bool) -> None:
    frames = opus_frames()
    print(f"== speakers: {speakers} members into one connection, decoded (load {load()}) ==")
    with contextlib.ExitStack() as stack, remote_fake(dave=True) as (gateway, remote):
        voice = Voice(gateway, receive_queue_size=queue_size)
        try:
            conn = voice.join_channel(GUILD, CHANNEL, receive=True, timeout=30)
            started = time.perf_counter()
            remote.add(CHANNEL, speakers)
            if not conn.wait_for_e2ee(30):
                raise RuntimeError("DAVE did not settle")
            added = time.perf_counter() - started
            sink: Sink = CountingSink()
            if wave:
                sink = WaveSink(stack.enter_context(tempfile.TemporaryDirectory()))
            listener = conn.listen(sink)
            remote.speak(WARMUP, frames)
            warm = remote.done(WARMUP + 60)
            wait_for(conn.opus_recv.empty, DRAIN_TIMEOUT)
            time.sleep(0.4)  # the listener flushes each member after 0.2 s of quiet
            port = local_port(conn)
            drops_before = kernel_drops(port)
            first, heard_first = conn.stats.receive, listener.stats()
            accounted_before = accounted([conn])
            before = Usage.now()
            remote.speak(seconds, frames)
            fake = remote.done(seconds + 60)
            after = Usage.now()  # the window: while the members spoke
            sent = int(fake["sent"])
            at_end, backlog = conn.stats.receive, conn.opus_recv.qsize()
            caught_up = wait_for(all_accounted([conn], accounted_before, sent), DRAIN_TIMEOUT)
            wait_for(conn.opus_recv.empty, DRAIN_TIMEOUT)
            time.sleep(0.4)
            last, heard = conn.stats.receive, listener.stats()
            drops_after = kernel_drops(port)
            mode = conn.mode
            conn.stop_listening(timeout=10)
            conn.disconnect()
        finally:
            voice.close()
    assert first is not None and at_end is not None and last is not None
    shares = after.since(before)
    window = after.wall - before.wall
    delivered = last.delivered - first.delivered
    rate = sent / max(fake["elapsed"], 1e-9)
    kernel = "n/a" if drops_before is None or drops_after is None else drops_after - drops_before
    dropped = {k: v - first.dropped.get(k, 0) for k, v in last.dropped.items()}
    blocks = heard.blocks - heard_first.blocks
    print(
        f"setup: {speakers} speakers added (a DAVE group of {speakers + 2}: {speakers} epoch "
        f"changes) in {added:.1f} s; warm-up {int(warm['sent'])} frames; mode {mode}; "
        f"receive_queue_size {queue_size}; sink {'WaveSink' if wave else 'counting'}"
    )
    print(
        f"fake side: {sent} frames sent in {fake['elapsed']:.2f} s = {rate:.0f}/s "
        f"({rate / (speakers * 50) * 100:.1f} % of {speakers * 50}/s), "
        f"{int(fake['late_ticks'])} of {int(fake['ticks'])} ticks late, "
        f"{int(fake['failed'])} sends failed; fake process {fake['process_cpu'] / window:.2f} "
        "of a core"
    )
    print(
        f"received: {delivered} delivered of {sent} sent ({delivered / max(sent, 1) * 100:.1f} %)"
        f"{'' if caught_up else ' (some not accounted for within the drain wait)'}; "
        f"kernel drops (socket buffer full) {kernel}; "
        f"dropped {({k: v for k, v in dropped.items() if v}) or 'none'}; "
        f"DAVE failures {last.dave_failures - first.dave_failures}; "
        f"unmapped {last.unmapped - first.unmapped}"
    )
    print(
        f"opus_recv: overflowed {last.overflowed - first.overflowed} (oldest discarded: the "
        f"listener did not keep up), {backlog} waiting when the speaking ended"
    )
    print(
        f"decoded: {blocks} blocks of 20 ms written ({blocks / max(sent, 1) * 100:.1f} % of "
        f"the frames sent, silence and concealment included), concealed "
        f"{heard.concealed - heard_first.concealed} (FEC "
        f"{heard.recovered_by_fec - heard_first.recovered_by_fec}), bad packets "
        f"{heard.bad_packets - heard_first.bad_packets}, late or duplicate "
        f"{heard.late_or_duplicate - heard_first.late_or_duplicate}, "
        f"silence {(heard.silence_samples - heard_first.silence_samples) / 48000:.1f} s, "
        f"users {len(heard.users)}"
    )
    received = at_end.delivered - first.delivered
    print(f"CPU while the members spoke ({window:.2f} s), fraction of one core:")
    print(
        f"  {RECEIVER:18} {shares[RECEIVER]:6.3f}   "
        f"{after.cpu_ns(before, RECEIVER) / max(received, 1) / 1000:6.1f} us per packet delivered"
    )
    print(
        f"  {LISTENER + ':*':18} {shares[LISTENER]:6.3f}   "
        f"{after.cpu_ns(before, LISTENER) / max(blocks, 1) / 1000:6.1f} us per block written"
    )
    print(f"  {'whole process':18} {shares['process']:6.3f}")
    print(
        f"  (one Decoder.decode alone on this machine: {decode_floor(frames):.1f} us per 20 ms "
        "frame)"
    )
    sys.stdout.flush()


# -- part 3: send pacing while receiving -----------------------------------------------------


@dataclass
class SendRun:
    conns: int
    speakers: int
    receivers: int
    figures: dict[str, float]


def send_run(
    count: int,
    frames: list[bytes],
    speak_frames: list[bytes],
    speakers: int,
    receivers: int,
    listen: bool,
) -> SendRun:
    """`bench_send.run`'s measurement (DAVE on, paced producer) with `speakers` members
    speaking into the first `receivers` connections throughout."""
    first = min(receivers, count)  # the receiving ones (also reported apart without speakers)
    receivers = first if speakers else 0
    with remote_fake(dave=True) as (gateway, remote):
        voice = Voice(gateway, queue_size=len(frames) + 8)
        try:
            conns = [
                voice.join_channel(
                    FIRST_GUILD + i, FIRST_CHANNEL + i, receive=i < receivers, timeout=120
                )
                for i in range(count)
            ]
            for k in range(receivers):
                remote.add(FIRST_CHANNEL + k, speakers // receivers + (k < speakers % receivers))
            for conn in conns:
                if not conn.wait_for_e2ee(30):
                    raise RuntimeError("DAVE did not settle")
            for conn in conns[:receivers]:
                if listen:
                    conn.listen(CountingSink())
            speaking = 0.0
            if receivers:
                remote.speak(WARMUP, speak_frames)
                remote.done(WARMUP + 60)
                time.sleep(0.3)  # let the last of the warm-up be read
                overflowed_before = overflowed(conns[:receivers])
                accounted_before = accounted(conns[:receivers])
                delivered_before = delivered(conns[:receivers])
                drops_before = sum(kernel_drops(local_port(c)) or 0 for c in conns[:receivers])
                speaking = len(frames) * TICK + 1.5  # the whole send window, and some
                remote.speak(speaking, speak_frames)
            remote.capture()  # the fake only stamps our packets while we stream
            before = Usage.now()
            for conn in conns:
                conn.speaking()
            produce(conns, frames, False)
            for conn in conns:
                conn.stop_speaking(timeout=len(frames) * TICK + 30)
            after = Usage.now()
            stats = [conn.stats for conn in conns]
            chorus: dict[str, float] = {}
            received = sent_to_us = kernel = discarded = 0
            if receivers:
                chorus = remote.done(speaking + 60)
                sent_to_us = int(chorus["sent"])
                wait_for(
                    all_accounted(conns[:receivers], accounted_before, sent_to_us), DRAIN_TIMEOUT
                )
                received = delivered(conns[:receivers]) - delivered_before
                discarded = overflowed(conns[:receivers]) - overflowed_before
                kernel = sum(kernel_drops(local_port(c)) or 0 for c in conns[:receivers])
                kernel -= drops_before
            ssrcs = [conn.ssrc for conn in conns if conn.ssrc is not None]
            apart = {conn.ssrc for conn in conns[:first]}
            for conn in conns:
                conn.stop_listening(timeout=10)
                conn.disconnect()
            expected = frames + [OPUS_SILENCE_FRAME] * SILENCE_FRAMES_ON_STOP
            by_ssrc, digests, udp_errors = remote.frames(len(expected) * len(ssrcs))
        finally:
            voice.close()
    deviations, lost, altered = receiver_figures(by_ssrc, digests, ssrcs, expected, len(frames))
    firsts = receiver_figures(
        by_ssrc, digests, [s for s in ssrcs if s in apart], expected, len(frames)
    )[0]
    others = receiver_figures(
        by_ssrc, digests, [s for s in ssrcs if s not in apart], expected, len(frames)
    )[0]
    shares = after.since(before)
    packets = sum(s.frames_sent for s in stats)
    figures = {
        "p50_ms": _percentile(deviations, 50),
        "p99_ms": _percentile(deviations, 99),
        "max_ms": max(deviations, default=0.0),
        "p99_first_ms": _percentile(firsts, 99),
        "p99_others_ms": _percentile(others, 99),
        "lost": lost,
        "altered": altered,
        "udp_errors": udp_errors,
        "late": sum(s.late_frames for s in stats),
        "stalls": sum(s.stalls for s in stats),
        "sender_us": after.cpu_ns(before, SENDER) / max(packets, 1) / 1000,
        "sender_share": shares[SENDER],
        "receiver_share": shares[RECEIVER],
        "listener_share": shares[LISTENER],
        "process_share": shares["process"],
        "received": received,
        "sent_to_us": sent_to_us,
        "overflowed": discarded,
        "kernel_drops": kernel,
        "chorus_rate": sent_to_us / chorus["elapsed"] if chorus else 0.0,
    }
    return SendRun(count, speakers if receivers else 0, first, figures)


def part_send(
    count: int, speakers: int, receivers: int, seconds: float, listen: bool, runs: int
) -> None:
    frames = asset_frames(seconds)
    speak_frames = opus_frames()
    print(
        f"== send: pacing of {count} sending connections, without and with receiving "
        f"(load {load()}) =="
    )
    print(
        f"DAVE on, {seconds:g} s of audio per connection, paced producer; receiving: "
        f"{speakers} speakers into {min(receivers, count)} connection(s), "
        f"{'decoded by conn.listen' if listen else 'not decoded (opus_recv overflows)'}"
    )
    header = (
        f"  {'':22} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'p99 rcv':>7} {'p99 oth':>7} "
        f"{'lost':>5} {'altered':>7} {'late':>5} {'stalls':>6} {'sender us/pkt':>13} "
        f"{'sender':>6} {'recv':>6} {'listen':>6} {'process':>7}  received"
    )
    print(
        f"  (p99 rcv: the first {min(receivers, count)} connection(s), the receiving ones; "
        "p99 oth: the others; sender, recv, listen, process: fraction of one core during the "
        "send window)"
    )
    print(header)
    for _ in range(runs):
        for with_speakers in (0, speakers):
            run = send_run(count, frames, speak_frames, with_speakers, receivers, listen)
            f = run.figures
            label = f"+ receiving {run.speakers} spk" if run.speakers else "sending only"
            received = (
                f"{int(f['received'])}/{int(f['sent_to_us'])}, kernel drops "
                f"{int(f['kernel_drops'])}, overflowed {int(f['overflowed'])}, "
                f"fake {f['chorus_rate']:.0f} frames/s"
                if run.speakers
                else "-"
            )
            print(
                f"  {label:22} {f['p50_ms']:>7.3f} {f['p99_ms']:>7.3f} {f['max_ms']:>7.3f} "
                f"{f['p99_first_ms']:>7.3f} {f['p99_others_ms']:>7.3f} "
                f"{int(f['lost']):>5} {int(f['altered']):>7} {int(f['late']):>5} "
                f"{int(f['stalls']):>6} {f['sender_us']:>13.1f} {f['sender_share']:>6.3f} "
                f"{f['receiver_share']:>6.3f} {f['listener_share']:>6.3f} "
                f"{f['process_share']:>7.3f}  {received}"
            )
            sys.stdout.flush()


# -- command line ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parts = parser.add_subparsers(dest="part", required=True)
    packet = parts.add_parser("packet", help="CPU per received datagram")
    packet.add_argument("--seconds", type=float, default=3.0, help="per row; default 3")
    packet.add_argument(
        "--speakers", type=int, nargs="+", default=[1, 100], help="counts; default 1 100"
    )
    packet.add_argument(
        "--rounds", type=int, default=20_000, help="datagrams in the core loop; default 20000"
    )
    many = parts.add_parser("speakers", help="many members into one connection, decoded")
    many.add_argument("--speakers", type=int, default=100, help="default 100")
    many.add_argument("--seconds", type=float, default=10.0, help="default 10")
    many.add_argument(
        "--queue-size", type=int, default=100, help="Voice(receive_queue_size=); default 100"
    )
    many.add_argument(
        "--wave",
        action="store_true",
        help="decode into a WaveSink in a temporary directory (~190 kB per member-second)",
    )
    send = parts.add_parser("send", help="send pacing without and with receiving")
    send.add_argument("--conns", type=int, default=20, help="sending connections; default 20")
    send.add_argument("--speakers", type=int, default=20, help="speakers in all; default 20")
    send.add_argument(
        "--receivers", type=int, default=1, help="connections that receive; default 1"
    )
    send.add_argument("--seconds", type=float, default=5.0, help="default 5")
    send.add_argument("--runs", type=int, default=2, help="pairs of runs, interleaved; default 2")
    send.add_argument(
        "--no-listen", dest="listen", action="store_false", help="receive without decoding"
    )
    parts.add_parser("all", help="the three parts with their defaults")
    args = parser.parse_args()
    if args.part in ("packet", "all"):
        if args.part == "all":
            part_packet(3.0, [1, 100], 20_000)
        else:
            part_packet(args.seconds, args.speakers, args.rounds)
    if args.part in ("speakers", "all"):
        if args.part == "all":
            part_speakers(100, 10.0, 100, False)
        else:
            part_speakers(args.speakers, args.seconds, args.queue_size, args.wave)
    if args.part in ("send", "all"):
        if args.part == "all":
            part_send(20, 20, 1, 5.0, True, 2)
        else:
            part_send(
                args.conns, args.speakers, args.receivers, args.seconds, args.listen, args.runs
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

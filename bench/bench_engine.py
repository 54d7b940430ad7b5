"""The shared sender on its own: CPU per packet of one ``UdpSender`` pacing N streams.

No fake Discord and no DAVE: N streams with full queues, each on its own UDP socket to one
loopback sink that never reads (the kernel drops what overflows, so no receiver is woken), on
the real clock, for a few seconds. Beside it, the floor: a bare loop that wakes every 20 ms,
sends N prepared packets and packetizes the next N (no queue, no schedule, no state). Both print
the on-CPU time of their thread per packet (``/proc/self/task/<tid>/schedstat``, Linux).

Run: ``python -m bench.bench_engine --conns 100 --seconds 3``.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import threading
import time

from discord_voice._shell.opus_queue import OpusQueue
from discord_voice._shell.udp_sender import OutboundStream, Transport, UdpSender
from discord_voice.clock import SystemClock
from discord_voice.core.crypto import make_cipher
from discord_voice.core.packetizer import Packetizer

FRAME = b"\xfc" + bytes(80)  # a 20 ms CELT packet's shape; content irrelevant
MODE = "aead_xchacha20_poly1305_rtpsize"


def _thread_cpu_ns(thread: threading.Thread) -> int:
    with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
        return int(f.read().split()[0])


def _sockets(count: int, sink: socket.socket) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(sink.getsockname())
        socks.append(sock)
    return socks


def engine(count: int, seconds: float) -> float:
    """The sender's thread CPU per packet (us) for `count` streams of `seconds` each."""
    frames = int(seconds * 50)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    socks = _sockets(count, sink)
    queues = []
    for _ in range(count):
        queue = OpusQueue(frames + 1)
        for _ in range(frames):
            queue.put(FRAME)
        queues.append(queue)
    sender = UdpSender(SystemClock())
    streams: list[OutboundStream] = []
    try:
        for i, (sock, queue) in enumerate(zip(socks, queues, strict=True)):
            transport = Transport(sock, Packetizer(i + 1, make_cipher(MODE, bytes(32))))
            streams.append(sender.attach(str(i), queue, transport, print))
        thread = sender.thread
        assert thread is not None
        before = _thread_cpu_ns(thread)
        for queue in queues:
            queue.join()
        used = _thread_cpu_ns(thread) - before
        packets = sum(stream.stats().pacing.frames_sent for stream in streams)
    finally:
        for stream in streams:
            sender.detach(stream)
        for sock in [*socks, sink]:
            sock.close()
    return used / max(packets, 1) / 1000


def floor(count: int, seconds: float) -> float:
    """A bare 20 ms loop's CPU per packet (us): send prepared packets, packetize the next."""
    ticks = int(seconds * 50)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    socks = _sockets(count, sink)
    packetizers = [Packetizer(i + 1, make_cipher(MODE, bytes(32))) for i in range(count)]
    try:
        prepared = [p.packetize(FRAME) for p in packetizers]
        start = time.thread_time()
        origin = math.ceil(time.monotonic() / 0.020) * 0.020 + 0.020
        for n in range(ticks):
            delay = origin + n * 0.020 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for sock, packet in zip(socks, prepared, strict=True):
                sock.send(packet)
            prepared = [p.packetize(FRAME) for p in packetizers]
        return (time.thread_time() - start) / (count * ticks) * 1e6
    finally:
        for sock in [*socks, sink]:
            sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"{'conns':>5} {'sender us/pkt':>13} {'floor us/pkt':>12}")
    for count in args.conns:
        print(
            f"{count:>5} {engine(count, args.seconds):>13.1f} {floor(count, args.seconds):>12.1f}"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The floor of one packet: what encrypting and sending costs with nothing else around it.

One thread wakes every 20 ms and sends one packet on each of ``--conns`` connected loopback
sockets, back to back: the DAVE transform (our session in a libdave member's group, when
dave-py is installed), the RTP header and AES-256-GCM seal (``Packetizer.packetize``) and a
non-blocking ``send(2)`` (``_shell/datagram.send_datagram``). No queue, no state, no producer,
no gateway: the library's sender thread (``bench_engine``, ``bench_send``) is measured against
this. The figure is the thread's CPU time (``time.thread_time``) per packet.

Run: ``python -m bench.bench_floor [--conns 100] [--seconds 5]`` (repository root, .venv), on a
quiet machine.
"""

from __future__ import annotations

import argparse
import math
import socket
import time

from bench.bench_packet import KEY, dave_transform
from discord_voice._shell.datagram import send_datagram
from discord_voice.core.crypto import make_cipher
from discord_voice.core.packetizer import FrameTransform, Packetizer

FRAME = b"\xf8" + bytes(159)  # a 20 ms CELT frame, 160 bytes (64 kbit/s)
TICK = 0.020


def floor(conns: int, ticks: int, transform: FrameTransform | None) -> float:
    """Microseconds of this thread's CPU per packet sent."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    socks: list[socket.socket] = []
    try:
        pairs: list[tuple[socket.socket, Packetizer]] = []
        for ssrc in range(1, conns + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.connect(sink.getsockname())
            cipher = make_cipher("aead_aes256_gcm_rtpsize", KEY)
            pairs.append((sock, Packetizer(ssrc, cipher, transform=transform)))
        started = time.thread_time()
        origin = math.ceil(time.monotonic() / TICK) * TICK + TICK
        for n in range(ticks):
            delay = origin + n * TICK - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for sock, packetizer in pairs:
                error = send_datagram(sock, packetizer.packetize(FRAME, 960))
                if error:
                    raise OSError(error, "send failed")
        return (time.thread_time() - started) / (conns * ticks) * 1e6
    finally:
        for sock in [*socks, sink]:
            sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=100, help="sockets; default 100")
    parser.add_argument("--seconds", type=float, default=5.0, help="per figure; default 5")
    args = parser.parse_args()
    ticks = max(1, round(args.seconds / TICK))
    transform = dave_transform()
    print(f"{args.conns} sockets, {ticks} ticks of 20 ms, us of CPU per packet:")
    print(f"  seal + send          {floor(args.conns, ticks, None):6.1f}")
    if transform is None:
        print("  DAVE + seal + send   skipped (dave-py is not installed)")
    else:
        print(f"  DAVE + seal + send   {floor(args.conns, ticks, transform):6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-packet cost: microseconds per ``Packetizer.packetize`` and where they go.

For each transport mode (AES-256-GCM when this CPU has it, XChaCha20-Poly1305) it times
``Packetizer.packetize`` on a 160-byte Opus frame (a 20 ms frame at 64 kbit/s): as the library
does it (libsodium called through PyNaCl's cffi module), with the cipher forced onto PyNaCl's
public binding (the fallback, and the path every packet took before), and with a DAVE transform
(our davey session in a group with one libdave member, as in a DAVE call). Then ``cipher.seal``
both ways, and the steps a packet is made of, each timed alone with the same inputs: building
the RTP header, writing the nonce counter, copying the header into the packet buffer, the AEAD
call in place, copying the packet out; and for the binding, the call and the concatenation.

Each figure is the best of ``--runs`` (default 5) runs of ``--iterations`` calls, timed with
``time.perf_counter_ns``: the best run is the one least disturbed by other processes, so run it
on a quiet machine (``uptime``) and compare figures from the same run.

Run: ``python -m bench.bench_packet`` (from the repository root, in the project's .venv).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable

import nacl
import nacl.bindings

from discord_voice.core.crypto import aes256_gcm_available, make_cipher
from discord_voice.core.packetizer import FrameTransform, Packetizer
from discord_voice.core.rtp import FIXED_HEADER, encode_header

AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
KEY = bytes(range(32))
SSRC = 0x0001E240
FRAME = b"\xf8" + bytes(range(159))  # TOC: CELT fullband 20 ms, code 0; 160 bytes in all
RUNS = 5  # default of --runs


def best_of(call: Callable[[], object], iterations: int, runs: int = RUNS) -> float:
    """Microseconds per call: the fastest of ``runs`` runs of ``iterations`` calls."""
    best = None
    for _ in range(runs):
        started = time.perf_counter_ns()
        for _ in range(iterations):
            call()
        elapsed = time.perf_counter_ns() - started
        best = elapsed if best is None or elapsed < best else best
    assert best is not None
    return best / iterations / 1000


def dave_transform() -> FrameTransform | None:
    """Our DAVE session after joining a libdave member's group, or None without dave-py."""
    try:
        import dave  # noqa: F401 - only whether it is there
    except ImportError:
        return None
    from bench.dave_peer import CHANNEL, ME, join_with_peer
    from discord_voice.core.dave import DaveProtocol

    client = DaveProtocol(ME, CHANNEL)
    join_with_peer(client.start, client.receive, client.clients_connect)
    assert client.ready, "the DAVE session has no key"
    return client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iterations",
        type=int,
        default=20_000,
        help="calls per run; default 20000",
    )
    parser.add_argument("--runs", type=int, default=RUNS, help="runs per figure; default 5")
    args = parser.parse_args()
    iterations: int = args.iterations

    def measure(call: Callable[[], object]) -> float:
        return best_of(call, iterations, args.runs)

    modes = [AES, XCHACHA] if aes256_gcm_available() else [XCHACHA]
    transform = dave_transform()
    print(
        f"Python {sys.version.split()[0]}, PyNaCl {nacl.__version__}, frame {len(FRAME)} bytes, "
        f"best of {args.runs} x {iterations} calls, microseconds per call"
    )
    warm_up = Packetizer(SSRC, make_cipher(XCHACHA, KEY)).packetize
    measure(lambda: warm_up(FRAME))  # let the CPU clock up before measuring

    for mode in modes:
        print(f"{mode}:")
        rows: list[tuple[str, Callable[[], object]]] = []
        plain = Packetizer(SSRC, make_cipher(mode, KEY)).packetize
        rows.append(("packetize", lambda: plain(FRAME)))  # noqa: B023
        fallback_cipher = make_cipher(mode, KEY)
        fallback_cipher._raw = None  # type: ignore[attr-defined]  # PyNaCl's public binding
        fallback = Packetizer(SSRC, fallback_cipher).packetize
        rows.append(("packetize, pynacl binding", lambda: fallback(FRAME)))  # noqa: B023
        if transform is not None:
            with_dave = Packetizer(SSRC, make_cipher(mode, KEY), transform=transform).packetize
            rows.append(("packetize with DAVE", lambda: with_dave(FRAME)))  # noqa: B023
        for name, call in rows:
            print(f"  {name:30}{measure(call):6.2f}")
        breakdown(mode, measure)
    if transform is not None:
        figure = measure(lambda: transform.transform(FRAME))
        print(f"{'dave transform alone':32}{figure:6.2f}")
    else:
        print("dave: skipped (dave-py is not installed)")
    return 0


def breakdown(mode: str, measure: Callable[[Callable[[], object]], float]) -> None:
    """Time each step of a packet alone, with the inputs a packet of ``mode`` has."""
    from nacl._sodium import ffi, lib

    header = encode_header(1234, 5678, SSRC)
    cipher = make_cipher(mode, KEY)
    public_cipher = make_cipher(mode, KEY)
    public_cipher._raw = None  # type: ignore[attr-defined]
    if mode == AES:
        nonce_struct = struct.Struct(">I8x")
        public = nacl.bindings.crypto_aead_aes256gcm_encrypt
        raw = lib.crypto_aead_aes256gcm_encrypt
    else:
        nonce_struct = struct.Struct(">I20x")
        public = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
        raw = lib.crypto_aead_xchacha20poly1305_ietf_encrypt
    nonce = nonce_struct.pack(7)
    sealed = public(FRAME, header, nonce, KEY)
    size = len(header) + len(sealed) + 4
    out = ffi.new("unsigned char[]", size)
    view = ffi.buffer(out)
    nonce_buffer = ffi.new("unsigned char[]", nonce_struct.size)
    nonce_view = ffi.buffer(nonce_buffer)
    counter = struct.Struct(">I")
    pack = FIXED_HEADER.pack

    def header_copy() -> None:
        view[0:12] = header

    def raw_call() -> object:
        return raw(out + 12, ffi.NULL, FRAME, len(FRAME), out, 12, ffi.NULL, nonce_buffer, KEY)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("cipher.seal", lambda: cipher.seal(header, FRAME, 7)),
        ("cipher.seal, pynacl binding", lambda: public_cipher.seal(header, FRAME, 7)),
        ("header: encode_header", lambda: encode_header(1234, 5678, SSRC)),
        ("header: one Struct.pack", lambda: pack(0x80, 0x78, 1234, 5678, SSRC)),
        ("cffi path: nonce pack_into", lambda: counter.pack_into(nonce_view, 0, 7)),
        ("cffi path: header copy", header_copy),
        ("cffi path: aead in place", raw_call),
        ("cffi path: counter pack_into", lambda: counter.pack_into(view, size - 4, 7)),
        ("cffi path: copy out", lambda: view[0:size]),
        ("pynacl: nonce Struct.pack", lambda: nonce_struct.pack(7)),
        ("pynacl: aead binding", lambda: public(FRAME, header, nonce, KEY)),
        ("pynacl: join 3 parts", lambda: b"".join((header, sealed, nonce[:4]))),
    ]
    for name, call in steps:
        print(f"    {name:28}{measure(call):6.2f}")


if __name__ == "__main__":
    sys.exit(main())

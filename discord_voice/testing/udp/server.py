"""The fake voice UDP server: answers IP discovery, decrypts and records every RTP packet.

One socket on 127.0.0.1 serves every voice session; packets are told apart by SSRC (allocated in
the voice gateway's Ready). What it received is in ``fake.frames()``; what it could not use
(malformed packets, unknown SSRCs, failed authentication, audio before Session Description) is in
``fake.udp_errors`` — the receive thread never dies on bad input.

Arrival times come from the kernel (SO_TIMESTAMPNS on Linux, CLOCK_REALTIME, i.e. the
`time.time()` clock), so pacing can be measured without the fake's own scheduling jitter.
`set_impairment` drops, duplicates, reorders or delays decrypted packets before they are
recorded (see `impairment`).

The same socket sends what Discord's voice server forwards to clients (other members' audio,
RTCP, video; built by `outbound`): `seal_for` encrypts for one client with its mode, key and
its own outgoing nonce counter, `send` puts a datagram on the wire from the server's address
(or, to test that clients check the source, from another socket). `reserve_ssrc` hands out
SSRCs for the members the fake plays, never equal to a client's.
"""

from __future__ import annotations

import logging
import secrets
import select
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from discord_voice.testing.records import ReceivedFrame, Recorder, VoiceSession
from discord_voice.testing.udp.impairment import UdpImpairment
from discord_voice.testing.udp.packets import (
    RtpPacket,
    TransportCipher,
    discovery_response,
    parse_discovery_request,
    parse_rtp,
)
from discord_voice.testing.world import Script

if TYPE_CHECKING:
    from discord_voice.testing.dave.hub import DaveHub

__all__ = ["FakeUdpServer"]

# Linux's SO_TIMESTAMPNS (== SCM_TIMESTAMPNS); the socket module does not export it.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@ll")
_MAX_DATAGRAM = 4096
_MAX_BATCH = 512
_RCVBUF = 4 << 20
_CAPTURE_PAUSE = 0.002  # seconds between drains while capturing (the kernel stamps arrivals)
_SEND_WAIT = 1.0  # seconds a send waits for room in the socket's send buffer

_log = logging.getLogger("discord_voice.testing")


@dataclass
class _Route:
    session: VoiceSession
    cipher: TransportCipher | None = None
    problem: str = ""  # why `cipher` is None after a session description (unsupported mode)
    sent_nonce: int = 0  # the nonce counter of the last packet sealed for this client


@dataclass
class _Decoded:
    arrival: float
    packet: RtpPacket
    route: _Route
    opus: bytes
    size: int
    mode: str
    e2ee_payload: bytes | None = None
    dave: str = "off"
    violation: str = ""


class FakeUdpServer:
    """One UDP socket and its receive thread ``fake-udp-recv``."""

    def __init__(
        self,
        recorder: Recorder,
        script: Script,
        speaking_grace: Callable[[], float],
        dave: DaveHub | None = None,
    ) -> None:
        self.recorder = recorder
        self.dave = dave  # DAVE-decrypts frames of DAVE calls (None: the fake has DAVE off)
        self.script = script
        self.speaking_grace = speaking_grace
        self._lock = threading.Lock()
        self._routes: dict[int, _Route] = {}
        self._reserved: set[int] = set()  # SSRCs of members the fake plays (`reserve_ssrc`)
        self._told: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._kernel_timestamps = False
        self._port = 0
        self._impairment: UdpImpairment[_Decoded] | None = None  # set by the test thread
        self._capturing = False  # set by the test thread (`capture`)
        # RTP datagrams kept undecoded while capturing (receive thread only)
        self._backlog: list[tuple[bytes, float, str]] = []
        self._active: UdpImpairment[_Decoded] | None = None  # used by the receive thread

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("udp server not started")
        return self._port

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        except OSError:
            pass
        if sys.platform.startswith("linux"):
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._kernel_timestamps = True
            except OSError:
                pass
        self._sock = sock
        self._port = int(sock.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="fake-udp-recv")
        self._thread.start()

    def begin_close(self) -> None:
        self._stop.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass

    def finish_close(self, deadline: float) -> None:
        self.begin_close()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    # -- used by the voice gateway -------------------------------------------------------------

    def add_session(self, session: VoiceSession) -> int:
        """Allocate a fresh non-zero SSRC routed to `session`."""
        with self._lock:
            ssrc = self._fresh_ssrc()
            self._routes[ssrc] = _Route(session, sent_nonce=secrets.randbits(32))
            return ssrc

    def _fresh_ssrc(self) -> int:
        """A random non-zero SSRC no client and no played member has (lock held)."""
        while True:
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self._routes and ssrc not in self._reserved:
                return ssrc

    # -- used to send what other members of a call say (see `outbound`) --------------------

    def reserve_ssrc(self) -> int:
        """A fresh non-zero SSRC for a member the fake plays (unique among clients and them)."""
        with self._lock:
            ssrc = self._fresh_ssrc()
            self._reserved.add(ssrc)
            return ssrc

    def release_ssrc(self, ssrc: int) -> None:
        with self._lock:
            self._reserved.discard(ssrc)

    def clients(self) -> list[int]:
        """SSRCs of the client sessions that have an address to send to, oldest first."""
        with self._lock:
            routes = list(self._routes.items())
            told = dict(self._told)
        return [s for s, r in routes if r.session.client_address or s in told]

    def destination(self, ssrc: int) -> tuple[str, int] | None:
        """Where datagrams for the client session `ssrc` go: the address it selected (op 1),
        else what IP discovery told it; None before either (or for an unknown SSRC)."""
        with self._lock:
            route = self._routes.get(ssrc)
            told = self._told.get(ssrc)
        if route is None:
            return None
        return route.session.client_address or told

    def seal_for(self, ssrc: int, aad: bytes, plaintext: bytes) -> bytes | None:
        """`plaintext` sealed for the client session `ssrc` with its mode and key and the next
        value of its outgoing nonce counter; None before its Session Description."""
        with self._lock:
            route = self._routes.get(ssrc)
            if route is None or route.cipher is None:
                return None
            route.sent_nonce = (route.sent_nonce + 1) & 0xFFFFFFFF
            cipher, counter = route.cipher, route.sent_nonce
        return cipher.seal(aad, plaintext, counter)

    def send(self, data: bytes, address: tuple[str, int], *, foreign: bool = False) -> None:
        """Send one datagram from the voice server's socket (`foreign`: from a fresh socket on
        another port, as a stranger would). A client that closed its socket is not an error."""
        try:
            if foreign:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                    stranger.bind(("127.0.0.1", 0))
                    stranger.sendto(data, address)
                return
            sock = self._sock
            if sock is None:
                raise RuntimeError("udp server not started")
            deadline = time.monotonic() + _SEND_WAIT
            while True:
                try:
                    sock.sendto(data, address)
                    return
                except BlockingIOError:  # the send buffer is full (non-blocking socket)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RuntimeError("the voice server's send buffer stayed full") from None
                    select.select([], [sock], [], left)
        except ConnectionRefusedError:
            pass  # an ICMP port unreachable from an earlier datagram: the client went away

    def set_key(self, ssrc: int, mode: str, key: bytes) -> None:
        try:
            cipher: TransportCipher | None = TransportCipher(mode, key)
            problem = ""
        except ValueError as exc:
            cipher, problem = None, str(exc)
        with self._lock:
            route = self._routes[ssrc]
            route.cipher, route.problem = cipher, problem

    def set_impairment(self, impairment: UdpImpairment[_Decoded] | None) -> None:
        """Impair what is recorded from now on (None: stop; packets still held are recorded)."""
        with self._lock:
            self._impairment = impairment
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"w")
            except OSError:
                pass

    def capture(self, on: bool) -> None:
        """While on, RTP datagrams are only stamped and kept; when turned off, the receive
        thread decrypts and records them in arrival order before anything newer. For load
        tests: the receive thread then keeps up with tens of thousands of packets a second."""
        with self._lock:
            self._capturing = on
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"c")
            except OSError:
                pass

    def told_address(self, ssrc: int) -> tuple[str, int] | None:
        """What IP discovery answered for `ssrc` (None if it never did)."""
        with self._lock:
            return self._told.get(ssrc)

    # -- the receive thread --------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        selector = selectors.DefaultSelector()
        selector.register(self._sock, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                timeout = 1.0
                wakeup = self._active.next_wakeup() if self._active is not None else None
                if wakeup is not None:
                    timeout = min(timeout, max(0.0, wakeup - time.monotonic()))
                for key, _ in selector.select(timeout=timeout):  # bounded; woken by begin_close
                    if key.fileobj is self._wake_r:
                        try:
                            self._wake_r.recv(64)
                        except OSError:
                            pass
                self._drain()
                if self._backlog:  # capturing: let packets gather (a remote server would not
                    self._stop.wait(_CAPTURE_PAUSE)  # make every send wake a local thread)
        finally:
            selector.close()

    def _drain(self) -> None:
        assert self._sock is not None
        with self._lock:
            capturing = self._capturing
        if not capturing and self._backlog:
            backlog, self._backlog = self._backlog, []
            for start in range(0, len(backlog), _MAX_BATCH):
                opened: list[_Decoded] = []
                refused: list[str] = []
                for data, arrival, where in backlog[start : start + _MAX_BATCH]:
                    self._decode(data, arrival, where, opened, refused)
                opened = self._impair(opened)
                if opened or refused:
                    self._commit(opened, refused)
        decoded: list[_Decoded] = []
        errors: list[str] = []
        for _ in range(_MAX_BATCH):
            try:
                data, ancdata, flags, address = self._sock.recvmsg(_MAX_DATAGRAM, 64)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from an earlier reply; not a packet
            except OSError as exc:
                errors.append(f"udp: receive failed: {exc}")
                break
            arrival = self._arrival(ancdata)
            where = f"udp from {address[0]}:{address[1]}"
            if flags & socket.MSG_TRUNC:
                errors.append(f"{where}: datagram larger than {_MAX_DATAGRAM} bytes")
            elif data[:1] == b"\x00":  # IP discovery starts with type 0x0001; RTP never does
                error = self._discovery(data, address)
                if error:
                    errors.append(f"{where}: {error}")
            elif capturing:
                self._backlog.append((data, arrival, where))
            else:
                self._decode(data, arrival, where, decoded, errors)
        decoded = self._impair(decoded)
        if decoded or errors:
            self._commit(decoded, errors)

    def _decode(
        self,
        data: bytes,
        arrival: float,
        where: str,
        decoded: list[_Decoded],
        errors: list[str],
    ) -> None:
        try:
            decoded.append(self._open(data, arrival))
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug in the fake: logged, recorded
            _log.exception("fake udp server failed on a packet")
            errors.append(f"{where}: fake internal error: {exc!r}")

    def _impair(self, decoded: list[_Decoded]) -> list[_Decoded]:
        with self._lock:
            wanted = self._impairment
        released: list[_Decoded] = []
        if wanted is not self._active:
            if self._active is not None:
                released = self._active.flush()
            self._active = wanted
        if self._active is None:
            return released + decoded
        now = time.monotonic()
        self._active.feed(decoded, now)
        return released + self._active.due(now)

    def _arrival(self, ancdata: list[tuple[int, int, bytes]]) -> float:
        if self._kernel_timestamps:
            for level, kind, payload in ancdata:
                ours = level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS
                if ours and len(payload) >= _TIMESPEC.size:
                    seconds, nanos = _TIMESPEC.unpack_from(payload)
                    return float(seconds) + float(nanos) / 1e9
        return time.time()

    def _discovery(self, data: bytes, address: tuple[str, int]) -> str:
        """Answer one IP discovery request; returns an error text or ""."""
        try:
            ssrc = parse_discovery_request(data)
        except ValueError as exc:
            return f"bad ip discovery request: {exc}"
        with self._lock:
            route = self._routes.get(ssrc)
        if route is None:
            return f"ip discovery request for unknown ssrc {ssrc}"
        if self.script.withheld("ip_discovery"):
            return ""
        ip, port = address[0], address[1]
        with self._lock:
            self._told[ssrc] = (ip, port)
        with self.recorder.changing():
            route.session.discovered_address = (ip, port)
        assert self._sock is not None
        try:
            self._sock.sendto(discovery_response(ssrc, ip, port), address)
        except OSError as exc:
            return f"could not answer ip discovery: {exc}"
        return ""

    def _open(self, data: bytes, arrival: float) -> _Decoded:
        packet = parse_rtp(data)
        with self._lock:
            route = self._routes.get(packet.ssrc)
        if route is None:
            raise ValueError(f"rtp packet for unknown ssrc {packet.ssrc}")
        cipher = route.cipher
        if cipher is None:
            raise ValueError(
                f"ssrc {packet.ssrc} seq {packet.sequence}: "
                + (route.problem or "rtp packet before the session description")
            )
        try:
            opus = cipher.open(packet)
        except ValueError as exc:
            raise ValueError(f"ssrc {packet.ssrc} seq {packet.sequence}: {exc}") from None
        decoded = _Decoded(arrival, packet, route, opus, len(data), cipher.mode)
        opened = self.dave.open_frame(route.session, opus) if self.dave is not None else None
        if opened is None:
            return decoded
        if opened.error:
            raise ValueError(f"ssrc {packet.ssrc} seq {packet.sequence}: {opened.error}")
        decoded.opus, decoded.e2ee_payload = opened.opus, opus
        decoded.dave, decoded.violation = opened.kind, opened.violation
        return decoded

    def _commit(self, decoded: list[_Decoded], errors: list[str]) -> None:
        rec = self.recorder
        grace = self.speaking_grace()
        with rec.changing():  # one wake-up for the whole batch
            rec.udp_errors.extend(errors)
            now = time.monotonic()
            for item in decoded:
                packet, session = item.packet, item.route.session
                frame = ReceivedFrame(
                    index=rec.take_index(),
                    arrival=item.arrival,
                    ssrc=packet.ssrc,
                    sequence=packet.sequence,
                    timestamp=packet.timestamp,
                    nonce=int.from_bytes(packet.nonce, "big"),
                    opus=item.opus,
                    size=item.size,
                    mode=item.mode,
                    e2ee_payload=item.e2ee_payload,
                    dave=item.dave,
                )
                rec.frames.append(frame)
                rec.frames_by_ssrc.setdefault(packet.ssrc, []).append(frame)
                if item.violation:
                    rec.violations.append(f"voice#{session.connection}: {item.violation}")
                violation = session._note_audio(now, grace)
                if violation:
                    rec.violations.append(f"voice#{session.connection}: {violation}")

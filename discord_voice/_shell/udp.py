"""The voice UDP socket: open it towards the voice server and run IP discovery on it."""

from __future__ import annotations

import logging
import socket

from discord_voice.clock import Clock
from discord_voice.core import ipdiscovery
from discord_voice.errors import ConnectionClosed, InvalidPacket, JoinTimeout

__all__ = ["discover_ip", "open_udp"]

log = logging.getLogger(__name__)


def open_udp(ip: str, port: int, *, io_timeout: float = 2.0) -> socket.socket:
    """A UDP socket connected to the voice server (the kernel then drops other senders)."""
    try:
        infos = socket.getaddrinfo(ip, port, type=socket.SOCK_DGRAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConnectionClosed(f"could not open a UDP socket to {ip}:{port}: {exc}") from exc
    try:
        sock.settimeout(io_timeout)
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise ConnectionClosed(f"could not open a UDP socket to {ip}:{port}: {exc}") from exc
    return sock


def discover_ip(
    sock: socket.socket,
    ssrc: int,
    *,
    clock: Clock,
    deadline: float,
    timeout: float,
    resend_every: float = 0.5,
) -> tuple[str, int]:
    """Ask the voice server for our external address; resend until `deadline` (on `clock`).

    The socket timeout of each receive is what remains until the next resend on `clock`
    (under a fake clock: a resend every `resend_every` real seconds until the test advances
    past `deadline`). Stray or malformed datagrams are skipped. Raises `JoinTimeout` (stage
    ``ip_discovery``) when no valid reply arrives in time, `ConnectionClosed` when the socket
    fails.
    """
    request = ipdiscovery.build_request(ssrc)
    original_timeout = sock.gettimeout()
    try:
        while True:
            now = clock.monotonic()
            if now >= deadline:
                raise JoinTimeout(
                    "ip_discovery", timeout, "no reply from the voice server over UDP"
                )
            try:
                sock.send(request)
            except OSError as exc:
                raise ConnectionClosed(f"ip discovery send failed: {exc}") from exc
            resend_at = min(deadline, now + resend_every)
            while (remaining := resend_at - clock.monotonic()) > 0:
                sock.settimeout(min(remaining, resend_every))
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    break
                except OSError as exc:
                    raise ConnectionClosed(f"ip discovery receive failed: {exc}") from exc
                if not ipdiscovery.is_response(data):
                    continue
                try:
                    return ipdiscovery.parse_response(data, ssrc)
                except InvalidPacket as exc:
                    log.warning("ignoring an invalid ip discovery reply: %s", exc)
    finally:
        sock.settimeout(original_timeout)

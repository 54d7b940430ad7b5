"""IP discovery: learn our external address and port from Discord's voice UDP server.

The request and the reply are both 74 bytes, every number big-endian::

    type (u16: 1 request, 2 reply) | length (u16: 70) | ssrc (u32)
    | address (64 bytes: zero in the request, NUL-terminated ASCII in the reply) | port (u16)

The request goes out on the same UDP socket that will carry audio; the reply's address and port
are what Select Protocol tells the voice gateway.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from discord_voice.errors import InvalidPacket, LocalProtocolError

__all__ = [
    "DISCOVERY_PACKET_SIZE",
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "build_request",
    "is_response",
    "parse_response",
]

#: Size of both the request and the reply.
DISCOVERY_PACKET_SIZE: Final = 74
#: Packet type of a request (client -> server).
REQUEST_TYPE: Final = 0x0001
#: Packet type of a reply (server -> client).
RESPONSE_TYPE: Final = 0x0002

#: The length field: bytes after the type and length fields.
_BODY_LENGTH: Final = DISCOVERY_PACKET_SIZE - 4
# type, length, ssrc, 64 address bytes, port
_PACKET = struct.Struct(">HHI64sH")
_RESPONSE_PREFIX: Final = struct.pack(">HH", RESPONSE_TYPE, _BODY_LENGTH)


def build_request(ssrc: int) -> bytes:
    """Return the 74-byte discovery request for ``ssrc`` (the SSRC from Ready)."""
    if isinstance(ssrc, bool) or not isinstance(ssrc, int) or not 0 <= ssrc <= 0xFFFFFFFF:
        raise LocalProtocolError(f"ssrc must be an integer in 0..{0xFFFFFFFF}, got {ssrc!r}")
    return _PACKET.pack(REQUEST_TYPE, _BODY_LENGTH, ssrc, b"", 0)


def is_response(data: bytes | bytearray | memoryview) -> bool:
    """Cheap test whether ``data`` looks like a discovery reply (size, type and length field).

    Lets a UDP reader skip stray packets (RTP, RTCP, keepalives) without raising.
    """
    return len(data) == DISCOVERY_PACKET_SIZE and data[:4] == _RESPONSE_PREFIX


def parse_response(
    data: bytes | bytearray | memoryview, ssrc: int | None = None
) -> tuple[str, int]:
    """Return ``(address, port)`` from a discovery reply; raise `InvalidPacket` if malformed.

    When ``ssrc`` is given, the reply must echo it. The address is returned as the server wrote
    it, after checking it is a valid IPv4 or IPv6 address.
    """
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    if size != DISCOVERY_PACKET_SIZE:
        raise InvalidPacket(
            f"ip discovery reply is {size} bytes, expected {DISCOVERY_PACKET_SIZE}", data
        )
    kind, length, reply_ssrc, raw_address, port = _PACKET.unpack(data)
    if kind != RESPONSE_TYPE:
        raise InvalidPacket(
            f"ip discovery reply has type 0x{kind:04x}, expected 0x{RESPONSE_TYPE:04x}", data
        )
    if length != _BODY_LENGTH:
        raise InvalidPacket(
            f"ip discovery reply has length field {length}, expected {_BODY_LENGTH}", data
        )
    if ssrc is not None and reply_ssrc != ssrc:
        raise InvalidPacket(f"ip discovery reply is for ssrc {reply_ssrc}, expected {ssrc}", data)
    end = raw_address.find(b"\x00")
    if end < 0:
        raise InvalidPacket("ip discovery reply address is not nul-terminated", data)
    if end == 0:
        raise InvalidPacket("ip discovery reply has an empty address", data)
    try:
        address = raw_address[:end].decode("ascii")
        ipaddress.ip_address(address)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        shown = raw_address[:end].decode("ascii", "backslashreplace")
        raise InvalidPacket(
            f"ip discovery reply address {shown!r} is not an ipv4 or ipv6 address", data
        ) from None
    if port == 0:
        raise InvalidPacket("ip discovery reply has port 0", data)
    return address, port

"""IP discovery: exact request bytes, reply parsing (big-endian port, IPv6), malformed replies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voice.core.ipdiscovery import (
    DISCOVERY_PACKET_SIZE,
    build_request,
    is_response,
    parse_response,
)
from discord_voice.errors import InvalidPacket, LocalProtocolError


def reply(
    address: bytes = b"203.0.113.7",
    port: bytes = b"\xc3\x54",
    ssrc: bytes = b"\x00\x01\xe2\x40",
    head: bytes = b"\x00\x02\x00\x46",
) -> bytes:
    """A reply laid out by hand (not with the code under test)."""
    return head + ssrc + address.ljust(64, b"\x00") + port


def test_request_exact_bytes() -> None:
    request = build_request(0x01020304)
    assert len(request) == DISCOVERY_PACKET_SIZE == 74
    assert request == bytes.fromhex("0001 0046 01020304") + bytes(64) + b"\x00\x00"


def test_request_ssrc_is_big_endian() -> None:
    assert build_request(1)[4:8] == b"\x00\x00\x00\x01"
    assert build_request(0xFFFFFFFF)[4:8] == b"\xff\xff\xff\xff"


@pytest.mark.parametrize("ssrc", [-1, 2**32, True, 1.0])
def test_request_rejects_bad_ssrc(ssrc: int) -> None:
    with pytest.raises(LocalProtocolError, match="ssrc must be an integer"):
        build_request(ssrc)


def test_parse_reply_with_big_endian_port() -> None:
    # 50004 = 0xC354; read little-endian it would be 0x54C3 = 21699.
    assert parse_response(reply()) == ("203.0.113.7", 50004)


def test_parse_reply_checks_ssrc_when_given() -> None:
    assert parse_response(reply(), ssrc=123456) == ("203.0.113.7", 50004)
    with pytest.raises(InvalidPacket, match="ip discovery reply is for ssrc 123456, expected 7"):
        parse_response(reply(), ssrc=7)


@pytest.mark.parametrize(
    "address",
    ["2001:db8::1", "::1", "2001:0db8:0000:0000:0000:ff00:0042:8329", "::ffff:192.0.2.1"],
)
def test_parse_reply_ipv6(address: str) -> None:
    assert parse_response(reply(address=address.encode(), port=b"\x00\x50")) == (address, 80)


def test_parse_reply_maximum_values() -> None:
    data = reply(address=b"255.255.255.255", port=b"\xff\xff", ssrc=b"\xff" * 4)
    assert parse_response(data, ssrc=0xFFFFFFFF) == ("255.255.255.255", 65535)


def test_parse_reply_ignores_bytes_after_the_nul() -> None:
    data = reply(address=b"10.0.0.1\x00garbage")
    assert parse_response(data) == ("10.0.0.1", 50004)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (reply()[:70], "ip discovery reply is 70 bytes, expected 74"),
        (reply() + b"\x00", "ip discovery reply is 75 bytes, expected 74"),
        (b"", "ip discovery reply is 0 bytes, expected 74"),
        (reply(head=b"\x00\x01\x00\x46"), "ip discovery reply has type 0x0001, expected 0x0002"),
        (reply(head=b"\x02\x00\x00\x46"), "ip discovery reply has type 0x0200, expected 0x0002"),
        (reply(head=b"\x00\x02\x00\x47"), "ip discovery reply has length field 71, expected 70"),
        (reply(head=b"\x00\x02\x46\x00"), "ip discovery reply has length field 17920, expected"),
        (reply(address=b"1" * 64), "ip discovery reply address is not nul-terminated"),
        (reply(address=b""), "ip discovery reply has an empty address"),
        (reply(address=b"not.an.ip"), "address 'not.an.ip' is not an ipv4 or ipv6 address"),
        (reply(address=b"999.1.1.1"), "address '999.1.1.1' is not an ipv4 or ipv6 address"),
        (reply(address=b" 10.0.0.1"), "is not an ipv4 or ipv6 address"),
        (reply(address=b"10.0.0.\xff"), r"address '10.0.0.\\\\xff' is not an ipv4"),
        (reply(port=b"\x00\x00"), "ip discovery reply has port 0"),
    ],
)
def test_parse_reply_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(InvalidPacket, match=message) as info:
        parse_response(data)
    assert info.value.data == data[:64]


def test_our_request_is_not_a_reply() -> None:
    request = build_request(5)
    assert not is_response(request)
    with pytest.raises(InvalidPacket, match="type 0x0001"):
        parse_response(request)


def test_is_response() -> None:
    assert is_response(reply())
    assert not is_response(reply()[:73])
    assert not is_response(reply() + b"\x00")
    assert not is_response(reply(head=b"\x00\x02\x00\x00"))
    # An RTP packet of the same size is not mistaken for a reply.
    assert not is_response(b"\x80\x78" + bytes(72))
    assert not is_response(b"")


@settings(database=None, deadline=None, max_examples=300)
@given(st.binary(max_size=100))
def test_parse_any_bytes_raises_only_invalid_packet(data: bytes) -> None:
    looks_like_reply = is_response(data)
    try:
        address, port = parse_response(data)
    except InvalidPacket:
        return
    assert looks_like_reply
    assert 0 < port < 65536 and address


@settings(database=None, deadline=None, max_examples=150)
@given(
    ssrc=st.binary(min_size=4, max_size=4),
    address=st.one_of(
        st.binary(max_size=64),
        st.ip_addresses().map(lambda ip: str(ip).encode()),
        st.text(alphabet="0123456789abcdef.:%", max_size=40).map(str.encode),
    ),
    port=st.binary(min_size=2, max_size=2),
)
def test_parse_reply_shaped_bytes_raises_only_invalid_packet(
    ssrc: bytes, address: bytes, port: bytes
) -> None:
    data = reply(address=address, port=port, ssrc=ssrc)
    try:
        text, number = parse_response(data, ssrc=int.from_bytes(ssrc, "big"))
    except InvalidPacket:
        return
    assert text.encode() == address.split(b"\x00", 1)[0]
    assert number == int.from_bytes(port, "big")

"""`send_datagram`: a non-blocking UDP send that reports errors as errno values."""

from __future__ import annotations

import ctypes
import errno
import socket
from collections.abc import Iterator

import pytest

from discord_voice._shell import datagram
from discord_voice._shell.datagram import WOULD_BLOCK, holds_gil, send_datagram


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.settimeout(2.0)  # as the voice socket: the send must not wait on it
    sender.connect(receiver.getsockname())
    yield sender, receiver
    sender.close()
    receiver.close()


@pytest.fixture(params=["libc", "socket"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on both ways of sending (the socket one is the portable fallback)."""
    if request.param == "libc" and not holds_gil():
        pytest.skip("libc's send is not reachable through ctypes here")
    if request.param == "socket":
        monkeypatch.setattr(datagram, "_SEND", None)
    return str(request.param)


def test_a_datagram_arrives_whole(pair: tuple[socket.socket, socket.socket], path: str) -> None:
    sender, receiver = pair
    for data in (b"\x80\x78" + bytes(range(256)) * 4, b"x", bytes(1400)):
        assert send_datagram(sender, data) == 0
        assert receiver.recv(4096) == data


def test_a_closed_socket_is_ebadf(pair: tuple[socket.socket, socket.socket], path: str) -> None:
    sender, _ = pair
    sender.close()
    assert send_datagram(sender, b"late") == errno.EBADF


def test_the_libc_send_keeps_the_gil() -> None:
    if not holds_gil():
        pytest.skip("libc's send is not reachable through ctypes here")
    function = datagram._SEND
    python_api = ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]
    assert function._flags_ & python_api  # type: ignore[union-attr]  # from PyDLL: GIL kept


class FakeLibcSend:
    """Stands for libc's send: fails with the given errno values, then succeeds."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = errors
        self.calls: list[tuple[int, bytes, int, int]] = []

    def __call__(self, fd: int, data: bytes, size: int, flags: int) -> int:
        self.calls.append((fd, data, size, flags))
        if self.errors:
            ctypes.set_errno(self.errors.pop(0))
            return -1
        return size


@pytest.mark.parametrize(
    ("errors", "result", "calls"),
    [
        ([], 0, 1),
        ([errno.EINTR], 0, 2),  # a signal: sent again at once
        ([errno.EINTR, errno.EAGAIN], errno.EAGAIN, 2),
        ([errno.ENOBUFS], errno.ENOBUFS, 1),
        ([errno.ENETUNREACH], errno.ENETUNREACH, 1),
        ([0], errno.EIO, 1),  # failed without saying why
    ],
)
def test_libc_results_become_errno_values(
    pair: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    errors: list[int],
    result: int,
    calls: int,
) -> None:
    sender, _ = pair
    fake = FakeLibcSend(errors)
    monkeypatch.setattr(datagram, "_SEND", fake)
    assert send_datagram(sender, b"packet") == result
    assert len(fake.calls) == calls
    fd, data, size, flags = fake.calls[0]
    assert (fd, data, size) == (sender.fileno(), b"packet", 6)
    assert flags == getattr(
        socket, "MSG_DONTWAIT", 0
    )  # never blocks, whatever the socket's timeout


class RefusingSocket(socket.socket):
    def __init__(self, error: OSError) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_DGRAM)
        self.error = error

    def send(self, data: object, flags: int = 0) -> int:
        raise self.error


@pytest.mark.parametrize(
    ("error", "result"),
    [
        (BlockingIOError(errno.EAGAIN, "full"), errno.EAGAIN),
        (TimeoutError("timed out"), errno.EAGAIN),
        (OSError(errno.ENETUNREACH, "unreachable"), errno.ENETUNREACH),
        (OSError("no errno"), errno.EIO),
    ],
)
def test_the_socket_path_maps_exceptions_to_errno_values(
    monkeypatch: pytest.MonkeyPatch, error: OSError, result: int
) -> None:
    monkeypatch.setattr(datagram, "_SEND", None)
    with RefusingSocket(error) as sock:
        assert send_datagram(sock, b"packet") == result


def test_would_block_names_the_retryable_errors() -> None:
    assert {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS} == WOULD_BLOCK
    assert errno.ENETUNREACH not in WOULD_BLOCK

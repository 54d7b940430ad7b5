"""Send one UDP datagram without blocking, and without giving the GIL away in mid-burst.

`socket.socket.send` releases the GIL around the system call. When another thread is waiting
for it (a producer filling queues, a reader with a message), that thread runs and the sender
waits to get the GIL back, in the middle of a burst of packets that should take a fraction of a
millisecond: every packet behind it goes out late. Where libc's ``send(2)`` can be called
through `ctypes.PyDLL` (which keeps the GIL), the sender keeps it for the few microseconds the
kernel takes to queue a datagram; elsewhere `socket.send` is used, with the same results.

Where ``MSG_DONTWAIT`` exists (POSIX systems) the call never blocks: a full socket send buffer
is reported as `WOULD_BLOCK` for the caller to retry later, instead of stalling the one thread
that paces every connection. Elsewhere (Windows) `socket.send` may wait for buffer space, at
most the socket's timeout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["WOULD_BLOCK", "holds_gil", "send_datagram"]

#: The errors that mean "the send buffer is full, try again later".
WOULD_BLOCK: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})

_DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0)

_SendFunction = Callable[[int, bytes, int, int], int]


def _libc_send() -> _SendFunction | None:
    """libc's ``send`` through ctypes.PyDLL (the GIL is kept), or None where there is none."""
    if not sys.platform.startswith(("linux", "darwin", "freebsd")) or not _DONTWAIT:
        return None
    try:
        libc = ctypes.PyDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.send
    except (OSError, AttributeError):  # pragma: no cover - every POSIX libc has send
        return None
    function.restype = ctypes.c_ssize_t
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    send: _SendFunction = function
    return send


_SEND: Final = _libc_send()


def holds_gil() -> bool:
    """Whether `send_datagram` keeps the GIL (libc's ``send`` was found)."""
    return _SEND is not None


def send_datagram(sock: socket.socket, data: bytes) -> int:
    """Send `data` on the connected datagram socket `sock` without blocking.

    Returns 0 once the kernel has queued the datagram, else the ``errno``: one of
    `WOULD_BLOCK` when the send buffer is full, ``EBADF`` when the socket is closed.
    """
    send = _SEND
    if send is None:
        return _send_with_socket(sock, data)
    fd = sock.fileno()  # read at each call: -1 once the socket is closed
    if fd < 0:
        return errno.EBADF
    while send(fd, data, len(data), _DONTWAIT) < 0:
        error = ctypes.get_errno()
        if error != errno.EINTR:
            return error or errno.EIO
    return 0


def _send_with_socket(sock: socket.socket, data: bytes) -> int:
    """The portable path: `socket.send` (it lets the GIL go), same results."""
    try:
        sock.send(data, _DONTWAIT)
    except (BlockingIOError, TimeoutError):
        return errno.EAGAIN
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0

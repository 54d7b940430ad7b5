"""What both fake gateways' connection handlers share: the receive loop and scripted actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from discord_voice.testing.gateways.ws import CloseWith, Delivery, Dropped, Peer

__all__ = ["next_client_message", "run_posted"]


def run_posted(
    item: tuple[Any, ...],
    delivery: Delivery,
    peer: Peer,
    send: Callable[[tuple[Any, ...]], None],
) -> None:
    """Carry out one scripted action on a connection's own thread and report it delivered.

    ``("close", code, reason)`` closes the connection, ``("drop",)`` cuts it (`Dropped`);
    anything else goes to `send`.
    """
    if item[0] == "drop":
        delivery.finish(True)
        raise Dropped()
    if item[0] == "close":
        delivery.finish(True)
        raise CloseWith(item[1], item[2], violation=False)
    try:
        send(item)
    finally:
        delivery.finish(not peer.closed)


def next_client_message(
    peer: Peer,
    run: Callable[[tuple[Any, ...], Delivery], None],
    idle: Callable[[], None] | None = None,
) -> str | bytes:
    """`peer`'s next message; meanwhile run the actions posted for it (`run`) and, on every
    receive timeout, `idle`. Raises `CloseWith` 1001 when the fake shuts down."""
    while True:
        for item, delivery in peer.take_posted():
            run(item, delivery)
        raw = peer.recv()
        if raw is not None:
            return raw
        if peer.stopping:
            raise CloseWith(1001, "fake discord is shutting down", violation=False)
        if idle is not None:
            idle()

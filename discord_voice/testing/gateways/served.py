"""What both fake gateways share: the server lifecycle `FakeDiscord` drives, scripted actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from discord_voice.testing.gateways.ws import CloseWith, Delivery, Dropped, Peer, WsServer

__all__ = ["ServedGateway", "next_client_message", "run_posted"]


class ServedGateway:
    """Base of the fake gateways: one `WsServer` whose lifecycle `FakeDiscord` drives."""

    def __init__(
        self,
        name: str,
        handler: Callable[[Peer], None],
        violation: Callable[[str], None],
        numbers: Callable[[], int] | None = None,
    ) -> None:
        self._ws = WsServer(name, handler, violation, numbers)

    @property
    def port(self) -> int:
        return self._ws.port

    def start(self) -> None:
        self._ws.start()

    def begin_close(self) -> None:
        self._ws.begin_close()

    def finish_close(self, deadline: float) -> None:
        self._ws.finish_close(deadline)

    def post(self, item: tuple[Any, ...], connection: int | None) -> Delivery:
        return self._ws.post(item, connection)

    def open_peers(self) -> list[Peer]:
        return self._ws.open_peers()


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

"""Main-gateway sessions that outlive their websocket, so that a client can resume them (op 6).

A `MainLive` holds what a session keeps across websockets: its id, intents, the dispatch
sequence and a bounded log of the dispatches sent. A websocket that ends resumably (a drop, a
client close other than 1000/1001, or a fake close with a code Discord marks "reconnect" and
that keeps the session) leaves it resumable; op 6 ``{token, session_id, seq}`` on a new websocket
replays every logged dispatch with ``s`` > ``seq`` and then dispatches RESUMED. Anything else is
answered with op 9 ``d: false``. `FakeDiscord.invalid_session` can end a session.
"""

from __future__ import annotations

import collections
import hmac
import threading
import time
from typing import TYPE_CHECKING, Any

from discord_voice.core.opcodes import GatewayCloseCode
from discord_voice.testing.gateways.ws import CloseWith

if TYPE_CHECKING:
    from discord_voice.testing.gateways.ws import Peer

__all__ = ["DISPATCH_LOG", "RESUMABLE_MAIN_CLOSES", "MainLive", "MainSessions"]

#: Dispatches kept per session for a resume.
DISPATCH_LOG = 1000
#: Codes the fake may close with that leave the session resumable (Discord: reconnect true,
#: except 4007 and 4009, which start a new session).
RESUMABLE_MAIN_CLOSES = frozenset({4000, 4001, 4002, 4003, 4005, 4008})
#: How long a resume waits for the session's old websocket to let go.
TAKEOVER_WAIT = 1.0


class MainLive:
    """One identified main-gateway session; `lock` guards `peer` and `valid`."""

    def __init__(self, session_id: str, intents: int) -> None:
        self.session_id = session_id
        self.intents = intents
        self.seq = 0  # `s` of the last dispatch sent
        self.log: collections.deque[tuple[int, str]] = collections.deque(maxlen=DISPATCH_LOG)
        self.lock = threading.Lock()
        self.let_go = threading.Condition(self.lock)
        self.peer: Peer | None = None
        self.valid = True
        self.shard: tuple[int, int] | None = None  # (id, count) identified as; kept by a resume

    def missed(self, seq: int) -> list[str] | None:
        """Logged dispatches with s > `seq`; None if the log no longer holds all of them."""
        if seq > self.seq or seq < 0:
            return None
        missed = [raw for s, raw in self.log if s > seq]
        return missed if len(missed) == self.seq - seq else None

    def detach(self, peer: Peer, *, resumable: bool) -> None:
        with self.lock:
            if self.peer is peer:
                self.peer = None
                self.valid = self.valid and resumable
                self.let_go.notify_all()

    def take_over(self, peer: Peer) -> bool:
        """Make `peer` the session's websocket (the old one is cut if still attached)."""
        with self.lock:
            old = self.peer
        if old is not None and old is not peer:
            old.post(("drop",))
        deadline = time.monotonic() + TAKEOVER_WAIT
        with self.let_go:
            while self.peer is not None and self.valid:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.let_go.wait(left)
            if not self.valid:
                return False
            self.peer = peer
        return True


class MainSessions:
    """The fake's main sessions by id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, MainLive] = {}

    def add(self, live: MainLive) -> None:
        with self._lock:
            self._by_id[live.session_id] = live

    def find(self, session_id: str) -> MainLive | None:
        with self._lock:
            live = self._by_id.get(session_id)
        return live if live is not None and live.valid else None

    def resumable(self, d: Any, token: str) -> tuple[MainLive | None, list[str] | None]:
        """The session op 6 `d` names and the dispatches it missed (None, None: not resumable).

        A malformed `d` closes with 4002, a wrong bot token with 4004, as on Discord."""
        if not isinstance(d, dict) or not isinstance(d.get("token"), str):
            raise CloseWith(GatewayCloseCode.DECODE_ERROR, "resume d needs a string token")
        if not hmac.compare_digest(d["token"].encode(), token.encode()):
            raise CloseWith(GatewayCloseCode.AUTHENTICATION_FAILED, "authentication failed")
        seq, session_id = d.get("seq"), d.get("session_id")
        live = self.find(session_id) if isinstance(session_id, str) else None
        if live is None or type(seq) is not int:
            return None, None
        return live, live.missed(seq)

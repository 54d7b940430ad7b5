"""Voice sessions that outlive their websocket, so that a client can resume them (v8 op 7).

A `LiveVoice` is created per voice websocket and registered once it identified. When its websocket
ends in a resumable way (the client dropped or closed with a code other than 1000/1001, or the
fake closed it with 4015 or cut it with `FakeDiscord.drop_voice`) it is *detached*, not ended:
its SSRC, key, mode and DAVE group membership stay, and what the DAVE group sends meanwhile is
kept in `pending`. A new websocket that resumes it within `Config.voice_resume_window` seconds
attaches to it; otherwise it is ended (leaving the DAVE group) by `LiveVoices.reap`, which every
voice websocket's handler runs each time its ``recv`` times out (so within `RECV_SLICE` while any
voice client is connected; at the latest when the fake closes). No thread of its own.
Every server message with a ``seq`` is kept in a bounded buffer for the replay.
"""

from __future__ import annotations

import collections
import hmac
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from discord_voice.core.opcodes import VoiceCloseCode
from discord_voice.testing.gateways.ws import CloseWith
from discord_voice.testing.records import VoiceSession
from discord_voice.testing.world import IssuedVoice

if TYPE_CHECKING:
    from discord_voice.testing.gateways.voice_dave import DaveLink
    from discord_voice.testing.gateways.ws import Delivery, Peer

__all__ = [
    "BUFFER_SIZE",
    "RESUMABLE_SERVER_CLOSES",
    "LiveVoice",
    "LiveVoices",
    "resume_failed",
    "take_over",
]

#: Server messages with a seq kept per session for a resume (older ones are forgotten).
BUFFER_SIZE = 256


class LiveVoice:
    """One voice session's state; `lock` guards `peer`, `pending` and `ended`.

    `seq`, `buffer` and the handshake fields are only touched by the handler thread of the
    websocket the session is attached to (one at a time: attaching waits for a detach).
    """

    def __init__(self, session: VoiceSession) -> None:
        self.session = session
        self.lock = threading.Lock()
        self.detached = threading.Condition(self.lock)
        self.peer: Peer | None = None
        self.pending: list[tuple[Any, ...]] = []
        self.ended = False
        self.detached_at: float | None = None
        self.issued: IssuedVoice | None = None
        self.seq = 0  # seq of the last server message that carried one
        self.buffer: collections.deque[tuple[int, str | bytes]] = collections.deque(
            maxlen=BUFFER_SIZE
        )
        self.acked: int | None = None
        self.identified = False
        self.selected = False
        self.max_dave = 0
        self.dave_link: DaveLink | None = None

    def post(self, item: tuple[Any, ...]) -> None:
        """Send `item` through the attached websocket, or keep it for after a resume."""
        self.post_tracked(item)

    def post_tracked(self, item: tuple[Any, ...]) -> Delivery | None:
        """As `post`; returns the delivery to wait on, or None when the session is detached
        (the item is kept for after a resume) or ended (the item is dropped)."""
        with self.lock:
            if self.ended:
                return None
            if self.peer is None:
                self.pending.append(item)
                return None
            return self.peer.post(("kept", item))

    def attach(self, peer: Peer) -> list[tuple[Any, ...]]:
        """Make `peer` the session's websocket; returns the items kept while detached."""
        with self.lock:
            self.peer, self.detached_at = peer, None
            pending, self.pending = self.pending, []
        return pending

    def detach(self, peer: Peer, *, final: bool) -> None:
        """`peer`'s websocket ended; keep its unsent outbox items for a resume unless `final`."""
        with self.lock:
            if self.peer is not peer:
                return
            self.peer = None
            kept = []
            for item, delivery in peer.take_posted():
                delivery.finish(False)
                if item[0] == "kept":  # from `post`: the session's own traffic (DAVE)
                    kept.append(item[1])
            self.pending[:0] = kept
            self.detached_at = time.monotonic()
            if final:
                self.ended = True
            self.detached.notify_all()
        if final:
            self.end()

    def end(self) -> None:
        """No resume any more: leave the DAVE group (once)."""
        with self.lock:
            self.ended = True
            link, self.dave_link = self.dave_link, None
            self.pending.clear()
        if link is not None:
            link.leave()

    def disconnect(self, code: int, reason: str, timeout: float) -> None:
        """Close the attached websocket with `code` (waiting up to `timeout` for its thread to
        act), or end the session at once when it is detached (no resume any more)."""
        with self.lock:
            peer = self.peer
        if peer is None:
            self.end()
            return
        # The client may close first (it follows the VOICE_SERVER_UPDATE at once): fine.
        peer.post(("close", code, reason)).wait(timeout)

    def replay_after(self, seq_ack: int) -> list[str | bytes] | None:
        """Buffered messages with seq > `seq_ack`, or None if the buffer lost some of them."""
        if seq_ack > self.seq:
            return None
        missed = [(s, raw) for s, raw in self.buffer if s > seq_ack]
        expected = self.seq - max(seq_ack, 0)
        if len(missed) != expected:
            return None
        return [raw for _, raw in missed]


class LiveVoices:
    """Every registered voice session of a fake, by voice session id; runs the reaper."""

    def __init__(self, window: Callable[[], float]) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._by_id: dict[str, LiveVoice] = {}

    def register(self, live: LiveVoice, session_id: str, guild: str, user: str) -> None:
        """An Identify succeeded: an older session of the same guild and user ends."""
        with self._lock:
            old = [
                v
                for v in self._by_id.values()
                if v.issued is not None and (v.issued.guild_id, v.issued.user_id) == (guild, user)
            ]
            for v in old:
                self._by_id.pop(v.issued.session_id if v.issued else "", None)
            self._by_id[session_id] = live
        for v in old:
            if v is not live:
                v.end()

    def find(self, server_id: str, session_id: str, token: str) -> LiveVoice | None:
        with self._lock:
            live = self._by_id.get(session_id)
        if live is None or live.issued is None or live.ended:
            return None
        detached_at = live.detached_at
        if detached_at is not None and time.monotonic() - detached_at > self._window():
            return None
        issued = live.issued
        if issued.guild_id != server_id:
            return None
        if not hmac.compare_digest(issued.token.encode(), token.encode()):
            return None
        return live

    def for_guild(self, guild: str, user: str) -> LiveVoice | None:
        with self._lock:
            for live in self._by_id.values():
                issued = live.issued
                if issued and (issued.guild_id, issued.user_id) == (guild, user):
                    return live
        return None

    def close(self) -> None:
        """The fake is closing: end every session."""
        with self._lock:
            every = list(self._by_id.values())
            self._by_id.clear()
        for live in every:
            live.end()

    def reap(self) -> None:
        """End the sessions detached for longer than the resume window."""
        now, window = time.monotonic(), self._window()
        with self._lock:
            expired = [
                (sid, v)
                for sid, v in self._by_id.items()
                if v.ended or (v.detached_at is not None and now - v.detached_at > window)
            ]
            for sid, _ in expired:
                del self._by_id[sid]
        for _, live in expired:
            live.end()


#: Server close codes after which the session may be resumed (Discord: "voice server crashed").
RESUMABLE_SERVER_CLOSES = frozenset({int(VoiceCloseCode.VOICE_SERVER_CRASHED)})
#: How long a resume waits for the session's old websocket to be noticed as gone.
TAKEOVER_WAIT = 1.0


def resume_failed(why: str) -> CloseWith:
    return CloseWith(
        VoiceCloseCode.SESSION_NO_LONGER_VALID,
        f"session no longer valid: resume failed ({why})",
        violation=False,
    )


def take_over(live: LiveVoice, peer: Peer) -> bool:
    """Detach `live` from its old websocket (asking it to drop if still attached); attach to
    `peer` without handing over the pending items yet. False if the old one did not let go."""
    with live.lock:
        old = live.peer
    if old is not None and old is not peer:
        old.post(("drop",))
    deadline = time.monotonic() + TAKEOVER_WAIT
    with live.detached:
        while live.peer is not None and not live.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            live.detached.wait(left)
        if live.ended:
            return False
        live.peer = peer
        live.detached_at = None
    return True

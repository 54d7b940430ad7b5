"""DaveChannel: one connection's DAVE state, shared by its voice sockets and its sender.

A resume replaces the voice websocket but not the MLS group, so the DAVE state lives here,
owned by the `Connection`: the reader of whichever socket is current feeds it, the sender thread
encrypts through it. One lock serialises both (davey's session is not thread-safe); it is never
held across I/O: replies are returned, then sent by the caller.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable

from discord_voice._shell.udp_sender import EncryptBlocked
from discord_voice.clock import Signal
from discord_voice.core.dave import DaveProtocol
from discord_voice.core.frames import OPUS_SILENCE_FRAME
from discord_voice.errors import VoiceError

__all__ = ["DaveChannel"]

Frame = str | bytes

# What the sender does to a frame (see `DaveChannel._media_step`).
_PLAIN, _ENCRYPT, _HOLD = "plain", "encrypt", "hold"


class DaveChannel:
    """The DAVE protocol of one connection plus the signals the sender and the join wait on.

    Thread safety: every method may be called from any thread.
    """

    def __init__(self, user_id: str, channel_id: str) -> None:
        self.protocol = DaveProtocol(user_id, channel_id)
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)
        self._started = False
        self._media = Signal()  # set while media can be sent; replaced when that stops
        # What the sender does to a frame, recomputed under `lock` after every input:
        # PLAIN (no E2EE in effect), ENCRYPT (group key there) or HOLD (E2EE without a key).
        self._media_step = _PLAIN
        #: Resolved once DAVE is settled for the join: key there, DAVE off, or alone in the
        #: call with our pending group (the first commit needs a second member).
        self.settled: concurrent.futures.Future[None] = concurrent.futures.Future()

    def apply(
        self, change: Callable[[DaveProtocol], list[Frame]], *, started: bool = False
    ) -> list[Frame]:
        """Apply one DAVE input; return the replies to send. Errors propagate, state intact."""
        with self.lock:
            dave = self.protocol
            try:
                frames = change(dave)
            finally:  # even a refused input may have moved the engine: look again
                self._media_step = _PLAIN if not dave.active else _ENCRYPT if dave.ready else _HOLD
            self._started = self._started or started
            can_send = self._started and (not dave.active or dave.ready)
            settled = can_send or (self._started and dave.waiting_alone)
            media = self._media
            if not can_send and media.is_set():
                self._media = Signal()  # media must wait for the next key
            self._changed.notify_all()
        if can_send:
            media.set()
        if settled and not self.settled.done():
            self.settled.set_result(None)
        return frames

    def clients_connect(self, user_ids: Iterable[str]) -> None:
        with self.lock:
            self.protocol.clients_connect(user_ids)

    def client_disconnect(self, user_id: str) -> None:
        with self.lock:
            self.protocol.client_disconnect(user_id)

    def try_encrypt(self, frame: bytes) -> bytes | EncryptBlocked:
        """`E2ee` for the sender: the frame to packetize, never blocking.

        `EncryptBlocked.BUSY` when another thread holds the lock (a commit being processed: the
        shared sender must not wait for it), `EncryptBlocked.NO_KEY` when DAVE is in effect and
        there is no group key (the frame is held, never sent in the clear).
        """
        if not self.lock.acquire(blocking=False):
            return EncryptBlocked.BUSY
        try:
            step = self._media_step
            if step is _PLAIN or frame == OPUS_SILENCE_FRAME:
                return frame  # the silence frame passes unencrypted, as the protocol allows
            if step is _HOLD:
                return EncryptBlocked.NO_KEY
            return self.protocol.encrypt_ready(frame)
        finally:
            self.lock.release()

    def try_decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        """The receiver's DAVE step: `frame` from `user_id` decrypted, or None if it cannot be
        (no key for that sender yet, a plain frame outside the passthrough window, damage).
        Waits for the lock: the receive thread may, a commit takes milliseconds."""
        with self.lock:
            try:
                return self.protocol.decrypt(user_id, frame)
            except VoiceError:
                return None

    def on_media_ready(self, callback: Callable[[], None]) -> bool:
        """Call `callback` once media can be sent; False (not registered) if it can now."""
        return self._media.add_listener(callback)

    def wait(self, predicate: Callable[[DaveProtocol], bool], timeout: float) -> bool:
        """Block until `predicate(protocol)` holds (re-checked on every input) or timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.protocol), timeout)

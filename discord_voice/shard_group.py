"""`ShardGroup`: several shards of one bot in one process, and one `Voice` across them.

Each shard is a `Gateway` (its own threads and websocket); they share one `IdentifyLimiter`, so
their Identifies keep to Discord's ``max_concurrency``. The group is a `MainGateway` for
`Voice`: a guild's Voice State Update goes out on the shard that owns the guild, and every
shard's voice dispatches reach the `Voice`. With ``shard_count="auto"`` the group asks Get
Gateway Bot (`fetch_gateway_bot`) for the shard count, the gateway URL and the session start
limit when it connects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal

from discord_voice._shell.gateway_dispatch import DispatchListener
from discord_voice._shell.identify_limiter import IdentifyLimiter
from discord_voice._shell.rest import fetch_gateway_bot
from discord_voice.clock import Clock, SystemClock
from discord_voice.core.gateway_bot import DISCORD_API
from discord_voice.core.sharding import IDENTIFY_INTERVAL, Shard, shard_for
from discord_voice.errors import LocalProtocolError, VoiceError, WrongShard
from discord_voice.gateway import Gateway
from discord_voice.main_gateway import VoiceEventHandler

__all__ = ["ShardGroup"]

#: Extra real seconds `connect` gives its shards' threads beyond their own bounds.
_JOIN_MARGIN: Final = 5.0


class ShardGroup:
    """The shards `shard_ids` of `shard_count` (or all of them: ``shard_ids=None``), each a
    `Gateway` made with `gateway_options` (``intents``, ``plan``, ...) when `connect` runs.

    ``shard_count="auto"``: `connect` first calls Get Gateway Bot at `api_url` with the token,
    takes its shard count (and, unless `url` is given, its gateway URL) and gives its session
    start limit and ``max_concurrency`` to the shards' `IdentifyLimiter`. Otherwise the limiter
    allows `max_concurrency` Identifies per 5 s (Discord's default is 1).

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        token: str,
        shard_ids: Iterable[int] | None,
        shard_count: int | Literal["auto"],
        *,
        url: str | None = None,
        api_url: str = DISCORD_API,
        max_concurrency: int = 1,
        clock: Clock | None = None,
        **gateway_options: Any,
    ) -> None:
        if shard_count != "auto":
            Shard(0, shard_count)  # validates the count
        ids = None if shard_ids is None else sorted(set(shard_ids))
        if ids is not None and not ids:
            raise LocalProtocolError("a ShardGroup needs at least one shard id")
        if ids is not None and shard_count != "auto":
            for shard_id in ids:
                Shard(shard_id, shard_count)  # validates each id against the count
        for reserved in ("shard", "identify_limiter", "clock"):
            if reserved in gateway_options:
                raise LocalProtocolError(f"ShardGroup sets {reserved!r} for its gateways")
        self._token = token
        self._ids = ids
        self._count: int | Literal["auto"] = shard_count
        self._url = url
        self._api_url = api_url
        self._clock: Clock = clock or SystemClock()
        self._options = gateway_options
        self.identify_limiter = IdentifyLimiter(max_concurrency)
        self._lock = threading.Lock()
        self._gateways: dict[int, Gateway] = {}
        # every handler and listener added: how to add it to a gateway, and its removers there
        self._added: dict[int, tuple[Callable[[Gateway], Callable[[], None]], list[Any]]] = {}
        self._next_key = 0
        self._started = self._closed = False

    def __repr__(self) -> str:
        return f"<ShardGroup shards={self.shard_ids} of {self._count} connected={self.connected}>"

    def __enter__(self) -> ShardGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- state -------------------------------------------------------------------------------

    @property
    def shard_count(self) -> int | None:
        """The number of shards of the bot (None while "auto" has not been asked yet)."""
        return None if self._count == "auto" else self._count

    @property
    def shard_ids(self) -> list[int] | None:
        """The shards this group runs (None while "auto" has not been asked yet)."""
        return None if self._ids is None else list(self._ids)

    @property
    def gateways(self) -> Mapping[int, Gateway]:
        """Each shard's `Gateway`, by shard id (empty before `connect`)."""
        with self._lock:
            return MappingProxyType(dict(self._gateways))

    @property
    def connected(self) -> bool:
        with self._lock:
            return bool(self._gateways) and not self._closed

    @property
    def user_id(self) -> int | None:
        """The bot's user id, once a shard is READY."""
        for gateway in self.gateways.values():
            if gateway.user_id is not None:
                return gateway.user_id
        return None

    @property
    def error(self) -> BaseException | None:
        """The first failure of a shard (each `Gateway` recovers on its own first), or None."""
        for gateway in self.gateways.values():
            if gateway.error is not None:
                return gateway.error
        return None

    # --- lifecycle ----------------------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> None:
        """Make each shard's `Gateway` and connect them all (each after its Identify slot, so
        a bucket's shards start together and the buckets in order); returns once every shard
        is READY. `timeout` bounds each shard's connect from its slot on. On a failure every
        shard is closed and the first error raised (`ApiError` if "auto" could not ask)."""
        with self._lock:
            if self._started or self._closed:
                raise LocalProtocolError("connect() runs once per ShardGroup; create a new one")
            self._started = True
        try:
            self._plan()
        except VoiceError:
            self.close()
            raise
        ids, count = self._ids, self._count
        assert ids is not None and count != "auto"
        gateways = {
            shard_id: Gateway(
                self._token,
                self._url,
                shard=Shard(shard_id, count),
                identify_limiter=self.identify_limiter,
                clock=self._clock,
                **self._options,
            )
            for shard_id in ids
        }
        with self._lock:
            if self._closed:
                raise LocalProtocolError("the ShardGroup was closed while connecting")
            self._gateways = gateways
            for add, removers in self._added.values():  # added before connect()
                removers.extend(add(gateway) for gateway in gateways.values())
        self._connect_all(gateways, timeout)

    def _plan(self) -> None:
        """Settle the shard count, the ids and the URL (asking Get Gateway Bot for "auto")."""
        if self._count == "auto":
            bot = fetch_gateway_bot(self._token, api_url=self._api_url, clock=self._clock)
            self.identify_limiter.apply(bot.session_start_limit)
            self._count = bot.shards
            self._url = self._url or bot.url
            if self._ids is not None:
                for shard_id in self._ids:
                    Shard(shard_id, bot.shards)
        count = self._count  # an int now: "auto" was replaced above
        if self._ids is None and isinstance(count, int):
            self._ids = list(range(count))

    def _connect_all(self, gateways: Mapping[int, Gateway], timeout: float) -> None:
        failures: list[BaseException] = []

        def run(gateway: Gateway) -> None:
            try:
                gateway.connect(timeout)
            except BaseException as exc:  # noqa: BLE001 - raised by connect() below
                failures.append(exc)

        threads = [
            threading.Thread(target=run, args=(gw,), name=f"dv-shard-connect:{shard_id}")
            for shard_id, gw in gateways.items()
        ]
        for thread in threads:
            thread.start()
        # the slowest shard: its bucket's turn (all buckets before it, 5 s each), then timeout
        rounds = len(gateways) // self.identify_limiter.max_concurrency + 1
        bound = rounds * IDENTIFY_INTERVAL + timeout + _JOIN_MARGIN
        for thread in threads:
            thread.join(bound)
        if failures or any(thread.is_alive() for thread in threads):
            self.close()
            if failures:
                raise failures[0]
            raise LocalProtocolError("a shard's connect did not return in time")

    def close(self, timeout: float = 5.0) -> None:
        """Close every shard's gateway (idempotent)."""
        with self._lock:
            self._closed = True
            gateways = list(self._gateways.values())
        for gateway in gateways:
            gateway.close(timeout)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every shard has stopped; re-raise the first failure (None after
        `close`, or when `timeout` passes first)."""
        for gateway in self.gateways.values():
            gateway.wait(timeout)

    # --- MainGateway and ShardedGateway -----------------------------------------------------

    def shard_mismatch(self, guild_id: str) -> str | None:
        """None if a shard of this group owns `guild_id` (or the group is not connected yet:
        the join then fails for that reason); else which shard does."""
        count, ids = self._count, self._ids
        if count == "auto" or ids is None:
            return None
        owner = shard_for(guild_id, count)
        if owner in ids:
            return None
        return f"guild {guild_id} belongs to shard {owner}/{count}, which this group does not run"

    def update_voice_state(
        self, guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None:
        """Send op 4 on the shard that owns `guild_id` (`WrongShard` if none here does)."""
        count = self._count
        if count == "auto" or not self.connected:
            raise LocalProtocolError("the ShardGroup is not connected; call connect()")
        mismatch = self.shard_mismatch(guild_id)
        if mismatch is not None:
            raise WrongShard(mismatch)
        gateway = self.gateways[shard_for(guild_id, count)]
        gateway.update_voice_state(guild_id, channel_id, self_mute=self_mute, self_deaf=self_deaf)

    def add_voice_handler(self, handler: VoiceEventHandler) -> Callable[[], None]:
        """Deliver every shard's voice dispatches to `handler`; returns a remover."""
        return self._add(lambda gateway: gateway.add_voice_handler(handler))

    def add_dispatch_listener(self, callback: DispatchListener) -> Callable[[], None]:
        """Call ``callback(t, d)`` for every dispatch of every shard; returns a remover."""
        return self._add(lambda gateway: gateway.add_dispatch_listener(callback))

    def _add(self, add: Callable[[Gateway], Callable[[], None]]) -> Callable[[], None]:
        """Add to every gateway, now and (before `connect`) when they are made."""
        with self._lock:
            key, self._next_key = self._next_key, self._next_key + 1
            removers = [add(gateway) for gateway in self._gateways.values()]
            self._added[key] = (add, removers)

        def remove() -> None:
            with self._lock:
                _, removers = self._added.pop(key, (add, []))
            for remover in removers:
                remover()

        return remove

"""Voice: the per-bot entry point (arikawa's ``NewVoice()``), one `Connection` per guild.

`Voice` owns the threads its connections share: ``dv-heartbeat`` (running while a voice
websocket is registered) and ``dv-udp-sender`` (while a connection is attached). The main
gateway's reader thread delivers VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE to it; those handlers
only resolve futures or hand the update to the guild's connection, and never block, so a slow
voice handshake can never stall the main gateway.

The `Voice`-`Connection` interface is one-way: `Voice` creates a connection, calls its `open`
and routes updates to it (``on_voice_state`` / ``on_voice_server``); a connection tells its
`Voice` that it ended through `connection_ended` (the `ConnectionOwner` protocol), and sends op 4
through the main gateway it was given, never through this class.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from discord_voice._shell.heartbeat import HeartbeatLoop
from discord_voice._shell.udp_receiver import UdpReceiver
from discord_voice._shell.udp_sender import UdpSender
from discord_voice.clock import Clock, SystemClock, future_signal
from discord_voice.connection import (
    RECONNECT_ATTEMPT_TIMEOUT,
    Connection,
    ConnectionState,
    as_connection_closed,
)
from discord_voice.core.dave import supported_protocol_version
from discord_voice.core.ids import snowflake
from discord_voice.core.reconnect import Action, ReconnectPlan
from discord_voice.core.voice_gateway import VoiceServerInfo
from discord_voice.errors import (
    JoinError,
    JoinTimeout,
    LocalProtocolError,
    VoiceError,
    WrongShard,
)
from discord_voice.main_gateway import MainGateway, ShardedGateway

__all__ = ["Voice"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a join waits for Discord to confirm the previous leave in the same guild.
_LEAVE_WAIT = 1.0
#: The default capacity of a receiving connection's ``opus_recv`` (see `Voice`).
RECEIVE_QUEUE_SIZE = 500

_HINTS = {
    "voice_state_update": "no VOICE_STATE_UPDATE for the bot: is the GUILD_VOICE_STATES intent "
    "enabled, is the channel id a voice channel of this guild, and may the bot CONNECT to it?",
    "voice_server_update": "no VOICE_SERVER_UPDATE: the channel may be full, or Discord has no "
    "voice server for it right now",
}


@dataclass(eq=False)
class _PendingJoin:
    channel_id: str
    state: concurrent.futures.Future[Mapping[str, Any]] = field(
        default_factory=concurrent.futures.Future
    )
    server: concurrent.futures.Future[Mapping[str, Any]] = field(
        default_factory=concurrent.futures.Future
    )


class Voice:
    """Joins voice channels through a main gateway; keeps one `Connection` per guild.

    Args:
        gateway: anything satisfying `MainGateway` (`discord_voice.Gateway` does).
        clock: time source for join deadlines, pacing, heartbeats and the reconnect backoff
            (tests pass a ``FakeClock``; see `discord_voice.clock` for which waits use it).
        queue_size: capacity of each connection's ``opus_send`` (Opus packets of 10-60 ms).
        close_timeout: how long `Connection.disconnect` may take to join its threads.
        reconnect_plan: how connections recover from a lost voice websocket, per close code
            (default `default_voice_plan()`; override rows with
            ``ReconnectPlan(ClosePolicy.voice_default().with_overrides({...}))``).
        reconnect_timeout: how long one new-session attempt may take (fresh op 4, both
            updates, the whole voice handshake) before it counts as failed.
        receive_queue_size: capacity of each receiving connection's ``opus_recv`` (packets);
            when full, the oldest is discarded and counted. The default holds 100 ms of 100
            members speaking (their packets come in bursts: with 100 the listener of
            ``bench_receive speakers`` lost 0.4 % of them to overflow, with 500 none).

    Thread safety: every method may be called from any thread except the library's own.
    """

    def __init__(
        self,
        gateway: MainGateway,
        *,
        clock: Clock | None = None,
        queue_size: int = 10,
        close_timeout: float = 5.0,
        reconnect_plan: ReconnectPlan[Action] | None = None,
        reconnect_timeout: float = RECONNECT_ATTEMPT_TIMEOUT,
        receive_queue_size: int = RECEIVE_QUEUE_SIZE,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if receive_queue_size < 1:
            raise ValueError("receive_queue_size must be at least 1")
        if reconnect_plan is not None and reconnect_plan.policy.gateway != "voice":
            raise ValueError("reconnect_plan must use a voice gateway ClosePolicy")
        if not reconnect_timeout > 0:
            raise ValueError("reconnect_timeout must be positive")
        self._plan = reconnect_plan
        self._reconnect_timeout = reconnect_timeout
        self._gateway = gateway
        self._clock: Clock = clock or SystemClock()
        self._queue_size = queue_size
        self._close_timeout = close_timeout
        # one dv-heartbeat thread beats every voice websocket; it runs while one is registered
        self._heartbeats = HeartbeatLoop(self._clock, join_timeout=close_timeout)
        #: The dv-udp-sender thread, pacing every connection's opus_send.
        self._udp_sender = UdpSender(self._clock)
        #: The dv-udp-receiver thread, reading every receiving connection's socket.
        self._udp_receiver = UdpReceiver(self._clock)
        self._receive_queue_size = receive_queue_size
        self._lock = threading.Lock()
        self._pending: dict[str, _PendingJoin] = {}
        # guild -> resolved when Discord confirms a leave (our VOICE_STATE_UPDATE, no channel)
        self._leaves: dict[str, concurrent.futures.Future[None]] = {}
        self._connections: dict[str, Connection] = {}
        self._remove_handler: Callable[[], None] = gateway.add_voice_handler(self)

    def __repr__(self) -> str:
        return f"<Voice connections={len(self._connections)}>"

    # -- public -----------------------------------------------------------------------------

    def join_channel(
        self,
        guild_id: int | str,
        channel_id: int | str,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
        receive: bool = False,
        timeout: float = 10.0,
    ) -> Connection:
        """Join a voice channel; block until the connection can carry audio.

        One deadline covers the whole join. Joining the channel a live connection is already in
        returns that connection (once it is READY); joining another channel of the same guild
        moves that connection there (`Connection.move_to`) and returns it.

        Raises:
            JoinTimeout: a stage did not complete in time (``.stage`` names it).
            VoiceGatewayClosed: the voice server closed the websocket during the join.
            UnsupportedEncryptionMode: no transport mode in common.
            WrongShard: the gateway is a shard that does not own the guild (nothing was sent).
            ConnectionClosed / JoinError: other failures, with the cause attached.
        """
        guild = snowflake(guild_id, "guild_id")
        channel = snowflake(channel_id, "channel_id")
        if threading.current_thread().name.startswith("dv-"):
            raise LocalProtocolError("join_channel cannot be called from a library thread")
        if isinstance(self._gateway, ShardedGateway):
            mismatch = self._gateway.shard_mismatch(guild)
            if mismatch is not None:
                raise WrongShard(f"cannot join a voice channel of guild {guild}: {mismatch}")
        clock = self._clock
        deadline = clock.monotonic() + timeout
        with self._lock:
            existing = self._connections.get(guild)
            leaving = self._leaves.get(guild)
        # A leave in flight: let Discord confirm it before rejoining. Capped: without the
        # voice-states intent no confirmation ever comes.
        if leaving is not None and not clock.wait_until(
            min(deadline, clock.monotonic() + _LEAVE_WAIT), future_signal(leaving)
        ):
            log.debug("guild %s: leave not confirmed before the rejoin", guild)
        if existing is not None and existing.state is not ConnectionState.CLOSED:
            remaining = max(0.0, deadline - clock.monotonic())
            if existing.channel_id != channel:
                existing.move_to(channel, remaining)
            elif not existing.wait_for_state(ConnectionState.READY, remaining):
                _raise_if_closed(existing)
                raise JoinTimeout("ready", timeout, "the connection is still recovering")
            return existing
        user_id = self._gateway.user_id
        if user_id is None:
            raise JoinError("the main gateway is not READY yet (no user id)")
        pending = _PendingJoin(channel)
        with self._lock:
            if guild in self._pending:
                raise LocalProtocolError(f"a join for guild {guild} is already in progress")
            self._pending[guild] = pending
        try:
            self._gateway.update_voice_state(
                guild, channel, self_mute=self_mute, self_deaf=self_deaf
            )
            state = _await(clock, pending.state, deadline, timeout, "voice_state_update")
            server = _await(clock, pending.server, deadline, timeout, "voice_server_update")
        except BaseException:
            self._leave(guild)
            raise
        finally:
            with self._lock:
                self._pending.pop(guild, None)
        info = VoiceServerInfo(
            guild_id=guild,
            channel_id=channel,
            user_id=str(user_id),
            session_id=str(state["session_id"]),
            token=str(server["token"]),
            endpoint=str(server["endpoint"]),
        )
        connection = Connection(
            self,
            info,
            voice_states=self._gateway,
            clock=self._clock,
            heartbeats=self._heartbeats,
            sender=self._udp_sender,
            queue_size=self._queue_size,
            close_timeout=self._close_timeout,
            max_dave_protocol_version=supported_protocol_version(),
            plan=self._plan,
            self_mute=self_mute,
            self_deaf=self_deaf,
            reconnect_timeout=self._reconnect_timeout,
            receiver=self._udp_receiver if receive else None,
            receive_queue_size=self._receive_queue_size,
        )
        with self._lock:
            self._connections[guild] = connection
        connection.open(deadline, timeout)  # on failure it ended: we were told, it left
        log.info("joined voice channel %s in guild %s (mode %s)", channel, guild, connection.mode)
        return connection

    def connection(self, guild_id: int | str) -> Connection | None:
        """The live connection in `guild_id`, if any."""
        with self._lock:
            return self._connections.get(snowflake(guild_id, "guild_id"))

    def close(self) -> None:
        """Disconnect every connection and stop receiving gateway events."""
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            connection.disconnect()
        self._remove_handler()
        self._heartbeats.close()  # joined even if a failed connection was never disconnected
        self._udp_sender.close(self._close_timeout)
        self._udp_receiver.close(self._close_timeout)

    def __enter__(self) -> Voice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- main gateway events (called on the gateway's reader thread; never block) ------------

    def on_voice_state_update(self, data: Mapping[str, Any]) -> None:
        user_id = self._gateway.user_id
        if user_id is None or str(data.get("user_id")) != str(user_id):
            return  # another member's voice state
        guild = str(data.get("guild_id"))
        channel = data.get("channel_id")
        with self._lock:
            pending = self._pending.get(guild)
            connection = self._connections.get(guild)
            leave = self._leaves.pop(guild, None) if channel is None else None
        if leave is not None:
            _resolve(leave, None)
            return
        if pending is not None:
            if str(channel) == pending.channel_id and data.get("session_id"):
                _resolve(pending.state, data)
            return
        if connection is not None:
            connection.on_voice_state(
                None if channel is None else str(channel), str(data.get("session_id") or "")
            )

    def on_voice_server_update(self, data: Mapping[str, Any]) -> None:
        guild = str(data.get("guild_id"))
        with self._lock:
            pending = self._pending.get(guild)
            connection = self._connections.get(guild)
        endpoint, token = data.get("endpoint"), data.get("token")
        if not token or not isinstance(token, str):
            log.warning("VOICE_SERVER_UPDATE for guild %s without a token: ignored", guild)
            return
        if pending is not None:
            if endpoint:
                _resolve(pending.server, data)
        elif connection is not None:
            connection.on_voice_server(str(endpoint) if endpoint else None, token)
        else:
            log.debug("VOICE_SERVER_UPDATE for guild %s with no connection: ignored", guild)

    # -- a connection ended (the `ConnectionOwner` callback; on the thread that ended it) -----

    def connection_ended(
        self, connection: Connection, *, leave: bool
    ) -> concurrent.futures.Future[None] | None:
        """Drop `connection` from the registry; with `leave`, tell Discord we left and return a
        future resolved by Discord's confirmation (our VOICE_STATE_UPDATE with no channel)."""
        guild = connection.guild_id
        with self._lock:
            if self._connections.get(guild) is not connection:
                return None
            del self._connections[guild]
        return self._leave(guild) if leave else None

    def _leave(self, guild: str) -> concurrent.futures.Future[None]:
        """Send the leave and track Discord's confirmation (resolved at once if not sent)."""
        confirmed: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self._leaves[guild] = confirmed
        if not self._leave_quietly(guild):
            with self._lock:
                if self._leaves.get(guild) is confirmed:
                    del self._leaves[guild]
            _resolve(confirmed, None)  # nothing was sent: nothing to wait for
        return confirmed

    def _leave_quietly(self, guild: str) -> bool:
        """Send op 4 with no channel; False (logged) if the main gateway could not send it."""
        try:
            self._gateway.update_voice_state(guild, None, self_mute=False, self_deaf=False)
        except VoiceError as exc:
            log.warning("could not send the leave for guild %s: %s", guild, exc)
            return False
        return True


def _await(
    clock: Clock,
    future: concurrent.futures.Future[T],
    deadline: float,
    timeout: float,
    stage: str,
) -> T:
    """The future's result, waiting on `clock` until `deadline`; else `JoinTimeout(stage)`."""
    if not clock.wait_until(deadline, future_signal(future)):
        raise JoinTimeout(stage, timeout, _HINTS.get(stage, ""))
    return future.result(0)


def _raise_if_closed(connection: Connection) -> None:
    if connection.state is ConnectionState.CLOSED:
        raise as_connection_closed(connection.error)


def _resolve(future: concurrent.futures.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)

"""ShardGroup against the fake Discord: Get Gateway Bot for "auto", every shard READY with its
Identify slot, one Voice across the shards (each guild's op 4 on its own shard), the wrong
guild refused; fetch_gateway_bot's errors."""

from __future__ import annotations

import pytest

from discord_voice import (
    ApiError,
    ShardGroup,
    Voice,
    WrongShard,
    fetch_gateway_bot,
)
from discord_voice.core.opcodes import GatewayOp
from discord_voice.testing import FakeDiscord
from tests.loopback.conftest import CHANNEL
from tests.loopback.test_sharding import guild_of
from tests.timeouts import LONG


def test_fetch_gateway_bot_reads_the_fakes_answer() -> None:
    with FakeDiscord(dave=False, shards=3, max_concurrency=2, session_starts=50) as fake:
        bot = fetch_gateway_bot(fake.token, api_url=fake.api_url)
        assert bot.url == fake.gateway_url and bot.shards == 3
        limit = bot.session_start_limit
        assert (limit.total, limit.remaining, limit.max_concurrency) == (50, 50, 2)
        assert fake.api_requests == [("GET", "/api/v10/gateway/bot")]


def test_fetch_gateway_bot_errors_are_typed_and_keep_the_token_out() -> None:
    with FakeDiscord(dave=False) as fake:
        with pytest.raises(ApiError, match="401: the bot token was rejected") as info:
            fetch_gateway_bot("not-the-token", api_url=fake.api_url)
        assert info.value.status == 401
        with pytest.raises(ApiError, match="404"):
            fetch_gateway_bot(fake.token, api_url=fake.api_url + "/nowhere")
        api_url = fake.api_url
    with pytest.raises(ApiError, match="no answer") as gone:  # the fake is closed
        fetch_gateway_bot(fake.token, api_url=api_url, timeout=LONG)
    assert gone.value.status is None and fake.token not in str(gone.value)


def test_an_auto_group_runs_every_shard_and_one_voice_joins_through_each() -> None:
    count = 4
    with FakeDiscord(dave=False, shards=count, max_concurrency=count) as fake:
        group = ShardGroup(fake.token, None, "auto", api_url=fake.api_url)
        voice = None
        try:
            group.connect(timeout=LONG)
            assert group.shard_count == count and group.shard_ids == [0, 1, 2, 3]
            assert group.identify_limiter.max_concurrency == count  # from Get Gateway Bot
            assert sorted(group.gateways) == [0, 1, 2, 3]
            assert group.user_id == fake.user_id
            voice = Voice(group)
            connections = [voice.join_channel(guild_of(n), CHANNEL, timeout=LONG) for n in range(4)]
            # each op 4 went out on the connection of the shard that owns its guild
            shard_of_connection = {
                m.connection: m.data["d"]["shard"][0]
                for m in fake.main_messages
                if m.direction == "client" and m.op == GatewayOp.IDENTIFY and m.data
            }
            op4 = [
                (shard_of_connection[m.connection], int(m.data["d"]["guild_id"]))
                for m in fake.main_messages
                if m.direction == "client" and m.op == GatewayOp.VOICE_STATE_UPDATE and m.data
            ]
            assert op4 == [(n, guild_of(n)) for n in range(4)]
            for conn in connections:
                conn.disconnect()
            assert fake.violations == []
        finally:
            if voice is not None:
                voice.close()
            group.close()


def test_a_group_refuses_the_guild_of_a_shard_it_does_not_run() -> None:
    with FakeDiscord(dave=False, shards=4) as fake:
        with ShardGroup(fake.token, [0, 1], 4, url=fake.gateway_url, max_concurrency=2) as group:
            group.connect(timeout=LONG)
            voice = Voice(group)
            try:
                with pytest.raises(WrongShard, match="shard 3/4, which this group does not run"):
                    voice.join_channel(guild_of(3), CHANNEL, timeout=LONG)
                conn = voice.join_channel(guild_of(1), CHANNEL, timeout=LONG)
                conn.disconnect()
            finally:
                voice.close()
        assert not any(
            m.op == GatewayOp.VOICE_STATE_UPDATE
            and m.data
            and m.data["d"]["guild_id"] == str(guild_of(3))
            for m in fake.main_messages
        )


@pytest.mark.parametrize(
    ("ids", "count", "match"),
    [([], 4, "at least one"), ([4], 4, "shard_id"), ([0], 0, "shard_count")],
)
def test_bad_groups_are_refused(ids: list[int], count: int, match: str) -> None:
    from discord_voice import LocalProtocolError

    with pytest.raises(LocalProtocolError, match=match):
        ShardGroup("token", ids, count)


def test_a_group_not_connected_yet_says_so() -> None:
    from discord_voice import JoinError, LocalProtocolError

    group = ShardGroup("token", [0], 2)
    voice = Voice(group)
    try:
        with pytest.raises(JoinError, match="not READY"):
            voice.join_channel(guild_of(0, 2), CHANNEL, timeout=LONG)
        with pytest.raises(LocalProtocolError, match="not connected"):
            group.update_voice_state(str(guild_of(0, 2)), None, self_mute=False, self_deaf=False)
    finally:
        voice.close()
        group.close()

"""Our client over a lossy path: the fake drops, duplicates and reorders UDP packets with a seeded
generator. The client cannot see UDP loss (Discord sends no receipts), so it must simply keep
streaming; what arrives must be exactly the seeded impairment of every frame sent once, in order,
even across a resume of the voice websocket."""

from __future__ import annotations

import os

import pytest

from discord_voice.testing.udp.impairment import UdpImpairment
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, World
from tests.timeouts import LONG

DROP, DUPLICATE, REORDER = 0.1, 0.1, 0.1


@pytest.mark.parametrize("resume_midway", [False, True])
def test_streaming_through_a_lossy_path_sends_every_frame_once(
    world: World, resume_midway: bool
) -> None:
    conn = world.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    seed = 20261121
    sent = [opus_frame(os.urandom(2 + i % 200)) for i in range(60)]
    model: UdpImpairment[bytes] = UdpImpairment(DROP, DUPLICATE, REORDER, 0.0, seed)
    model.feed(sent, 0.0)
    want = model.due(0.0) + model.due(1.0)
    assert want != sent  # the path really is impaired
    world.fake.impair_udp(drop=DROP, duplicate=DUPLICATE, reorder=REORDER, seed=seed)
    for index, frame in enumerate(sent):
        if resume_midway and index == len(sent) // 2:
            world.fake.close_voice(4015, "crash")
        conn.opus_send.put(frame, timeout=LONG)
    conn.opus_send.join()
    got = [f.opus for f in world.fake.wait_for_frames(len(want), timeout=LONG)]
    assert got == want
    stats = world.fake.udp_impairment
    assert stats is not None and stats.seen == len(sent)  # each frame sent exactly once
    assert stats.dropped and stats.duplicated and stats.reordered
    assert conn.error is None and conn.stats.frames_sent == len(sent)
    if resume_midway:
        assert world.fake.wait_until(lambda f: conn.resumes == 1, LONG)
    conn.disconnect()

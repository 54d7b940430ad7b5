"""The thread model end to end (issue 9): per `Voice` one ``dv-heartbeat`` and one
``dv-udp-sender``, per connection one ``dv-voice-reader:<guild>``, and nothing else; no thread
outlives ``disconnect()`` or ``Voice.close()``.

Unlike ``test_heartbeat.py`` (two idle connections: the heartbeat is shared and beats both),
these tests stream on three connections while they list every ``dv-`` thread by name, and check
the lists right after each call returns, not eventually.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from discord_voice import Connection, ConnectionState
from tests.frames import opus_frame
from tests.loopback.conftest import CHANNEL, GUILD, MakeWorld, World
from tests.timeouts import LONG

GUILDS = [GUILD, GUILD + 1, GUILD + 2]
FRAMES = 30  # per connection: 600 ms of audio, still streaming while the threads are listed


def dv_threads() -> list[str]:
    """Every library thread alive now, by name (the main gateway's included)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("dv-"))


def voice_threads(guilds: Iterable[int]) -> list[str]:
    """What a Voice with connections in `guilds` runs: two shared threads, one per connection."""
    return ["dv-heartbeat", "dv-udp-sender", *(f"dv-voice-reader:{g}" for g in guilds)]


def expect(gateway: list[str], guilds: Iterable[int]) -> list[str]:
    return sorted(gateway + (voice_threads(guilds) if list(guilds) else []))


def stream(conns: list[Connection], tag: str) -> list[list[bytes]]:
    """Queue FRAMES distinct frames on each connection (the queue holds them all)."""
    sent = []
    for n, conn in enumerate(conns):
        sent.append([opus_frame(f"{tag}{n}-{i}".encode()) for i in range(FRAMES)])
        for frame in sent[-1]:
            conn.opus_send.put(frame)
    return sent


def test_three_streaming_connections_run_one_reader_each_and_share_two_threads(
    make_world: MakeWorld,
) -> None:
    w: World = make_world(voice_options={"queue_size": FRAMES})
    gateway = dv_threads()  # the main gateway's own threads, before any voice connection
    assert gateway and all(name.startswith("dv-gateway-") for name in gateway)

    conns = []
    for n, guild in enumerate(GUILDS):
        conns.append(w.voice.join_channel(guild, CHANNEL + n, timeout=LONG))
        assert dv_threads() == expect(gateway, GUILDS[: n + 1])
    shared = {t.name: t for t in threading.enumerate() if t.name in voice_threads([])}

    sent = stream(conns, "a")
    assert all(conn.state is ConnectionState.READY for conn in conns)
    assert dv_threads() == expect(gateway, GUILDS)  # while streaming: nothing more
    assert len(w.fake.frames()) < 3 * FRAMES  # (still streaming when listed)

    conns[0].disconnect()
    assert dv_threads() == expect(gateway, GUILDS[1:])  # its reader gone, the shared ones kept
    assert all(t.is_alive() for t in shared.values())
    for conn, frames in zip(conns[1:], sent[1:], strict=True):  # the others: every frame
        got = w.fake.wait_for_frames(FRAMES, timeout=LONG, ssrc=conn.ssrc)
        assert [f.opus for f in got] == frames

    conns[1].disconnect()
    assert dv_threads() == expect(gateway, GUILDS[2:])
    conns[2].disconnect()
    assert dv_threads() == gateway  # the last disconnect joined the shared threads
    assert not any(t.is_alive() for t in shared.values())

    # a new connection starts new shared threads, and they end with it again
    again = w.voice.join_channel(GUILD, CHANNEL, timeout=LONG)
    assert dv_threads() == expect(gateway, [GUILD])
    assert all(t not in shared.values() for t in threading.enumerate())
    again.disconnect()
    assert dv_threads() == gateway
    w.voice.close()
    assert dv_threads() == gateway


def test_voice_close_with_streaming_connections_leaves_no_thread(make_world: MakeWorld) -> None:
    w: World = make_world(voice_options={"queue_size": FRAMES})
    gateway = dv_threads()
    conns = [
        w.voice.join_channel(guild, CHANNEL + n, timeout=LONG) for n, guild in enumerate(GUILDS)
    ]
    stream(conns, "b")
    assert dv_threads() == expect(gateway, GUILDS)
    w.voice.close()  # disconnects all three mid-stream
    assert dv_threads() == gateway
    assert all(conn.state is ConnectionState.CLOSED for conn in conns)
    assert sum(conn.stats.frames_sent + conn.stats.frames_discarded for conn in conns) == (
        3 * FRAMES
    )

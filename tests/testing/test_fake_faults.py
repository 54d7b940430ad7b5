"""Fault injection on the fake: drops, moves, kicks, null endpoints, raw messages, UDP loss."""

from __future__ import annotations

import time
from typing import Any

import pytest
import websocket

from discord_voice.testing import FakeDiscord
from discord_voice.testing.udp.impairment import UdpImpairment
from tests.testing.fake_raw_clients import (
    TIMEOUT,
    VoiceClient,
    full_voice,
    main_ready,
    recv_close,
    recv_json,
    send_json,
    voice_identify,
)


def _expect_cut(ws: websocket.WebSocket) -> None:
    """The server cut the TCP connection: no close frame comes, the socket just ends."""
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv_data_frame(control_frame=True)


def test_drop_voice_cuts_without_a_close_frame(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    fake.drop_voice()
    _expect_cut(client.ws)
    session = fake.voice_sessions[0]
    assert fake.wait_until(lambda f: session.closed)
    assert (session.close_code, session.closed_by) == (None, "server")
    assert fake.faults == ["drop_voice()"] and fake.violations == []
    client.close()
    main.close()


def test_drop_main_cuts_without_a_close_frame(fake: FakeDiscord) -> None:
    ws, _ = main_ready(fake)
    fake.drop_main()
    _expect_cut(ws)
    assert fake.wait_until(lambda f: f.main_sessions[0].closed)
    assert fake.main_sessions[0].close_code is None and fake.faults == ["drop_main()"]
    ws.close()


def test_kick_user_sends_null_channel_and_closes_4014(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    fake.kick_user()
    state = recv_json(main)
    assert state["t"] == "VOICE_STATE_UPDATE" and state["d"]["channel_id"] is None
    assert state["d"]["user_id"] == str(fake.user_id)
    assert recv_close(client.ws)[0] == 4014
    assert fake.faults == ["kick_user(guild_id=111)"]
    # The old credentials are gone: neither Identify nor a resume works any more.
    ws = websocket.create_connection(client.server["endpoint"] + "/?v=8", timeout=TIMEOUT)
    recv_json(ws)
    send_json(ws, voice_identify("111", fake.user_id, client.state, client.server))
    assert recv_close(ws)[0] == 4004
    client.close()
    main.close()


def _events(main: websocket.WebSocket) -> dict[str, dict[str, Any]]:
    return {m["t"]: m["d"] for m in (recv_json(main), recv_json(main))}


def test_move_user_to_a_new_server(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    old_endpoint = client.server["endpoint"]
    endpoint = fake.move_user(333)
    events = _events(main)
    state, server = events["VOICE_STATE_UPDATE"], events["VOICE_SERVER_UPDATE"]
    assert state["channel_id"] == "333" and state["session_id"] == client.state["session_id"]
    assert server["endpoint"] == endpoint == fake.voice_endpoint != old_endpoint
    assert server["token"] != client.server["token"]
    assert recv_close(client.ws)[0] == 4014
    moved = VoiceClient(
        fake,
        websocket.create_connection(endpoint + "/?v=8", timeout=TIMEOUT),
        client.udp,
        "111",
        state,
        server,
    )
    moved.session("aead_xchacha20_poly1305_rtpsize")
    moved.speaking()
    moved.send_audio(1, b"moved")
    assert fake.wait_for_frames(1)[0].ssrc == moved.ssrc != client.ssrc
    new = fake.voice_sessions[-1]
    assert (new.channel_id, new.connection) == (333, 2)  # numbers unique across servers
    assert fake.voice_sessions[0].close_code == 4014 and fake.violations == []
    moved.ws.close()
    client.close()
    main.close()


def test_move_user_same_server_new_token(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    assert fake.move_user(new_server=False) == client.server["endpoint"]
    events = _events(main)
    assert events["VOICE_STATE_UPDATE"]["channel_id"] == "222"
    assert events["VOICE_SERVER_UPDATE"]["token"] != client.server["token"]
    assert recv_close(client.ws)[0] == 4014
    client.close()
    main.close()


def test_null_endpoint(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    fake.null_endpoint()
    update = recv_json(main)
    assert update["t"] == "VOICE_SERVER_UPDATE" and update["d"]["endpoint"] is None
    assert update["d"]["guild_id"] == "111" and update["d"]["token"]
    assert fake.faults == ["null_endpoint(guild_id=111)"]
    client.close()
    main.close()


@pytest.mark.parametrize("message", ["{not json", "x" * 200_000, b"\x00\x09\xff"])
def test_send_voice_raw(fake: FakeDiscord, message: str | bytes) -> None:
    main, client = full_voice(fake)
    fake.send_voice_raw(message)
    assert client.ws.recv() == message
    # the last message the fake sent (the client's own Speaking may be recorded after it)
    record = [m for m in fake.voice_messages if m.direction == "server"][-1]
    assert record.raw == message and record.data is None
    fake.send_voice({"op": 5, "d": {"user_id": "1", "ssrc": 2, "speaking": 1}})
    assert recv_json(client.ws)["seq"] == 3  # the raw message took no seq
    client.close()
    main.close()


def test_scripting_without_a_voice_session_fails_clearly(fake: FakeDiscord) -> None:
    with pytest.raises(RuntimeError, match="no voice"):
        fake.kick_user()
    with pytest.raises(RuntimeError, match="no open voice"):
        fake.drop_voice()
    with pytest.raises(ValueError, match="probability"):
        fake.impair_udp(drop=1.5)


# -- UDP impairment -----------------------------------------------------------------------------


def test_impairment_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[int]:
        imp: UdpImpairment[int] = UdpImpairment(0.2, 0.2, 0.2, 0.0, seed)
        imp.feed(list(range(50)), 0.0)
        return imp.due(0.0) + imp.due(1.0)

    first = run(7)
    assert first == run(7) and first != run(8)
    assert sorted(set(first)) != list(range(50))  # some dropped
    assert len(first) != len(set(first))  # some duplicated
    assert first != sorted(first)  # some reordered


def _impaired(seed: int, count: int) -> list[int]:
    """Send `count` packets through a fake impaired with `seed`; the recorded sequences."""
    expected = UdpImpairment[int](0.2, 0.2, 0.2, 0.0, seed)
    expected.feed(list(range(1, count + 1)), 0.0)
    want = expected.due(0.0) + expected.due(1.0)
    with FakeDiscord(dave=False) as fake:
        main, client = full_voice(fake)
        fake.impair_udp(drop=0.2, duplicate=0.2, reorder=0.2, seed=seed)
        for sequence in range(1, count + 1):
            client.send_audio(sequence, b"opus")
        frames = fake.wait_for_frames(len(want))
        got = [f.sequence for f in frames]
        stats = fake.udp_impairment
        assert stats is not None and stats.seen == count
        assert fake.faults[-1].startswith("impair_udp(UdpImpairment(drop=0.2")
        client.close()
        main.close()
    assert got == want
    return got


def test_udp_impairment_on_the_fake_is_deterministic() -> None:
    first = _impaired(3, 40)
    assert first == _impaired(3, 40)
    assert first != list(range(1, 41))


def test_udp_delay_holds_packets(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    fake.impair_udp(delay=150)
    sent = time.monotonic()
    client.send_audio(1, b"late")
    assert not fake.wait_until(lambda f: f.frames(), timeout=0.1)
    fake.wait_for_frames(1)
    assert time.monotonic() - sent >= 0.15
    fake.impair_udp()  # off again: recorded at once
    client.send_audio(2, b"now")
    assert [f.opus for f in fake.wait_for_frames(2)] == [b"late", b"now"]
    client.close()
    main.close()

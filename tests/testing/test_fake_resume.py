"""Resume on the fake: voice op 7 (v8 buffered resume) and main gateway op 6, with raw clients."""

from __future__ import annotations

from typing import Any

import pytest
import websocket

from discord_voice.testing import FakeDiscord
from discord_voice.testing.gateways import voice_live
from tests.testing.fake_raw_clients import (
    TIMEOUT,
    VoiceClient,
    full_voice,
    main_ready,
    recv_close,
    recv_json,
    send_json,
)


def _other_speaking(ssrc: int) -> dict[str, Any]:
    return {"op": 5, "d": {"user_id": "5", "ssrc": ssrc, "speaking": 1}}


def _resume(client: VoiceClient, ack: int, **override: Any) -> websocket.WebSocket:
    """A new voice websocket that sends op 7 for `client`'s session (Hello read first)."""
    ws = websocket.create_connection(client.server["endpoint"] + "/?v=8", timeout=TIMEOUT)
    assert recv_json(ws)["op"] == 8
    d = {
        "server_id": client.guild,
        "session_id": client.state["session_id"],
        "token": client.server["token"],
        "seq_ack": ack,
    }
    d.update(override)
    send_json(ws, {"op": 7, "d": d})
    return ws


def test_voice_resume_replays_exactly_the_missed_messages(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)  # Ready seq 1, Session Description seq 2
    client.send_audio(1, b"before")
    fake.wait_for_frames(1)
    fake.send_voice(_other_speaking(11))  # seq 3: the client reads it
    assert recv_json(client.ws)["seq"] == 3
    fake.send_voice(_other_speaking(12))  # seq 4 and 5 are missed
    fake.send_voice_binary(25, b"\x01\x02")
    fake.drop_voice()
    assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
    assert fake.voice_sessions[0].close_code is None  # no close frame

    ws = _resume(client, 3)
    assert recv_json(ws) == {"op": 9, "d": None}
    sent = [m.raw for m in fake.voice_messages if m.direction == "server" and m.connection == 1]
    assert ws.recv() == sent[-2]  # seq 4, byte for byte
    replayed = ws.recv()
    assert replayed == sent[-1] and isinstance(replayed, bytes) and replayed[:3] == b"\x00\x05\x19"
    send_json(ws, {"op": 3, "d": {"t": 7, "seq_ack": 5}})
    assert recv_json(ws) == {"op": 6, "d": {"t": 7}}  # nothing else was replayed
    fake.send_voice(_other_speaking(13))
    assert recv_json(ws)["seq"] == 6  # the sequence carries on

    client.send_audio(2, b"after")  # same SSRC, key and UDP server
    frames = fake.wait_for_frames(2)
    assert [(f.ssrc, f.opus) for f in frames] == [(client.ssrc, b"before"), (client.ssrc, b"after")]
    [session] = fake.voice_sessions
    assert (session.resumes, session.connections, session.connection) == (1, [1, 2], 2)
    assert session.ssrc == client.ssrc and session.secret_key == client.key
    assert not session.closed and fake.violations == [] and fake.udp_errors == []
    ws.close()
    client.close()
    main.close()


def test_voice_resume_after_4015_and_a_client_close(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    fake.close_voice(4015, "voice server crashed")
    assert recv_close(client.ws) == (4015, "voice server crashed")
    ws = _resume(client, 2)
    assert recv_json(ws) == {"op": 9, "d": None}
    ws.close(status=4000)  # a client close other than 1000/1001 keeps the session
    assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
    again = _resume(client, 2)
    assert recv_json(again) == {"op": 9, "d": None}
    send_json(again, {"op": 3, "d": {"t": 1, "seq_ack": 2}})
    assert recv_json(again) == {"op": 6, "d": {"t": 1}}
    assert fake.voice_sessions[0].resumes == 2
    again.close()
    client.close()
    main.close()


@pytest.mark.parametrize(
    ("override", "part"),
    [
        ({"session_id": "not-a-session"}, "unknown session"),
        ({"token": "not-the-token"}, "wrong token"),
        ({"server_id": "999"}, "unknown session"),
        ({"seq_ack": 99}, "seq_ack 99"),
        ({"seq_ack": "2"}, "seq_ack must be an integer"),
    ],
)
def test_bad_voice_resume_closes_4006(
    fake: FakeDiscord, override: dict[str, Any], part: str
) -> None:
    main, client = full_voice(fake)
    fake.drop_voice()
    ws = _resume(client, 2, **override)
    code, reason = recv_close(ws)
    assert code == 4006 and part in reason and "not-the-token" not in reason
    assert fake.violations == []
    client.close()
    main.close()


def test_resume_of_an_ended_session_closes_4006(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    client.ws.close(status=1000)  # a normal close ends the session
    assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
    assert recv_close(_resume(client, 2))[0] == 4006
    client.close()
    main.close()


def test_resume_after_the_window_closes_4006() -> None:
    with FakeDiscord(dave=False, voice_resume_window=0.0) as fake:
        main, client = full_voice(fake)
        fake.drop_voice()
        assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
        assert recv_close(_resume(client, 2))[0] == 4006
        client.close()
        main.close()


def test_resume_with_seq_ack_older_than_the_buffer_closes_4006(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(voice_live, "BUFFER_SIZE", 2)
    main, client = full_voice(fake)
    for ssrc in (21, 22, 23):  # seq 3, 4, 5: the buffer keeps 4 and 5 only
        fake.send_voice(_other_speaking(ssrc))
    fake.drop_voice()
    code, reason = recv_close(_resume(client, 2))
    assert code == 4006 and "not served by the buffer" in reason
    assert recv_close(_resume(client, 3))[0] == 4006  # a failed resume ends the session
    client.close()
    main.close()


def test_resume_takes_over_a_websocket_the_fake_still_holds(fake: FakeDiscord) -> None:
    main, client = full_voice(fake)
    ws = _resume(client, 2)  # the old websocket is still open: the fake cuts it
    assert recv_json(ws) == {"op": 9, "d": None}
    assert fake.voice_sessions[0].connections == [1, 2]
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        client.ws.recv()
    ws.close()
    client.close()
    main.close()


# -- main gateway --------------------------------------------------------------------------------


def _main_resume(url: str, token: str, session_id: str, seq: int) -> websocket.WebSocket:
    ws = websocket.create_connection(url + "/?v=10&encoding=json", timeout=TIMEOUT)
    assert recv_json(ws)["op"] == 10
    send_json(ws, {"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}})
    return ws


def _dispatch(name: str) -> dict[str, Any]:
    return {"op": 0, "t": name, "d": {"n": name}}


def test_main_resume_replays_missed_dispatches_then_resumed(fake: FakeDiscord) -> None:
    ws, ready = main_ready(fake)  # READY is s=1
    session_id, url = ready["d"]["session_id"], ready["d"]["resume_gateway_url"]
    assert url == fake.gateway_url
    fake.send_main(_dispatch("A"))  # s=2, read
    assert recv_json(ws)["s"] == 2
    fake.send_main(_dispatch("B"))  # s=3 and 4: missed
    fake.send_main(_dispatch("C"))
    fake.drop_main()
    assert fake.wait_until(lambda f: f.main_sessions[0].closed)
    assert fake.main_sessions[0].close_code is None

    again = _main_resume(url, fake.token, session_id, 2)
    sent = [m.raw for m in fake.main_messages if m.direction == "server" and m.connection == 1]
    assert again.recv() == sent[-2] and again.recv() == sent[-1]
    resumed = recv_json(again)
    assert (resumed["t"], resumed["s"]) == ("RESUMED", 5)
    send_json(again, {"op": 1, "d": 5})
    assert recv_json(again)["op"] == 11  # heartbeat at s=5 is fine: the sequence carried on
    assert fake.main_sessions[1].resumed and fake.main_sessions[1].session_id == session_id
    assert fake.violations == []
    again.close()
    ws.close()


@pytest.mark.parametrize("how", ["unknown", "seq_ahead", "closed_1000", "invalidated"])
def test_bad_main_resume_gets_invalid_session(fake: FakeDiscord, how: str) -> None:
    ws, ready = main_ready(fake)
    session_id, seq = ready["d"]["session_id"], 1
    if how == "unknown":
        session_id = "0" * 32
    elif how == "seq_ahead":
        seq = 7
    elif how == "invalidated":
        fake.invalid_session(False)
        assert recv_json(ws) == {"op": 9, "d": False, "s": None, "t": None}
    if how == "closed_1000":
        ws.close(status=1000)
    else:
        fake.drop_main()
    again = _main_resume(fake.gateway_url, fake.token, session_id, seq)
    assert recv_json(again) == {"op": 9, "d": False, "s": None, "t": None}
    again.close()
    ws.close()


def test_main_resume_with_a_bad_token_closes_4004(fake: FakeDiscord) -> None:
    ws, ready = main_ready(fake)
    fake.drop_main()
    again = _main_resume(fake.gateway_url, "wrong", ready["d"]["session_id"], 1)
    assert recv_close(again) == (4004, "authentication failed")
    ws.close()


def test_reconnect_and_resumable_invalid_session(fake: FakeDiscord) -> None:
    ws, ready = main_ready(fake)
    fake.send_main({"op": 7, "d": None})
    assert recv_json(ws) == {"op": 7, "d": None}
    fake.invalid_session(True)
    assert recv_json(ws) == {"op": 9, "d": True, "s": None, "t": None}
    ws.close(status=4000)  # the session is still resumable
    again = _main_resume(fake.gateway_url, fake.token, ready["d"]["session_id"], 1)
    assert recv_json(again)["t"] == "RESUMED"
    assert fake.faults == ["send_main(op=7)", "invalid_session(True)"]
    again.close()
    ws.close()


# -- DAVE ------------------------------------------------------------------------------------------


def _last_seq(fake: FakeDiscord, connection: int) -> int:
    seqs = [0]
    for m in fake.voice_messages:
        if m.direction == "server" and m.connection == connection:
            if isinstance(m.raw, bytes):
                seqs.append(int.from_bytes(m.raw[:2], "big"))
            elif m.data is not None and type(m.data.get("seq")) is int:
                seqs.append(m.data["seq"])
    return max(seqs)


def test_dave_membership_survives_a_resume() -> None:
    pytest.importorskip("davey")
    pytest.importorskip("dave")
    import threading

    from tests.testing.dave_raw_client import CHANNEL, bot_client

    with FakeDiscord(dave=True, dave_listener=False) as fake:
        member = fake.add_member(CHANNEL)
        main, client = bot_client(fake)
        client.handshake()
        client.wait(lambda c: c.executed, "op 22")
        members = fake.dave_state().members
        assert client.user_id in members
        client._stop.set()  # park its reader: the websocket is about to be cut
        assert client._thread is not None
        client._thread.join(TIMEOUT)
        fake.drop_voice()
        assert fake.wait_until(lambda f: f.voice_sessions[0].closed)
        old = client.ws
        seq_ack = _last_seq(fake, 1)
        second = fake.add_member(CHANNEL)  # while detached: its traffic waits for the resume

        ws = websocket.create_connection(fake.voice_endpoint + "/?v=8", timeout=TIMEOUT)
        assert recv_json(ws)["op"] == 8
        d = {
            "server_id": "111",
            "session_id": client.session_id,
            "token": client.token,
            "seq_ack": seq_ack,
        }
        send_json(ws, {"op": 7, "d": d})
        assert recv_json(ws) == {"op": 9, "d": None}
        ws.settimeout(0.05)
        client.ws, client._stop = ws, threading.Event()
        client._thread = threading.Thread(target=client._read, name="test-dave-resumed")
        client._thread.start()
        try:
            client.wait(lambda c: len(c.executed) >= 2, "op 22 after the resume")
            state = fake.dave_state()
            assert set(state.members) == {client.user_id, member, second}
            assert fake.voice_sessions[0].resumes == 1
            frame = client.send_opus(b"after resume")
            got = fake.wait_for_frames(1)[0]
            assert (got.opus, got.e2ee_payload, got.dave) == (b"after resume", frame, "decrypted")
            assert got.ssrc == client.ssrc
            assert fake.violations == [] and client.errors == []
        finally:
            client.close()
            old.shutdown()  # type: ignore[no-untyped-call]
            main.close()

"""FakeDiscord as an object: start/stop, threads, reprs, argument checks, load."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from discord_voice.testing import FakeDiscord
from tests.testing.fake_raw_clients import (
    AES,
    XCHACHA,
    VoiceClient,
    full_voice,
    main_ready,
    recv_close,
)


def _fake_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("fake-"))


def test_constructing_starts_nothing() -> None:
    before = threading.active_count()
    fake = FakeDiscord(dave=False)
    assert threading.active_count() == before and _fake_threads() == []
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.gateway_url
    assert fake.frames() == [] and fake.violations == []
    fake.close()  # closing a fake that never started is fine
    with pytest.raises(RuntimeError):
        fake.start()


def test_start_and_close_without_with() -> None:
    fake = FakeDiscord(dave=False).start()
    try:
        assert fake.gateway_url.startswith("ws://127.0.0.1:")
        assert set(_fake_threads()) == {
            "fake-main-serve",
            "fake-voice-serve",
            "fake-udp-recv",
            "fake-http",
        }
        with pytest.raises(RuntimeError):
            fake.start()
    finally:
        fake.close()
    fake.close()  # idempotent
    assert _fake_threads() == []


def test_exit_is_prompt_and_leaves_no_threads_with_clients_connected() -> None:
    with FakeDiscord(dave=False) as fake:
        main, client = full_voice(fake)
        assert any(name.startswith("fake-voice-conn-") for name in _fake_threads())
        assert any(name.endswith("-recv") for name in _fake_threads())
        started = time.monotonic()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"__exit__ took {elapsed:.2f} s"
    assert _fake_threads() == []  # joined by __exit__ itself, not by a later check
    assert recv_close(main)[0] == 1001
    assert recv_close(client.ws)[0] == 1001
    assert fake.voice_sessions[0].close_code == 1001
    assert fake.violations == []
    client.close()


def test_reprs_never_show_secrets() -> None:
    with FakeDiscord(dave=False, token="super-secret-bot-token") as fake:
        main, client = full_voice(fake)
        voice_token = client.server["token"]
        texts = [
            repr(fake),
            repr(fake.main_messages),
            repr(fake.voice_messages),
            repr(fake.voice_sessions),
            repr(fake.main_sessions),
        ]
        client.close()
        main.close()
    for text in texts:
        assert "super-secret-bot-token" not in text
        assert voice_token not in text
        assert str(list(client.key)) not in text and client.key.hex() not in text
    assert "<redacted>" in texts[1] and "<redacted>" in texts[2]


def test_debug_logs_never_show_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeDiscord(dave=False, token="super-secret-bot-token") as fake:
        main, client = full_voice(fake)
        voice_token = client.server["token"]
        client.close()
        main.close()
    assert "super-secret-bot-token" not in caplog.text and voice_token not in caplog.text


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="event_order"):
        FakeDiscord(dave=False, event_order="random")
    with pytest.raises(ValueError, match="user_id"):
        FakeDiscord(dave=False, user_id="100")  # type: ignore[arg-type]
    fake = FakeDiscord(dave=False)
    with pytest.raises(ValueError, match="cannot withhold"):
        fake.withhold("readdy")
    with pytest.raises(ValueError, match="close frame"):
        fake.close_voice_on(0, 1006)


def test_wait_until_is_woken_by_records(fake: FakeDiscord) -> None:
    results: list[bool] = []
    waiter = threading.Thread(
        target=lambda: results.append(fake.wait_until(lambda f: len(f.main_messages) >= 3)),
        name="fake-test-waiter",
    )
    waiter.start()
    main, _ = main_ready(fake)  # Hello, Identify, READY
    waiter.join(5.0)
    assert results == [True]
    main.close()


def test_hundred_sessions_at_fifty_packets_each() -> None:
    """100 concurrent sessions, 50 packets each, sent in rounds of one packet per session."""
    sessions, packets = 100, 50
    with FakeDiscord(dave=False) as fake:
        main, _ = main_ready(fake)
        clients = []
        try:
            for n in range(sessions):
                client = VoiceClient.connect(fake, main, guild=str(1000 + n))
                client.session(AES if n % 2 and AES in fake.modes else XCHACHA)
                client.speaking()
                clients.append(client)
            assert fake.wait_until(lambda f: all(s.speaking for s in f.voice_sessions))
            started = time.monotonic()
            for sequence in range(packets):
                for client in clients:
                    client.send_audio(sequence, b"\xf8\xff\xfe")
                fake.wait_for_frames(sessions * (sequence + 1))
            elapsed = time.monotonic() - started
            for client in clients:
                got = fake.frames(ssrc=client.ssrc)
                assert [f.sequence for f in got] == list(range(packets))
            assert fake.udp_errors == [] and fake.violations == []
            # 5000 packets span 1 s in real time; typically this takes ~0.3 s. The bound is loose
            # so a loaded CI machine does not fail it; it still catches quadratic slowdowns
            assert elapsed < 3.0, f"{sessions * packets} packets took {elapsed:.2f} s"
        finally:
            for client in clients:
                client.close()
            main.close()
    assert _fake_threads() == []

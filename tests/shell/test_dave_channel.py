"""DaveChannel's per-packet step for the shared sender: never blocks, never leaks plaintext."""

from __future__ import annotations

import threading

from discord_voice._shell.dave_channel import DaveChannel
from discord_voice._shell.udp_sender import EncryptBlocked
from discord_voice.core import dave_messages as dm
from discord_voice.core.dave import DaveProtocol
from discord_voice.core.frames import OPUS_SILENCE_FRAME
from tests.core.test_dave import CHANNEL, ME, ScriptedEngine
from tests.timeouts import LONG

AUDIO = b"\xf8audio"


def channel_with(engine: ScriptedEngine) -> DaveChannel:
    channel = DaveChannel(str(ME), str(CHANNEL))
    channel.protocol = DaveProtocol(ME, CHANNEL, engine=engine)
    return channel


def test_without_e2ee_frames_pass_as_they_are() -> None:
    channel = channel_with(ScriptedEngine())
    channel.apply(lambda d: d.start(0), started=True)
    assert channel.try_encrypt(AUDIO) == AUDIO


def test_without_a_key_audio_is_held_and_silence_passes() -> None:
    channel = channel_with(ScriptedEngine())
    channel.apply(lambda d: d.start(1), started=True)
    assert channel.try_encrypt(AUDIO) is EncryptBlocked.NO_KEY
    assert channel.try_encrypt(OPUS_SILENCE_FRAME) == OPUS_SILENCE_FRAME


def test_with_the_key_audio_is_encrypted_and_the_listener_was_told() -> None:
    engine = ScriptedEngine()
    channel = channel_with(engine)
    channel.apply(lambda d: d.start(1), started=True)
    told = threading.Event()
    assert channel.on_media_ready(told.set)  # registered: no key yet
    channel.apply(lambda d: d.receive(dm.ExternalSenderPackage(b"ES")))
    channel.apply(lambda d: d.receive(dm.Proposals(revoke=False, data=b"\x01x")))
    channel.apply(lambda d: d.receive(dm.AnnounceCommit(0, b"c")))  # transition 0: at once
    assert engine.ready and told.wait(LONG)
    assert channel.try_encrypt(AUDIO) == b"E(" + AUDIO + b")"
    assert not channel.on_media_ready(told.set)  # ready now: not registered


def test_a_busy_lock_is_reported_not_waited_for() -> None:
    channel = channel_with(ScriptedEngine())
    channel.apply(lambda d: d.start(0), started=True)
    with channel.lock:  # the reader is processing a commit
        assert channel.try_encrypt(AUDIO) is EncryptBlocked.BUSY
    assert channel.try_encrypt(AUDIO) == AUDIO


def test_a_refused_input_still_updates_the_media_step() -> None:
    channel = channel_with(ScriptedEngine())

    def start_then_fail(d: DaveProtocol) -> list[str | bytes]:
        d.start(1)  # E2EE is now in effect, without a key
        raise ValueError("refused after the change")

    try:
        channel.apply(start_then_fail, started=True)
    except ValueError:
        pass
    assert channel.try_encrypt(AUDIO) is EncryptBlocked.NO_KEY  # never sent in the clear

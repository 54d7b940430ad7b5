"""core.receive_flow: datagram -> SSRC map -> DAVE -> VoicePacket, nothing lost uncounted."""

from __future__ import annotations

from discord_voice.core.crypto import make_cipher
from discord_voice.core.frames import OPUS_SILENCE_FRAME
from discord_voice.core.opcodes import MODE_XCHACHA20
from discord_voice.core.receive_flow import ReceiveFlow, Reset, VoicePacket
from tests.core.test_receive_packet import KEY, OWN, SERVER, packet

ALICE = 4001


class FakeDave:
    """Stands in for the DAVE session: 'decrypts' frames ending in b'!' by removing it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []

    def __call__(self, user_id: int, frame: bytes) -> bytes | None:
        self.calls.append((user_id, frame))
        if frame.endswith(b"!"):
            return frame[:-1]
        if frame.endswith(b"#"):
            return frame[:-1] + b"\xfa\xfa"  # a frame that still carries the marker
        return None


def flow(dave: FakeDave) -> ReceiveFlow:
    return ReceiveFlow(
        own_ssrc=OWN, server=SERVER, cipher=make_cipher(MODE_XCHACHA20, KEY), decrypt=dave
    )


def test_early_audio_is_delivered_once_named_with_its_arrival_time_and_decrypted() -> None:
    dave = FakeDave()
    f = flow(dave)
    for n in range(3):
        data = packet(payload=b"\xf8frame%d!" % n, ssrc=77, sequence=n, timestamp=960 * n)
        assert f.datagram(data, SERVER, 1.0 + n / 10) == ([], [])
    packets, resets = f.speaking(ALICE, 77, 2.0)
    assert resets == []
    assert packets == [
        VoicePacket(ALICE, 77, n, 960 * n, b"\xf8frame%d" % n, 1.0 + n / 10) for n in range(3)
    ]
    assert [user for user, _ in dave.calls] == [ALICE] * 3  # the sender's user id
    assert f.counters.delivered == 3


def test_the_silence_frame_is_not_given_to_dave_and_failures_are_counted() -> None:
    dave = FakeDave()
    f = flow(dave)
    f.speaking(ALICE, 77, 0.0)
    silence, _ = f.datagram(packet(payload=OPUS_SILENCE_FRAME, ssrc=77), SERVER, 0.1)
    assert [p.opus for p in silence] == [OPUS_SILENCE_FRAME] and dave.calls == []
    assert f.datagram(packet(payload=b"\xf8undecryptable", ssrc=77), SERVER, 0.2) == ([], [])
    assert f.datagram(packet(payload=b"\xf8still marked#", ssrc=77), SERVER, 0.3) == ([], [])
    assert f.counters.dave_failures == 2 and f.counters.delivered == 1


def test_drops_are_counted_by_reason() -> None:
    f = flow(FakeDave())
    f.datagram(b"\x81\xc9" + bytes(30), SERVER, 0.0)  # RTCP
    f.datagram(packet(payload_type=101), SERVER, 0.0)  # video
    f.datagram(packet(), ("10.9.9.9", 1), 0.0)  # foreign
    f.datagram(packet(ssrc=OWN), SERVER, 0.0)
    counted = {reason: n for reason, n in f.counters.dropped.items() if n}
    assert counted == {"rtcp": 1, "not_opus": 1, "foreign": 1, "own_ssrc": 1}


def test_never_named_ssrcs_are_counted_after_the_hold_and_a_new_session_resets_everyone() -> None:
    f = flow(FakeDave())
    f.datagram(packet(payload=b"\xf8x!", ssrc=88), SERVER, 0.0)
    f.tick(2.5)
    assert f.counters.unmapped == 1
    assert f.speaking(ALICE, OWN, 3.0) == ([], [])  # our own SSRC is never mapped
    f.speaking(ALICE, 77, 3.0)
    f.datagram(packet(payload=b"\xf8y!", ssrc=99), SERVER, 3.1)  # held
    resets = f.new_session(
        own_ssrc=5, server=("10.0.0.2", 1), cipher=make_cipher(MODE_XCHACHA20, KEY)
    )
    assert resets == [Reset(ALICE)] and f.counters.unmapped == 2
    assert f.ssrcs.user_of(77) is None


def test_speaking_starts_at_the_first_packet_and_ends_after_silence_or_a_reset() -> None:
    f = flow(FakeDave())
    f.speaking(ALICE, 77, 0.0)
    f.datagram(packet(payload=b"\xf8a!", ssrc=77, sequence=1), SERVER, 1.0)
    f.datagram(packet(payload=b"\xf8b!", ssrc=77, sequence=2), SERVER, 1.02)
    assert f.speaking_changes == [(ALICE, True)]
    f.speaking_changes.clear()
    f.tick(1.1)
    assert f.speaking_changes == []  # 80 ms of quiet is not silence yet
    f.tick(1.23)
    assert f.speaking_changes == [(ALICE, False)]
    f.speaking_changes.clear()
    f.datagram(packet(payload=b"\xf8c!", ssrc=77, sequence=3), SERVER, 2.0)
    f.disconnected(ALICE, 2.01)  # op 13 ends it at once
    assert f.speaking_changes == [(ALICE, True), (ALICE, False)]

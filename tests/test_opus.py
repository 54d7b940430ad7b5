"""discord_voice.opus: finding libopus, loading opuslib on it, encoding, checked by FFmpeg.

The packets are decoded with FFmpeg's native Opus decoder (PyAV codec ``"opus"``), which is a
separate implementation from libopus, so an encoder-side mistake cannot hide behind itself.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from discord_voice import opus
from discord_voice.core.frames import frame_samples
from discord_voice.errors import OpusError

ROOT = Path(__file__).resolve().parent.parent


def run_python(*code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the ``code`` blocks, one after the other, in a fresh interpreter (warnings are errors)
    with the repository importable.

    ``$DISCORD_VOICE_LIBOPUS`` is removed (tests/conftest.py sets it for the suite) unless given.
    """
    environ = {k: v for k, v in os.environ.items() if k != opus.ENV_VAR}
    environ.update(PYTHONPATH=str(ROOT), **env)
    program = "\n".join(textwrap.dedent(block) for block in code)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
        check=False,
    )


def system_lookup(found: str | None) -> str:
    """Code that makes the system lookup (``ctypes.util.find_library``) find ``found`` for opus.

    It stands for the host: ``None`` is a machine without libopus, a path one that has it. The
    stub is kept in ``stub`` so the code after it can check it is in place again.
    """
    return f"""
        import ctypes.util
        real_find_library = ctypes.util.find_library
        def stub(name):
            return {found!r} if name == "opus" else real_find_library(name)
        ctypes.util.find_library = stub
        """


def reported_version(path: str) -> str:
    """What the library at ``path`` itself says its version is (read with ctypes, not opuslib)."""
    function = ctypes.CDLL(path).opus_get_version_string
    function.restype = ctypes.c_char_p
    version: bytes = function()
    return version.decode("ascii")


def decode_native(packets: list[bytes]) -> np.ndarray:
    """Decode with FFmpeg's own Opus decoder; returns float samples, shape (2, n)."""
    context = av.CodecContext.create("opus", "r")
    context.sample_rate = 48000
    context.layout = "stereo"
    chunks = []
    for packet in packets:
        for frame in context.decode(av.Packet(packet)):
            chunks.append(frame.to_ndarray())
    return np.concatenate(chunks, axis=1)


def peak_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * 48000 / len(samples)


def toc_duration_ms(packet: bytes) -> float:
    """Duration of an Opus packet from its TOC byte (RFC 6716 §3.1), one-frame codes only."""
    config, code = packet[0] >> 3, packet[0] & 3
    assert code in (0, 1, 2), "code 3 packets are not expected from a 20 ms encoder"
    per_frame: float
    if config < 12:
        per_frame = (10, 20, 40, 60)[config % 4]
    elif config < 16:
        per_frame = (10, 20)[config % 2]
    else:
        per_frame = (2.5, 5, 10, 20)[config % 4]
    return per_frame * (1 if code == 0 else 2)


# --- finding libopus -----------------------------------------------------------------------
# The host's own libopus never decides a result here: the system lookup is stubbed ("this host
# has none" or "this host has <file>") and $DISCORD_VOICE_LIBOPUS is set or removed explicitly.


def test_without_a_system_libopus_the_bundled_copy_is_found(
    monkeypatch: pytest.MonkeyPatch, bundled_libopus: str
) -> None:
    monkeypatch.delenv(opus.ENV_VAR, raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    found = opus.find_libopus()
    assert found == bundled_libopus
    assert hasattr(ctypes.CDLL(found), "opus_encoder_create")


def test_environment_variable_comes_first(
    monkeypatch: pytest.MonkeyPatch, pyav_libopus: str
) -> None:
    monkeypatch.setenv(opus.ENV_VAR, pyav_libopus)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libopus.so.0")
    assert opus.find_libopus() == pyav_libopus


def test_missing_environment_path_falls_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(opus.ENV_VAR, str(tmp_path / "nope.so"))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libopus.so.0")
    assert opus.find_libopus() == "libopus.so.0"


def test_system_library_comes_before_bundled_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(opus.ENV_VAR, raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: f"lib{name}.so.0")
    assert opus.find_libopus() == "libopus.so.0"


def test_bundled_copies_are_found_without_importing_them(
    bundled_libopus: str, pyav_libopus: str
) -> None:
    result = run_python(
        system_lookup(None),
        """
        import importlib.util, sys
        from discord_voice import opus
        first = opus.find_libopus()
        real_find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda n, *a: None if n == "opuslib_next" else real_find_spec(n)
        second = opus.find_libopus()
        print(first)
        print(second)
        print("opuslib_next" in sys.modules, "av" in sys.modules)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [bundled_libopus, pyav_libopus, "False False"]


# --- loading opuslib -----------------------------------------------------------------------
# In a fresh interpreter each time: opuslib binds its library once per process.


def lookup_case(case: str, bundled: str, pyav: str) -> tuple[str | None, dict[str, str], str]:
    """(what the system lookup finds, extra environment, the file opuslib must load) for a case.

    The three places `find_libopus` can stop at, each with a different file than the place after
    it would give, so loading the wrong one is seen.
    """
    if case == "environment variable":
        return bundled, {opus.ENV_VAR: pyav}, pyav
    if case == "system":
        return pyav, {}, pyav
    assert case == "bundled copy"
    return None, {}, bundled


CASES = ["environment variable", "system", "bundled copy"]


@pytest.mark.parametrize("case", CASES)
def test_load_opuslib_loads_the_library_found(
    case: str, bundled_libopus: str, pyav_libopus: str
) -> None:
    system, env, expected = lookup_case(case, bundled_libopus, pyav_libopus)
    result = run_python(
        system_lookup(system),
        """
        from discord_voice import opus
        lib = opus.load_opuslib()
        assert lib is opus.load_opuslib()
        assert hasattr(lib, "Encoder")
        print(lib.api.lib_location)
        print(opus.libopus_version())
        print(ctypes.util.find_library is stub)  # the temporary redirect was undone
        """,
        **env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [expected, reported_version(expected), "True"]


@pytest.mark.parametrize("case", CASES)
def test_load_compiles_opuslib_fresh_under_w_error(
    tmp_path: Path, case: str, bundled_libopus: str, pyav_libopus: str
) -> None:
    # An empty pycache prefix makes Python compile opuslib from source, which emits its
    # SyntaxWarning; under -W error a plain import turns that into a SyntaxError.
    system, env, expected = lookup_case(case, bundled_libopus, pyav_libopus)
    control = run_python(
        system_lookup(expected), "import opuslib", PYTHONPYCACHEPREFIX=str(tmp_path)
    )
    assert control.returncode != 0
    assert "SyntaxError" in control.stderr and "is not" in control.stderr
    result = run_python(
        system_lookup(system),
        """
        from discord_voice import opus
        print(opus.libopus_version())
        print(ctypes.util.find_library is stub)
        """,
        PYTHONPYCACHEPREFIX=str(tmp_path),
        **env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [reported_version(expected), "True"]


def test_this_process_encodes_with_the_library_conftest_chose() -> None:
    # tests/conftest.py sets the variable before any test runs, so the encoding tests below use
    # the same libopus on every host.
    chosen = os.environ.get(opus.ENV_VAR)
    if not chosen:
        pytest.skip(f"${opus.ENV_VAR} is not set (opuslib-next-bundled is not installed)")
    assert opus.load_opuslib().api.lib_location == chosen
    assert opus.libopus_version() == reported_version(chosen)


def hide_and_report(hidden: str) -> str:
    """Code that hides the packages in ``hidden``, then tries to encode (after `system_lookup`)."""
    return f"""
    import importlib.util
    real_find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda n, *a: None if n in {hidden} else real_find_spec(n)
    from discord_voice import opus
    from discord_voice.errors import OpusNotAvailable
    try:
        opus.Encoder()
    except OpusNotAvailable as exc:
        assert isinstance(exc, ImportError)
        print(exc)
    else:
        raise SystemExit("no error")
    """


def test_not_available_message_says_how_to_fix_it() -> None:
    result = run_python(system_lookup(None), hide_and_report('{"opuslib_next", "av"}'))
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert message.startswith("no libopus shared library found;")
    for hint in (
        "pip install opuslib",
        "apt-get install libopus0",
        "brew install opus",
        'pip install "discord-voice[libopus]"',
        "opuslib-next-bundled",
        "DISCORD_VOICE_LIBOPUS=/path/to/libopus.so",
    ):
        assert hint in message
    searched = message.split("searched: ")[1]
    assert "$DISCORD_VOICE_LIBOPUS (not set)" in searched
    assert 'ctypes.util.find_library("opus")' in searched
    assert "opuslib-next-bundled (package not installed)" in searched
    assert "PyAV's bundled libopus (package not installed)" in searched


def test_not_available_when_opuslib_is_missing() -> None:
    result = run_python(system_lookup(None), hide_and_report('{"opuslib"}'))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("opuslib is not installed;")
    assert "pip install opuslib" in result.stdout


def test_not_available_when_the_file_is_not_a_library(tmp_path: Path) -> None:
    fake = tmp_path / "libopus.so"
    fake.write_bytes(b"not an ELF file")
    result = run_python(
        system_lookup(None), hide_and_report("set()"), DISCORD_VOICE_LIBOPUS=str(fake)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"could not load libopus from {fake}")
    assert "pip install opuslib" in result.stdout


# --- encoding ------------------------------------------------------------------------------


def test_constants() -> None:
    assert opus.FRAME_SAMPLES == 960
    assert opus.FRAME_BYTES == 3840
    assert opus.SILENCE_FRAME == b"\xf8\xff\xfe"
    encoder = opus.Encoder()
    assert (encoder.frame_samples, encoder.frame_bytes) == (960, 3840)


def test_silence_frame_decodes_to_20_ms_of_silence() -> None:
    samples = decode_native([opus.SILENCE_FRAME])
    assert samples.shape == (2, 960)
    assert np.abs(samples).max() == 0


def test_tone_frames() -> None:
    frames = list(opus.tone(440.0, seconds=5.0, amplitude=0.3))
    assert len(frames) == 250
    assert {len(frame) for frame in frames} == {3840}
    pcm = np.frombuffer(b"".join(frames), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(pcm[:, 0], pcm[:, 1])
    assert abs(int(pcm.max()) - round(0.3 * 32767)) <= 1
    assert abs(peak_frequency(pcm[:, 0].astype(float)) - 440.0) < 1


@pytest.mark.parametrize(
    "kwargs",
    [{"frequency": 0}, {"frequency": 24000}, {"amplitude": 1.5}, {"seconds": -1}],
)
def test_tone_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        next(opus.tone(**kwargs))  # type: ignore[arg-type]


def test_encoded_tone_is_440_hz_in_20_ms_packets() -> None:
    packets = list(opus.encode_frames(opus.tone(440.0, seconds=1.0)))
    assert len(packets) == 50
    assert all(toc_duration_ms(packet) == 20 for packet in packets)
    assert all(packet[0] & 0x04 for packet in packets)  # the stereo bit
    samples = decode_native(packets)
    assert samples.shape == (2, 50 * 960)
    # skip the encoder's start-up (lookahead and first frame) before measuring
    assert abs(peak_frequency(samples[0, 4800:]) - 440.0) <= 5
    assert abs(peak_frequency(samples[1, 4800:]) - 440.0) <= 5
    assert 0.2 < np.abs(samples[:, 4800:]).max() < 0.4  # amplitude 0.3 survives


def test_bitrate_is_applied() -> None:
    for bitrate in (32000, 96000):
        encoder = opus.Encoder(bitrate=bitrate)
        assert encoder.bitrate == bitrate
        sizes = [len(p) for p in opus.encode_frames(opus.tone(seconds=1.0), encoder)]
        expected = bitrate * 0.020 / 8
        assert 0.7 * expected < sum(sizes[5:]) / len(sizes[5:]) < 1.3 * expected


def test_fec_workaround_sets_the_ctl() -> None:
    lib = opus.load_opuslib()
    encoder = opus.Encoder(fec=True, expected_packet_loss=15)
    assert encoder.fec is True
    assert encoder.expected_packet_loss == 15
    state = encoder._opus.encoder_state
    assert lib.api.encoder.encoder_ctl(state, lib.api.ctl.get_inband_fec) == 1
    assert opus.Encoder().fec is False
    assert opus.Encoder().expected_packet_loss == 0


@pytest.mark.parametrize("signal", ["auto", "voice", "music"])
def test_signal_type_is_applied(signal: str) -> None:
    lib = opus.load_opuslib()
    encoder = opus.Encoder(signal=signal)
    assert encoder.signal == signal
    expected = {"auto": lib.AUTO, "voice": lib.SIGNAL_VOICE, "music": lib.SIGNAL_MUSIC}[signal]
    state = encoder._opus.encoder_state
    assert lib.api.encoder.encoder_ctl(state, lib.api.ctl.get_signal) == expected


@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
def test_frame_duration_sets_the_pcm_size_and_the_packets_toc(frame_ms: int) -> None:
    encoder = opus.Encoder(frame_ms=frame_ms)
    assert encoder.frame_samples == 48 * frame_ms
    assert encoder.frame_bytes == 48 * frame_ms * 4
    pcm = b"".join(opus.tone(seconds=0.12))[: encoder.frame_bytes]
    packet = encoder.encode(pcm)
    assert frame_samples(packet) == 48 * frame_ms  # what the sender paces it by
    decoder = av.CodecContext.create("opus", "r")  # FFmpeg's own decoder agrees
    decoded = decoder.decode(av.Packet(packet))
    assert sum(frame.samples for frame in decoded) == 48 * frame_ms


def test_lookahead_is_the_usual_pre_skip() -> None:
    assert opus.Encoder().lookahead == 312  # 2.5 ms + 4 ms at 48 kHz, application "audio"


@pytest.mark.parametrize("length", [0, 3839, 3841, 1920])
def test_wrong_pcm_length_is_an_opus_error(length: int) -> None:
    with pytest.raises(OpusError, match=f"must be 3840 bytes .* got {length}$"):
        opus.Encoder().encode(b"\0" * length)


def test_mono_and_bytes_like_input() -> None:
    encoder = opus.Encoder(channels=1)
    assert encoder.frame_bytes == 1920
    assert encoder.encode(bytearray(1920))
    assert opus.Encoder().encode(memoryview(bytes(3840)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 44100},
        {"channels": 3},
        {"application": "music"},
        {"bitrate": 100},
        {"expected_packet_loss": 101},
        {"signal": "speech"},
        {"frame_ms": 30},
        {"frame_ms": 120},
    ],
)
def test_encoder_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        opus.Encoder(**kwargs)  # type: ignore[arg-type]


def test_opuslib_errors_are_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = opus.load_opuslib()
    encoder = opus.Encoder()

    def fail_with_code(*args: object) -> bytes:
        raise lib.OpusError(-1)  # OPUS_BAD_ARG

    monkeypatch.setattr(lib.api.encoder, "encode", fail_with_code)
    with pytest.raises(OpusError, match=r"opus encoding failed: OpusError: .*invalid argument"):
        encoder.encode(bytes(3840))

    def fail_with_text(*args: object) -> bytes:
        raise lib.OpusError('Opus Encoder returned result="-3"')  # as opuslib itself does

    monkeypatch.setattr(lib.api.encoder, "encode", fail_with_text)
    with pytest.raises(OpusError, match='returned result="-3"') as caught:
        encoder.encode(bytes(3840))
    assert isinstance(caught.value.__cause__, lib.OpusError)


def test_encode_frames_uses_the_given_encoder() -> None:
    encoder = opus.Encoder(bitrate=16000)
    packets = list(opus.encode_frames(opus.tone(seconds=0.2), encoder))
    assert len(packets) == 10
    assert encoder.bitrate == 16000
    assert list(opus.encode_frames([])) == []


def test_decoder_gives_what_opuslib_gives_and_ffmpeg_hears() -> None:
    lib = opus.load_opuslib()
    encoder = opus.Encoder(fec=True, expected_packet_loss=10)
    packets = list(opus.encode_frames(opus.tone(440.0, 0.4), encoder))
    ours, reference = opus.Decoder(), lib.Decoder(48000, 2)

    def theirs(data: bytes, samples: int, fec: bool) -> bytes:
        pcm: bytes = lib.api.decoder.decode(
            reference.decoder_state, data, len(data), samples, fec, channels=2
        )
        return pcm

    got, expected = [], []
    for n, packet in enumerate(packets):
        if n == 7:  # lost: concealed
            got.append(ours.conceal(960))
            expected.append(theirs(b"", 960, False))
        elif n == 12:  # lost: recovered from the next packet's FEC
            got.append(ours.decode_fec(packets[13], 960))
            expected.append(theirs(packets[13], 960, True))
        else:
            got.append(ours.decode(packet))
            expected.append(theirs(packet, opus.Decoder.MAX_SAMPLES, False))
    assert got == expected and {len(pcm) for pcm in got} == {3840}
    left = np.frombuffer(b"".join(got), "<i2").reshape(-1, 2)[:, 0].astype(np.float64)
    native = decode_native(packets)[0]
    assert abs(peak_frequency(left) - peak_frequency(native)) <= 3.0


def test_decoder_refuses_bad_input_clearly_and_starts_over() -> None:
    decoder = opus.Decoder()
    with pytest.raises(OpusError, match="decoding failed"):
        decoder.decode(b"\x03\x00")  # code 3 with no frames
    with pytest.raises(ValueError, match="samples"):
        decoder.conceal(opus.Decoder.MAX_SAMPLES + 1)
    decoder.reset()
    assert len(decoder.decode(next(opus.encode_frames(opus.tone(440.0, 0.02))))) == 3840

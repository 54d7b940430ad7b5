"""Opus encoding for ``opus_send``, over the user's ``opuslib`` (3.0.1), on any libopus we can find.

opuslib looks for libopus with ``ctypes.util.find_library("opus")`` when it is imported and fails
with a bare ``Exception`` when there is no system libopus. `load_opuslib` finds a libopus in
more places (`find_libopus`) and points opuslib's import-time lookup at it. Everything here is
optional: the core never imports this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import importlib.util
import logging
import math
import os
import sys
import threading
import warnings
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import OpusError, OpusNotAvailable

__all__ = [
    "ENV_VAR",
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "SILENCE_FRAME",
    "Decoder",
    "Encoder",
    "encode_frames",
    "find_libopus",
    "libopus_version",
    "load_opuslib",
    "tone",
]

log = logging.getLogger(__name__)

#: Environment variable naming a libopus shared library to use instead of searching.
ENV_VAR = "DISCORD_VOICE_LIBOPUS"
#: Samples per channel in one 20 ms frame at 48 kHz.
FRAME_SAMPLES = 960
#: Bytes in one 20 ms frame of 48 kHz stereo s16le PCM.
FRAME_BYTES = FRAME_SAMPLES * 2 * 2
#: The Opus packet Discord expects as silence (a 20 ms CELT frame of digital silence).
SILENCE_FRAME = b"\xf8\xff\xfe"

_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
_APPLICATIONS = {
    "audio": "audio",
    "voip": "voip",
    "lowdelay": "restricted_lowdelay",
    "restricted_lowdelay": "restricted_lowdelay",
}
_SIGNALS = ("auto", "voice", "music")
_FRAME_DURATIONS_MS = (10, 20, 40, 60)  # what Discord paces (the sender reads the TOC byte)
_MAX_PACKET_BYTES = 4000  # the output buffer size libopus's documentation recommends
_INSTALL_HINT = (
    "to fix it: `pip install opuslib`, and give it a libopus: "
    "`apt-get install libopus0` (Debian/Ubuntu), `brew install opus` (macOS), "
    '`pip install "discord-voice[libopus]"` (installs opuslib-next-bundled), '
    f"or set {ENV_VAR}=/path/to/libopus.so"
)


@dataclass(frozen=True)
class _Probe:
    """One place `find_libopus` looked, and what it found there (``None``: nothing)."""

    place: str
    found: str | None


def _package_dirs(name: str) -> list[Path]:
    """The folders of top-level package ``name``, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) for location in spec.submodule_search_locations]


def _first_match(folder: Path, patterns: Iterable[str]) -> str | None:
    for pattern in patterns:
        for candidate in sorted(folder.glob(pattern)):
            if candidate.is_file():
                return str(candidate)
    return None


def _probe_env() -> _Probe:
    value = os.environ.get(ENV_VAR)
    if not value:
        return _Probe(f"${ENV_VAR} (not set)", None)
    if not os.path.isfile(value):
        log.warning("%s=%s is not a file; searching elsewhere", ENV_VAR, value)
        return _Probe(f"${ENV_VAR}={value} (no such file)", None)
    return _Probe(f"${ENV_VAR}={value}", value)


_SYSTEM_PLACE = 'ctypes.util.find_library("opus")'


def _probe_system() -> _Probe:
    return _Probe(_SYSTEM_PLACE, ctypes.util.find_library("opus"))


def _probe_opuslib_next_bundled() -> _Probe:
    dirs = _package_dirs("opuslib_next")
    patterns = ("libopus.so*", "libopus*.dylib", "opus.dll", "libopus*.dll")
    for folder in dirs:
        found = _first_match(folder / "_native", patterns)
        if found:
            return _Probe(f"opuslib-next-bundled ({folder / '_native'})", found)
    where = ", ".join(str(d / "_native") for d in dirs) or "package not installed"
    return _Probe(f"opuslib-next-bundled ({where})", None)


def _probe_pyav() -> _Probe:
    dirs = _package_dirs("av")
    for folder in dirs:
        found = _first_match(folder.parent / "av.libs", ("libopus-*.so*", "libopus.so*"))
        found = found or _first_match(folder.parent / "av.libs", ("*opus*.dll",))
        found = found or _first_match(folder / ".dylibs", ("libopus*.dylib",))
        if found:
            return _Probe(f"PyAV's bundled libopus ({folder.parent / 'av.libs'})", found)
    where = ", ".join(str(d.parent / "av.libs") for d in dirs) or "package not installed"
    return _Probe(f"PyAV's bundled libopus ({where})", None)


def _search() -> list[_Probe]:
    """Every place, in order, stopping at the first hit."""
    probes: list[_Probe] = []
    for probe in (_probe_env, _probe_system, _probe_opuslib_next_bundled, _probe_pyav):
        probes.append(probe())
        if probes[-1].found:
            break
    return probes


def find_libopus() -> str | None:
    """Return a libopus shared library (a path, or a name the loader resolves), or ``None``.

    Searched in order: ``$DISCORD_VOICE_LIBOPUS``, ``ctypes.util.find_library("opus")``, the
    copy in opuslib-next-bundled, the copy in PyAV's wheel. Nothing is imported while searching.
    """
    return _search()[-1].found


def _not_available(problem: str, probes: list[_Probe]) -> OpusNotAvailable:
    searched = "; ".join(p.place + (f" -> {p.found}" if p.found else "") for p in probes)
    return OpusNotAvailable(f"{problem}; {_INSTALL_HINT}. searched: {searched}")


_lock = threading.Lock()
_opuslib: ModuleType | None = None


def load_opuslib() -> ModuleType:
    """Import and return ``opuslib``, backed by the libopus `find_libopus` finds (cached).

    Raises `OpusNotAvailable` (with install instructions) when opuslib is not installed, no
    libopus is found, or loading fails. While opuslib is imported, ``ctypes.util.find_library``
    is redirected (process-wide, for "opus" only) and restored at once. Thread safety: may be
    called from any thread.
    """
    global _opuslib
    with _lock:
        if _opuslib is None:
            _opuslib = _load()
        return _opuslib


def _load() -> ModuleType:
    already = sys.modules.get("opuslib")
    if already is not None and hasattr(already, "Encoder"):
        return already  # the application imported it itself
    probes = _search()
    if importlib.util.find_spec("opuslib") is None:
        raise _not_available("opuslib is not installed", probes)
    path = probes[-1].found
    if path is None:
        raise _not_available("no libopus shared library found", probes)
    if probes[-1].place == _SYSTEM_PLACE:
        return _import_opuslib(probes)  # opuslib's own lookup finds the same library
    try:
        library = ctypes.CDLL(path)
    except OSError as exc:
        raise _not_available(f"could not load libopus from {path}: {exc}", probes) from exc
    if not hasattr(library, "opus_encoder_create"):
        raise _not_available(f"{path} is not libopus (no opus_encoder_create)", probes)
    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return path if name == "opus" else original(name)

    ctypes.util.find_library = find_library  # opuslib calls this once, while it is imported
    try:
        return _import_opuslib(probes)
    finally:
        ctypes.util.find_library = original


def _import_opuslib(probes: list[_Probe]) -> ModuleType:
    try:
        with warnings.catch_warnings():
            # opuslib/api/decoder.py compares with `is not 0`; compiling it warns.
            warnings.filterwarnings("ignore", '"is not" with', SyntaxWarning)
            module = importlib.import_module("opuslib")
            for submodule in ("opuslib.api.encoder", "opuslib.api.ctl", "opuslib.api.info"):
                importlib.import_module(submodule)
    except Exception as exc:  # opuslib raises a bare Exception when it finds no libopus
        for name in [n for n in sys.modules if n == "opuslib" or n.startswith("opuslib.")]:
            del sys.modules[name]
        raise _not_available(f"importing opuslib failed: {exc}", probes) from exc
    return module


def libopus_version() -> str:
    """The version string of the loaded libopus, e.g. ``"libopus 1.3.1"``."""
    lib = load_opuslib()
    version: bytes = lib.api.info.get_version_string()
    return version.decode("ascii", "replace")


def _describe(exc: Exception) -> str:
    """A message for an opuslib exception (its ``__str__`` itself fails for some codes)."""
    try:
        text = str(exc)
    except (ctypes.ArgumentError, TypeError, ValueError, AttributeError):
        text = repr(getattr(exc, "code", exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Encoder:
    """Turns s16le interleaved PCM frames (20 ms by default) into Opus packets.

    The defaults match what Discord expects: 48 kHz stereo, 960 samples per channel per frame.
    `application` is libopus's tuning ("audio" for music, "voip" for speech, "lowdelay");
    `signal` hints the content ("auto", "voice", "music"); `fec` turns on in-band forward error
    correction, which libopus uses when `expected_packet_loss` (percent) is above 0;
    `frame_ms` (10, 20, 40 or 60) trades latency for fewer packets.
    Thread safety: `encode` may be called from any thread; calls are serialised.
    """

    def __init__(
        self,
        *,
        bitrate: int = 64000,
        application: str = "audio",
        fec: bool = False,
        expected_packet_loss: int = 0,
        signal: str = "auto",
        frame_ms: int = 20,
        channels: int = 2,
        sample_rate: int = 48000,
    ) -> None:
        if sample_rate not in _SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {_SAMPLE_RATES}, got {sample_rate}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        if application not in _APPLICATIONS:
            raise ValueError(f"application must be one of {sorted(_APPLICATIONS)}")
        if not 500 <= bitrate <= 512000:
            raise ValueError(f"bitrate must be 500..512000 bit/s, got {bitrate}")
        if not 0 <= expected_packet_loss <= 100:
            raise ValueError(f"expected_packet_loss must be 0..100 %, got {expected_packet_loss}")
        if signal not in _SIGNALS:
            raise ValueError(f"signal must be one of {_SIGNALS}, got {signal!r}")
        if frame_ms not in _FRAME_DURATIONS_MS:
            raise ValueError(f"frame_ms must be one of {_FRAME_DURATIONS_MS}, got {frame_ms!r}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.application = application
        #: Milliseconds of audio in one frame.
        self.frame_ms = frame_ms
        #: Samples per channel in one frame.
        self.frame_samples = sample_rate * frame_ms // 1000
        #: Bytes of PCM `encode` takes: one frame of s16le samples for every channel.
        self.frame_bytes = self.frame_samples * channels * 2
        self._lib = load_opuslib()
        self._lock = threading.Lock()
        try:
            self._opus = self._lib.Encoder(sample_rate, channels, _APPLICATIONS[application])
            self._set(self._lib.api.ctl.set_bitrate, bitrate)
            # opuslib's `inband_fec` setter drops its argument; call the ctl directly.
            self._set(self._lib.api.ctl.set_inband_fec, int(fec))
            self._set(self._lib.api.ctl.set_packet_loss_perc, expected_packet_loss)
            self._set(self._lib.api.ctl.set_signal, self._signal_value(signal))
        except Exception as exc:
            raise OpusError(f"could not create the opus encoder: {_describe(exc)}") from exc

    def _set(self, request: Any, value: int) -> None:
        self._lib.api.encoder.encoder_ctl(self._opus.encoder_state, request, value)

    def _get(self, request: Any) -> int:
        try:
            return int(self._lib.api.encoder.encoder_ctl(self._opus.encoder_state, request))
        except Exception as exc:
            raise OpusError(f"opus encoder ctl failed: {_describe(exc)}") from exc

    def _signal_value(self, signal: str) -> int:
        lib = self._lib
        values = {"auto": lib.AUTO, "voice": lib.SIGNAL_VOICE, "music": lib.SIGNAL_MUSIC}
        return int(values[signal])

    @property
    def signal(self) -> str:
        """The signal type libopus reports: "auto", "voice" or "music"."""
        value = self._get(self._lib.api.ctl.get_signal)
        names = {self._signal_value(name): name for name in _SIGNALS}
        return names.get(value, str(value))

    @property
    def bitrate(self) -> int:
        """The bitrate libopus reports, in bit/s."""
        return self._get(self._lib.api.ctl.get_bitrate)

    @property
    def fec(self) -> bool:
        """Whether in-band forward error correction is on, as libopus reports it."""
        return bool(self._get(self._lib.api.ctl.get_inband_fec))

    @property
    def expected_packet_loss(self) -> int:
        """The packet loss percentage libopus tunes FEC for."""
        return self._get(self._lib.api.ctl.get_packet_loss_perc)

    @property
    def lookahead(self) -> int:
        """Samples of encoder delay (the Ogg Opus pre-skip, at 48 kHz)."""
        return self._get(self._lib.api.ctl.get_lookahead)

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Encode one frame of s16le interleaved PCM (`frame_bytes` long) to one packet."""
        data = bytes(pcm)
        if len(data) != self.frame_bytes:
            raise OpusError(
                f"pcm frame must be {self.frame_bytes} bytes ({self.frame_ms} ms of "
                f"{self.channels}-channel s16le at {self.sample_rate} Hz), got {len(data)}"
            )
        with self._lock:
            try:
                packet = self._lib.api.encoder.encode(
                    self._opus.encoder_state, data, self.frame_samples, _MAX_PACKET_BYTES
                )
            except Exception as exc:
                raise OpusError(f"opus encoding failed: {_describe(exc)}") from exc
        return bytes(packet)

    def __repr__(self) -> str:
        return (
            f"<Encoder {self.sample_rate} Hz {self.channels} ch {self.frame_ms} ms "
            f"application={self.application}>"
        )


class Decoder:
    """Turns Opus packets of one sender into 48 kHz stereo s16le PCM (receiving).

    `decode` takes a packet (up to 120 ms); `conceal` makes up `samples` of a lost packet
    (packet-loss concealment); `decode_fec` recovers a lost packet from the in-band FEC data
    of the packet after it. A bad packet raises `OpusError`; call `reset` and go on.
    Thread safety: one thread at a time (a decoder holds one sender's state).
    """

    #: The longest packet Opus has: 120 ms at 48 kHz, per channel.
    MAX_SAMPLES = 5760

    def __init__(self) -> None:
        self._lib = load_opuslib()
        # opus_decode straight into one reused buffer: opuslib's `decode` allocates and zeroes
        # a buffer and copies the result through a list of ints, 5-10x the cost of decoding
        self._decode = self._lib.api.decoder.libopus_decode
        self._pcm = (ctypes.c_int16 * (self.MAX_SAMPLES * 2))()
        self._pcm_pointer = ctypes.cast(self._pcm, self._lib.api.c_int16_pointer)
        self._new()

    def _new(self) -> None:
        try:
            self._opus = self._lib.Decoder(48000, 2)
        except Exception as exc:
            raise OpusError(f"could not create the opus decoder: {_describe(exc)}") from exc

    def reset(self) -> None:
        """Start over (a bad packet, a new SSRC): a fresh decoder state."""
        self._new()

    def _run(self, data: bytes, samples: int, fec: bool) -> bytes:
        if not 0 < samples <= self.MAX_SAMPLES:
            raise ValueError(f"samples must be 1..{self.MAX_SAMPLES} per channel, not {samples}")
        try:
            result = self._decode(
                self._opus.decoder_state, data, len(data), self._pcm_pointer, samples, int(fec)
            )
        except Exception as exc:  # a ctypes argument error
            raise OpusError(f"opus decoding failed: {_describe(exc)}") from exc
        if result < 0:
            error = self._lib.OpusError(result)
            raise OpusError(f"opus decoding failed: {_describe(error)}")
        return ctypes.string_at(self._pcm, result * 4)

    def decode(self, packet: bytes) -> bytes:
        return self._run(packet, self.MAX_SAMPLES, False)

    def conceal(self, samples: int) -> bytes:
        return self._run(b"", samples, False)

    def decode_fec(self, next_packet: bytes, samples: int) -> bytes:
        return self._run(next_packet, samples, True)

    def __repr__(self) -> str:
        return "<Decoder 48000 Hz 2 ch>"


def tone(
    frequency: float = 440.0, seconds: float = 5.0, amplitude: float = 0.3, sample_rate: int = 48000
) -> Iterator[bytes]:
    """Yield 20 ms frames of stereo s16le PCM holding a sine wave (a test signal)."""
    if not 0 < frequency < sample_rate / 2:
        raise ValueError(f"frequency must be between 0 and {sample_rate / 2} Hz, got {frequency}")
    if not 0 <= amplitude <= 1:
        raise ValueError(f"amplitude must be 0..1, got {amplitude}")
    if seconds < 0:
        raise ValueError(f"seconds must not be negative, got {seconds}")
    if sample_rate not in _SAMPLE_RATES:
        raise ValueError(f"sample_rate must be one of {_SAMPLE_RATES}, got {sample_rate}")
    frame_samples = sample_rate // 50
    scale = amplitude * 32767
    cycles_per_sample = frequency / sample_rate
    for index in range(round(seconds * 50)):
        frame = array("h")
        for n in range(index * frame_samples, (index + 1) * frame_samples):
            phase = (n * cycles_per_sample) % 1.0
            value = round(scale * math.sin(2 * math.pi * phase))
            frame.append(value)
            frame.append(value)
        if sys.byteorder == "big":
            frame.byteswap()
        yield frame.tobytes()


def encode_frames(pcm_frames: Iterable[bytes], encoder: Encoder | None = None) -> Iterator[bytes]:
    """Encode each PCM frame to an Opus packet (a default `Encoder` is made on first use)."""
    for frame in pcm_frames:
        if encoder is None:
            encoder = Encoder()
        yield encoder.encode(frame)

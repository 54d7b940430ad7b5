"""`FakeDiscord`: a main gateway, a voice gateway and a voice UDP server on 127.0.0.1, in-process.

Use it in tests of anything that talks to Discord voice::

    from discord_voice.testing import FakeDiscord

    with FakeDiscord() as fake:
        run_my_bot(gateway_url=fake.gateway_url, token=fake.token)  # joins, plays 50 frames
        frames = fake.wait_for_frames(50)
        assert [f.sequence for f in frames] == list(range(frames[0].sequence,
                                                          frames[0].sequence + 50))
        assert not fake.violations and not fake.udp_errors

Everything the fake sees is recorded (``main_messages``, ``voice_messages``, ``frames()``,
``voice_sessions``, ``violations``, ``udp_errors``); `FakeDiscord.wait_until` blocks until a
predicate over the fake holds, woken by every new record (no polling). Faults are scripted with
`withhold` (handshake stages; ``main_ready``/``main_resumed`` hold back the main gateway's
answer on a reconnect), `close_voice_on`, `close_voice`, `drop_voice`, `send_voice_raw`,
`send_main_raw`, `move_user`,
`kick_user`, `null_endpoint`, `impair_udp`, `drop_main`, `invalid_session` and friends (see
`fault_scripting`) and listed in ``faults``. Voice sessions can be resumed (op 7, see
`voice_live`), main sessions too (op 6, see `main_resume`).

DAVE: ``FakeDiscord(dave=True)`` plays Discord's E2EE role (4017 for clients without DAVE
outside stage channels; the voice gateway as MLS external sender; the UDP server DAVE-decrypts
with a libdave member of the channel). Script it with `add_member`, `remove_member`,
`send_invalid_commit`, `downgrade`, `upgrade`; inspect with `dave_state` (see `dave_scripting`).
``stage=True`` or `set_stage` makes channels stage-like (no DAVE). A client alone in a DAVE
channel stays a pending member (no one can commit its Add), as on Discord;
``dave_listener=True`` hosts a libdave member in every DAVE channel a client joins, so it is
never alone and its audio is always DAVE-decrypted. Needs ``dave-py``.

Every thread is named ``fake-...``, non-daemon and joined by `close` / ``__exit__``, which returns
within about a second even when clients are still connected (they get close code 1001).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from discord_voice._shell.exit_hook import close_at_exit
from discord_voice.core.opcodes import MODE_AES256_GCM, MODE_XCHACHA20
from discord_voice.testing.dave_scripting import DaveScripting
from discord_voice.testing.fault_scripting import FaultScripting
from discord_voice.testing.gateways.main import FakeMainGateway
from discord_voice.testing.gateways.voice import FakeVoiceGateway
from discord_voice.testing.gateways.voice_live import LiveVoices
from discord_voice.testing.gateways.ws import Peer
from discord_voice.testing.records import (
    MainSession,
    ReceivedFrame,
    RecordedMessage,
    Recorder,
    VoiceSession,
)
from discord_voice.testing.udp.impairment import UdpImpairment
from discord_voice.testing.udp.server import FakeUdpServer
from discord_voice.testing.world import Config, Credentials, IssuedVoice, Script

if TYPE_CHECKING:
    from discord_voice.testing.dave.hub import DaveHub

__all__ = ["FakeDiscord"]

_CLOSE_BUDGET = 0.6  # seconds close() waits for handlers before cutting connections


class FakeDiscord(DaveScripting, FaultScripting):
    """A fake Discord for one test: start it (``with`` or `start`), point a client at it, assert.

    ``voice_resume_window``: seconds a voice session whose websocket ended resumably (drop,
    4015, a client close other than 1000/1001) can still be resumed with op 7.

    Thread safety: every public method may be called from any thread.
    """

    #: Seconds of slack for "audio before Speaking": the websocket and UDP are read by different
    #: threads, so a Speaking sent just before the first packet may be recorded just after it.
    speaking_grace: float = 0.3

    def __init__(
        self,
        token: str = "fake-bot-token",
        user_id: int = 100000000000000001,
        modes: Iterable[str] = (MODE_AES256_GCM, MODE_XCHACHA20),
        main_heartbeat_interval: float = 41.25,
        voice_heartbeat_interval: float = 13.75,
        event_order: str = "state_first",
        voice_hello_first: bool = True,
        endpoint_scheme: bool = True,
        dave: bool = True,
        stage: bool = False,
        dave_listener: bool = True,
        voice_resume_window: float = 5.0,
    ) -> None:
        modes = tuple(modes)
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string")
        if type(user_id) is not int or not 0 < user_id < 1 << 64:
            raise ValueError("user_id must be a positive 64-bit int")
        if not all(isinstance(m, str) for m in modes):
            raise ValueError("modes must be strings")
        if not (main_heartbeat_interval > 0 and voice_heartbeat_interval > 0):
            raise ValueError("heartbeat intervals must be positive (seconds)")
        if not voice_resume_window >= 0:
            raise ValueError("voice_resume_window must be >= 0 (seconds)")
        if event_order not in ("state_first", "server_first"):
            raise ValueError("event_order must be 'state_first' or 'server_first'")
        self._config = Config(
            token=token,
            user_id=user_id,
            modes=modes,
            main_heartbeat_ms=round(main_heartbeat_interval * 1000),
            voice_heartbeat_ms=round(voice_heartbeat_interval * 1000),
            event_order=event_order,
            voice_hello_first=bool(voice_hello_first),
            endpoint_scheme=bool(endpoint_scheme),
            voice_resume_window=float(voice_resume_window),
        )
        self._rec = Recorder()
        self._script = Script()
        self._credentials = credentials = Credentials()
        grace: Callable[[], float] = lambda: self.speaking_grace  # noqa: E731
        self._dave: DaveHub | None = None
        if dave:
            from discord_voice.testing.dave.hub import DaveHub  # needs dave-py

            self._dave = DaveHub(
                self._rec, enabled=True, stage=bool(stage), listener=bool(dave_listener)
            )
        self._udp = FakeUdpServer(self._rec, self._script, grace, self._dave)
        self._impairment: UdpImpairment[Any] | None = None
        self._live = LiveVoices(lambda: self._config.voice_resume_window)
        numbers = itertools.count(1).__next__  # voice connection numbers, unique across servers
        self._new_voice: Callable[[], FakeVoiceGateway] = lambda: FakeVoiceGateway(
            self._config, self._rec, self._script, credentials, self._udp, grace, self._live,
            self._dave, numbers,
        )  # fmt: skip
        self._voices = [self._new_voice()]
        self._main = FakeMainGateway(
            self._config, self._rec, self._script, credentials, lambda: self.voice_endpoint
        )
        self._state = "new"
        self._gateway_url = ""
        self._voice_endpoint = ""

    def __repr__(self) -> str:
        return (
            f"FakeDiscord(state={self._state!r}, gateway_url={self._gateway_url!r}, "
            f"voice_endpoint={self._voice_endpoint!r})"
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeDiscord:
        """Bind and start the three servers (127.0.0.1, ephemeral ports); returns self."""
        with self._rec.lock:
            if self._state != "new":
                raise RuntimeError(f"FakeDiscord cannot start: it is {self._state}")
            self._state = "starting"
        close_at_exit(self, FakeDiscord.close)  # a test that forgets close() must not hang
        try:
            self._udp.start()
            self._voices[0].start()
            self._main.start()
        except BaseException:
            self._shutdown()
            raise
        self._voice_endpoint = self._endpoint_of(self._voices[0])
        self._gateway_url = self._main.url
        with self._rec.lock:
            if self._state == "starting":  # not closed meanwhile by another thread
                self._state = "running"
        return self

    def close(self) -> None:
        """Close every connection (1001), stop the servers and join all threads. Idempotent."""
        with self._rec.lock:
            was, self._state = self._state, "closed"
        if was not in ("new", "closed"):
            self._shutdown()

    def _shutdown(self) -> None:
        with self._rec.lock:
            self._state = "closed"
            voices = list(self._voices)
        gateways: list[FakeMainGateway | FakeVoiceGateway] = [self._main, *voices]
        for gateway in gateways:
            gateway.begin_close()
        self._udp.begin_close()
        deadline = time.monotonic() + _CLOSE_BUDGET
        for gateway in gateways:
            gateway.finish_close(deadline)
        self._live.close()
        self._udp.finish_close(deadline)
        with self._rec.changing():
            pass  # wake any wait_until so it can see the fake is closed

    def __enter__(self) -> FakeDiscord:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The bot token the fake main gateway accepts."""
        return self._config.token

    @property
    def user_id(self) -> int:
        return self._config.user_id

    @property
    def modes(self) -> tuple[str, ...]:
        return self._config.modes

    @property
    def gateway_url(self) -> str:
        """``ws://127.0.0.1:PORT`` of the main gateway (add ``/?v=10&encoding=json``)."""
        if not self._gateway_url:
            raise RuntimeError("FakeDiscord is not started")
        return self._gateway_url

    @property
    def voice_endpoint(self) -> str:
        """The ``endpoint`` VOICE_SERVER_UPDATE carries."""
        if not self._voice_endpoint:
            raise RuntimeError("FakeDiscord is not started")
        return self._voice_endpoint

    @property
    def udp_address(self) -> tuple[str, int]:
        """Where the voice UDP server listens (also sent in voice Ready)."""
        return ("127.0.0.1", self._udp.port)

    def _endpoint_of(self, gateway: FakeVoiceGateway) -> str:
        port = gateway.port
        return f"ws://127.0.0.1:{port}" if self._config.endpoint_scheme else f"127.0.0.1:{port}"

    def _endpoint(self) -> str:
        return self.voice_endpoint

    def _add_voice_server(self) -> str:
        """Start another voice gateway (same UDP server); later joins are sent there too."""
        gateway = self._new_voice()
        gateway.start()
        with self._rec.lock:
            running = self._state == "running"
            if running:
                self._voices.append(gateway)
                self._voice_endpoint = self._endpoint_of(gateway)
        if not running:
            gateway.begin_close()
            gateway.finish_close(time.monotonic() + _CLOSE_BUDGET)
            raise RuntimeError("FakeDiscord is not running")
        return self._voice_endpoint

    def _voice_peers(self) -> list[Peer]:
        with self._rec.lock:
            voices = list(self._voices)
        return sorted((p for v in voices for p in v.open_peers()), key=lambda p: p.number)

    # -- records -------------------------------------------------------------------------------

    @property
    def main_messages(self) -> list[RecordedMessage]:
        with self._rec.lock:
            return list(self._rec.main_messages)

    @property
    def voice_messages(self) -> list[RecordedMessage]:
        with self._rec.lock:
            return list(self._rec.voice_messages)

    def frames(self, ssrc: int | None = None) -> list[ReceivedFrame]:
        """Every decrypted RTP packet in arrival order (only those of `ssrc` if given)."""
        with self._rec.lock:
            if ssrc is None:
                return list(self._rec.frames)
            return list(self._rec.frames_by_ssrc.get(ssrc, ()))

    @property
    def udp_errors(self) -> list[str]:
        with self._rec.lock:
            return list(self._rec.udp_errors)

    @property
    def violations(self) -> list[str]:
        with self._rec.lock:
            return list(self._rec.violations)

    @property
    def voice_sessions(self) -> list[VoiceSession]:
        with self._rec.lock:
            return list(self._rec.voice_sessions)

    @property
    def main_sessions(self) -> list[MainSession]:
        with self._rec.lock:
            return list(self._rec.main_sessions)

    def wait_until(self, predicate: Callable[[FakeDiscord], object], timeout: float = 5.0) -> bool:
        """Block until `predicate(self)` is true; False after `timeout` seconds.

        The predicate runs with the record lock held and is re-evaluated whenever anything is
        recorded, so keep it quick and do no I/O in it.
        """
        with self._rec.cond:
            return bool(self._rec.cond.wait_for(lambda: predicate(self), timeout))

    def wait_for_frames(
        self, n: int, timeout: float = 5.0, ssrc: int | None = None
    ) -> list[ReceivedFrame]:
        """The first `n` frames (of `ssrc` if given); `TimeoutError` if fewer arrive in time."""
        rec = self._rec

        def source() -> list[ReceivedFrame]:
            return rec.frames if ssrc is None else rec.frames_by_ssrc.get(ssrc, [])

        with rec.cond:
            if rec.cond.wait_for(lambda: len(source()) >= n, timeout):
                return list(source()[:n])
            got, errors = len(source()), rec.udp_errors[-3:]
        which = "" if ssrc is None else f" of ssrc {ssrc}"
        raise TimeoutError(
            f"only {got} of {n} frames{which} arrived within {timeout} s; last udp errors: {errors}"
        )

    # -- scripting -----------------------------------------------------------------------------

    def issue_voice(self, guild_id: int, channel_id: int, user_id: int) -> IssuedVoice:
        """Voice credentials for another user (not the bot), as if Discord had sent that user's
        client VOICE_STATE_UPDATE/VOICE_SERVER_UPDATE: lets a test put several clients in one
        channel. Identify with ``server_id=str(guild_id)``, ``user_id``, ``.session_id``,
        ``.token`` at `voice_endpoint`."""
        return self._credentials.issue_other(str(guild_id), str(channel_id), str(user_id))

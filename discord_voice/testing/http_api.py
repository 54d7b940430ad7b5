"""The fake Discord's HTTP API: the one route a voice bot needs before it connects,
``GET /api/v10/gateway/bot`` (Get Gateway Bot), on ``127.0.0.1`` (an ephemeral port).

It answers with ``Authorization: Bot <fake.token>`` only (else 401, as Discord): the fake main
gateway's URL, the recommended shard count (``FakeDiscord(shards=N)``) and the session start
limit (``total`` from ``session_starts``, ``remaining`` what the Identifies so far left of it,
``reset_after`` the milliseconds left of the day that began when the fake started, on its clock,
``max_concurrency`` the fake's limit, 1 when it enforces none). Other paths are 404. Every
request is recorded in `requests` (method and path, never the header).
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from discord_voice.clock import Clock
from discord_voice.core.sharding import WINDOW
from discord_voice.testing.world import Config

__all__ = ["GATEWAY_BOT_PATH", "FakeHttpApi"]

GATEWAY_BOT_PATH = "/api/v10/gateway/bot"


class FakeHttpApi:
    """The HTTP server; `start` binds it, `close` stops it and joins its thread."""

    def __init__(
        self,
        config: Config,
        gateway_url: Callable[[], str],
        identifies: Callable[[], int],
        clock: Clock,
    ) -> None:
        self._config = config
        self._gateway_url = gateway_url
        self._identifies = identifies
        self._clock = clock
        self._started_at = 0.0
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/api/v10``: the base URL a client puts routes after."""
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v10"

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._requests)

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no stderr noise; requests are recorded instead

        self._started_at = self._clock.monotonic()
        # one thread answers every request in turn: no unnamed per-request threads to join
        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-http"
        )
        self._thread.start()

    def close(self, timeout: float) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(timeout)

    def gateway_bot(self) -> dict[str, Any]:
        """The body of Get Gateway Bot right now."""
        config = self._config
        elapsed = (self._clock.monotonic() - self._started_at) % WINDOW
        return {
            "url": self._gateway_url(),
            "shards": config.shards,
            "session_start_limit": {
                "total": config.session_starts,
                "remaining": max(0, config.session_starts - self._identifies()),
                "reset_after": round((WINDOW - elapsed) * 1000),
                "max_concurrency": config.max_concurrency or 1,
            },
        }

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        """Answer one GET (on the server's handler thread)."""
        with self._lock:
            self._requests.append(("GET", request.path))
        if request.path.split("?")[0] != GATEWAY_BOT_PATH:
            self._reply(request, 404, {"message": "404: Not Found", "code": 0})
            return
        sent = request.headers.get("Authorization", "")
        wanted = f"Bot {self._config.token}"
        if not hmac.compare_digest(sent.encode(), wanted.encode()):
            self._reply(request, 401, {"message": "401: Unauthorized", "code": 0})
            return
        self._reply(request, 200, self.gateway_bot())

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

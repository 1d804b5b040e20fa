"""A front door for each push service of the local stack, holding requests while the service restarts.

Cloud Run never refuses a connection: while an instance starts, its front end holds the request
(up to the request timeout). A local service that the supervisor is restarting refuses
connections instead, and Google's Pub/Sub emulator handles a run of refused pushes badly: when
several messages fail together it stops retrying them for many minutes (seen with emulator
0.8.20: eight messages refused for eight seconds were not delivered within 70 s of the endpoint
coming back; one message was). So each push endpoint of the local stack is this small proxy,
which forwards to the service and, when the service is down or dies mid-request, waits and sends
the request again until the service answers or ``deadline_s`` passes. Every push handler is
idempotent, so sending a request twice is safe.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

log = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te",
                         "trailer", "upgrade", "proxy-authorization", "proxy-authenticate"})
_RETRY_EVERY_S = 0.25


class FrontDoor:
    """Forwards ``host:port`` to ``upstream``, holding each request up to ``deadline_s`` while it is down."""

    def __init__(self, host: str, port: int, upstream: str, deadline_s: float) -> None:
        self.upstream = upstream.rstrip("/")
        self.deadline_s = deadline_s
        self.held = 0
        """Requests that found the service down and were sent again."""
        self._client = httpx.Client(timeout=httpx.Timeout(deadline_s, connect=2.0))
        door = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                status, out_headers, content = door.send(self.command, self.path, headers, body)
                self.send_response(status)
                for key, value in out_headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815 - the names http.server calls

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"front-door-{port}", daemon=True)

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes
             ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request upstream, again and again while the service cannot answer; 503 after the deadline."""
        deadline = time.monotonic() + self.deadline_s
        counted = False
        while True:
            try:
                response = self._client.request(method, self.upstream + path, headers=headers, content=body)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
                if time.monotonic() >= deadline:
                    return 503, [("Content-Type", "text/plain")], f"service unavailable: {err}".encode()
                if not counted:
                    self.held, counted = self.held + 1, True
                time.sleep(_RETRY_EVERY_S)
                continue
            except httpx.TimeoutException:
                return 504, [("Content-Type", "text/plain")], b"the service did not answer in time"
            kept = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP]
            return response.status_code, kept, response.content

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> FrontDoor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

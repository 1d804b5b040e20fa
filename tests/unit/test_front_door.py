"""The local stack's front door holds a push while its service restarts, as Cloud Run's front end does."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from parascribe.local.emulators import free_port
from parascribe.local.front_door import FrontDoor


class Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers["content-length"]))
        self.send_response(207)
        self.send_header("x-seen-path", self.path)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.upper())

    def log_message(self, format: str, *args: object) -> None:
        return None


def serve(port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_push_that_arrives_while_the_service_is_down_is_held_until_it_is_back() -> None:
    inner = free_port()
    door = FrontDoor("127.0.0.1", free_port(), f"http://127.0.0.1:{inner}", deadline_s=20).start()
    port = door.port
    later = threading.Timer(1.5, lambda: servers.append(serve(inner)))
    servers: list[ThreadingHTTPServer] = []
    try:
        later.start()
        started = time.monotonic()
        response = httpx.post(f"http://127.0.0.1:{port}/pubsub?x=1", content=b"hello", timeout=30)
        waited = time.monotonic() - started
    finally:
        door.stop()
        for server in servers:
            server.shutdown()
    assert (response.status_code, response.content, response.headers["x-seen-path"]) == (207, b"HELLO", "/pubsub?x=1")
    assert 1.4 <= waited < 10 and door.held == 1


def test_a_service_that_stays_down_gets_a_503_at_the_deadline() -> None:
    door = FrontDoor("127.0.0.1", free_port(), f"http://127.0.0.1:{free_port()}", deadline_s=1.0).start()
    try:
        response = httpx.post(f"http://127.0.0.1:{door.port}/pubsub", content=b"x", timeout=10)
    finally:
        door.stop()
    assert response.status_code == 503 and response.text.startswith("service unavailable")

"""A Deepgram-compatible pre-recorded API for the local stack: ``parascribe deepgram-server``.

It speaks ``POST /v1/listen`` as the real API does, so the unmodified
``deepgram-sdk`` talks to it through ``DEEPGRAM_BASE_URL``:

- a raw audio body in any container (decoded with :func:`parascribe.audio.decode_bytes`),
  or a JSON ``{"url": ...}`` body, which the server fetches itself (a signed URL);
- query options as the SDK sends them (``model``, ``smart_format``, ``punctuate``,
  ``diarize``, ``utterances``, ``paragraphs``, ...);
- an ``Authorization: Token <key>`` header: any non-empty key, or exactly the
  ``--api-key`` the server was started with;
- answers in Deepgram's pre-recorded shape, with real words from the offline
  engine (faster-whisper tiny.en), and errors in Deepgram's error shape
  (``err_code``, ``err_msg``, ``request_id``).

Admin endpoints for tests: ``POST /_faults`` ``{"status": 429, "count": 2,
"retry_after": 1, "delay_s": 0}`` makes the next ``count`` listen requests fail
that way (``status`` 0 only delays), ``DELETE /_faults`` clears them, and
``GET /_stats`` reports what was asked.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from parascribe.audio import SAMPLE_RATE, decode_bytes
from parascribe.contracts import Word
from parascribe.engines.base import AsrEngine, AudioChunk
from parascribe.errors import BadAudioError
from parascribe.local.deepgram_response import build_response

log = logging.getLogger(__name__)

DEFAULT_PORT = 8787
_ENGINE_KEY = "parascribe.engine"
MAX_BODY_BYTES = 2 << 30
_URL_FETCH_TIMEOUT_S = 120.0


@dataclass
class Fault:
    """Make the next ``count`` listen requests fail (or stall) this way."""

    status: int = 500
    count: int = 1
    retry_after: float | None = None
    delay_s: float = 0.0
    err_msg: str | None = None


@dataclass
class ServerState:
    """Mutable state shared by request threads; every access holds ``lock``."""

    api_key: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[Fault] = field(default_factory=list)
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    last_params: dict[str, str] = field(default_factory=dict)
    last_source: str = ""

    def next_fault(self) -> Fault | None:
        with self.lock:
            while self.faults:
                fault = self.faults[0]
                if fault.count <= 0:
                    self.faults.pop(0)
                    continue
                fault.count -= 1
                return fault
            return None


def _error(status: int, code: str, message: str, request_id: str, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"err_code": code, "err_msg": message, "request_id": request_id})
    resp.status_code = status
    resp.headers["dg-request-id"] = request_id
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


_FAULT_CODES = {
    400: ("Bad Request", "Bad Request: failed to process audio: corrupt or unsupported data"),
    401: ("INVALID_AUTH", "Invalid credentials."),
    402: ("ASR_PAYMENT_REQUIRED", "Project does not have enough credits for an ASR request."),
    403: ("INSUFFICIENT_PERMISSIONS", "You do not have permission to perform this action."),
    408: ("REQUEST_TIMEOUT", "The request timed out."),
    429: ("TOO_MANY_REQUESTS", "Too many requests. Please try again later."),
    500: ("INTERNAL_SERVER_ERROR", "An internal server error occurred."),
    502: ("BAD_GATEWAY", "Bad gateway."),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable."),
    504: ("GATEWAY_TIMEOUT", "Gateway timeout."),
}


class _LockedEngine:
    """Serialises calls into an engine that is not thread-safe."""

    def __init__(self, engine: AsrEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()

    def words(self, samples: Any, key: str) -> list[Word]:
        with self._lock:
            return self._engine.transcribe([AudioChunk(key=key, samples=samples, offset_s=0.0)])[0].words

    def close(self) -> None:
        """Release the model now, on this thread, rather than at interpreter exit (CTranslate2 aborts then)."""
        with self._lock:
            self._engine.close()


def _default_engine() -> AsrEngine:
    from parascribe.engines.offline import OfflineEngine

    return OfflineEngine(model_path=None, cpu_threads=2)


def create_app(engine: AsrEngine | None = None, api_key: str | None = None) -> Flask:
    """The Flask app; builds the offline engine once when none is given."""
    app = Flask("deepgram_server")
    state = ServerState(api_key=api_key or None)
    locked = _LockedEngine(engine if engine is not None else _default_engine())
    app.extensions[_ENGINE_KEY] = locked
    app.config["DEEPGRAM_STATE"] = state
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.get("/")
    def root() -> Response:
        return jsonify({"service": "parascribe local deepgram", "listen": "/v1/listen"})

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", status=200)

    @app.post("/_faults")
    def add_fault() -> Response:
        body = request.get_json(silent=True) or {}
        try:
            fault = Fault(
                status=int(body.get("status", 500)),
                count=int(body.get("count", 1)),
                retry_after=float(body["retry_after"]) if body.get("retry_after") is not None else None,
                delay_s=float(body.get("delay_s", 0.0)),
                err_msg=body.get("err_msg"),
            )
        except (TypeError, ValueError) as err:
            return Response(f"bad fault: {err}", status=400)
        with state.lock:
            state.faults.append(fault)
        return jsonify({"queued": len(state.faults)})

    @app.delete("/_faults")
    def clear_faults() -> Response:
        with state.lock:
            state.faults.clear()
        return Response(status=204)

    @app.get("/_stats")
    def stats() -> Response:
        with state.lock:
            return jsonify({
                "requests": state.requests,
                "statuses": {str(k): v for k, v in state.statuses.items()},
                "last_params": state.last_params,
                "last_source": state.last_source,
                "faults_pending": sum(f.count for f in state.faults),
            })

    @app.post("/v1/listen")
    def listen() -> Response:
        request_id = str(uuid.uuid4())
        params = {k: v for k, v in request.args.items()}
        resp = _listen(state, locked, params, request_id)
        with state.lock:
            state.requests += 1
            state.statuses[resp.status_code] += 1
            state.last_params = params
        return resp

    return app


def _authorised(state: ServerState) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() not in ("token", "bearer") or not key.strip():
        return False
    return state.api_key is None or key.strip() == state.api_key


def _listen(state: ServerState, engine: _LockedEngine, params: dict[str, str], request_id: str) -> Response:
    if not _authorised(state):
        return _error(401, "INVALID_AUTH", "Invalid credentials.", request_id)
    fault = state.next_fault()
    if fault is not None:
        if fault.delay_s > 0:
            time.sleep(fault.delay_s)
        if fault.status >= 400:
            code, message = _FAULT_CODES.get(fault.status, ("ERROR", f"injected HTTP {fault.status}"))
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            return _error(fault.status, code, fault.err_msg or message, request_id, headers)
    if params.get("callback"):
        return _error(400, "Bad Request", "callbacks are not supported by the local server", request_id)
    is_json = (request.mimetype or "").lower() == "application/json"
    if is_json:
        body = request.get_json(silent=True)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            return _error(400, "Bad Request",
                          "Content-type was application/json, but we could not process the JSON payload.", request_id)
        try:
            fetched = httpx.get(url, timeout=_URL_FETCH_TIMEOUT_S, follow_redirects=True)
        except httpx.HTTPError as err:
            return _error(400, "REMOTE_CONTENT_ERROR", f"Could not download the URL: {type(err).__name__}", request_id)
        if fetched.status_code >= 400:
            return _error(400, "REMOTE_CONTENT_ERROR",
                          f"The remote server hosting the media returned a client error: {fetched.status_code}.",
                          request_id)
        data = fetched.content
        with state.lock:
            state.last_source = "url"
    else:
        data = request.get_data(cache=False)
        with state.lock:
            state.last_source = "bytes"
    try:
        samples = decode_bytes(data)
    except BadAudioError:
        return _error(400, "Bad Request", "Bad Request: failed to process audio: corrupt or unsupported data",
                      request_id)
    started = time.monotonic()
    words = engine.words(samples, request_id)
    log.info("transcribed %.1fs of audio in %.2fs (%d words)", len(samples) / SAMPLE_RATE,
             time.monotonic() - started, len(words))
    body = build_response(words, len(samples) / SAMPLE_RATE, params, request_id, hashlib.sha256(data).hexdigest())
    resp = jsonify(body)
    resp.headers["dg-request-id"] = request_id
    return resp


class RunningServer:
    """A server on a background thread; for tests and the local stack."""

    def __init__(self, server: BaseWSGIServer, app: Flask) -> None:
        self._server = server
        self.app = app
        self._thread = threading.Thread(target=server.serve_forever, name="deepgram-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    @property
    def port(self) -> int:
        return int(self._server.port)

    def start(self) -> RunningServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.app.extensions[_ENGINE_KEY].close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, engine: AsrEngine | None = None
) -> RunningServer:
    """Start a threaded server (``port=0``: the OS picks a free one) and return it."""
    app = create_app(engine=engine, api_key=api_key)
    server = make_server(host, port, app, threaded=True)
    return RunningServer(server, app).start()


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_key: str | None = None) -> None:
    """Serve until interrupted (threaded, one request per thread)."""
    app = create_app(api_key=api_key)
    server = make_server(host, port, app, threaded=True)
    log.info("Deepgram-compatible server on http://%s:%d (key %s)", host, server.port,
             "required" if api_key else "any")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    """``parascribe deepgram-server [--host H] [--port P] [--api-key K]``."""
    parser = argparse.ArgumentParser(prog="parascribe deepgram-server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key", default=None, help="require exactly this key (default: any non-empty key)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    from parascribe import logs

    logs.setup("deepgram-server", args.log_level)
    serve(args.host, args.port, api_key=args.api_key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

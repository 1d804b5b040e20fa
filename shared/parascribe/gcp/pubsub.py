"""Pub/Sub at the edges: publishing, the one received-message shape, push apps and the health endpoint.

Every edge maps errors the same way, by type (:func:`parascribe.errors.is_transient`):

- push: a handler that returns acks (HTTP 204). A permanent error is logged and acked,
  since the handler has recorded the failure on the job; a transient or unexpected error
  nacks (HTTP 503/500), so Pub/Sub retries and the dead-letter topic catches what never
  succeeds. A body that is not a push envelope is logged and acked.
- pull: the ASR worker's batch (:mod:`parascribe.asr.batch`) acks or nacks each message by the
  same :func:`~parascribe.errors.is_transient`.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal, Protocol

from flask import Flask, Response, request
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from parascribe.contracts import Contract
from parascribe.errors import MalformedMessageError, TransientError, is_transient
from parascribe.names import topic_path

log = logging.getLogger(__name__)

Action = Literal["ack", "nack"]
Health = Callable[[], tuple[bool, str]]
"""Whether a service is ready, and a word on its state ("ok", "starting", "degraded: …")."""


Outgoing = tuple[str, Contract, dict[str, str] | None]
"""One message to publish: topic, body, attributes."""


class Publisher(Protocol):
    def publish(self, topic: str, message: Contract, attributes: dict[str, str] | None = None) -> str:
        """Publish and block until the server has it; return the message id."""
        ...

    def publish_many(self, outgoing: Sequence[Outgoing]) -> list[str]:
        """Publish every message, then block until the server has them all; return their ids in order.

        Raises:
            TransientError: any one failed (the others may have been published: delivery is at least once).
        """
        ...


class PubSubPublisher:
    """:class:`Publisher` over ``pubsub_v1.PublisherClient``.

    The client reads ``PUBSUB_EMULATOR_HOST`` itself, so the same code runs
    against the emulator and against GCP.
    """

    def __init__(self, project: str, client: pubsub_v1.PublisherClient | None = None, timeout_s: float = 60.0) -> None:
        self._project = project
        self._client = client or pubsub_v1.PublisherClient()
        self._timeout_s = timeout_s

    def publish(self, topic: str, message: Contract, attributes: dict[str, str] | None = None) -> str:
        future = self._client.publish(topic_path(self._project, topic), message.to_bytes(), **(attributes or {}))
        try:
            return str(future.result(timeout=self._timeout_s))
        except (gexc.GoogleAPICallError, TimeoutError) as err:
            raise TransientError(f"publishing to {topic}: {err}") from err

    def publish_many(self, outgoing: Sequence[Outgoing]) -> list[str]:
        # The client batches what is in flight, so a plan of hundreds of chunks costs one wait, not one each.
        futures = [(topic, self._client.publish(topic_path(self._project, topic), message.to_bytes(),
                                                **(attributes or {})))
                   for topic, message, attributes in outgoing]
        ids: list[str] = []
        for topic, future in futures:
            try:
                ids.append(str(future.result(timeout=self._timeout_s)))
            except (gexc.GoogleAPICallError, TimeoutError) as err:
                raise TransientError(f"publishing to {topic}: {err}") from err
        return ids


@dataclass(frozen=True)
class Message:
    """One received message, by push or by pull, without its transport."""

    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str = ""
    delivery_attempt: int | None = None
    subscription: str = ""

    @classmethod
    def from_received(cls, received: Any) -> Message:
        """From a unary pull's ``ReceivedMessage``."""
        return cls(
            data=bytes(received.message.data),
            attributes=dict(received.message.attributes or {}),
            message_id=str(received.message.message_id),
            delivery_attempt=received.delivery_attempt or None,
        )

    @classmethod
    def from_push(cls, body: object) -> Message:
        """From a push request body (``{"message": {...}, "subscription": ...}``).

        Raises:
            MalformedMessageError: the body is not a Pub/Sub push envelope.
        """
        if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
            raise MalformedMessageError("push body is not a Pub/Sub envelope (no 'message' object)")
        msg = body["message"]
        raw_attributes = msg.get("attributes") or {}
        if not isinstance(raw_attributes, dict):
            raise MalformedMessageError("push message attributes are not an object")
        try:
            data = base64.b64decode(msg.get("data", "") or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise MalformedMessageError("Pub/Sub message data is not base64") from None
        attempt = body.get("deliveryAttempt") or msg.get("deliveryAttempt")
        return cls(
            data=data,
            attributes={str(k): str(v) for k, v in raw_attributes.items()},
            message_id=str(msg.get("messageId") or msg.get("message_id") or ""),
            delivery_attempt=int(attempt) if attempt else None,
            subscription=str(body.get("subscription", "")),
        )


Handler = Callable[[Message], None]


def settle_action(err: BaseException | None) -> Action:
    """Ack or nack a message whose handler ended with ``err`` (None: it succeeded)."""
    return "nack" if err is not None and is_transient(err) else "ack"


def add_push_route(app: Flask, path: str, handler: Handler, endpoint: str) -> None:
    """Route POST ``path`` to ``handler`` with the ack/nack mapping above."""

    def view() -> Response:
        try:
            message = Message.from_push(request.get_json(silent=True))
        except MalformedMessageError as err:
            log.error("dropping malformed push request: %s", err.reason)
            return Response(status=204)
        extra = {"attempt": message.delivery_attempt}
        try:
            handler(message)
        except Exception as err:
            if settle_action(err) == "ack":
                log.warning("permanent failure, acked: %s", getattr(err, "reason", err), extra=extra)
                return Response(status=204)
            if isinstance(err, TransientError):
                log.warning("transient failure, will retry: %s", err.reason, extra=extra)
                return Response(err.reason, status=503)
            log.exception("unexpected failure handling %s, will retry", message.message_id)
            return Response("internal error", status=500)
        return Response(status=204)

    app.add_url_rule(path, endpoint=endpoint, view_func=view, methods=["POST"])


def health_status(health: Health | None) -> tuple[int, str]:
    """The HTTP status and body of ``GET /healthz``: 200 when ready, else 503 (the Cloud Run startup probe)."""
    ok, text = health() if health is not None else (True, "ok")
    return (200 if ok else 503), text


def create_push_app(name: str, routes: dict[str, Handler], health: Health | None = None) -> Flask:
    """A Flask app with push routes and ``GET /healthz``."""
    app = Flask(name)
    for i, (path, handler) in enumerate(routes.items()):
        add_push_route(app, path, handler, endpoint=f"push_{i}")

    @app.get("/healthz")
    def healthz() -> Response:
        status, text = health_status(health)
        return Response(text, status=status)

    return app


class HealthServer:
    """``GET /healthz`` for a process with no web app (the pull worker), on a thread of its own."""

    def __init__(self, port: int, health: Health, host: str = "0.0.0.0") -> None:
        self._port = port
        self._host = host
        self._health = health
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        health = self._health

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                status, text = health_status(health)
                if self.path.split("?")[0] != "/healthz":
                    status, text = (404, "not found") if status == 200 else (status, text)
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health: " + format, *args)

        self._server = ThreadingHTTPServer((self._host, self._port), _Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()

    @property
    def port(self) -> int | None:
        return int(self._server.server_address[1]) if self._server is not None else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class PushService:
    """A push-driven stage as its entry point runs it: the app, and what to close when the process stops."""

    name: str
    app: Flask
    closers: list[Callable[[], None]] = field(default_factory=list)
    _closed: bool = False

    def close(self) -> None:
        """Close what the stage opened (flush metrics first); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                log.exception("closing %s", self.name)

    def close_on_exit(self) -> None:
        """Close at interpreter exit and on SIGTERM (Cloud Run's stop), then stop as before."""
        atexit.register(self.close)
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.close()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                raise SystemExit(0)

        with contextlib.suppress(ValueError):  # not the main thread (a gunicorn worker thread): atexit still closes
            signal.signal(signal.SIGTERM, on_sigterm)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve with Flask's threaded server (``python main.py``); gunicorn serves ``app`` instead."""
        self.app.run(host=host, port=port, threaded=True)

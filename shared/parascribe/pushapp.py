"""Pub/Sub push endpoints: envelope parsing and the ack/nack mapping, in one place.

A handler returning normally acks (HTTP 204). :class:`PermanentError` is logged
and acked: the handler is expected to have recorded the failure on the job.
:class:`TransientError` and anything unexpected nack (HTTP 503/500), so Pub/Sub
retries and the dead-letter topic catches what never succeeds. A malformed
envelope is logged and acked: redelivering it can never help.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, Response, request

from parascribe.errors import ParascribeError, PermanentError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushMessage:
    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str = ""
    subscription: str = ""
    delivery_attempt: int | None = None


Handler = Callable[[PushMessage], None]


def parse_envelope(body: object) -> PushMessage:
    """Parse a push request body.

    Raises:
        PermanentError: the body is not a Pub/Sub push envelope.
    """
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise PermanentError("push body is not a Pub/Sub envelope (no 'message' object)")
    msg = body["message"]
    try:
        data = base64.b64decode(msg.get("data", "") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise PermanentError("push message data is not base64") from None
    attempt = body.get("deliveryAttempt") or msg.get("deliveryAttempt")
    return PushMessage(
        data=data,
        attributes={str(k): str(v) for k, v in (msg.get("attributes") or {}).items()},
        message_id=str(msg.get("messageId") or msg.get("message_id") or ""),
        subscription=str(body.get("subscription", "")),
        delivery_attempt=int(attempt) if attempt else None,
    )


def add_push_route(app: Flask, path: str, handler: Handler, endpoint: str) -> None:
    """Route POST ``path`` to ``handler`` with the ack/nack mapping above."""

    def view() -> Response:
        try:
            message = parse_envelope(request.get_json(silent=True))
        except PermanentError as err:
            log.error("dropping malformed push request: %s", err.reason)
            return Response(status=204)
        try:
            handler(message)
        except PermanentError as err:
            log.warning("permanent failure, acked: %s", err.reason, extra={"attempt": message.delivery_attempt})
            return Response(status=204)
        except ParascribeError as err:
            log.warning("transient failure, will retry: %s", err.reason, extra={"attempt": message.delivery_attempt})
            return Response(err.reason, status=503)
        except Exception:
            log.exception("unexpected failure handling %s, will retry", message.message_id)
            return Response("internal error", status=500)
        return Response(status=204)

    app.add_url_rule(path, endpoint=endpoint, view_func=view, methods=["POST"])


def create_app(name: str, routes: dict[str, Handler], ready: Callable[[], bool] | None = None) -> Flask:
    """A Flask app with push routes and a ``/healthz`` that reflects ``ready``."""
    app = Flask(name)
    for i, (path, handler) in enumerate(routes.items()):
        add_push_route(app, path, handler, endpoint=f"push_{i}")

    @app.get("/healthz")
    def healthz() -> Response:
        ok = ready() if ready else True
        return Response("ok" if ok else "starting", status=200 if ok else 503)

    return app

"""Router entry point: a functions-framework CloudEvent function.

Locally it is served behind the ``router-push`` subscription::

    functions-framework --source services/router/main.py --target handle_upload \
        --signature-type cloudevent --port 8080

and in GCP it is a Cloud Functions gen2 function behind the same subscription
(OIDC push; see infra/README.md for why not an Eventarc trigger). The router
also accepts ``google.cloud.storage.object.v1.finalized`` events, should one be
added. All logic lives in :mod:`parascribe.router`; this file only calls its
``build``, once per process, on the first event.
"""

from __future__ import annotations

import threading

import functions_framework
from cloudevents.http import CloudEvent

from parascribe import logs
from parascribe.config import get_settings
from parascribe.router.app import SERVICE, build
from parascribe.router.service import Router

_router: Router | None = None
_lock = threading.Lock()


def _get_router() -> Router:
    global _router
    with _lock:
        if _router is None:
            settings = get_settings()
            logs.setup(SERVICE, settings.log_level)
            _router = build(settings)
        return _router


@functions_framework.cloud_event
def handle_upload(event: CloudEvent) -> None:
    """Route one upload notification; raising makes the platform retry it."""
    _get_router().handle_event(event)

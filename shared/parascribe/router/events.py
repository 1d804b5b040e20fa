"""Upload notifications in both trigger shapes, parsed into an :class:`UploadEvent`.

One shape is a GCS notification pushed through Pub/Sub, which functions-framework
turns into a ``google.cloud.pubsub.topic.v1.messagePublished`` CloudEvent. The other
is an Eventarc storage trigger, which sends ``google.cloud.storage.object.v1.finalized``.
The object's ``parascribe-*`` custom metadata says which method and deadline the
uploader asked for.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from typing import Any, get_args
from urllib.parse import urlsplit

from cloudevents.http import CloudEvent
from pydantic import TypeAdapter, ValidationError

from parascribe.contracts import Method, Origin, SourceRef, UploadEvent
from parascribe.contracts_api import is_request_id
from parascribe.errors import MalformedMessageError
from parascribe.gcp.pubsub import Message
from parascribe.languages import optional_language
from parascribe.names import (
    META_CALLBACK_URL,
    META_DEADLINE,
    META_LANGUAGE,
    META_METHOD,
    META_REQUEST_ID,
    META_SOURCE_URL,
    META_TITLE,
)

log = logging.getLogger(__name__)

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
_STORAGE_PREFIX = "google.cloud.storage.object.v1."

_METHODS: tuple[str, ...] = get_args(Method)
_TIME = TypeAdapter(datetime)


def parse_event(event: CloudEvent) -> UploadEvent | None:
    """Read an upload notification in either trigger shape.

    Args:
        event: a ``messagePublished`` CloudEvent that wraps a GCS notification
            (JSON_API_V1 payload), or a storage ``finalized`` CloudEvent.

    Returns:
        The upload, or None for a notification that is not an OBJECT_FINALIZE
        (deleted, archived or metadata updates), which the caller drops.
        Invalid ``parascribe-*`` metadata is reported in ``metadata_error``,
        not raised, so that the job fails with a reason.

    Raises:
        MalformedMessageError: the event does not describe an object.
    """
    event_type = event.get("type")
    if event_type == PUBSUB_PUBLISHED:
        resource, attributes = _from_pubsub(event.data)
        kind = attributes.get("eventType")
        if kind != "OBJECT_FINALIZE":
            log.info("ignoring %s notification for gs://%s/%s", kind, attributes.get("bucketId"),
                     attributes.get("objectId"))
            return None
    elif event_type == STORAGE_FINALIZED:
        resource, attributes = _as_object(event.data, "storage event data"), {}
    elif isinstance(event_type, str) and event_type.startswith(_STORAGE_PREFIX):
        log.info("ignoring %s event for %s", event_type, event.get("subject"))
        return None
    else:
        raise MalformedMessageError(f"unexpected CloudEvent type {event_type!r}: the router takes upload notifications")
    return _upload(resource, attributes, event.get("time"))


def _from_pubsub(data: Any) -> tuple[dict[str, Any], dict[str, str]]:
    message = Message.from_push(data)
    attributes = message.attributes
    if "eventType" not in attributes:
        raise MalformedMessageError("Pub/Sub message is not a GCS notification (no eventType attribute)")
    if attributes["eventType"] != "OBJECT_FINALIZE":
        return {}, attributes
    if not message.data:
        raise MalformedMessageError(
            "GCS notification has no object payload; create the bucket notification with payload format JSON_API_V1"
        )
    return _as_object(message.data, "GCS notification payload"), attributes


def _as_object(data: Any, what: str) -> dict[str, Any]:
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError:
            raise MalformedMessageError(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedMessageError(f"{what} is not a JSON object")
    return data


def _upload(resource: dict[str, Any], attributes: dict[str, str], ce_time: Any) -> UploadEvent:
    bucket = resource.get("bucket") or attributes.get("bucketId")
    name = resource.get("name") or attributes.get("objectId")
    generation = str(resource.get("generation") or attributes.get("objectGeneration") or "")
    if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
        raise MalformedMessageError("object notification has no bucket or object name")
    if not generation.isdigit():
        raise MalformedMessageError(f"object notification for gs://{bucket}/{name} has no valid generation")
    try:
        size = int(resource["size"])
    except (KeyError, TypeError, ValueError):
        raise MalformedMessageError(f"object notification for gs://{bucket}/{name} has no valid size") from None
    content_type = resource.get("contentType")
    try:
        source = SourceRef(
            bucket=bucket, name=name, generation=generation, size=size,
            content_type=content_type if isinstance(content_type, str) else None,
        )
    except ValidationError as err:
        raise MalformedMessageError(f"object notification for gs://{bucket}/{name}: {err.errors()[0]['msg']}") from None
    metadata = resource.get("metadata") or {}
    metadata = metadata if isinstance(metadata, dict) else {}
    method, deadline, problems = _requested(metadata)
    language = _language(metadata, problems)
    origin = _origin(metadata, problems)
    return UploadEvent(
        source=source,
        event_time=_time(resource.get("timeCreated") or ce_time),
        method=method,
        deadline_minutes=deadline,
        language=language,
        metadata_error="; ".join(problems) or None,
        origin=origin,
    )


def _origin(metadata: dict[str, Any], problems: list[str]) -> Origin:
    """Where an upload made by the API or the ingest worker came from, and its callback.

    The callback URL is only checked for shape here; the merger checks its address
    (no private or metadata hosts) each time it sends.
    """
    def text(key: str, limit: int = 2048) -> str | None:
        value = metadata.get(key)
        return str(value)[:limit] if value not in (None, "") else None

    callback = text(META_CALLBACK_URL, limit=4096)
    if callback is not None and (len(callback) > 2048 or urlsplit(callback).scheme not in ("http", "https")
                                 or not urlsplit(callback).hostname):
        problems.append(f"{META_CALLBACK_URL} {callback[:80]!r} is not an http(s) URL of at most 2048 characters")
        callback = None
    request_id = text(META_REQUEST_ID, limit=64)
    if request_id is not None and not is_request_id(request_id):
        request_id = None
    return Origin(request_id=request_id, source_url=text(META_SOURCE_URL), title=text(META_TITLE, limit=300),
                  callback_url=callback)


def _language(metadata: dict[str, Any], problems: list[str]) -> str | None:
    """The spoken language the upload names (``parascribe-language``); None when it names none."""
    try:
        return optional_language(metadata.get(META_LANGUAGE))
    except ValueError as err:
        problems.append(f"{META_LANGUAGE}: {err}")
        return None


def _requested(metadata: dict[str, Any]) -> tuple[Method | None, float | None, list[str]]:
    """The method and deadline a client asked for in the object's custom metadata."""
    problems: list[str] = []
    method: Method | None = None
    deadline: float | None = None
    raw_method = metadata.get(META_METHOD)
    if raw_method is not None:
        value = str(raw_method).strip().lower()
        if value in _METHODS:
            method = value  # type: ignore[assignment]
        else:
            problems.append(f"{META_METHOD} {str(raw_method)!r} is not one of {', '.join(_METHODS)}")
    raw_deadline = metadata.get(META_DEADLINE)
    if raw_deadline is not None:
        try:
            deadline = float(str(raw_deadline).strip())
        except ValueError:
            deadline = None
        if deadline is None or not math.isfinite(deadline) or deadline <= 0:
            problems.append(f"{META_DEADLINE} {str(raw_deadline)!r} is not a positive number of minutes")
            deadline = None
    return method, deadline, problems


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return _TIME.validate_python(value)
    except ValidationError:
        return None



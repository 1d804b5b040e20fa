"""The router: turn an upload notification into a planned job and its chunk tasks.

It accepts both trigger shapes. One is a GCS notification pushed through
Pub/Sub, which functions-framework turns into a
``google.cloud.pubsub.topic.v1.messagePublished`` CloudEvent. The other is an
Eventarc storage trigger, which sends ``google.cloud.storage.object.v1.finalized``.

Every step can be repeated. The job id is derived from (bucket, object,
generation). The manifest is written once. A ``published`` marker, written
after the tasks are published, makes a duplicate notification cost nothing.
Bad input fails the job with a reason and the message is acked. A transient
error propagates, so the message is nacked and retried.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from datetime import datetime
from typing import Any, get_args

from cloudevents.http import CloudEvent
from pydantic import TypeAdapter, ValidationError

from parascribe import names
from parascribe.bus import Publisher
from parascribe.config import Settings
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_JOB_FAILED,
    ChunkSpec,
    ChunkTask,
    JobFailed,
    JobManifest,
    JobStatus,
    Method,
    SourceRef,
    UploadEvent,
    utcnow,
)
from parascribe.errors import MalformedMessageError, PermanentError, TransientError
from parascribe.jobs import JobStore, job_prefix
from parascribe.planner import is_whole_file, make_plan
from parascribe.probe import probe
from parascribe.storage import BlobStore

log = logging.getLogger(__name__)

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
_STORAGE_PREFIX = "google.cloud.storage.object.v1."

META_METHOD = "parascribe-method"
META_DEADLINE = "parascribe-deadline-minutes"
_METHODS: tuple[str, ...] = get_args(Method)
_TIME = TypeAdapter(datetime)


def published_marker(job_id: str) -> str:
    """Path in the state bucket of the marker written once a job's tasks are published."""
    return f"{job_prefix(job_id)}published"


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
    if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
        raise MalformedMessageError("Pub/Sub event has no 'message' object")
    message = data["message"]
    raw_attributes = message.get("attributes") or {}
    if not isinstance(raw_attributes, dict):
        raise MalformedMessageError("Pub/Sub message attributes are not an object")
    attributes = {str(k): str(v) for k, v in raw_attributes.items()}
    if "eventType" not in attributes:
        raise MalformedMessageError("Pub/Sub message is not a GCS notification (no eventType attribute)")
    if attributes["eventType"] != "OBJECT_FINALIZE":
        return {}, attributes
    encoded = message.get("data")
    if not encoded:
        raise MalformedMessageError(
            "GCS notification has no object payload; create the bucket notification with payload format JSON_API_V1"
        )
    try:
        body = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, TypeError, ValueError):
        raise MalformedMessageError("GCS notification payload is not base64-encoded JSON") from None
    return _as_object(body, "GCS notification payload"), attributes


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
    method, deadline, problems = _requested(metadata if isinstance(metadata, dict) else {})
    return UploadEvent(
        source=source,
        event_time=_time(resource.get("timeCreated") or ce_time),
        method=method,
        deadline_minutes=deadline,
        metadata_error="; ".join(problems) or None,
    )


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


class Router:
    """Probes, validates and plans an upload, then publishes its chunk tasks."""

    def __init__(self, settings: Settings, store: BlobStore, publisher: Publisher, jobs: JobStore) -> None:
        self._settings = settings
        self._store = store
        self._publisher = publisher
        self._jobs = jobs

    def handle(self, upload: UploadEvent) -> None:
        """Route one upload. Safe to call again with the same upload.

        Raises:
            TransientError: storage or Pub/Sub failed; the message must be retried.
        """
        source = upload.source
        if source.bucket != self._settings.uploads_bucket:
            log.info("ignoring %s: not in the uploads bucket %s", source.uri, self._settings.uploads_bucket)
            return
        job_id = source.job_id
        ctx = {"job_id": job_id}
        status = self._jobs.status(job_id)
        if status is not None and status.final:
            log.info("job for %s is already %s; duplicate notification", source.uri, status.state, extra=ctx)
            return
        if self._store.info(self._jobs.bucket, published_marker(job_id)) is not None:
            log.info("tasks for %s were already published; duplicate notification", source.uri, extra=ctx)
            return
        manifest = self._jobs.manifest(job_id)
        if manifest is None:
            try:
                manifest = self._new_manifest(upload, job_id)
            except PermanentError as err:
                self._fail(job_id, source, err.reason)
                return
            if not self._jobs.create_manifest(manifest):
                stored = self._jobs.manifest(job_id)
                if stored is None:
                    raise TransientError(f"the manifest of {job_id} exists but could not be read")
                manifest = stored
        else:
            log.info("reusing the stored plan for %s", source.uri, extra=ctx)
        final_manifest = manifest
        self._jobs.update_status(
            job_id,
            lambda current: None if current is not None else JobStatus(
                job_id=job_id, state="queued", chunks_total=final_manifest.n_chunks, source=source,
            ),
        )
        self._publish(manifest)
        self._store.write(
            self._jobs.bucket, published_marker(job_id), utcnow().isoformat().encode(),
            content_type="text/plain", if_generation_match=0,
        )

    def _new_manifest(self, upload: UploadEvent, job_id: str) -> JobManifest:
        s = self._settings
        source = upload.source
        if upload.metadata_error:
            raise PermanentError(f"invalid object metadata: {upload.metadata_error}")
        size_mb = source.size / 1024 / 1024
        if size_mb > s.max_upload_mb:
            raise PermanentError(
                f"the object is {size_mb:.{1 if size_mb < 10 else 0}f} MB; the limit is {s.max_upload_mb:g} MB "
                "(MAX_UPLOAD_MB)"
            )
        audio = probe(self._store, source, s.max_audio_minutes * 60.0)
        requested: Method = upload.method or s.transcription_method
        deadline_minutes = upload.deadline_minutes or s.default_deadline_minutes
        plan = make_plan(audio.duration_s, s, requested, deadline_minutes * 60.0, size_bytes=source.size)
        paths = [c.path for c in plan.chunks]
        log.info(
            "planned %s: %.1f s in %d chunks (gpu %d, deepgram %d%s), method %s (asked %s), "
            "estimated %.0f s against a %.0f min deadline%s, cost $%.4f vs $%.4f all-Deepgram",
            source.uri, audio.duration_s, len(paths), paths.count("gpu"), paths.count("deepgram"),
            ", whole file" if plan.whole_file else "", plan.method, requested, plan.estimated_finish_s,
            deadline_minutes, "" if plan.meets_deadline else " (misses it)", plan.estimated_cost_usd,
            plan.estimated_deepgram_only_usd, extra={"job_id": job_id},
        )
        return JobManifest(
            job_id=job_id,
            source=source,
            audio=audio,
            method=plan.method,
            deadline_minutes=deadline_minutes,
            chunks=plan.chunks,
            estimated_cost_usd=plan.estimated_cost_usd,
            estimated_deepgram_only_usd=plan.estimated_deepgram_only_usd,
        )

    def _publish(self, manifest: JobManifest) -> None:
        whole = is_whole_file(manifest.chunks)
        for planned in manifest.chunks:
            task = ChunkTask(
                job_id=manifest.job_id,
                source=manifest.source,
                audio=manifest.audio,
                chunk=ChunkSpec(**planned.model_dump(exclude={"schema_version", "path"})),
                n_chunks=manifest.n_chunks,
                path=planned.path,
                whole_file=whole,
            )
            topic = names.TOPIC_ASR_GPU if planned.path == "gpu" else names.TOPIC_ASR_DEEPGRAM
            self._publisher.publish(topic, task, {"job_id": manifest.job_id})
        log.info("published %d chunk tasks", manifest.n_chunks, extra={"job_id": manifest.job_id})

    def _fail(self, job_id: str, source: SourceRef, reason: str) -> None:
        """Report a job that cannot run. JobFailed goes first so a redelivery still sends it."""
        log.warning("rejecting %s: %s", source.uri, reason, extra={"job_id": job_id})
        self._publisher.publish(
            names.TOPIC_ASR_RESULTS,
            JobFailed(job_id=job_id, reason=reason, source=source),
            {ATTR_TYPE: TYPE_JOB_FAILED, "job_id": job_id},
        )

        def failed(current: JobStatus | None) -> JobStatus | None:
            if current is not None and current.final:
                return None
            status = current or JobStatus(job_id=job_id, state="failed")
            status.state = "failed"
            status.reason = reason
            status.source = source
            status.finished_at = utcnow()
            return status

        self._jobs.update_status(job_id, failed)


def handle_cloudevent(router: Router, event: CloudEvent) -> None:
    """Parse and route one event, mapping errors to ack (return) or retry (raise).

    A malformed event is logged and acked: redelivering it cannot help. A
    :class:`PermanentError` never escapes. A :class:`TransientError` or an
    unexpected error propagates, which becomes HTTP 500, so the event is retried.
    """
    try:
        upload = parse_event(event)
    except MalformedMessageError as err:
        log.error("dropping malformed event %s: %s", event.get("id"), err.reason)
        return
    if upload is None:
        return
    try:
        router.handle(upload)
    except PermanentError as err:
        log.error("permanent failure for %s, acked: %s", upload.source.uri, err.reason,
                  extra={"job_id": upload.source.job_id})

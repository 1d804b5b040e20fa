"""The router: turn an upload into a planned job and its chunk tasks.

Every step can be repeated. The job id is derived from (bucket, object,
generation). The manifest is written once. A ``published`` marker, written
after the tasks are published, makes a duplicate notification cost nothing.
Bad input fails the job with a reason and the message is acked. A transient
error propagates, so the message is nacked and retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cloudevents.http import CloudEvent

from parascribe import names
from parascribe.budget import Ledger, month_of
from parascribe.config import Settings
from parascribe.contracts import (
    ChunkSpec,
    ChunkTask,
    JobFailed,
    JobManifest,
    JobStatus,
    Method,
    Origin,
    SourceRef,
    UploadEvent,
    utcnow,
)
from parascribe.contracts_api import ApiRequest
from parascribe.errors import PermanentError, TransientError, is_transient
from parascribe.gcp.pubsub import Outgoing, Publisher
from parascribe.gcp.storage import BlobStore
from parascribe.jobs import JobStore, job_prefix
from parascribe.requests_store import CANCELLED_REASON, RequestStore
from parascribe.router.capacity import GpuCapacity, capacity_from_settings
from parascribe.router.events import parse_event
from parascribe.router.planner import PlannerOptions, is_whole_file
from parascribe.router.policy import BudgetInput, plan_job
from parascribe.router.probe import probe

log = logging.getLogger(__name__)


def published_marker(job_id: str) -> str:
    """Path in the state bucket of the marker written once a job's tasks are published."""
    return f"{job_prefix(job_id)}published"


class Router:
    """Probes, validates and plans an upload, then publishes its chunk tasks."""

    def __init__(self, settings: Settings, store: BlobStore, publisher: Publisher, jobs: JobStore,
                 capacity: GpuCapacity | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """``capacity`` defaults to the state bucket alone (:mod:`parascribe.router.capacity`)."""
        self._settings = settings
        self._planner = PlannerOptions.from_settings(settings)
        self._store = store
        self._publisher = publisher
        self._requests = RequestStore(store, jobs.bucket)
        self._jobs = jobs
        self._capacity = capacity or capacity_from_settings(settings, jobs, monitoring=False)
        self._ledger = Ledger(store, jobs.bucket)
        self._clock = clock
        self._spend: tuple[float, str, float] | None = None

    def handle_event(self, event: CloudEvent) -> None:
        """Parse and route one event, mapping errors to ack (return) or retry (raise).

        A malformed event is logged and acked: redelivering it cannot help. A
        :class:`PermanentError` never escapes. A transient or unexpected error
        propagates, which becomes HTTP 500, so the event is retried.
        """
        started = time.perf_counter()
        upload: UploadEvent | None = None
        try:
            upload = parse_event(event)
            if upload is not None:
                self.handle(upload)
                log.info("upload handled", extra={"job_id": upload.source.job_id,
                                                  "elapsed_ms": round((time.perf_counter() - started) * 1000, 2)})
        except Exception as err:
            if is_transient(err):
                raise
            log.error("permanent failure for event %s, acked: %s", event.get("id"), getattr(err, "reason", err))

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
        if upload.origin.request_id is None:
            self._list_drop(upload, job_id)
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
                self._fail(job_id, source, err.reason, upload.origin)
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
                origin=final_manifest.origin,
            ),
        )
        if self._cancelled(upload):  # read after the status exists: a cancel either sees the status or is seen
            self._fail(job_id, source, CANCELLED_REASON, manifest.origin)
            return
        self._jobs.mark_open(job_id)
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
        plan, why = plan_job(audio.duration_s, self._planner, requested, deadline_minutes * 60.0,
                             self._capacity.capacity(), self._budget(), size_bytes=source.size, audio=audio,
                             language=upload.language)
        log.info("planned %s: %s | %s", source.uri, why.summary, why.model_dump_json(exclude={"summary"}),
                 extra={"job_id": job_id})
        return JobManifest(
            job_id=job_id,
            source=source,
            audio=audio,
            method=plan.method,
            deadline_minutes=deadline_minutes,
            language=upload.language,
            chunks=plan.chunks,
            estimated_cost_usd=plan.estimated_cost_usd,
            estimated_deepgram_only_usd=plan.estimated_deepgram_only_usd,
            estimated_finish_s=plan.estimated_finish_s,
            origin=upload.origin,
            plan=why,
        )

    def _cancelled(self, upload: UploadEvent) -> bool:
        """Whether the job's request was cancelled (``POST /v1/jobs/{id}/cancel``) before its tasks went out.

        The API marks the request, then reads the job's status: if the status is there it fails the job
        itself, and if not, this read (made after the router wrote the status) sees the mark. A record
        that cannot be read counts as not cancelled: the job runs rather than be lost.
        """
        rid = upload.origin.request_id or "r" + upload.source.job_id[1:]
        try:
            record = self._requests.get(rid)
        except Exception as err:  # noqa: BLE001  (any storage failure: the job goes ahead)
            log.warning("cannot read request %s to check for a cancel: %s", rid, err,
                        extra={"job_id": upload.source.job_id})
            return False
        return record is not None and record.cancelled_at is not None

    def _budget(self) -> BudgetInput:
        """The month's spend from the ledger, read at most once per ``BACKLOG_CACHE_SECONDS``."""
        s = self._settings
        month = month_of()
        if s.monthly_budget_usd is None:
            return BudgetInput(None, None, s.budget_exhausted_policy, month)
        now = self._clock()
        if self._spend is None or self._spend[1] != month or now - self._spend[0] >= s.backlog_cache_seconds:
            try:
                self._spend = (now, month, self._ledger.month_total(month).spent_usd)
            except Exception as err:  # an unreadable ledger must not stop transcription: plan and say so
                log.warning("cannot read the budget ledger: %s", err)
                return BudgetInput(s.monthly_budget_usd, None, s.budget_exhausted_policy, month, f"ledger: {err}")
        return BudgetInput(s.monthly_budget_usd, self._spend[2], s.budget_exhausted_policy, month)

    def _list_drop(self, upload: UploadEvent, job_id: str) -> None:
        """Give a file dropped straight into the bucket a request record, so the API and console list it too.

        Its id is the job id's own digits (``r`` for ``j``), so a duplicate notification finds it taken.
        Listing is a convenience: a storage error here is logged and never holds the job up.
        """
        source = upload.source
        record = ApiRequest(request_id="r" + job_id[1:], state="submitted", job_id=job_id, gcs_uri=source.uri,
                            title=source.name, method=upload.method, deadline_minutes=upload.deadline_minutes,
                            language=upload.language,
                            created_at=upload.event_time or utcnow())
        try:
            self._requests.create(record)
        except TransientError as err:
            log.warning("could not list %s for the API: %s", source.uri, err.reason, extra={"job_id": job_id})

    def _publish(self, manifest: JobManifest) -> None:
        whole = is_whole_file(manifest.chunks, manifest.audio, manifest.source.size)
        outgoing: list[Outgoing] = []
        for planned in manifest.chunks:
            task = ChunkTask(
                job_id=manifest.job_id,
                source=manifest.source,
                audio=manifest.audio,
                chunk=ChunkSpec(**planned.model_dump(exclude={"schema_version", "path"})),
                n_chunks=manifest.n_chunks,
                path=planned.path,
                whole_file=whole,
                language=manifest.language,
            )
            topic = names.TOPIC_ASR_GPU if planned.path == "gpu" else names.TOPIC_ASR_DEEPGRAM
            outgoing.append((topic, task, {"job_id": manifest.job_id}))
        self._publisher.publish_many(outgoing)
        log.info("published %d chunk tasks", manifest.n_chunks, extra={"job_id": manifest.job_id})

    def _fail(self, job_id: str, source: SourceRef, reason: str, origin: Origin) -> None:
        """Report a job that cannot run. JobFailed goes first so a redelivery still sends it."""
        log.warning("rejecting %s: %s", source.uri, reason, extra={"job_id": job_id})
        rejected = JobFailed(job_id=job_id, reason=reason, source=source, origin=origin)
        self._publisher.publish(names.TOPIC_ASR_RESULTS, rejected, rejected.attributes())

        def failed(current: JobStatus | None) -> JobStatus | None:
            if current is not None and current.final:
                return None
            status = current or JobStatus(job_id=job_id, state="failed")
            status.state = "failed"
            status.reason = reason
            status.source = source
            status.origin = origin
            status.finished_at = utcnow()
            return status

        self._jobs.update_status(job_id, failed)

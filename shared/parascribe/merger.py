"""The merger: stores chunk results, finalises jobs once, and handles the dead-letter topic.

``/pubsub`` (``asr-results``) receives :class:`ChunkResult` and :class:`JobFailed`.
Each result is stored once (``if_generation_match=0``) and the status moves to
``transcribing n/m``. When every chunk is stored the job is stitched, every
output is written to the transcripts bucket (again ``if_generation_match=0``,
so racing mergers write nothing twice), and ``jobs/<id>/final.json`` is claimed.
Exactly one claimer sets the final status, sends the webhook and records the
metrics; losers and later redeliveries do nothing.

The claim holds the whole outcome (state, reason, outputs, summary). If the
claimer dies before finishing, a redelivery more than :data:`CLAIM_LEASE_S`
later completes the job from the claim, so no job stays half-finished.

``/dead-letter`` receives whatever exhausted its retries elsewhere and always
acks (except when storage or Pub/Sub itself is down, which is retried): a GPU
task falls back to Deepgram once when ``ENABLE_FALLBACK`` allows; anything else
fails its job with a reason a person can act on.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from parascribe import metric_names as mn
from parascribe import names
from parascribe.bus import Publisher
from parascribe.config import Settings
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_CHUNK_RESULT,
    TYPE_JOB_FAILED,
    ChunkResult,
    ChunkTask,
    Contract,
    JobFailed,
    JobManifest,
    JobState,
    JobStatus,
    JobSummary,
    SourceRef,
    decode,
    make_job_id,
    utcnow,
)
from parascribe.costs import Prices
from parascribe.errors import MalformedMessageError, ParascribeError, PermanentError, TransientError
from parascribe.formats import CONTENT_TYPES, output_name, render_all
from parascribe.jobs import JobStore, job_prefix
from parascribe.metrics import MetricsExporter, label_value
from parascribe.pushapp import Handler, PushMessage
from parascribe.stitch import stitch
from parascribe.storage import BlobStore
from parascribe.summary import chunk_cost, summarise
from parascribe.webhook import WebhookNotifier

log = logging.getLogger(__name__)

CLAIM_LEASE_S = 120.0
DLQ_COUNT_ATTR = "CloudPubSubDeadLetterSourceDeliveryCount"
DLQ_SUBSCRIPTION_ATTR = "CloudPubSubDeadLetterSourceSubscription"


class FinalOutcome(Contract):
    """``jobs/<id>/final.json``: the claim, holding everything needed to complete the job."""

    job_id: str
    state: JobState
    reason: str | None = None
    outputs: dict[str, str] = {}
    engines: list[str] = []
    summary: JobSummary | None = None
    source: SourceRef | None = None
    chunks_done: int = 0
    chunks_total: int = 0
    created_at: datetime | None = None
    finished_at: datetime
    claimed_at: datetime


class Merger:
    """Merger logic behind the two push routes; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: BlobStore,
        jobs: JobStore,
        publisher: Publisher,
        exporter: MetricsExporter,
        notifier: WebhookNotifier,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._store = store
        self._jobs = jobs
        self._publisher = publisher
        self._exporter = exporter
        self._notifier = notifier
        self._prices = Prices.from_settings(settings)
        self._clock = clock

    def routes(self) -> dict[str, Handler]:
        return {"/pubsub": self.handle_results, "/dead-letter": self.handle_dead_letter}

    # --- /pubsub ---
    def handle_results(self, message: PushMessage) -> None:
        """A message from ``asr-results``, told apart by its ``type`` attribute."""
        kind = message.attributes.get(ATTR_TYPE)
        if kind == TYPE_CHUNK_RESULT:
            self.on_chunk_result(decode(ChunkResult, message.data))
        elif kind == TYPE_JOB_FAILED:
            self.on_job_failed(decode(JobFailed, message.data))
        else:
            raise MalformedMessageError(f"asr-results message {message.message_id} has no known type attribute ({kind!r})")

    def on_chunk_result(self, result: ChunkResult) -> None:
        job_id = result.job_id
        ctx = {"job_id": job_id, "chunk_index": result.chunk_index}
        manifest = self._jobs.manifest(job_id)
        if manifest is None:
            raise PermanentError(f"result for chunk {result.chunk_index} of unknown job {job_id} (no manifest)")
        if result.chunk_index >= manifest.n_chunks:
            raise MalformedMessageError(
                f"result for chunk {result.chunk_index} but job {job_id} has {manifest.n_chunks} chunks"
            )
        if self._jobs.is_final(job_id):
            log.info("job already final; result ignored", extra=ctx)
            self.resume_if_stale(job_id)
            return
        if not self._jobs.put_chunk_result(result):
            log.info("chunk result already stored (redelivery)", extra=ctx)
        if result.error:
            reason = f"chunk {result.chunk_index + 1} of {manifest.n_chunks} failed on {result.engine}: {result.error}"
            self.finalise_failed(job_id, reason, manifest=manifest)
            return
        stored = self._jobs.chunk_indices(job_id) & set(range(manifest.n_chunks))
        self._progress(manifest, len(stored))
        if len(stored) == manifest.n_chunks:
            self.finalise_done(manifest)

    def on_job_failed(self, failed: JobFailed) -> None:
        self.finalise_failed(failed.job_id, failed.reason, source=failed.source)

    def _progress(self, manifest: JobManifest, done: int) -> None:
        def change(current: JobStatus | None) -> JobStatus | None:
            status = current or JobStatus(job_id=manifest.job_id, state="transcribing", source=manifest.source,
                                          created_at=manifest.created_at)
            if status.final:
                return None
            status.state = "transcribing"
            status.chunks_total = manifest.n_chunks
            status.chunks_done = max(status.chunks_done, done)
            status.source = status.source or manifest.source
            return status

        status = self._jobs.update_status(manifest.job_id, change)
        if status is not None:
            log.info("job %s", status.progress, extra={"job_id": manifest.job_id})

    # --- finalisation ---
    def finalise_done(self, manifest: JobManifest) -> None:
        """Stitch, write every output once, then claim and complete the job."""
        job_id = manifest.job_id
        results = self._jobs.chunk_results(job_id)
        failed = next((r for r in results if r.error), None)
        if failed is not None:
            reason = f"chunk {failed.chunk_index + 1} of {manifest.n_chunks} failed on {failed.engine}: {failed.error}"
            self.finalise_failed(job_id, reason, manifest=manifest)
            return
        transcript = stitch(manifest, results)
        summary = summarise(manifest, results, self._prices, transcript)
        bucket = self._settings.transcripts_bucket
        outputs = {}
        for fmt, data in render_all(transcript, manifest, summary).items():
            name = output_name(manifest.source.name, job_id, fmt)
            gen = self._store.write(bucket, name, data, content_type=CONTENT_TYPES[fmt], if_generation_match=0)
            if gen is None:
                log.info("output %s already written", name, extra={"job_id": job_id})
            outputs[fmt] = f"gs://{bucket}/{name}"
        self._claim(FinalOutcome(
            job_id=job_id, state="done", outputs=outputs, engines=summary.engines, summary=summary,
            source=manifest.source, chunks_done=manifest.n_chunks, chunks_total=manifest.n_chunks,
            created_at=manifest.created_at, finished_at=self._clock(), claimed_at=self._clock(),
        ), results)

    def finalise_failed(
        self, job_id: str, reason: str, manifest: JobManifest | None = None, source: SourceRef | None = None
    ) -> None:
        """Fail a job once: status ``failed`` with ``reason``, webhook, metrics."""
        if self._jobs.is_final(job_id):
            log.info("job already final; not failing it again", extra={"job_id": job_id})
            self.resume_if_stale(job_id)
            return
        manifest = manifest or self._jobs.manifest(job_id)
        results = self._jobs.chunk_results(job_id) if manifest else []
        summary = summarise(manifest, results, self._prices, complete=False)
        self._claim(FinalOutcome(
            job_id=job_id, state="failed", reason=reason, engines=summary.engines, summary=summary,
            source=source or (manifest.source if manifest else None),
            chunks_done=len(results), chunks_total=manifest.n_chunks if manifest else 0,
            created_at=manifest.created_at if manifest else None, finished_at=self._clock(), claimed_at=self._clock(),
        ), results)

    def _claim(self, outcome: FinalOutcome, results: list[ChunkResult]) -> None:
        if not self._jobs.claim_final(outcome.job_id, outcome.to_bytes()):
            log.info("another merger finalised this job", extra={"job_id": outcome.job_id})
            return
        log.info("job %s%s", outcome.state, f": {outcome.reason}" if outcome.reason else "",
                 extra={"job_id": outcome.job_id})
        self._complete(outcome, results)

    def _complete(self, outcome: FinalOutcome, results: list[ChunkResult]) -> None:
        def change(current: JobStatus | None) -> JobStatus:
            status = current or JobStatus(job_id=outcome.job_id, state=outcome.state,
                                          created_at=outcome.created_at or outcome.finished_at)
            status.state = outcome.state
            status.reason = outcome.reason
            status.outputs = dict(outcome.outputs)
            status.engines = list(outcome.engines)
            status.summary = outcome.summary
            status.source = status.source or outcome.source
            status.chunks_done = max(status.chunks_done, outcome.chunks_done)
            status.chunks_total = outcome.chunks_total or status.chunks_total
            status.finished_at = outcome.finished_at
            return status

        status = self._jobs.update_status(outcome.job_id, change)
        assert status is not None
        self._notifier.notify(status)
        self._record_metrics(status, results)

    def resume_if_stale(self, job_id: str, lease_s: float = CLAIM_LEASE_S) -> bool:
        """Complete a job whose claimer stopped half-way (claimed long ago, status or webhook unfinished)."""
        blob = self._store.read(self._jobs.bucket, f"{job_prefix(job_id)}final.json")
        if blob is None:
            return False
        status = self._jobs.status(job_id)
        if status is not None and status.final and status.webhook.state not in ("none", "pending"):
            return False
        outcome = decode(FinalOutcome, blob.data)
        if self._clock() - outcome.claimed_at < timedelta(seconds=lease_s):
            return False
        log.warning("completing job %s claimed at %s but never finished", job_id, outcome.claimed_at.isoformat(),
                    extra={"job_id": job_id})
        self._complete(outcome, self._jobs.chunk_results(job_id))
        return True

    def _record_metrics(self, status: JobStatus, results: list[ChunkResult]) -> None:
        rec = self._exporter.record
        for r in results:
            labels = {"engine": r.engine, "path": r.path}
            rec(mn.AUDIO_SECONDS, r.audio_seconds, labels)
            rec(mn.PROCESSING_SECONDS, r.processing_seconds, labels)
            rec(mn.COST_USD, chunk_cost(r, self._prices), {"method": r.path})
            if r.fallback_reason:
                from_path = "gpu" if r.path == "deepgram" else "deepgram"
                rec(mn.FALLBACKS, 1, {"reason": label_value(r.fallback_reason), "from_path": from_path, "to_path": r.path})
        if status.state == "done" and status.summary is not None:
            rec(mn.SAVINGS_USD, status.summary.savings_usd)
        rec(mn.JOBS, 1, {"status": status.state})
        if status.finished_at is not None:
            latency = (status.finished_at - status.created_at).total_seconds()
            rec(mn.JOB_LATENCY_SECONDS, max(0.0, latency), {"status": status.state})

    # --- /dead-letter ---
    def handle_dead_letter(self, message: PushMessage) -> None:
        """Always ack, except when a dependency is down (then Pub/Sub retries the dead letter)."""
        try:
            self._dead_letter(message)
        except TransientError:
            raise
        except ParascribeError as err:
            log.error("dead letter %s dropped: %s", message.message_id, err.reason)
        except Exception:
            log.exception("dead letter %s dropped after an unexpected error", message.message_id)

    def _dead_letter(self, message: PushMessage) -> None:
        attrs = message.attributes
        count = attrs.get(DLQ_COUNT_ATTR) or "several"
        where = attrs.get(DLQ_SUBSCRIPTION_ATTR, "").rsplit("/", 1)[-1] or "its subscription"
        if "bucketId" in attrs and "objectId" in attrs:
            self._dead_upload(message, count)
        elif attrs.get(ATTR_TYPE) == TYPE_JOB_FAILED:
            self.on_job_failed(decode(JobFailed, message.data))
        elif attrs.get(ATTR_TYPE) == TYPE_CHUNK_RESULT:
            result = decode(ChunkResult, message.data)
            if self._jobs.is_final(result.job_id):
                self.resume_if_stale(result.job_id, lease_s=0)
                return
            self.finalise_failed(result.job_id, (
                f"the merger could not record the result of chunk {result.chunk_index + 1} of {result.n_chunks} "
                f"after {count} attempts on {where}; check the merger's logs and the state bucket, then re-upload"
            ))
        else:
            self._dead_task(decode(ChunkTask, message.data), count, where)

    def _dead_upload(self, message: PushMessage, count: str) -> None:
        attrs = message.attributes
        bucket, name, generation = attrs["bucketId"], attrs["objectId"], attrs.get("objectGeneration", "")
        size = 0
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            size = int(json.loads(message.data or b"{}").get("size", 0))
        source = SourceRef(bucket=bucket, name=name, generation=str(generation), size=max(size, 0))
        job_id = make_job_id(bucket, name, generation)
        if bucket != self._settings.uploads_bucket:
            log.info("dead-lettered notification for another bucket (%s) ignored", bucket)
            return
        self.finalise_failed(job_id, (
            f"the router failed {count} times to start a job for gs://{bucket}/{name} (generation {generation}); "
            "check the router's logs, then upload the file again"
        ), source=source)

    def _dead_task(self, task: ChunkTask, count: str, where: str) -> None:
        ctx = {"job_id": task.job_id, "chunk_index": task.chunk.index, "path": task.path}
        if self._jobs.is_final(task.job_id):
            log.info("dead-lettered task for a finished job ignored", extra=ctx)
            return
        label = f"chunk {task.chunk.index + 1} of {task.n_chunks}"
        if task.path == "gpu" and self._settings.enable_fallback and task.fallback_from is None:
            fallback = task.model_copy(update={
                "path": "deepgram",
                "fallback_from": "gpu",
                "fallback_reason": f"dead-lettered on gpu after {count} attempts",
                "submitted_at": utcnow(),
            })
            self._publisher.publish(names.TOPIC_ASR_DEEPGRAM, fallback, {"job_id": task.job_id})
            log.warning("%s dead-lettered on %s; sent to Deepgram", label, where, extra=ctx)
            return
        if task.path == "gpu":
            why = "ENABLE_FALLBACK is false" if not self._settings.enable_fallback else "it had already fallen back"
            reason = (f"{label} could not be transcribed on the GPU after {count} attempts and {why}; "
                      "check the ASR worker's logs (or set ENABLE_FALLBACK=true), then re-upload")
        else:
            after = f" (it fell back from the GPU: {task.fallback_reason})" if task.fallback_reason else ""
            reason = (f"{label} could not be transcribed by Deepgram after {count} attempts{after}; "
                      "check DEEPGRAM_API_KEY and the Deepgram worker's logs, then re-upload")
        log.error("%s dead-lettered on %s; failing the job", label, where, extra=ctx)
        self.finalise_failed(task.job_id, reason, source=task.source)


def build_merger(settings: Settings, service: str = "merger") -> tuple[Merger, MetricsExporter]:
    """The merger with real adapters, as a service builds it once per process."""
    from parascribe.bus import PubSubPublisher
    from parascribe.metrics import exporter_from_settings
    from parascribe.storage import GcsStore

    store = GcsStore.create(settings.gcp_project)
    jobs = JobStore(store, settings.state_bucket)
    exporter = exporter_from_settings(settings, service=service)
    notifier = WebhookNotifier(settings, jobs, exporter)
    merger = Merger(settings, store, jobs, PubSubPublisher(settings.gcp_project), exporter, notifier)
    return merger, exporter

"""The merger: stores chunk results, finalises jobs once, and handles the dead-letter topic.

``/pubsub`` (``asr-results``) receives :class:`ChunkResult` and :class:`JobFailed`.
Each result is stored once (``if_generation_match=0``) and the status moves to
``transcribing n/m``. When every chunk is stored the job is stitched, every
output is written to the transcripts bucket (again ``if_generation_match=0``,
so racing mergers write nothing twice), and ``jobs/<id>/final.json`` is claimed.
Exactly one claimer sets the final status, sends the webhook and records the
metrics; losers and later redeliveries do nothing.

The claim holds the whole outcome (state, reason, outputs, summary). If the
claimer dies before finishing, a message for the job that arrives within
:data:`CLAIM_LEASE_S` of the claim is nacked, and one that arrives later (or the
sweeper, if no message comes) completes the job from the claim, so no job stays
half-finished. A result already stored wins over a later duplicate of it.

``/dead-letter`` is :mod:`parascribe.merger.dead_letter`, which finishes jobs through this class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from parascribe import metric_names as mn
from parascribe.budget import record_spend
from parascribe.config import Settings
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_CHUNK_RESULT,
    TYPE_JOB_FAILED,
    ChunkResult,
    FinalOutcome,
    JobFailed,
    JobManifest,
    JobStatus,
    Origin,
    SourceRef,
    job_id_of,
    parse,
    utcnow,
)
from parascribe.costs import Prices
from parascribe.errors import MalformedMessageError, PermanentError, TransientError
from parascribe.gcp.pubsub import Message, Publisher
from parascribe.gcp.storage import BlobStore
from parascribe.jobs import JobStore
from parascribe.merger.formats import CONTENT_TYPES, output_name, render_all
from parascribe.merger.stitch import stitch
from parascribe.merger.summary import chunk_cost, summarise
from parascribe.merger.webhook import WebhookNotifier, undelivered
from parascribe.metrics import MetricsExporter, label_value

log = logging.getLogger(__name__)

CLAIM_LEASE_S = 120.0
"""How long a claimer may take to finish a job before anyone else may complete it from its claim."""
PROGRESS_INTERVAL_S = 2.0
"""At most one progress write to a job's status per this many seconds (GCS allows one write a second
per object), however many chunks finish at once; the final status is always written."""


def is_finished(status: JobStatus | None) -> bool:
    """Whether a job's status is final and its webhook and callback settled (delivered, given up, or not configured)."""
    if status is None or not status.final or status.webhook.state in ("none", "pending"):
        return False
    return not status.origin.callback_url or (status.callback is not None and status.callback.state != "pending")


def chunk_failure_reason(result: ChunkResult, manifest: JobManifest) -> str:
    """Why a job failed because of one chunk, in words a person can act on."""
    return f"chunk {result.chunk_index + 1} of {manifest.n_chunks} failed on {result.engine}: {result.error}"


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
        progress_interval_s: float = PROGRESS_INTERVAL_S,
    ) -> None:
        self._settings = settings
        self._store = store
        self._jobs = jobs
        self._publisher = publisher
        self._exporter = exporter
        self._notifier = notifier
        self._prices = Prices.from_settings(settings)
        self._clock = clock
        self._progress_interval_s = progress_interval_s

    @property
    def jobs(self) -> JobStore:
        return self._jobs

    # --- /pubsub ---
    def handle_results(self, message: Message) -> None:
        """A message from ``asr-results``, told apart by its ``type`` attribute."""
        kind = message.attributes.get(ATTR_TYPE)
        try:
            if kind == TYPE_CHUNK_RESULT:
                result = parse(ChunkResult, message.data)
            elif kind == TYPE_JOB_FAILED:
                failed = parse(JobFailed, message.data)
            else:
                raise MalformedMessageError(
                    f"asr-results message {message.message_id} has no known type attribute ({kind!r})"
                )
        except MalformedMessageError as err:
            self.fail_unreadable(message.data, err.reason)
            raise
        started = time.perf_counter()
        if kind == TYPE_CHUNK_RESULT:
            job_id = result.job_id
            self.on_chunk_result(result)
        else:
            job_id = failed.job_id
            self.on_job_failed(failed)
        log.info("result handled", extra={"job_id": job_id,
                                          "elapsed_ms": round((time.perf_counter() - started) * 1000, 2)})

    def fail_unreadable(self, data: bytes, why: str) -> None:
        """Fail the job a malformed message belongs to, when its job id can be read and the job exists."""
        job_id = job_id_of(data)
        if job_id is None or self._jobs.manifest(job_id) is None:
            return
        self.finalise_failed(job_id, (
            f"a message for this job could not be read ({why}); a worker and the merger may run "
            "different releases: check the workers' logs, then re-upload"
        ))

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
            self.finish_claimed(job_id)
            return
        if not self._jobs.put_chunk_result(result):
            first = self._jobs.chunk_result(job_id, result.chunk_index)
            if first is not None:
                log.info("chunk result already stored (redelivery); acting on the stored one", extra=ctx)
                result = first
        if result.error:
            self.finalise_failed(job_id, chunk_failure_reason(result, manifest), manifest=manifest)
            return
        stored = self._jobs.chunk_indices(job_id) & set(range(manifest.n_chunks))
        self._progress(manifest, len(stored))
        if len(stored) == manifest.n_chunks:
            self.finalise_done(manifest)

    def on_job_failed(self, failed: JobFailed) -> None:
        """Fail a job. A failure without a source, for a job with no plan and no status, names no job we ran
        (a garbage task with a plausible id, say) and is ignored."""
        if failed.source is None and self._jobs.manifest(failed.job_id) is None and \
                self._jobs.status(failed.job_id) is None:
            log.warning("failure reported for unknown job %s ignored: %s", failed.job_id, failed.reason)
            return
        self.finalise_failed(failed.job_id, failed.reason, source=failed.source, origin=failed.origin)

    def record_progress(self, manifest: JobManifest, done: int) -> None:
        """Move the status to ``transcribing done/n`` (throttled; never over a final status)."""
        self._progress(manifest, done)

    def _progress(self, manifest: JobManifest, done: int) -> None:
        def change(current: JobStatus | None) -> JobStatus | None:
            status = current or JobStatus(job_id=manifest.job_id, state="transcribing", source=manifest.source,
                                          created_at=manifest.created_at)
            if status.final:
                return None
            if current is not None and current.state == "transcribing" and done < manifest.n_chunks and \
                    (self._clock() - current.updated_at).total_seconds() < self._progress_interval_s:
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
            self.finalise_failed(job_id, chunk_failure_reason(failed, manifest), manifest=manifest)
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
            source=manifest.source, origin=manifest.origin, chunks_done=manifest.n_chunks,
            chunks_total=manifest.n_chunks, created_at=manifest.created_at, finished_at=self._clock(),
            claimed_at=self._clock(),
        ), results)

    def finalise_failed(
        self, job_id: str, reason: str, manifest: JobManifest | None = None, source: SourceRef | None = None,
        origin: Origin | None = None,
    ) -> None:
        """Fail a job once: status ``failed`` with ``reason``, webhook, metrics."""
        if self._jobs.is_final(job_id):
            log.info("job already final; not failing it again", extra={"job_id": job_id})
            self.finish_claimed(job_id)
            return
        manifest = manifest or self._jobs.manifest(job_id)
        results = self._jobs.chunk_results(job_id) if manifest else []
        summary = summarise(manifest, results, self._prices, complete=False)
        if (origin is None or origin == Origin()) and manifest is not None:
            origin = manifest.origin
        self._claim(FinalOutcome(
            job_id=job_id, state="failed", reason=reason, engines=summary.engines, summary=summary,
            source=source or (manifest.source if manifest else None), origin=origin or Origin(),
            chunks_done=len(results), chunks_total=manifest.n_chunks if manifest else 0,
            created_at=manifest.created_at if manifest else None, finished_at=self._clock(), claimed_at=self._clock(),
        ), results)

    def _claim(self, outcome: FinalOutcome, results: list[ChunkResult]) -> None:
        # In the sweeper's index before the claim, so a claimer that dies half-way is always found, even for
        # a job the router rejected (never indexed) or one indexed and closed by a racing merger (closed again).
        self._jobs.mark_open(outcome.job_id)
        if not self._jobs.claim_final(outcome):
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
            status.origin = outcome.origin if outcome.origin != Origin() else status.origin
            status.chunks_done = max(status.chunks_done, outcome.chunks_done)
            status.chunks_total = outcome.chunks_total or status.chunks_total
            # A status the router already failed keeps the moment it ended: one job, one end.
            ended_at = current.finished_at if current is not None and current.final and \
                current.state == outcome.state else None
            status.finished_at = ended_at or outcome.finished_at
            return status

        status = self._jobs.update_status(outcome.job_id, change)
        assert status is not None
        delivered = self._notifier.notify(status)
        self._record_metrics(status, results)
        if not undelivered(delivered):  # else the sweeper sends it again
            self._jobs.close(outcome.job_id)

    def resend_webhook(self, status: JobStatus) -> bool:
        """Send a finished job's webhook again (the sweeper, after the receiver was down); True when delivered."""
        if undelivered(self._notifier.notify(status, resend=True)):
            return False
        self._jobs.close(status.job_id)
        return True

    def finish_claimed(self, job_id: str, lease_s: float = CLAIM_LEASE_S) -> bool:
        """Make sure a claimed job gets finished.

        Nothing to do once its status is final and its webhook settled. A claim older
        than ``lease_s`` whose claimer stopped half-way is completed here, from the claim.

        Returns:
            True when this call completed the job.

        Raises:
            TransientError: the claim is younger than ``lease_s`` and the job is not finished,
                so the message is retried: acking it could leave the job unfinished for good.
        """
        outcome = self._jobs.final_outcome(job_id)
        if outcome is None or is_finished(self._jobs.status(job_id)):
            return False
        age = self._clock() - outcome.claimed_at
        if age < timedelta(seconds=lease_s):
            raise TransientError(
                f"job {job_id} was claimed {age.total_seconds():.0f} s ago and is not finished yet; "
                f"retry: after {lease_s:.0f} s anyone may complete it"
            )
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
            if r.error is None:
                rec(mn.SPEECH_SECONDS, r.audio_seconds if r.speech_s is None else r.speech_s, labels)
                rec(mn.SKIPPED_SECONDS, r.skipped_s, labels)
            rec(mn.COST_USD, chunk_cost(r, self._prices), {"method": r.path})
            if r.fallback_reason:
                from_path = "gpu" if r.path == "deepgram" else "deepgram"
                rec(mn.FALLBACKS, 1, {"reason": label_value(r.fallback_reason), "from_path": from_path, "to_path": r.path})
        if status.state == "done" and status.summary is not None:
            rec(mn.SAVINGS_USD, status.summary.savings_usd)
        rec(mn.JOBS, 1, {"status": status.state})
        record_spend(self._store, self._jobs, status, results, self._prices, self._exporter,
                     self._settings.monthly_budget_usd)
        if status.finished_at is not None:
            latency = (status.finished_at - status.created_at).total_seconds()
            rec(mn.JOB_LATENCY_SECONDS, max(0.0, latency), {"status": status.state})

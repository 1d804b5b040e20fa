"""The dead-letter topic: whatever exhausted its retries elsewhere, ended once.

A GPU task falls back to Deepgram once when ``ENABLE_FALLBACK`` allows; anything
else fails its job with a reason a person can act on. An ingest request the ingest
worker never finished (it crashed or ran out of time on every delivery) fails its
API request record, unless that is already final. The handler acks, except when
storage or Pub/Sub itself is down, which Pub/Sub retries.
"""

from __future__ import annotations

import contextlib
import json
import logging

from parascribe import names
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_CHUNK_RESULT,
    TYPE_JOB_FAILED,
    ChunkResult,
    ChunkTask,
    JobFailed,
    SourceRef,
    make_job_id,
    parse,
)
from parascribe.contracts_api import ApiRequest, IngestRequest
from parascribe.errors import MalformedMessageError, PermanentError
from parascribe.gcp.pubsub import Message, Publisher
from parascribe.jobs import JobStore
from parascribe.merger.service import Merger
from parascribe.requests_store import RequestStore, request_id_of, seed_of

log = logging.getLogger(__name__)

DLQ_COUNT_ATTR = "CloudPubSubDeadLetterSourceDeliveryCount"
DLQ_SUBSCRIPTION_ATTR = "CloudPubSubDeadLetterSourceSubscription"


class DeadLetters:
    """Handles ``dead-letter-push``; finishing a job goes through the :class:`Merger`.

    Args:
        merger: finishes jobs.
        jobs: job statuses and chunk results.
        publisher: sends a GPU task to Deepgram.
        requests: the API's request records (the state bucket), for dead-lettered ingest requests.
        uploads_bucket: the only bucket whose notifications start jobs.
        enable_fallback: ``ENABLE_FALLBACK``.
    """

    def __init__(self, merger: Merger, jobs: JobStore, publisher: Publisher, *, requests: RequestStore,
                 uploads_bucket: str, enable_fallback: bool) -> None:
        self._merger = merger
        self._jobs = jobs
        self._requests = requests
        self._publisher = publisher
        self._uploads_bucket = uploads_bucket
        self._enable_fallback = enable_fallback

    def handle(self, message: Message) -> None:
        """Ack unless a dependency is down or something unexpected broke (then Pub/Sub retries the dead letter)."""
        try:
            self._dead_letter(message)
        except PermanentError as err:
            log.error("dead letter %s dropped: %s", message.message_id, err.reason)

    def _dead_letter(self, message: Message) -> None:
        attrs = message.attributes
        count = attrs.get(DLQ_COUNT_ATTR) or "several"
        where = attrs.get(DLQ_SUBSCRIPTION_ATTR, "").rsplit("/", 1)[-1] or "its subscription"
        if "bucketId" in attrs and "objectId" in attrs:
            self._dead_upload(message, count)
        elif where == names.SUB_INGEST or (ATTR_TYPE not in attrs and request_id_of(message.data)):
            self._dead_ingest(message, count)
        elif attrs.get(ATTR_TYPE) == TYPE_JOB_FAILED:
            self._merger.on_job_failed(parse(JobFailed, message.data))
        elif attrs.get(ATTR_TYPE) == TYPE_CHUNK_RESULT:
            # The chunk was transcribed and paid for: a merger or storage outage must not throw it away.
            # Storing it here either finishes the job or raises, and Pub/Sub retries the dead letter.
            result = parse(ChunkResult, message.data)
            log.warning("result of chunk %d dead-lettered on %s after %s attempts; storing it", result.chunk_index,
                        where, count, extra={"job_id": result.job_id, "chunk_index": result.chunk_index})
            self._merger.on_chunk_result(result)
        else:
            self._dead_task(parse(ChunkTask, message.data), count, where)

    def _dead_upload(self, message: Message, count: str) -> None:
        attrs = message.attributes
        bucket, name, generation = attrs["bucketId"], attrs["objectId"], attrs.get("objectGeneration", "")
        size = 0
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            size = int(json.loads(message.data or b"{}").get("size", 0))
        source = SourceRef(bucket=bucket, name=name, generation=str(generation), size=max(size, 0))
        job_id = make_job_id(bucket, name, generation)
        if bucket != self._uploads_bucket:
            log.info("dead-lettered notification for another bucket (%s) ignored", bucket)
            return
        self._merger.finalise_failed(job_id, (
            f"the router failed {count} times to start a job for gs://{bucket}/{name} (generation {generation}); "
            "check the router's logs, then upload the file again"
        ), source=source)

    def _dead_ingest(self, message: Message, count: str) -> None:
        try:
            request = parse(IngestRequest, message.data)
            request_id, seed = request.request_id, seed_of(request)
        except MalformedMessageError:
            found = request_id_of(message.data)
            if found is None:
                raise
            request_id, seed = found, ApiRequest(request_id=found)
        reason = (f"the ingest worker gave up on this URL after {count} attempts; "
                  "check the ingest worker's logs, then submit it again")
        record = self._requests.fail(request_id, reason, seed=seed, unless_final=True)
        if record is not None and record.reason != reason:
            log.info("dead-lettered ingest request %s was already %s; left alone", request_id, record.state)
            return
        log.error("ingest request %s dead-lettered after %s attempts; failed it", request_id, count)

    def _dead_task(self, task: ChunkTask, count: str, where: str) -> None:
        ctx = {"job_id": task.job_id, "chunk_index": task.chunk.index, "path": task.path}
        if self._jobs.is_final(task.job_id):
            log.info("dead-lettered task for a finished job ignored", extra=ctx)
            return
        if self._jobs.has_chunk_result(task.job_id, task.chunk.index):
            log.info("dead-lettered task whose chunk already has a result ignored (not paid for again)", extra=ctx)
            return
        label = f"chunk {task.chunk.index + 1} of {task.n_chunks}"
        if task.path == "gpu" and self._enable_fallback and task.fallback_from is None:
            fallback = task.to_deepgram(f"dead-lettered on gpu after {count} attempts")
            self._publisher.publish(names.TOPIC_ASR_DEEPGRAM, fallback, {"job_id": task.job_id})
            log.warning("%s dead-lettered on %s; sent to Deepgram", label, where, extra=ctx)
            return
        if task.path == "gpu":
            why = "ENABLE_FALLBACK is false" if not self._enable_fallback else "it had already fallen back"
            reason = (f"{label} could not be transcribed on the GPU after {count} attempts and {why}; "
                      "check the ASR worker's logs (or set ENABLE_FALLBACK=true), then re-upload")
        else:
            after = f" (it fell back from the GPU: {task.fallback_reason})" if task.fallback_reason else ""
            reason = (f"{label} could not be transcribed by Deepgram after {count} attempts{after}; "
                      "check DEEPGRAM_API_KEY and the Deepgram worker's logs, then re-upload")
        log.error("%s dead-lettered on %s; failing the job", label, where, extra=ctx)
        self._merger.finalise_failed(task.job_id, reason, source=task.source)

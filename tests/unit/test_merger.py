"""The merger with in-memory fakes: results, finalisation once, failures and the dead-letter topic."""

from __future__ import annotations

import base64
import json
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from parascribe import metric_names as mn
from parascribe import names
from parascribe.config import Settings, load_settings
from parascribe.contracts import (
    AudioInfo,
    ChunkResult,
    ChunkSpec,
    ChunkTask,
    FinalOutcome,
    JobFailed,
    JobManifest,
    JobStatus,
    PlannedChunk,
    SourceRef,
    Word,
    utcnow,
)
from parascribe.errors import MalformedMessageError, NewerSchemaError, PermanentError, TransientError
from parascribe.gcp.pubsub import Message, create_push_app
from parascribe.jobs import JobStore
from parascribe.merger.dead_letter import DeadLetters
from parascribe.merger.formats import FORMATS, output_name
from parascribe.merger.service import PROGRESS_INTERVAL_S, Merger
from parascribe.merger.webhook import WebhookNotifier, WebhookOptions
from parascribe.requests_store import RequestStore
from tests.fakes import MemoryStore, RecordingExporter, RecordingPublisher

SECRET = "whsec_" + base64.b64encode(b"parascribe-test-secret-0123456789").decode()
TEXT = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and", "then", "it", "runs", "far", "away"]


class CountingStore(MemoryStore):
    """Counts successful writes per object, to prove "written once"."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: dict[tuple[str, str], int] = {}

    def write(self, bucket: str, name: str, data: bytes, content_type: str = "application/json",
              if_generation_match: int | None = None, metadata: dict[str, str] | None = None) -> int | None:
        gen = super().write(bucket, name, data, content_type, if_generation_match, metadata)
        if gen is not None:
            self.writes[(bucket, name)] = self.writes.get((bucket, name), 0) + 1
        return gen


def make_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"gcp_project": "test", "metrics_exporter": "none", "enable_fallback": True,
                               "convex_webhook_url": None, "convex_webhook_secret": None}
    base.update(overrides)
    return load_settings(**base)


def spoken_words(duration: float, seed: int = 5) -> list[Word]:
    rng = random.Random(seed)
    words, t = [], 0.2
    while t < duration - 1:
        d = rng.uniform(0.2, 0.5)
        words.append(Word(text=TEXT[len(words) % len(TEXT)], start=round(t, 3), end=round(t + d, 3), confidence=0.9))
        t += d + rng.uniform(0.05, 0.3)
    return words


def plan(job_id: str, source: SourceRef, duration: float, n: int, overlap: float = 1.5) -> JobManifest:
    edges = [duration * k / n for k in range(n + 1)]
    chunks = [
        PlannedChunk(index=i, start_s=max(0.0, edges[i] - overlap), end_s=min(duration, edges[i + 1] + overlap),
                     core_start_s=edges[i], core_end_s=edges[i + 1], path="gpu" if i % 2 == 0 else "deepgram")
        for i in range(n)
    ]
    audio = AudioInfo(duration_s=duration, sample_rate=16000, channels=1, codec="pcm_s16le", container="wav")
    return JobManifest(job_id=job_id, source=source, audio=audio, method="hybrid", deadline_minutes=60,
                       chunks=chunks, created_at=utcnow() - timedelta(seconds=42))


class Job:
    """A routed job: manifest stored, status queued, and the results its chunks will produce."""

    def __init__(self, jobs: JobStore, n_chunks: int = 3, duration: float = 30.0, name: str = "talks/talk.wav",
                 generation: str = "1") -> None:
        self.source = SourceRef(bucket="uploads", name=name, generation=generation, size=1000)
        self.job_id = self.source.job_id
        self.manifest = plan(self.job_id, self.source, duration, n_chunks)
        self.words = spoken_words(duration)
        assert jobs.create_manifest(self.manifest) is True
        jobs.update_status(self.job_id, lambda _: JobStatus(
            job_id=self.job_id, state="queued", chunks_total=n_chunks, source=self.source,
            created_at=self.manifest.created_at))
        self.results = [self.result(c) for c in self.manifest.chunks]

    def result(self, c: PlannedChunk, **kw: object) -> ChunkResult:
        heard = [w.model_copy() for w in self.words if w.start >= c.start_s and w.end <= c.end_s]
        engine = "parakeet" if c.path == "gpu" else "deepgram"
        fields: dict[str, object] = {
            "job_id": self.job_id, "chunk_index": c.index, "n_chunks": self.manifest.n_chunks, "engine": engine,
            "path": c.path, "words": heard, "audio_seconds": c.duration_s, "processing_seconds": 0.5,
            "billed_seconds": c.duration_s if c.path == "deepgram" else 0.0,
        }
        fields.update(kw)
        return ChunkResult.model_validate(fields)


class Rig:
    def __init__(self, settings: Settings | None = None, store: MemoryStore | None = None,
                 progress_interval_s: float = 0.0, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings or make_settings()
        self.store = store or CountingStore()
        self.jobs = JobStore(self.store, self.settings.state_bucket)
        self.publisher = RecordingPublisher()
        self.exporter = RecordingExporter()
        self.notifier = WebhookNotifier(WebhookOptions.from_settings(self.settings), self.jobs, self.exporter,
                                        sleep=lambda s: None)
        self.merger = Merger(self.settings, self.store, self.jobs, self.publisher, self.exporter, self.notifier,
                             progress_interval_s=progress_interval_s, clock=clock)
        self.requests = RequestStore(self.store, self.settings.state_bucket, sleep=lambda s: None)
        self.dead_letters = DeadLetters(self.merger, self.jobs, self.publisher, requests=self.requests,
                                        uploads_bucket=self.settings.uploads_bucket,
                                        enable_fallback=self.settings.enable_fallback)

    def push(self, result: ChunkResult | JobFailed) -> None:
        kind = "chunk_result" if isinstance(result, ChunkResult) else "job_failed"
        self.merger.handle_results(Message(data=result.to_bytes(), attributes={"type": kind}))

    def dead(self, data: bytes, **attributes: str) -> None:
        self.dead_letters.handle(Message(data=data, attributes=attributes, message_id="dl-1"))

    def status(self, job_id: str) -> JobStatus:
        s = self.jobs.status(job_id)
        assert s is not None
        return s


def test_results_in_any_order_with_duplicates_finish_the_job_once() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=3)
    queued_at = rig.status(job.job_id).created_at
    order = [job.results[2], job.results[0], job.results[2], job.results[1]]
    progress = []
    for r in order[:-1]:
        rig.push(r)
        progress.append(rig.status(job.job_id).progress)
    assert progress == ["transcribing 1/3", "transcribing 2/3", "transcribing 2/3"]
    rig.push(order[-1])

    status = rig.status(job.job_id)
    assert status.state == "done" and status.final and status.reason is None
    assert status.created_at == queued_at, "the status keeps its original timestamps"
    assert status.finished_at is not None and status.finished_at > status.created_at
    assert status.chunks_done == 3 and status.engines == ["deepgram", "parakeet"]
    bucket = rig.settings.transcripts_bucket
    assert status.outputs == {f: f"gs://{bucket}/{output_name(job.source.name, job.job_id, f)}" for f in FORMATS}
    assert status.webhook.state == "disabled"
    doc = json.loads(rig.store.read(bucket, output_name(job.source.name, job.job_id, "json")).data)  # type: ignore[union-attr]
    assert [w["text"] for w in doc["words"]] == [w.text for w in job.words]
    assert doc["metadata"]["chunk_count"] == 3
    summary = status.summary
    assert summary is not None and summary.word_count == len(job.words) and summary.chunks == 3
    assert summary.cost_usd == pytest.approx(sum(summary.cost_by_method.values()), abs=3e-6)
    assert summary.savings_usd == pytest.approx(summary.deepgram_only_usd - summary.cost_usd, abs=3e-6)

    ex = rig.exporter
    assert ex.total(mn.JOBS, status="done") == 1
    assert ex.total(mn.AUDIO_SECONDS, engine="parakeet", path="gpu") == pytest.approx(
        sum(c.duration_s for c in job.manifest.chunks if c.path == "gpu"))
    assert ex.total(mn.PROCESSING_SECONDS) == pytest.approx(1.5)
    assert ex.total(mn.COST_USD) == pytest.approx(summary.cost_usd, abs=3e-6)
    assert ex.total(mn.SAVINGS_USD) == pytest.approx(summary.savings_usd)
    (latency,) = [v for m, v, _ in ex.records if m == mn.JOB_LATENCY_SECONDS]
    assert latency == pytest.approx((status.finished_at - queued_at).total_seconds())

    # A redelivery after the job is final writes nothing and records nothing.
    writes, records = dict(rig.store.writes), len(ex.records)
    rig.push(job.results[1])
    assert rig.store.writes == writes and len(ex.records) == records
    assert all(n == 1 for (b, _), n in rig.store.writes.items() if b == bucket)


def test_fallback_results_are_counted_by_reason() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=2)
    rig.push(job.results[0])
    fb = job.result(job.manifest.chunks[1], fallback_reason="dead-lettered on gpu after 5 attempts")
    rig.push(fb)
    assert rig.status(job.job_id).summary.fallbacks == 1  # type: ignore[union-attr]
    assert rig.exporter.total(mn.FALLBACKS, reason="dead-lettered on gpu after N attempts", from_path="gpu",
                              to_path="deepgram") == 1


def test_a_chunk_error_fails_the_job_with_its_reason() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=3)
    rig.push(job.results[0])
    rig.push(job.result(job.manifest.chunks[1], words=[], error="not a readable audio file: truncated FLAC"))
    status = rig.status(job.job_id)
    assert status.state == "failed"
    assert status.reason == "chunk 2 of 3 failed on deepgram: not a readable audio file: truncated FLAC"
    assert status.outputs == {} and status.webhook.state == "disabled"
    assert rig.exporter.total(mn.JOBS, status="failed") == 1
    assert rig.exporter.total(mn.SAVINGS_USD) == 0
    rig.push(job.results[2])  # late results change nothing
    assert rig.status(job.job_id).state == "failed" and rig.exporter.total(mn.JOBS) == 1


def test_job_failed_from_the_router_is_finalised_once() -> None:
    rig = Rig()
    source = SourceRef(bucket="uploads", name="empty.wav", generation="3", size=0)
    reason = "the uploaded object is empty (0 bytes); upload the complete file"
    # The router already set the status, so the CLI saw it at once.
    rig.jobs.update_status(source.job_id, lambda _: JobStatus(job_id=source.job_id, state="failed", reason=reason,
                                                             source=source))
    created = rig.status(source.job_id).created_at
    failed = JobFailed(job_id=source.job_id, reason=reason, source=source)
    before = utcnow()
    rig.push(failed)
    finished_at = rig.status(source.job_id).finished_at
    assert finished_at is not None and before <= finished_at <= utcnow()
    rig.push(failed)
    status = rig.status(source.job_id)
    assert status.state == "failed" and status.reason == reason and status.created_at == created
    assert status.webhook.state == "disabled" and status.finished_at == finished_at
    assert rig.exporter.total(mn.JOBS, status="failed") == 1


def test_bad_messages_are_permanent() -> None:
    rig = Rig()
    with pytest.raises(MalformedMessageError):
        rig.merger.handle_results(Message(data=b"{}", attributes={}))
    with pytest.raises(MalformedMessageError):
        rig.merger.handle_results(Message(data=b"not json", attributes={"type": "chunk_result"}))
    orphan = ChunkResult(job_id="jnope", chunk_index=0, n_chunks=1, engine="parakeet", path="gpu",
                         audio_seconds=1, processing_seconds=1)
    with pytest.raises(PermanentError, match="unknown job"):
        rig.push(orphan)
    job = Job(rig.jobs, n_chunks=2)
    with pytest.raises(MalformedMessageError, match="has 2 chunks"):
        rig.push(job.result(job.manifest.chunks[1], chunk_index=7))


def test_push_routes_ack_through_the_flask_app() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=1)
    client = create_push_app("merger", {"/pubsub": rig.merger.handle_results,
                                         "/dead-letter": rig.dead_letters.handle}).test_client()

    def envelope(data: bytes, **attributes: str) -> dict[str, object]:
        return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "1"},
                "subscription": "projects/test/subscriptions/merger-push"}

    assert client.post("/pubsub", json=envelope(job.results[0].to_bytes(), type="chunk_result")).status_code == 204
    assert rig.status(job.job_id).state == "done"
    assert client.post("/pubsub", json=envelope(b"junk", type="chunk_result")).status_code == 204
    assert client.post("/dead-letter", json=envelope(b"junk")).status_code == 204


def test_racing_mergers_finalise_once() -> None:
    store = CountingStore()
    rigs = [Rig(store=store) for _ in range(4)]
    job = Job(rigs[0].jobs, n_chunks=4)
    for r in job.results[:2]:
        rigs[0].push(r)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(rig: Rig, result: ChunkResult) -> None:
        try:
            barrier.wait()
            rig.push(result)
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(rig, job.results[2 + i % 2])) for i, rig in enumerate(rigs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(r.exporter.total(mn.JOBS) for r in rigs) == 1
    assert rigs[0].status(job.job_id).state == "done"
    outputs = {k: n for k, n in store.writes.items() if k[0] == rigs[0].settings.transcripts_bucket}
    assert len(outputs) == len(FORMATS) and set(outputs.values()) == {1}


def test_a_claim_left_half_done_is_completed_by_a_later_redelivery() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=1)
    rig.jobs.put_chunk_result(job.results[0])
    outcome = FinalOutcome(job_id=job.job_id, state="done", outputs={"json": "gs://transcripts/x.json"},
                           engines=["parakeet"], source=job.source, finished_at=utcnow(), claimed_at=utcnow())
    assert rig.jobs.claim_final(outcome) is True  # then the claimer "crashed"
    with pytest.raises(TransientError, match="claimed 0 s ago and is not finished yet"):
        rig.push(job.results[0])  # acking this redelivery could leave the job unfinished for good
    assert rig.status(job.job_id).state == "queued", "a fresh claim may still be in progress"
    outcome.claimed_at = utcnow() - timedelta(minutes=10)
    rig.store.write(rig.jobs.bucket, f"jobs/{job.job_id}/final.json", outcome.to_bytes())
    rig.push(job.results[0])
    status = rig.status(job.job_id)
    assert status.state == "done" and status.outputs == {"json": "gs://transcripts/x.json"}
    assert status.webhook.state == "disabled" and rig.exporter.total(mn.JOBS, status="done") == 1
    rig.push(job.results[0])
    assert rig.exporter.total(mn.JOBS) == 1


# --- dead letters ---

def task_for(job: Job, index: int, path: str, **kw: object) -> ChunkTask:
    c = job.manifest.chunks[index]
    spec = ChunkSpec(index=c.index, start_s=c.start_s, end_s=c.end_s, core_start_s=c.core_start_s,
                     core_end_s=c.core_end_s)
    return ChunkTask.model_validate({"job_id": job.job_id, "source": job.source, "audio": job.manifest.audio,
                                     "chunk": spec, "n_chunks": job.manifest.n_chunks, "path": path, **kw})


DL = {"CloudPubSubDeadLetterSourceDeliveryCount": "5",
      "CloudPubSubDeadLetterSourceSubscription": "asr-gpu-pull", "job_id": "x"}


def test_dead_gpu_task_falls_back_to_deepgram_once() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=2)
    rig.dead(task_for(job, 0, "gpu").to_bytes(), **DL)
    ((topic, msg, attrs),) = rig.publisher.messages
    assert topic == names.TOPIC_ASR_DEEPGRAM and attrs == {"job_id": job.job_id}
    assert isinstance(msg, ChunkTask)
    assert msg.path == "deepgram" and msg.fallback_from == "gpu"
    assert msg.fallback_reason == "dead-lettered on gpu after 5 attempts"
    assert msg.chunk.index == 0 and msg.source == job.source
    assert rig.status(job.job_id).state == "queued"


def test_dead_deepgram_task_fails_the_job_with_an_actionable_reason() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=2)
    task = task_for(job, 1, "deepgram", fallback_from="gpu", fallback_reason="dead-lettered on gpu after 5 attempts")
    rig.dead(task.to_bytes(), **{**DL, "CloudPubSubDeadLetterSourceSubscription": "asr-deepgram-push"})
    status = rig.status(job.job_id)
    assert status.state == "failed" and not rig.publisher.messages
    assert status.reason is not None
    assert status.reason.startswith("chunk 2 of 2 could not be transcribed by Deepgram after 5 attempts")
    assert "DEEPGRAM_API_KEY" in status.reason and "fell back from the GPU" in status.reason
    assert rig.exporter.total(mn.JOBS, status="failed") == 1


def test_dead_gpu_task_without_fallback_fails_the_job() -> None:
    rig = Rig(make_settings(enable_fallback=False))
    job = Job(rig.jobs, n_chunks=1)
    rig.dead(task_for(job, 0, "gpu").to_bytes(), **DL)
    status = rig.status(job.job_id)
    assert status.state == "failed" and "ENABLE_FALLBACK is false" in (status.reason or "")
    assert not rig.publisher.messages


def test_dead_upload_notification_fails_its_job() -> None:
    rig = Rig()
    body = json.dumps({"bucket": "uploads", "name": "big.mp3", "generation": "77", "size": "1234"}).encode()
    rig.dead(body, bucketId="uploads", objectId="big.mp3", objectGeneration="77", eventType="OBJECT_FINALIZE",
             CloudPubSubDeadLetterSourceDeliveryCount="6")
    job_id = SourceRef(bucket="uploads", name="big.mp3", generation="77", size=0).job_id
    status = rig.status(job_id)
    assert status.state == "failed" and status.source is not None and status.source.size == 1234
    assert "router failed 6 times" in (status.reason or "") and "gs://uploads/big.mp3" in (status.reason or "")


def test_dead_chunk_result_is_stored_not_turned_into_a_failure() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=2)
    rig.dead(job.results[1].to_bytes(), type="chunk_result", CloudPubSubDeadLetterSourceDeliveryCount="5",
             CloudPubSubDeadLetterSourceSubscription="projects/test/subscriptions/merger-push")
    assert rig.jobs.chunk_indices(job.job_id) == {1}
    assert rig.status(job.job_id).progress == "transcribing 1/2"
    rig.push(job.results[0])
    assert rig.status(job.job_id).state == "done" and rig.exporter.total(mn.JOBS, status="done") == 1


def test_dead_task_whose_chunk_already_has_a_result_is_dropped_not_paid_again() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=2)
    rig.push(job.results[0])
    rig.dead(task_for(job, 0, "gpu").to_bytes(), **DL)
    rig.dead(task_for(job, 0, "deepgram").to_bytes(), **{**DL, "CloudPubSubDeadLetterSourceSubscription": "asr-deepgram-push"})
    assert rig.publisher.messages == [], "no fallback to Deepgram for a chunk that is already transcribed"
    assert rig.status(job.job_id).progress == "transcribing 1/2"


def test_a_late_duplicate_with_an_error_cannot_fail_a_stored_chunk() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=2)
    rig.push(job.results[0])
    rig.push(job.results[0].model_copy(update={"error": "the GPU ran out of memory", "words": []}))
    assert rig.status(job.job_id).progress == "transcribing 1/2"
    rig.push(job.results[1])
    status = rig.status(job.job_id)
    assert status.state == "done" and status.reason is None


def test_a_malformed_result_whose_job_id_can_be_read_fails_that_job() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=2)
    body = json.dumps({"job_id": job.job_id, "chunk_index": "first"}).encode()
    with pytest.raises(MalformedMessageError, match="chunk_index"):
        rig.merger.handle_results(Message(data=body, attributes={"type": "chunk_result"}))
    status = rig.status(job.job_id)
    assert status.state == "failed" and status.reason is not None
    assert status.reason.startswith("a message for this job could not be read (malformed ChunkResult: chunk_index")
    assert rig.exporter.total(mn.JOBS, status="failed") == 1


def test_a_result_from_a_newer_release_is_retried_not_dropped() -> None:
    rig = Rig()
    job = Job(rig.jobs, n_chunks=1)
    newer = job.results[0].model_copy(update={"schema_version": 2})
    with pytest.raises(NewerSchemaError):
        rig.push(newer)
    assert rig.jobs.chunk_indices(job.job_id) == set() and rig.status(job.job_id).state == "queued"


def test_progress_writes_are_throttled_but_the_final_status_is_written() -> None:
    rig = Rig(progress_interval_s=PROGRESS_INTERVAL_S)
    job = Job(rig.jobs, n_chunks=6)
    for r in job.results[:5]:
        rig.push(r)
    status_path = f"jobs/{job.job_id}/status.json"
    assert rig.store.writes[(rig.jobs.bucket, status_path)] == 2, "queued, then one progress write in the interval"
    assert rig.status(job.job_id).progress == "transcribing 1/6"
    rig.push(job.results[5])
    assert rig.status(job.job_id).state == "done"


def test_dead_letters_are_acked_even_when_unreadable() -> None:
    rig = Rig()
    rig.dead(b"\x00\xff garbage")
    rig.dead(b"{}", type="job_failed")
    assert not rig.publisher.messages


def test_dead_letter_is_retried_when_storage_is_down() -> None:
    class DownStore(MemoryStore):
        def read(self, bucket: str, name: str):  # type: ignore[no-untyped-def]
            raise TransientError("storage unavailable")

    rig = Rig(store=DownStore())
    job_source = SourceRef(bucket="uploads", name="a.wav", generation="1", size=1)
    with pytest.raises(TransientError, match="storage unavailable"):
        rig.dead(b"{}", bucketId="uploads", objectId="a.wav", objectGeneration="1")
    # Nothing recorded, published or counted; Pub/Sub redelivers the dead letter.
    assert rig.store.list(rig.jobs.bucket, f"jobs/{job_source.job_id}") == []
    assert rig.publisher.messages == [] and rig.exporter.records == []


def test_a_failure_for_a_job_that_never_existed_creates_nothing() -> None:
    rig = Rig()
    stranger = "j" + "7" * 20
    rig.push(JobFailed(job_id=stranger, reason="a chunk task for this job could not be read"))
    assert rig.jobs.status(stranger) is None and rig.jobs.final_outcome(stranger) is None
    assert rig.exporter.records == []


def test_a_job_the_router_already_failed_keeps_the_moment_it_ended() -> None:
    rig = Rig()
    source = SourceRef(bucket="uploads", name="notes.mp3", generation="5", size=10)
    ended = utcnow() - timedelta(seconds=30)
    rig.jobs.update_status(source.job_id, lambda _: JobStatus(job_id=source.job_id, state="failed", reason="text",
                                                             source=source, finished_at=ended))
    rig.push(JobFailed(job_id=source.job_id, reason="text", source=source))
    status = rig.status(source.job_id)
    assert status.state == "failed" and status.finished_at == ended
    assert rig.exporter.total(mn.JOBS, status="failed") == 1

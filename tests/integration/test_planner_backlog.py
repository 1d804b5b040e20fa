"""The planner on the local stack: the GPU backlog, read from the state bucket, splits a real upload.

A real upload to fake-gcs-server publishes a real GCS notification; the router (the
production :class:`~parascribe.router.service.Router`, with the production capacity
wiring, :func:`~parascribe.router.capacity.capacity_from_settings`) plans it against the
open jobs' manifests in its state bucket and publishes to the real ``asr-gpu`` and
``asr-deepgram`` topics. The test pulls those tasks, answers each as an engine would
(words from a known script within the task's decode span: the engines themselves are
covered by their own tests), and the production merger stitches them on fake-gcs-server.

The GPU is made slow on purpose (``GPU_EXPECTED_RTFX=1``: a 15 s chunk takes 15 s, priced per
audio second as the real GPU is), so a 45 s backlog matters for a 90 s deadline:

- empty queue: 60 s of GPU work meets 90 s, so all four chunks go to the GPU;
- 45 s queued (two other jobs' GPU chunks without results): 45 + 31.5 s fits two chunks,
  45 + 47.5 s does not fit three, so two go to the GPU and two to Deepgram.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cloudevents.http import CloudEvent

from parascribe import names
from parascribe.budget import Ledger, month_of
from parascribe.config import Settings
from parascribe.contracts import (
    AudioInfo,
    ChunkResult,
    ChunkTask,
    JobManifest,
    PlannedChunk,
    SourceRef,
    Word,
    parse,
)
from parascribe.gcp.pubsub import PubSubPublisher
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import JobStore
from parascribe.local.emulators import Emulators
from parascribe.merger.service import Merger
from parascribe.merger.webhook import WebhookNotifier, WebhookOptions
from parascribe.router.capacity import StateBucketLoad, capacity_from_settings
from parascribe.router.events import PUBSUB_PUBLISHED
from parascribe.router.planner import PlannerOptions, plan_chunks
from parascribe.router.service import Router
from tests.fakes import RecordingExporter
from tests.integration.test_router import Tap, job_id_of, sine_wav, upload_and_get_notification

pytestmark = pytest.mark.integration

SECONDS = 60
"""The upload's length: four 15 s chunks."""
SCRIPT = [Word(text=f"w{i:02d}", start=i + 0.2, end=i + 0.7) for i in range(SECONDS)]
"""What the upload "says": one word a second, none on a chunk boundary."""
DEADLINE = {"parascribe-deadline-minutes": "1.5"}


@pytest.fixture(scope="module")
def settings(emulators: Emulators) -> Settings:
    # The base namespace: only its uploads bucket sends notifications. The state bucket is per test (Rig).
    return emulators.settings(
        chunk_duration_minutes=0.25, chunk_overlap_seconds=0.5, transcription_method="auto",
        cost_optimization=True, enable_gpu_transcription=True, gpu_expected_rtfx=1.0, gpu_startup_seconds=0,
        expected_speech_ratio=1.0, gpu_max_instances=1, backlog_cache_seconds=0, deepgram_expected_rtfx=60,
        deepgram_request_overhead_seconds=3, monthly_budget_usd=None,
        # The slowed GPU is priced as the real one is per audio second (150 times less per instance second),
        # so a GPU chunk stays ~2 % of the same chunk on Deepgram, as in production.
        gpu_price_per_second=0.0001867 / 150, cpu_price_per_vcpu_second=0.0, memory_price_per_gib_second=0.0,
    )


@pytest.fixture(scope="module")
def taps(settings: Settings) -> Iterator[dict[str, Tap]]:
    topics = (names.TOPIC_AUDIO_UPLOADED, names.TOPIC_ASR_GPU, names.TOPIC_ASR_DEEPGRAM)
    made = {t: Tap(settings, t) for t in topics}
    try:
        yield made
    finally:
        for tap in made.values():
            tap.close()


@dataclass
class Rig:
    """The router and the merger over one fresh state bucket, so no other test's open jobs count."""

    settings: Settings
    store: GcsStore
    jobs: JobStore
    router: Router
    merger: Merger


@pytest.fixture
def rig(settings: Settings, store: GcsStore, publisher: PubSubPublisher) -> Rig:
    bucket = f"planner-{uuid.uuid4().hex[:12]}"
    store.client.create_bucket(bucket)
    jobs = JobStore(store, bucket)
    router = Router(settings, store, publisher, jobs, capacity_from_settings(settings, jobs, monitoring=False))
    exporter = RecordingExporter()
    notifier = WebhookNotifier(WebhookOptions.from_settings(settings), jobs, exporter, sleep=lambda s: None)
    merger = Merger(settings, store, jobs, publisher, exporter, notifier)
    return Rig(settings, store, jobs, router, merger)


def as_cloud_event(settings: Settings, body: dict[str, Any]) -> CloudEvent:
    """What functions-framework hands the router for this raw Pub/Sub push."""
    attributes = {"type": PUBSUB_PUBLISHED, "id": body["message"]["messageId"],
                  "source": f"//pubsub.googleapis.com/{names.topic_path(settings.gcp_project, names.TOPIC_AUDIO_UPLOADED)}"}
    return CloudEvent(attributes, body)


def queue_gpu_work(jobs: JobStore, job_id: str, routes: str, done: frozenset[int] = frozenset()) -> None:
    """An open job whose manifest plans 15 s chunks by ``routes`` (G gpu, D deepgram); ``done`` have results."""
    chunks = plan_chunks(len(routes) * 15.0, 15.0, 0.0)
    jobs.create_manifest(JobManifest(
        job_id=job_id, source=SourceRef(bucket="elsewhere", name=f"{job_id}.wav", generation="1", size=10),
        audio=AudioInfo(duration_s=len(routes) * 15.0, sample_rate=16000, channels=1, codec="pcm_s16le",
                        container="wav"),
        method="auto", deadline_minutes=60,
        chunks=[PlannedChunk(**c.model_dump(exclude={"schema_version"}), path="gpu" if r == "G" else "deepgram")
                for c, r in zip(chunks, routes, strict=True)],
    ))
    jobs.mark_open(job_id)
    for i in done:
        jobs.put_chunk_result(ChunkResult(job_id=job_id, chunk_index=i, n_chunks=len(routes), engine="parakeet",
                                          path="gpu", audio_seconds=15, processing_seconds=15))


def route(rig: Rig, taps: dict[str, Tap]) -> tuple[str, list[ChunkTask], list[ChunkTask]]:
    """Upload the minute of audio, route its real notification; the tasks published on each topic."""
    _, body = upload_and_get_notification(rig.store, rig.settings, taps, sine_wav(SECONDS), ".wav", metadata=DEADLINE)
    job_id = job_id_of(rig.settings, body)
    rig.router.handle_event(as_cloud_event(rig.settings, body))
    manifest = rig.jobs.manifest(job_id)
    assert manifest is not None and manifest.n_chunks == 4
    gpu_n = sum(c.path == "gpu" for c in manifest.chunks)

    def pull(topic: str, want: int) -> list[ChunkTask]:
        if want == 0:  # nothing may arrive: wait a little to be sure
            return [parse(ChunkTask, m.data) for m in
                    taps[topic].pull(lambda m: m.attributes.get("job_id") == job_id, want=1, timeout_s=3.0)]
        return [parse(ChunkTask, m.data) for m in
                taps[topic].pull(lambda m: m.attributes.get("job_id") == job_id, want=want)]

    return job_id, pull(names.TOPIC_ASR_GPU, gpu_n), pull(names.TOPIC_ASR_DEEPGRAM, manifest.n_chunks - gpu_n)


def transcribe_and_stitch(rig: Rig, job_id: str, tasks: list[ChunkTask]) -> list[str]:
    """Answer every task as its engine would, feed the merger, and return the stitched transcript's words."""
    for task in sorted(tasks, key=lambda t: -t.chunk.index):  # out of order, as results arrive
        span = task.chunk.end_s - task.chunk.start_s
        heard = [w for w in SCRIPT if w.start >= task.chunk.start_s and w.end <= task.chunk.end_s]
        rig.merger.on_chunk_result(ChunkResult.for_task(
            task, "parakeet" if task.path == "gpu" else "deepgram", words=heard, audio_seconds=span,
            processing_seconds=span if task.path == "gpu" else 1.0,
            billed_seconds=span if task.path == "deepgram" else 0.0))
    status = rig.jobs.status(job_id)
    assert status is not None and status.state == "done", status
    bucket, name = status.outputs["json"].removeprefix("gs://").split("/", 1)
    blob = rig.store.read(bucket, name)
    assert blob is not None
    return [w["text"] for w in json.loads(blob.data)["words"]]


def test_with_an_empty_gpu_queue_the_upload_goes_all_gpu(rig: Rig, taps: dict[str, Tap]) -> None:
    job_id, gpu, deepgram = route(rig, taps)
    manifest = rig.jobs.manifest(job_id)
    assert manifest is not None and manifest.plan is not None
    assert [c.path for c in manifest.chunks] == ["gpu"] * 4 and deepgram == []
    assert sorted(t.chunk.index for t in gpu) == [0, 1, 2, 3]
    assert manifest.plan.backlog_audio_s == 0 and manifest.plan.backlog_source == "state-bucket"
    assert manifest.plan.meets_deadline and manifest.plan.spill_reason == "none"
    assert transcribe_and_stitch(rig, job_id, gpu) == [w.text for w in SCRIPT]


def test_with_the_gpu_queue_full_and_a_tight_deadline_the_upload_is_split(rig: Rig, taps: dict[str, Tap]) -> None:
    # 45 s of GPU audio queued by two other open jobs: "other-a" has chunk 0 done and chunk 3 on Deepgram.
    queue_gpu_work(rig.jobs, "jother-a", "GGGD", done=frozenset({0}))
    queue_gpu_work(rig.jobs, "jother-b", "G")
    assert StateBucketLoad(rig.jobs).load().backlog_audio_s == pytest.approx(45.0)

    job_id, gpu, deepgram = route(rig, taps)
    manifest = rig.jobs.manifest(job_id)
    assert manifest is not None and manifest.plan is not None
    # The GPU keeps the first chunks it can finish in time; the fewest go to Deepgram.
    assert [c.path for c in manifest.chunks] == ["gpu", "gpu", "deepgram", "deepgram"]
    assert sorted(t.chunk.index for t in gpu) == [0, 1] and sorted(t.chunk.index for t in deepgram) == [2, 3]
    assert all(t.path == "deepgram" and not t.whole_file for t in deepgram)
    plan = manifest.plan
    assert plan.backlog_audio_s == pytest.approx(45.0) and plan.spill_reason == "backlog"
    assert plan.meets_deadline and plan.finish_s == pytest.approx(45 + 15.5 + 16.0)
    assert plan.cost_usd < plan.deepgram_only_usd
    assert "2 on the GPU, 2 on Deepgram" in plan.summary and "already queued for the GPU" in plan.summary

    # The stitched transcript is complete: every word once, in order, across both paths' seams.
    assert transcribe_and_stitch(rig, job_id, gpu + deepgram) == [w.text for w in SCRIPT]
    status = rig.jobs.status(job_id)
    assert status is not None and status.summary is not None
    assert set(status.summary.cost_by_method) == {"gpu", "deepgram"}
    # The ledger counts the job's spill and why (what `parascribe costs` reports).
    [entry] = [e for e in Ledger(rig.store, rig.jobs.bucket).entries(month_of()) if e.job_id == job_id]
    assert entry.spilled == {"backlog": 2} and entry.chunks == {"gpu": 2, "deepgram": 2}


def test_with_deepgram_backed_up_too_the_upload_keeps_more_chunks_on_the_gpu(rig: Rig, taps: dict[str, Tap]) -> None:
    # The same 45 s GPU queue, and 30 full rounds of 15 s requests ahead on Deepgram's shared request slots:
    # each takes 3 + 15/60 = 3.25 s, so Deepgram has no slot free for 97.5 s, past the 90 s deadline.
    slots = PlannerOptions.from_settings(rig.settings).deepgram_slots
    queue_gpu_work(rig.jobs, "jother-a", "GGGD", done=frozenset({0}))
    queue_gpu_work(rig.jobs, "jother-b", "G")
    queue_gpu_work(rig.jobs, "jother-dg", "D" * (30 * slots))
    load = StateBucketLoad(rig.jobs).load()
    assert load.backlog_audio_s == pytest.approx(45.0) and len(load.deepgram_queue) == 30 * slots + 1

    job_id, gpu, deepgram = route(rig, taps)
    manifest = rig.jobs.manifest(job_id)
    assert manifest is not None and manifest.plan is not None
    plan = manifest.plan
    # No plan meets the deadline now; the fastest is one chunk on Deepgram after the queue (97.5 + 3.25 s),
    # with the GPU's three done at 45 + 46.5 s. Idle, Deepgram took two (the test above).
    assert [c.path for c in manifest.chunks] == ["gpu", "gpu", "gpu", "deepgram"]
    assert len(gpu) == 3 and [t.chunk.index for t in deepgram] == [3]
    assert not plan.meets_deadline and plan.finish_s == pytest.approx(30 * 3.25 + 3 + 15.5 / 60, abs=1e-3)  # the last chunk decodes 15.5 s
    assert (plan.deepgram_queued_requests, plan.deepgram_slots) == (30 * slots + 1, slots)
    assert f"{30 * slots + 1} requests already queued for Deepgram" in plan.summary
    assert transcribe_and_stitch(rig, job_id, gpu + deepgram) == [w.text for w in SCRIPT]
    # The ledger keeps the queue the plan met, for `parascribe costs` to replay against.
    [entry] = [e for e in Ledger(rig.store, rig.jobs.bucket).entries(month_of()) if e.job_id == job_id]
    assert (entry.deepgram_queued_requests, entry.deepgram_queued_audio_s) == (30 * slots + 1, (30 * slots + 1) * 15.0)

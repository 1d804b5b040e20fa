"""The merger on the real emulators: push delivery, GCS preconditions, the dead-letter topic, the entry point."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.cloud import pubsub_v1
from pydantic import SecretStr
from werkzeug.serving import make_server

from parascribe import metric_names as mn
from parascribe import names
from parascribe.config import Settings
from parascribe.contracts import ATTR_TYPE, TYPE_CHUNK_RESULT, ChunkTask, JobStatus, parse
from parascribe.gcp.pubsub import Message, PubSubPublisher
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import JobStore
from parascribe.local.emulators import LOOPBACK, Emulators, provision
from parascribe.merger.app import build
from parascribe.merger.formats import CONTENT_TYPES, FORMATS
from parascribe.merger.service import Merger
from parascribe.merger.webhook import WebhookNotifier, WebhookOptions, verify
from parascribe.metrics import summarise_local
from tests.fakes import RecordingExporter
from tests.service_entry import load_service_main
from tests.unit.test_merger import SECRET, Job, task_for
from tests.unit.test_webhook import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def settings(emulators: Emulators, receiver: Receiver, tmp_path: Path) -> Settings:
    return emulators.isolated_settings(
        convex_webhook_url=receiver.url, convex_webhook_secret=SecretStr(SECRET), metrics_exporter="local",
        metrics_local_path=str(tmp_path / "metrics.jsonl"), webhook_timeout_seconds=5,
    )


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def final_status(jobs: JobStore, job_id: str, timeout_s: float = 60.0) -> JobStatus:
    def check() -> JobStatus | None:
        s = jobs.status(job_id)
        return s if s and s.final and s.webhook.state not in ("none", "pending") else None

    return wait_for(check, timeout_s, f"job {job_id} to finish")  # type: ignore[return-value]


class Served:
    """A Flask app served on loopback so the Pub/Sub emulator can push to it."""

    def __init__(self, app: object) -> None:
        self.server = make_server(LOOPBACK, 0, app, threaded=True)  # type: ignore[arg-type]
        self.url = f"http://{LOOPBACK}:{self.server.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_results_pushed_by_the_emulator_finish_the_job(settings: Settings, store: GcsStore,
                                                      receiver: Receiver) -> None:
    service = build(settings)
    served = Served(service.app)
    try:
        provision(settings, push_endpoints={"merger": served.url})
        jobs = JobStore(store, settings.state_bucket)
        job = Job(jobs, n_chunks=3, name="meetings/standup.wav")
        publisher = PubSubPublisher(settings.gcp_project)
        for r in [job.results[1], job.results[0], job.results[1], job.results[2]]:
            publisher.publish(names.TOPIC_ASR_RESULTS, r, {ATTR_TYPE: TYPE_CHUNK_RESULT})
        status = final_status(jobs, job.job_id)
        time.sleep(1.0)  # let any duplicate push land before counting deliveries
    finally:
        served.close()
        service.close()
    assert status.state == "done" and status.webhook.state == "delivered"
    assert set(status.outputs) == set(FORMATS)
    for fmt, uri in status.outputs.items():
        bucket, name = uri.removeprefix("gs://").split("/", 1)
        info = store.info(bucket, name)
        assert bucket == settings.transcripts_bucket and info is not None
        assert (info.content_type, info.size > 0) == (CONTENT_TYPES[fmt], True), fmt
    bucket, name = status.outputs["json"].removeprefix("gs://").split("/", 1)
    blob = store.read(bucket, name)
    assert blob is not None
    assert [w["text"] for w in json.loads(blob.data)["words"]] == [w.text for w in job.words]
    vtt = store.read(*status.outputs["vtt"].removeprefix("gs://").split("/", 1))
    assert vtt is not None and vtt.data.startswith(b"WEBVTT")
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    verify(SECRET, headers, body)
    assert json.loads(body)["outputs"] == status.outputs
    text = summarise_local(settings.metrics_local_path)
    assert any(line.split()[:2] == ["jobs", "status=done"] and line.split()[-1] == "1" for line in text.splitlines())


def test_two_mergers_on_real_gcs_deliver_once(settings: Settings, store: GcsStore, receiver: Receiver) -> None:
    jobs = JobStore(store, settings.state_bucket)
    exporters: list[RecordingExporter] = []
    mergers: list[Merger] = []
    for _ in range(3):
        exp = RecordingExporter()
        exporters.append(exp)
        notifier = WebhookNotifier(WebhookOptions.from_settings(settings), jobs, exp)
        mergers.append(Merger(settings, store, jobs, PubSubPublisher(settings.gcp_project), exp, notifier))
    job = Job(jobs, n_chunks=2, name="race.wav")
    msg = Message(data=job.results[0].to_bytes(), attributes={ATTR_TYPE: TYPE_CHUNK_RESULT})
    mergers[0].handle_results(msg)
    last = Message(data=job.results[1].to_bytes(), attributes={ATTR_TYPE: TYPE_CHUNK_RESULT})
    barrier = threading.Barrier(len(mergers))
    errors: list[BaseException] = []

    def run(m: Merger) -> None:
        try:
            barrier.wait()
            m.handle_results(last)
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(m,)) for m in mergers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    status = final_status(jobs, job.job_id, timeout_s=10)
    assert status.state == "done"
    assert len(receiver.requests) == 1
    assert sum(e.total(mn.JOBS) for e in exporters) == 1


def nack_until_forwarded(settings: Settings, from_sub: str, to_sub: str,
                         timeout_s: float = 120.0) -> tuple[int, list[pubsub_v1.types.ReceivedMessage]]:
    """Nack every delivery on ``from_sub`` until something arrives on ``to_sub``.

    The emulator forwards a message to the dead-letter topic on the delivery
    attempt after the last allowed one, so pulling continues past the limit.
    """
    subscriber = pubsub_v1.SubscriberClient()
    src, dst = names.subscription_path(settings.gcp_project, from_sub), names.subscription_path(settings.gcp_project, to_sub)
    nacks = 0
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            resp = subscriber.pull(request={"subscription": src, "max_messages": 1}, timeout=5)
            for m in resp.received_messages:
                subscriber.modify_ack_deadline(request={"subscription": src, "ack_ids": [m.ack_id],
                                                        "ack_deadline_seconds": 0})
                nacks += 1
            got = subscriber.pull(request={"subscription": dst, "max_messages": 10}, timeout=2)
            if got.received_messages:
                subscriber.acknowledge(request={"subscription": dst,
                                                "ack_ids": [m.ack_id for m in got.received_messages]})
                return nacks, list(got.received_messages)
        return nacks, []
    finally:
        subscriber.close()


def test_gpu_task_dead_lettered_by_the_emulator_falls_back_to_deepgram(settings: Settings, store: GcsStore) -> None:
    service = build(settings)
    served = Served(service.app)
    try:
        provision(settings, push_endpoints={"merger": served.url})
        jobs = JobStore(store, settings.state_bucket)
        job = Job(jobs, n_chunks=2, name="dlq.wav")
        PubSubPublisher(settings.gcp_project).publish(names.TOPIC_ASR_GPU, task_for(job, 0, "gpu"),
                                                      {"job_id": job.job_id})
        nacks, received = nack_until_forwarded(settings, names.SUB_ASR_GPU, names.SUB_ASR_DEEPGRAM)
    finally:
        served.close()
        service.close()
    sub = next(s for s in names.SUBSCRIPTIONS if s.name == names.SUB_ASR_GPU)
    assert nacks == sub.max_delivery_attempts
    assert len(received) == 1, "the dead-lettered GPU task was republished to asr-deepgram once"
    fallback = parse(ChunkTask, received[0].message.data)
    assert fallback.path == "deepgram" and fallback.fallback_from == "gpu" and fallback.chunk.index == 0
    assert fallback.fallback_reason == f"dead-lettered on gpu after {sub.max_delivery_attempts} attempts"
    assert received[0].message.attributes["job_id"] == job.job_id
    status = jobs.status(job.job_id)
    assert status is not None and status.state == "queued"


def test_service_entry_point(settings: Settings, store: GcsStore, receiver: Receiver,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"GCP_PROJECT": settings.gcp_project, "BUCKET_PREFIX": settings.bucket_prefix,
                       "CONVEX_WEBHOOK_URL": receiver.url, "CONVEX_WEBHOOK_SECRET": SECRET,
                       "METRICS_EXPORTER": "local", "METRICS_LOCAL_PATH": settings.metrics_local_path}.items():
        monkeypatch.setenv(key, value)
    with load_service_main("merger") as module:
        client = module.app.test_client()
    assert client.get("/healthz").status_code == 200
    swept = client.post("/sweep").get_json()
    assert set(swept) == {"checked", "closed", "resumed", "webhooks_resent", "finalised", "failed", "errors"}
    assert swept["errors"] == 0
    jobs = JobStore(store, settings.state_bucket)
    job = Job(jobs, n_chunks=1, name="entry.wav")
    envelope = {"message": {"data": base64.b64encode(job.results[0].to_bytes()).decode(), "messageId": "1",
                            "attributes": {ATTR_TYPE: TYPE_CHUNK_RESULT}},
                "subscription": names.subscription_path(settings.gcp_project, names.SUB_MERGER)}
    assert client.post("/pubsub", json=envelope).status_code == 204
    status = final_status(jobs, job.job_id, timeout_s=10)
    assert status.state == "done" and status.webhook.state == "delivered"
    module.service.close()
    assert "status=done" in summarise_local(settings.metrics_local_path)

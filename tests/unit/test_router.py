"""The router over in-memory storage and publishing: both event shapes, idempotency, bad input."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from cloudevents.http import CloudEvent

from parascribe import names
from parascribe.config import Settings, load_settings
from parascribe.contracts import ATTR_TYPE, TYPE_JOB_FAILED, ChunkTask, JobFailed, UploadEvent, utcnow
from parascribe.errors import MalformedMessageError, TransientError
from parascribe.jobs import JobStore
from parascribe.router.events import PUBSUB_PUBLISHED, STORAGE_FINALIZED, parse_event
from parascribe.router.service import Router, published_marker
from tests.fakes import MemoryStore, RecordingPublisher


def wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def resource(bucket: str, name: str, generation: int | str, size: int, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """A JSON_API_V1 object resource, as GCS sends it (numbers as strings)."""
    body: dict[str, Any] = {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{generation}",
        "bucket": bucket,
        "name": name,
        "generation": str(generation),
        "size": str(size),
        "contentType": "audio/wav",
        "timeCreated": "2026-05-01T12:00:00.123Z",
    }
    if metadata is not None:
        body["metadata"] = metadata
    return body


def pubsub_event(body: dict[str, Any], event_type: str = "OBJECT_FINALIZE") -> CloudEvent:
    """What functions-framework makes of a raw Pub/Sub push of a GCS notification."""
    message = {
        "@type": "type.googleapis.com/google.pubsub.v1.PubsubMessage",
        "data": base64.b64encode(json.dumps(body).encode()).decode(),
        "attributes": {
            "bucketId": body["bucket"], "objectId": body["name"], "objectGeneration": body["generation"],
            "eventType": event_type, "payloadFormat": "JSON_API_V1",
        },
        "messageId": "1234", "publishTime": "2026-05-01T12:00:01Z",
    }
    attributes = {"type": PUBSUB_PUBLISHED, "source": "//pubsub.googleapis.com/projects/p/topics/audio-uploaded",
                  "id": "1234"}
    return CloudEvent(attributes, {"message": message})


def storage_event(body: dict[str, Any], ce_type: str = STORAGE_FINALIZED) -> CloudEvent:
    """What an Eventarc storage trigger delivers: the object resource itself."""
    attributes = {"type": ce_type, "source": f"//storage.googleapis.com/projects/_/buckets/{body.get('bucket')}",
                  "subject": f"objects/{body.get('name')}", "id": "5678"}
    return CloudEvent(attributes, body)


class Stack:
    """A router over fakes, plus helpers to upload and inspect."""

    def __init__(self, **overrides: object) -> None:
        self.settings: Settings = load_settings(**overrides)
        self.store = MemoryStore()
        self.publisher = RecordingPublisher()
        self.jobs = JobStore(self.store, self.settings.state_bucket)
        self.router = Router(self.settings, self.store, self.publisher, self.jobs)

    def upload(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        gen = self.store.write(self.settings.uploads_bucket, name, data, "audio/wav", metadata=metadata)
        return resource(self.settings.uploads_bucket, name, str(gen), len(data), metadata)

    def tasks(self) -> list[tuple[str, ChunkTask, dict[str, str]]]:
        return [(t, m, a) for t, m, a in self.publisher.messages if isinstance(m, ChunkTask)]

    def failures(self) -> list[tuple[JobFailed, dict[str, str]]]:
        return [(m, a) for t, m, a in self.publisher.messages
                if isinstance(m, JobFailed) and t == names.TOPIC_ASR_RESULTS]

    def published_at(self, job_id: str) -> datetime | None:
        """When the router marked the job's tasks published (the marker's text); None without a marker."""
        info = self.store.info(self.settings.state_bucket, published_marker(job_id))
        if info is None:
            return None
        assert (info.content_type, info.metadata) == ("text/plain", {})
        blob = self.store.read(self.settings.state_bucket, published_marker(job_id))
        assert blob is not None
        return datetime.fromisoformat(blob.data.decode())


# --- parsing ---

def test_both_event_shapes_give_the_same_upload() -> None:
    body = resource("uploads", "talks/keynote.wav", 1714564800123456, 96044,
                    {"parascribe-method": "Hybrid", "parascribe-deadline-minutes": "15"})
    from_pubsub = parse_event(pubsub_event(body))
    from_storage = parse_event(storage_event(body))
    assert from_pubsub is not None and from_storage is not None
    assert from_pubsub == from_storage
    assert from_pubsub.source.generation == "1714564800123456"
    assert from_pubsub.source.size == 96044
    assert from_pubsub.source.content_type == "audio/wav"
    assert (from_pubsub.method, from_pubsub.deadline_minutes, from_pubsub.metadata_error) == ("hybrid", 15.0, None)
    assert from_pubsub.event_time == datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def test_storage_event_data_may_arrive_as_json_bytes() -> None:
    body = resource("uploads", "a.wav", 7, 100)
    parsed = parse_event(storage_event(body))
    event = CloudEvent({"type": STORAGE_FINALIZED, "source": "//storage.googleapis.com/x"}, json.dumps(body).encode())
    assert parse_event(event) == parsed


def test_invalid_metadata_is_reported_not_dropped() -> None:
    body = resource("uploads", "a.wav", 7, 100, {"parascribe-method": "fastest", "parascribe-deadline-minutes": "-5"})
    upload = parse_event(pubsub_event(body))
    assert upload is not None and upload.method is None and upload.deadline_minutes is None
    assert upload.metadata_error == (
        "parascribe-method 'fastest' is not one of auto, gpu, deepgram, hybrid; "
        "parascribe-deadline-minutes '-5' is not a positive number of minutes"
    )


@pytest.mark.parametrize("event_type", ["OBJECT_DELETE", "OBJECT_ARCHIVE", "OBJECT_METADATA_UPDATE"])
def test_notifications_other_than_finalize_are_dropped(event_type: str) -> None:
    assert parse_event(pubsub_event(resource("uploads", "a.wav", 7, 100), event_type)) is None


def test_storage_events_other_than_finalized_are_dropped() -> None:
    body = resource("uploads", "a.wav", 7, 100)
    assert parse_event(storage_event(body, "google.cloud.storage.object.v1.deleted")) is None


def _pubsub_with(message: Any) -> CloudEvent:
    return CloudEvent({"type": PUBSUB_PUBLISHED, "source": "//pubsub.googleapis.com/x"}, {"message": message})


GOOD_ATTRS = {"bucketId": "uploads", "objectId": "a.wav", "objectGeneration": "7", "eventType": "OBJECT_FINALIZE"}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (CloudEvent({"type": PUBSUB_PUBLISHED, "source": "//x"}, {"nope": 1}), "no 'message' object"),
        (_pubsub_with({"data": "!!!not base64", "attributes": GOOD_ATTRS}), "data is not base64"),
        (_pubsub_with({"data": base64.b64encode(b"[1, 2]").decode(), "attributes": GOOD_ATTRS}), "not a JSON object"),
        (_pubsub_with({"attributes": GOOD_ATTRS}), "payload format JSON_API_V1"),
        (_pubsub_with({"data": base64.b64encode(b"{}").decode(), "attributes": {"foo": "bar"}}), "no eventType"),
        (_pubsub_with({"data": base64.b64encode(json.dumps({"bucket": "u", "name": "a", "generation": "7"}).encode())
                       .decode(), "attributes": GOOD_ATTRS}), "no valid size"),
        (storage_event({"bucket": "u", "name": "a", "size": "1"}), "no valid generation"),
        (storage_event({"bucket": "u", "generation": "1", "size": "1"}), "no bucket or object name"),
        (CloudEvent({"type": "com.example.other", "source": "//x"}, {}), "unexpected CloudEvent type"),
    ],
)
def test_malformed_events_raise(event: CloudEvent, reason: str) -> None:
    with pytest.raises(MalformedMessageError, match=reason):
        parse_event(event)


def test_malformed_event_is_dropped_without_raising() -> None:
    stack = Stack()
    stack.router.handle_event(_pubsub_with({"data": "%%%", "attributes": GOOD_ATTRS}))
    assert stack.publisher.messages == []


# --- routing ---

def test_upload_is_planned_and_its_tasks_published() -> None:
    stack = Stack(transcription_method="auto", chunk_duration_minutes=0.25, chunk_overlap_seconds=0.5)
    body = stack.upload("meeting.wav", wav(40.0))
    before = utcnow()
    stack.router.handle_event(storage_event(body))

    upload = parse_event(storage_event(body))
    assert upload is not None
    job_id = upload.source.job_id
    manifest = stack.jobs.manifest(job_id)
    assert manifest is not None
    assert manifest.audio.duration_s == pytest.approx(40.0)
    assert [(c.core_start_s, c.core_end_s) for c in manifest.chunks] == [(0.0, 15.0), (15.0, 30.0), (30.0, 40.0)]
    status = stack.jobs.status(job_id)
    assert status is not None and (status.state, status.chunks_total) == ("queued", 3)

    tasks = stack.tasks()
    assert [(t, m.chunk.index, m.path, m.whole_file, a) for t, m, a in tasks] == [
        (names.TOPIC_ASR_GPU, i, "gpu", False, {"job_id": job_id}) for i in range(3)
    ]
    assert tasks[1][1].chunk.start_s == 14.5 and tasks[1][1].chunk.end_s == 30.5
    assert all(m.n_chunks == 3 and m.source == upload.source for _, m, _ in tasks)
    published_at = stack.published_at(job_id)
    assert published_at is not None and before <= published_at <= utcnow()


def test_deepgram_method_from_metadata_sends_the_whole_file() -> None:
    stack = Stack(chunk_duration_minutes=0.25)
    body = stack.upload("call.wav", wav(40.0), {"parascribe-method": "deepgram"})
    stack.router.handle_event(pubsub_event(body))
    [(topic, task, _)] = stack.tasks()
    assert topic == names.TOPIC_ASR_DEEPGRAM and task.whole_file
    assert (task.chunk.start_s, task.chunk.end_s) == (0.0, pytest.approx(40.0))


def test_duplicate_delivery_makes_one_job() -> None:
    stack = Stack(chunk_duration_minutes=0.25)
    body = stack.upload("dup.wav", wav(20.0))
    for event in (pubsub_event(body), storage_event(body), pubsub_event(body)):
        stack.router.handle_event(event)
    assert len(stack.tasks()) == 2
    leaves = sorted(n.rsplit("/", 1)[1] for n in stack.store.list(stack.settings.state_bucket, "jobs/"))
    assert leaves == ["manifest.json", "published", "status.json"]


class FlakyPublisher(RecordingPublisher):
    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_on = fail_on

    def publish(self, topic: str, message: Any, attributes: dict[str, str] | None = None) -> str:
        self.calls += 1
        if self.calls == self.fail_on:
            raise TransientError("publish timed out")
        return super().publish(topic, message, attributes)


def test_redelivery_after_a_failed_publish_republishes_the_stored_plan() -> None:
    stack = Stack(chunk_duration_minutes=0.25)
    body = stack.upload("retry.wav", wav(40.0))
    flaky = FlakyPublisher(fail_on=2)
    router = Router(stack.settings, stack.store, flaky, stack.jobs)
    with pytest.raises(TransientError):
        router.handle_event(pubsub_event(body))  # → HTTP 500, Pub/Sub redelivers
    upload = parse_event(pubsub_event(body))
    assert upload is not None
    assert stack.published_at(upload.source.job_id) is None

    # The redelivery lands on a process with other settings: the stored plan still wins.
    other = Router(load_settings(chunk_duration_minutes=1, transcription_method="deepgram"), stack.store, flaky,
                   stack.jobs)
    before = utcnow()
    other.handle_event(pubsub_event(body))
    published = [(t, m.chunk.index) for t, m, _ in flaky.messages if isinstance(m, ChunkTask)]
    assert published == [(names.TOPIC_ASR_GPU, 0), (names.TOPIC_ASR_GPU, 0), (names.TOPIC_ASR_GPU, 1),
                         (names.TOPIC_ASR_GPU, 2)]
    published_at = stack.published_at(upload.source.job_id)
    assert published_at is not None and before <= published_at <= utcnow()


@pytest.mark.parametrize(
    ("name", "data", "metadata", "reason"),
    [
        ("empty.wav", b"", None, "the uploaded object is empty (0 bytes)"),
        ("notes.mp3", b"meeting notes\n" * 100, None, "not a readable audio file: found a text file"),
        ("cut.wav", wav(2.0)[:20_000], None, "the WAV file is truncated"),
        ("ok.wav", wav(1.0), {"parascribe-method": "cheapest"}, "invalid object metadata: parascribe-method 'cheapest'"),
    ],
)
def test_bad_input_fails_the_job_with_a_reason(name: str, data: bytes, metadata: dict[str, str] | None,
                                               reason: str) -> None:
    stack = Stack()
    body = stack.upload(name, data, metadata)
    stack.router.handle_event(pubsub_event(body))
    upload = parse_event(pubsub_event(body))
    assert upload is not None
    job_id = upload.source.job_id

    [(failed, attributes)] = stack.failures()
    assert attributes == {ATTR_TYPE: TYPE_JOB_FAILED, "job_id": job_id}
    assert failed.job_id == job_id and failed.reason.startswith(reason) and failed.source == upload.source
    status = stack.jobs.status(job_id)
    assert status is not None and status.state == "failed" and status.reason == failed.reason
    assert stack.tasks() == [] and stack.jobs.manifest(job_id) is None

    stack.router.handle_event(pubsub_event(body))  # a duplicate: the job is final
    assert len(stack.publisher.messages) == 1


def test_too_long_audio_fails_the_job() -> None:
    stack = Stack(max_audio_minutes=0.05)
    stack.router.handle_event(storage_event(stack.upload("long.wav", wav(5.0))))
    [(failed, _)] = stack.failures()
    assert failed.reason == "audio is 5.0 s long; the limit is 3.0 s (MAX_AUDIO_MINUTES=0.05)"


def test_oversized_object_fails_before_any_read() -> None:
    stack = Stack(max_upload_mb=0.5)
    stack.router.handle_event(storage_event(stack.upload("big.wav", wav(20.0))))  # 640 KB
    [(failed, _)] = stack.failures()
    assert failed.reason == "the object is 0.6 MB; the limit is 0.5 MB (MAX_UPLOAD_MB)"


def test_failure_is_retried_when_job_failed_cannot_be_published() -> None:
    stack = Stack()
    body = stack.upload("bad.wav", b"\x00" * 1000)
    router = Router(stack.settings, stack.store, FlakyPublisher(fail_on=1), stack.jobs)
    with pytest.raises(TransientError):
        router.handle_event(pubsub_event(body))
    upload = parse_event(pubsub_event(body))
    assert upload is not None and stack.jobs.status(upload.source.job_id) is None  # not final: the retry reports it
    stack.router.handle_event(pubsub_event(body))
    assert len(stack.failures()) == 1


def test_objects_outside_the_uploads_bucket_are_ignored() -> None:
    stack = Stack()
    stack.store.write("transcripts", "out.wav", wav(1.0))
    stack.router.handle_event(storage_event(resource("transcripts", "out.wav", 1, 32044)))
    assert stack.publisher.messages == [] and stack.store.list(stack.settings.state_bucket, "") == []


class BrokenStore(MemoryStore):
    def read_range(self, bucket: str, name: str, start: int, end: int, generation: str | None = None) -> bytes:
        raise TransientError("storage answered 503")


def test_transient_storage_error_propagates_for_a_retry() -> None:
    settings = load_settings()
    store = BrokenStore()
    router = Router(settings, store, RecordingPublisher(), JobStore(store, settings.state_bucket))
    store.write(settings.uploads_bucket, "a.wav", wav(1.0))
    with pytest.raises(TransientError):
        router.handle_event(storage_event(resource(settings.uploads_bucket, "a.wav", 1, 32044)))


def test_handle_accepts_an_upload_built_directly() -> None:
    stack = Stack()
    body = stack.upload("direct.wav", wav(2.0))
    upload = parse_event(storage_event(body))
    assert isinstance(upload, UploadEvent)
    stack.router.handle(upload)
    [(topic, task, _)] = stack.tasks()
    assert topic == names.TOPIC_ASR_GPU and task.audio.duration_s == pytest.approx(2.0)


def test_a_file_dropped_into_the_bucket_is_listed_with_api_requests_once() -> None:
    from parascribe.requests_store import RequestStore

    stack = Stack(chunk_duration_minutes=0.25)
    dropped = stack.upload("calls/monday.wav", wav(20.0))
    via_api = stack.upload("api/r0123456789abcdef0123/talk.wav", wav(20.0),
                           {"parascribe-request-id": "r0123456789abcdef0123"})
    stack.router.handle_event(pubsub_event(dropped))
    stack.router.handle_event(pubsub_event(dropped))  # a duplicate notification lists nothing twice
    stack.router.handle_event(pubsub_event(via_api))  # the API keeps its own record for its uploads
    listed, cursor = RequestStore(stack.store, stack.settings.state_bucket).recent(10)
    assert cursor is None and len(listed) == 1
    [record] = listed
    job_id = parse_event(pubsub_event(dropped)).source.job_id  # type: ignore[union-attr]
    assert (record.request_id, record.job_id, record.state) == ("r" + job_id[1:], job_id, "submitted")
    assert record.gcs_uri == f"gs://{stack.settings.uploads_bucket}/calls/monday.wav"
    assert record.title == "calls/monday.wav"

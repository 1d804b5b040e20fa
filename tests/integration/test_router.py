"""The router's entry point against the real emulators.

An upload to fake-gcs-server publishes a real GCS notification. The test pulls
it from its own subscription on ``audio-uploaded`` and posts it, as the raw
Pub/Sub push body, to ``services/router/main.py`` served by functions-framework.
Then it reads the manifest from the state bucket and pulls the chunk tasks from
``asr-gpu``, or the JobFailed from ``asr-results``.
"""

from __future__ import annotations

import base64
import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from flask.testing import FlaskClient
from functions_framework import create_app
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from parascribe import names
from parascribe.config import Settings, get_settings
from parascribe.contracts import ATTR_TYPE, TYPE_JOB_FAILED, ChunkTask, JobFailed, make_job_id, parse, utcnow
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import JobStore
from parascribe.local.emulators import Emulators
from parascribe.router.service import published_marker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
Message = Any  # google.pubsub_v1.types.PubsubMessage


@pytest.fixture(scope="module")
def settings(emulators: Emulators) -> Settings:
    # The base namespace: only its uploads bucket sends notifications.
    return emulators.settings(chunk_duration_minutes=0.25, chunk_overlap_seconds=0.5)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[FlaskClient]:
    """main.py served by functions-framework, its settings taken from the environment as in production."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CHUNK_DURATION_MINUTES", str(settings.chunk_duration_minutes))
    mp.setenv("CHUNK_OVERLAP_SECONDS", str(settings.chunk_overlap_seconds))
    mp.setenv("TRANSCRIPTION_METHOD", "auto")
    mp.setenv("ENABLE_GPU_TRANSCRIPTION", "true")
    get_settings.cache_clear()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level  # main.py configures logging on first use
    try:
        app = create_app(target="handle_upload", source=str(ROOT / "services/router/main.py"),
                         signature_type="cloudevent")
        yield app.test_client()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        mp.undo()
        get_settings.cache_clear()


class Tap:
    """A throwaway pull subscription on one topic, to see what was published there."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.subscriber = pubsub_v1.SubscriberClient()
        self.path = names.subscription_path(settings.gcp_project, f"test-router-{topic}-{uuid.uuid4().hex[:8]}")
        self.subscriber.create_subscription(
            request={"name": self.path, "topic": names.topic_path(settings.gcp_project, topic), "ack_deadline_seconds": 30}
        )

    def pull(self, match: Callable[[Message], bool], want: int, timeout_s: float = 20.0) -> list[Message]:
        """Messages that ``match`` (all pulled ones are acked), until ``want`` or the timeout."""
        found: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < want and time.monotonic() < deadline:
            try:
                resp = self.subscriber.pull(request={"subscription": self.path, "max_messages": 50}, timeout=2.0)
            except (gexc.DeadlineExceeded, gexc.RetryError):
                continue
            if resp.received_messages:
                self.subscriber.acknowledge(
                    request={"subscription": self.path, "ack_ids": [m.ack_id for m in resp.received_messages]}
                )
            found.extend(m.message for m in resp.received_messages if match(m.message))
        return found

    def close(self) -> None:
        self.subscriber.delete_subscription(request={"subscription": self.path})
        self.subscriber.close()


@pytest.fixture(scope="module")
def taps(settings: Settings) -> Iterator[dict[str, Tap]]:
    topics = (names.TOPIC_AUDIO_UPLOADED, names.TOPIC_ASR_GPU, names.TOPIC_ASR_DEEPGRAM, names.TOPIC_ASR_RESULTS)
    made = {t: Tap(settings, t) for t in topics}
    try:
        yield made
    finally:
        for tap in made.values():
            tap.close()


def sine_wav(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def upload_and_get_notification(store: GcsStore, settings: Settings, taps: dict[str, Tap], data: bytes,
                                 suffix: str, metadata: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Upload; return the object name and the raw push body of its real GCS notification."""
    name = f"it/{uuid.uuid4().hex[:8]}{suffix}"
    store.write(settings.uploads_bucket, name, data, content_type="application/octet-stream", metadata=metadata)
    [message] = taps[names.TOPIC_AUDIO_UPLOADED].pull(lambda m: m.attributes.get("objectId") == name, want=1)
    assert message.attributes["eventType"] == "OBJECT_FINALIZE"
    assert message.attributes["payloadFormat"] == "JSON_API_V1"
    body = {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "attributes": dict(message.attributes),
            "messageId": message.message_id,
            "publishTime": message.publish_time.isoformat(),
        },
        "subscription": names.subscription_path(settings.gcp_project, names.SUB_ROUTER),
    }
    return name, body


def job_id_of(settings: Settings, body: dict[str, Any]) -> str:
    attributes = body["message"]["attributes"]
    return make_job_id(settings.uploads_bucket, attributes["objectId"], attributes["objectGeneration"])


def test_upload_notification_becomes_a_manifest_and_gpu_tasks(
    client: FlaskClient, store: GcsStore, settings: Settings, taps: dict[str, Tap]
) -> None:
    name, body = upload_and_get_notification(store, settings, taps, sine_wav(40.0), ".wav")
    job_id = job_id_of(settings, body)

    before = utcnow()
    assert client.post("/", json=body).status_code == 200

    jobs = JobStore(store, settings.state_bucket)
    manifest = jobs.manifest(job_id)
    assert manifest is not None and manifest.source.name == name
    assert manifest.audio.duration_s == pytest.approx(40.0)
    assert [(c.core_start_s, c.core_end_s, c.path) for c in manifest.chunks] == [
        (0.0, 15.0, "gpu"), (15.0, 30.0, "gpu"), (30.0, 40.0, "gpu"),
    ]
    status = jobs.status(job_id)
    assert status is not None and (status.state, status.chunks_total) == ("queued", 3)

    tasks = [parse(ChunkTask, m.data)
             for m in taps[names.TOPIC_ASR_GPU].pull(lambda m: m.attributes.get("job_id") == job_id, want=3)]
    assert sorted(t.chunk.index for t in tasks) == [0, 1, 2]
    by_index = {t.chunk.index: t for t in tasks}
    assert (by_index[1].chunk.start_s, by_index[1].chunk.end_s) == (14.5, 30.5)
    assert all(t.n_chunks == 3 and t.path == "gpu" and not t.whole_file for t in tasks)
    marker = store.info(settings.state_bucket, published_marker(job_id))
    assert marker is not None and (marker.content_type, marker.metadata) == ("text/plain", {})
    marker_blob = store.read(settings.state_bucket, published_marker(job_id))
    assert marker_blob is not None
    assert before <= datetime.fromisoformat(marker_blob.data.decode()) <= utcnow()

    # The same notification again (Pub/Sub redelivery): acked, nothing published twice.
    assert client.post("/", json=body).status_code == 200
    again = taps[names.TOPIC_ASR_GPU].pull(lambda m: m.attributes.get("job_id") == job_id, want=1, timeout_s=4.0)
    assert again == []


def test_object_metadata_asks_for_deepgram_on_the_whole_file(
    client: FlaskClient, store: GcsStore, settings: Settings, taps: dict[str, Tap]
) -> None:
    _, body = upload_and_get_notification(store, settings, taps, sine_wav(40.0), ".wav",
                                          metadata={"parascribe-method": "deepgram", "parascribe-deadline-minutes": "5"})
    job_id = job_id_of(settings, body)
    assert client.post("/", json=body).status_code == 200
    [message] = taps[names.TOPIC_ASR_DEEPGRAM].pull(lambda m: m.attributes.get("job_id") == job_id, want=1)
    task = parse(ChunkTask, message.data)
    assert task.whole_file and task.path == "deepgram" and task.n_chunks == 1
    assert (task.chunk.start_s, task.chunk.end_s) == (0.0, pytest.approx(40.0))
    manifest = JobStore(store, settings.state_bucket).manifest(job_id)
    assert manifest is not None and (manifest.method, manifest.deadline_minutes) == ("deepgram", 5.0)


def test_bad_upload_fails_the_job_and_reports_it_to_the_merger(
    client: FlaskClient, store: GcsStore, settings: Settings, taps: dict[str, Tap]
) -> None:
    _, body = upload_and_get_notification(store, settings, taps, b"minutes of the meeting\n" * 50, ".mp3")
    job_id = job_id_of(settings, body)

    assert client.post("/", json=body).status_code == 200  # bad input is acked, never retried

    [message] = taps[names.TOPIC_ASR_RESULTS].pull(lambda m: m.attributes.get("job_id") == job_id, want=1)
    assert message.attributes[ATTR_TYPE] == TYPE_JOB_FAILED
    failed = parse(JobFailed, message.data)
    assert failed.reason.startswith("not a readable audio file: found a text file")
    status = JobStore(store, settings.state_bucket).status(job_id)
    assert status is not None and status.state == "failed" and status.reason == failed.reason


def test_malformed_push_is_acked(client: FlaskClient, settings: Settings) -> None:
    body = {
        "message": {"data": base64.b64encode(b"not json").decode(), "messageId": "m-1",
                    "attributes": {"eventType": "OBJECT_FINALIZE", "bucketId": settings.uploads_bucket}},
        "subscription": names.subscription_path(settings.gcp_project, names.SUB_ROUTER),
    }
    assert client.post("/", json=body).status_code == 200

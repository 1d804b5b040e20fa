"""The Deepgram worker on the real emulators: fake-gcs-server signed URLs and spans, results through Pub/Sub."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from flask.testing import FlaskClient
from google.cloud import pubsub_v1
from pydantic import SecretStr
from werkzeug.serving import make_server

from parascribe import names
from parascribe.config import Settings
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_CHUNK_RESULT,
    AudioInfo,
    ChunkResult,
    ChunkSpec,
    ChunkTask,
    SourceRef,
    parse,
)
from parascribe.deepgram.app import build_worker, create_app
from parascribe.gcp.pubsub import PubSubPublisher
from parascribe.gcp.storage import GcsStore
from parascribe.local.deepgram_server import RunningServer, start_in_thread
from parascribe.local.emulators import LOOPBACK, Emulators, provision
from tests.service_entry import load_service_main
from tests.speech import speak, word_error_rate

pytestmark = pytest.mark.integration

KEY = "integration-key"
SENTENCE = "the children played football in the park after school"
LEAD_S = 2.0


@pytest.fixture(scope="module")
def dg_server() -> Iterator[RunningServer]:
    srv = start_in_thread(api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def speech(spoken_dir: Path) -> bytes:
    """WAV with :data:`LEAD_S` of silence before the spoken :data:`SENTENCE`."""
    raw = speak(SENTENCE, spoken_dir / "dg-children.wav", rate=140)
    samples, sr = sf.read(str(raw), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([np.zeros(int(LEAD_S * sr), dtype=np.float32), samples]), sr, format="WAV")
    return buf.getvalue()


@pytest.fixture
def settings(emulators: Emulators, dg_server: RunningServer) -> Settings:
    return emulators.isolated_settings(deepgram_base_url=dg_server.url, deepgram_api_key=SecretStr(KEY))


def upload(store: GcsStore, settings: Settings, name: str, data: bytes) -> SourceRef:
    gen = store.write(settings.uploads_bucket, name, data, content_type="audio/wav")
    assert gen
    return SourceRef(bucket=settings.uploads_bucket, name=name, generation=str(gen), size=len(data),
                     content_type="audio/wav")


def task(source: SourceRef, duration: float, whole_file: bool, start: float = 0.0) -> ChunkTask:
    return ChunkTask(
        job_id="j-integration", source=source,
        audio=AudioInfo(duration_s=duration, sample_rate=22_050, channels=1, codec="pcm_s16le", container="wav"),
        chunk=ChunkSpec(index=0, start_s=start, end_s=duration, core_start_s=start, core_end_s=duration),
        n_chunks=1, path="deepgram", whole_file=whole_file,
    )


def push(client: FlaskClient, t: ChunkTask) -> int:
    body = {"message": {"data": base64.b64encode(t.to_bytes()).decode(), "messageId": "1", "attributes": {}},
            "subscription": "projects/x/subscriptions/" + names.SUB_ASR_DEEPGRAM}
    return int(client.post("/pubsub", data=json.dumps(body), content_type="application/json").status_code)


def pull_results(settings: Settings, want: int = 1, timeout_s: float = 30.0) -> list[tuple[ChunkResult, dict[str, str]]]:
    subscriber = pubsub_v1.SubscriberClient()
    sub = names.subscription_path(settings.gcp_project, names.SUB_MERGER)
    out: list[tuple[ChunkResult, dict[str, str]]] = []
    try:
        for _ in range(10):
            resp = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=timeout_s / 10)
            if resp.received_messages:
                subscriber.acknowledge(request={"subscription": sub,
                                                "ack_ids": [m.ack_id for m in resp.received_messages]})
            for m in resp.received_messages:
                out.append((parse(ChunkResult, m.message.data), dict(m.message.attributes)))
            if len(out) >= want:
                break
    finally:
        subscriber.close()
    return out


def duration_of(data: bytes) -> float:
    info = sf.info(io.BytesIO(data))
    return float(info.frames / info.samplerate)


def test_signed_url_from_fake_gcs_is_fetchable(settings: Settings, store: GcsStore, speech: bytes) -> None:
    worker = build_worker(settings)
    source = upload(store, settings, "signed.wav", speech)
    url = worker.signed_url(source)
    assert url.startswith(settings.storage_emulator_host or "missing") and "X-Goog-Signature=" in url
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.content == speech


def test_whole_file_via_signed_url(tmp_path: Path, settings: Settings, store: GcsStore, speech: bytes,
                                   dg_server: RunningServer) -> None:
    worker = build_worker(settings, cache_dir=tmp_path)
    source = upload(store, settings, "whole.wav", speech)
    assert push(create_app(worker).test_client(), task(source, duration_of(speech), whole_file=True)) == 204

    [(result, attrs)] = pull_results(settings)
    assert attrs[ATTR_TYPE] == TYPE_CHUNK_RESULT
    assert result.error is None and result.engine == "deepgram"
    assert word_error_rate(SENTENCE, " ".join(w.text for w in result.words)) <= 0.35
    assert result.words[0].start >= LEAD_S - 0.5
    assert httpx.get(dg_server.url + "/_stats").json()["last_source"] == "url"
    assert not list(tmp_path.iterdir())  # no audio came through the worker


def test_chunk_span_from_the_cached_source(tmp_path: Path, settings: Settings, store: GcsStore, speech: bytes,
                                           dg_server: RunningServer) -> None:
    worker = build_worker(settings, cache_dir=tmp_path)
    source = upload(store, settings, "span.wav", speech)
    total = duration_of(speech)
    assert push(create_app(worker).test_client(), task(source, total, whole_file=False, start=1.5)) == 204

    [(result, _)] = pull_results(settings)
    assert result.error is None
    assert word_error_rate(SENTENCE, " ".join(w.text for w in result.words)) <= 0.35
    assert result.words[0].start >= LEAD_S - 0.5
    assert result.billed_seconds == pytest.approx(total - 1.5, abs=0.05)
    assert httpx.get(dg_server.url + "/_stats").json()["last_source"] == "bytes"


def test_service_entry_point_serves_the_push_route(
    settings: Settings, store: GcsStore, speech: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCP_PROJECT", settings.gcp_project)
    monkeypatch.setenv("BUCKET_PREFIX", settings.bucket_prefix)
    monkeypatch.setenv("DEEPGRAM_BASE_URL", settings.deepgram_base_url or "")
    monkeypatch.setenv("DEEPGRAM_API_KEY", KEY)
    with load_service_main("deepgram_worker") as module:
        client = module.app.test_client()
    assert client.get("/healthz").status_code == 200
    source = upload(store, settings, "entry.wav", speech)
    assert push(client, task(source, duration_of(speech), whole_file=True)) == 204
    [(result, attrs)] = pull_results(settings)
    assert attrs[ATTR_TYPE] == TYPE_CHUNK_RESULT
    assert (result.job_id, result.engine, result.path, result.chunk_index, result.n_chunks) == (
        "j-integration", "deepgram", "deepgram", 0, 1)
    assert result.error is None and word_error_rate(SENTENCE, " ".join(w.text for w in result.words)) <= 0.35


def test_behind_a_real_push_subscription(tmp_path: Path, settings: Settings, store: GcsStore, speech: bytes) -> None:
    """The emulator pushes a raw envelope to the worker over HTTP; the result lands on asr-results."""
    app = create_app(build_worker(settings, cache_dir=tmp_path))
    server = make_server(LOOPBACK, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        provision(settings, push_endpoints={"deepgram_worker": f"http://{LOOPBACK}:{server.port}"})
        source = upload(store, settings, "pushed.wav", speech)
        PubSubPublisher(settings.gcp_project).publish(
            names.TOPIC_ASR_DEEPGRAM, task(source, duration_of(speech), whole_file=False, start=1.0)
        )
        [(result, attrs)] = pull_results(settings, timeout_s=60.0)
    finally:
        server.shutdown()
        server.server_close()
    assert attrs[ATTR_TYPE] == TYPE_CHUNK_RESULT
    assert result.error is None and word_error_rate(SENTENCE, " ".join(w.text for w in result.words)) <= 0.35

"""URL ingest on the real emulators, fetching from a local HTTP server: direct MP4, HLS, a page yt-dlp reads, failures.

The media is real: espeak-ng speech encoded to AAC by PyAV, in an MP4 with a video track
(its index at the end, so reading it needs Range requests), and in MPEG-TS segments behind
a master and a media playlist written by hand. The page test serves an HTML page with a
``<video src>`` and lets yt-dlp's generic extractor find the file, as it would on any site
without an extractor of its own; no monkeypatching.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import google.cloud.pubsub_v1 as pubsub_v1
import pytest
import soundfile as sf

from parascribe import names
from parascribe.audio import SAMPLE_RATE, decode_bytes
from parascribe.config import Settings
from parascribe.contracts import (
    make_job_id,
)
from parascribe.contracts_api import ApiRequest, IngestRequest
from parascribe.errors import TransientError
from parascribe.gcp.pubsub import Message, PubSubPublisher
from parascribe.gcp.storage import GcsStore
from parascribe.ingest.app import build, build_ingestor
from parascribe.ingest.service import Ingestor, Outcome
from parascribe.local.emulators import Emulators, free_port
from parascribe.names import META_CALLBACK_URL, META_METHOD, META_REQUEST_ID, META_SOURCE_URL, META_TITLE
from parascribe.requests_store import record_name
from tests.media import MediaServer, audio_packets, write_hls, write_mp4
from tests.speech import speak

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RANGES: list[str] = []
"""Range requests the server answered: reading an MP4 whose index is at its end needs them."""
TEXT = "please transcribe this short recording about the weather in the mountains"


@dataclass(frozen=True)
class Media:
    root: Path
    speech_s: float
    mp4_audio_bytes: int
    mp4_audio_packets: int


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    root = tmp_path_factory.mktemp("served")
    wav = speak(TEXT, root / "speech.wav")
    samples, rate = sf.read(str(wav), dtype="float32")
    write_mp4(root / "talk.mp4", samples, rate, video=True)
    write_mp4(root / "silent-film.mp4", samples, rate, video=True, audio=False)
    write_hls(root, root / "talk.mp4")
    (root / "page.html").write_text("<html><head><title>Mountain weather</title></head>"
                                    '<body><video src="/talk.mp4" controls></video></body></html>')
    (root / "nothing.html").write_text("<html><head><title>Nothing</title></head><body>no media</body></html>")
    codec, packets, size = audio_packets((root / "talk.mp4").read_bytes())
    assert codec == "aac"
    return Media(root, len(samples) / rate, size, packets)


@pytest.fixture(scope="module")
def server(media: Media) -> Iterator[str]:
    served = MediaServer(media.root, RANGES)
    yield served.url
    served.close()


@pytest.fixture(scope="module")
def settings(emulators: Emulators) -> Settings:
    return emulators.isolated_settings(url_allow_loopback=True)


@pytest.fixture(scope="module")
def ingestor(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Ingestor:
    return build_ingestor(settings, tmp_path_factory.mktemp("spool"))


def request_id() -> str:
    return "r" + uuid.uuid4().hex[:20]


def ingest(ingestor: Ingestor, url: str, **fields: Any) -> tuple[IngestRequest, Outcome]:
    req = IngestRequest(request_id=request_id(), url=url, **fields)
    outcome = ingestor.handle(Message(data=req.to_bytes(), message_id="m1"))
    assert outcome is not None
    return req, outcome


def record(store: GcsStore, settings: Settings, rid: str) -> ApiRequest:
    blob = store.read(settings.state_bucket, record_name(rid))
    assert blob is not None
    return ApiRequest.model_validate_json(blob.data)


def assert_submitted(store: GcsStore, settings: Settings, req: IngestRequest, outcome: Outcome,
                     media: Media) -> bytes:
    """The upload and the record of a request that worked; returns the uploaded bytes."""
    rec = record(store, settings, req.request_id)
    assert rec.state == "submitted" and rec.reason is None, rec.reason
    assert outcome.upload is not None
    name = outcome.upload.name
    assert name.startswith(f"ingest/{req.request_id}/")
    info = store.info(settings.uploads_bucket, name)
    assert info is not None
    assert rec.job_id == make_job_id(settings.uploads_bucket, name, info.generation)
    assert rec.upload_uri == f"gs://{settings.uploads_bucket}/{name}"
    assert info.metadata[META_REQUEST_ID] == req.request_id
    assert info.metadata[META_SOURCE_URL] == req.url
    assert info.metadata[META_TITLE] == rec.title
    blob = store.read(settings.uploads_bucket, name)
    assert blob is not None
    seconds = len(decode_bytes(blob.data)) / SAMPLE_RATE
    assert seconds == pytest.approx(media.speech_s, abs=0.25)
    return blob.data


def test_direct_mp4_keeps_the_aac_track_as_it_is(ingestor: Ingestor, store: GcsStore, settings: Settings,
                                                  server: str, media: Media) -> None:
    rid = request_id()
    # The API's own record exists: the worker updates it rather than replacing it.
    store.write(settings.state_bucket, record_name(rid),
                ApiRequest(request_id=rid, url=f"{server}/talk.mp4").to_bytes(), if_generation_match=0)
    req = IngestRequest(request_id=rid, url=f"{server}/talk.mp4", method="deepgram", deadline_minutes=30,
                        language="es", callback_url="https://example.com/hook")
    outcome = ingestor.handle(Message(data=req.to_bytes()))
    assert outcome is not None
    data = assert_submitted(store, settings, req, outcome, media)
    assert outcome.upload is not None and outcome.upload.name.endswith("/talk.m4a")
    assert outcome.extracted is not None and outcome.extracted.copied
    assert any(r.startswith("/talk.mp4 bytes=") for r in RANGES)
    # Copied, not re-encoded: the same AAC packets, byte for byte in total, and no video track.
    assert audio_packets(data) == ("aac", media.mp4_audio_packets, media.mp4_audio_bytes)
    with av.open(io.BytesIO(data)) as c:
        assert [s.type for s in c.streams] == ["audio"]
    meta = store.info(settings.uploads_bucket, outcome.upload.name)
    assert meta is not None and meta.content_type == "audio/mp4"
    assert meta.metadata[META_METHOD] == "deepgram" and meta.metadata[META_CALLBACK_URL] == "https://example.com/hook"
    assert meta.metadata["parascribe-deadline-minutes"] == "30" and meta.metadata["parascribe-language"] == "es"
    # A redelivery does nothing more: one request, one upload, one job.
    again = ingestor.handle(Message(data=req.to_bytes()))
    assert again is not None and again.record.job_id == record(store, settings, rid).job_id
    assert len(store.list(settings.uploads_bucket, f"ingest/{rid}/")) == 1


def test_hls_master_playlist_and_ts_segments(ingestor: Ingestor, store: GcsStore, settings: Settings,
                                            server: str, media: Media) -> None:
    req, outcome = ingest(ingestor, f"{server}/master.m3u8")
    assert_submitted(store, settings, req, outcome, media)
    assert outcome.extracted is not None and outcome.extracted.copied and outcome.extracted.codec == "aac"


def test_a_page_is_resolved_by_yt_dlp(ingestor: Ingestor, store: GcsStore, settings: Settings,
                                      server: str, media: Media) -> None:
    req, outcome = ingest(ingestor, f"{server}/page.html")
    assert_submitted(store, settings, req, outcome, media)
    assert outcome.record.title and outcome.upload is not None and outcome.upload.name.endswith(".m4a")


@pytest.mark.parametrize(("path", "reason"), [
    ("/missing.mp4", "the URL answered 404 Not Found"),
    ("/nothing.html", "the URL is a web page with no media yt-dlp can extract"),
    ("/silent-film.mp4", "the media has no audio track"),
    ("/redirect-private", "resolves to 10.0.0.1, a private address"),
    ("/hls/live.m3u8", "live streams are not supported"),
])
def test_failures_end_the_request_with_a_reason(ingestor: Ingestor, store: GcsStore, settings: Settings,
                                                server: str, path: str, reason: str) -> None:
    req, outcome = ingest(ingestor, server + path)
    rec = record(store, settings, req.request_id)
    assert rec.state == "failed" and rec.reason is not None and reason in rec.reason, rec.reason
    assert outcome.record.state == "failed"
    assert store.list(settings.uploads_bucket, f"ingest/{req.request_id}/") == []


def test_caps_name_their_setting(emulators: Emulators, store: GcsStore, server: str, tmp_path: Path) -> None:
    small = build_ingestor(emulators.isolated_settings(url_allow_loopback=True, ingest_max_mb=0.01), tmp_path)
    short = build_ingestor(emulators.isolated_settings(url_allow_loopback=True, max_audio_minutes=0.02), tmp_path)
    for ing, url, cap in ((small, f"{server}/chunked.mp4", "INGEST_MAX_MB"),
                          (small, f"{server}/talk.mp4", "INGEST_MAX_MB"),
                          (short, f"{server}/master.m3u8", "MAX_AUDIO_MINUTES"),
                          (short, f"{server}/talk.mp4", "MAX_AUDIO_MINUTES")):
        _, outcome = ingest(ing, url)
        assert outcome.record.state == "failed" and cap in (outcome.record.reason or ""), (url, outcome.record)


def test_a_malformed_request_fails_its_record(ingestor: Ingestor, store: GcsStore, settings: Settings) -> None:
    rid = request_id()
    outcome = ingestor.handle(Message(data=f'{{"request_id": "{rid}", "url": 5}}'.encode()))
    assert outcome is not None and outcome.record.state == "failed"
    assert "could not be read" in (record(store, settings, rid).reason or "")
    assert ingestor.handle(Message(data=b"not json")) is None


def test_worker_acks_what_it_settles(settings: Settings, store: GcsStore, server: str, tmp_path: Path) -> None:
    worker = build(settings, spool_dir=tmp_path, health_port=0)
    worker.start()
    good, bad = request_id(), request_id()
    publisher = PubSubPublisher(settings.gcp_project)
    try:
        publisher.publish(names.TOPIC_INGEST_REQUESTS, IngestRequest(request_id=good, url=f"{server}/redirect-ok"))
        publisher.publish(names.TOPIC_INGEST_REQUESTS, IngestRequest(request_id=bad, url=f"{server}/missing.mp4"))
        deadline = time.monotonic() + 90
        states: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            states = {rid: (b and ApiRequest.model_validate_json(b.data).state)
                      for rid in (good, bad) for b in [store.read(settings.state_bucket, record_name(rid))]}
            if states == {good: "submitted", bad: "failed"}:
                break
            time.sleep(0.3)
        assert states == {good: "submitted", bad: "failed"}
    finally:
        worker.stop()
    # Both were acked: nothing comes back after the local pull ack deadline (10 s) has passed.
    subscriber = pubsub_v1.SubscriberClient()
    sub = names.subscription_path(settings.gcp_project, names.SUB_INGEST)
    try:
        got: list[Any] = []
        end = time.monotonic() + 13
        while time.monotonic() < end:
            resp = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=5)
            got.extend(resp.received_messages)
        assert got == []
    finally:
        subscriber.close()


def test_a_server_error_is_retried_until_the_last_attempt(ingestor: Ingestor, store: GcsStore, settings: Settings,
                                                         server: str) -> None:
    req = IngestRequest(request_id=request_id(), url=f"{server}/flaky.mp4")
    with pytest.raises(TransientError, match="503"):
        ingestor.handle(Message(data=req.to_bytes(), delivery_attempt=1))
    assert record(store, settings, req.request_id).state == "ingesting"
    last = next(s.max_delivery_attempts for s in names.SUBSCRIPTIONS if s.name == names.SUB_INGEST)
    outcome = ingestor.handle(Message(data=req.to_bytes(), delivery_attempt=last))
    assert outcome is not None and outcome.record.state == "failed"
    assert "gave up after" in (outcome.record.reason or "") and "503" in (outcome.record.reason or "")


def test_service_entry_point_serves_and_stops_on_sigterm(settings: Settings, emulators: Emulators) -> None:
    port = free_port()
    env = {**os.environ, **emulators.env(), "GCP_PROJECT": settings.gcp_project,
           "BUCKET_PREFIX": settings.bucket_prefix, "PORT": str(port), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "services/ingest_worker/main.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _health(port) != 200:
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()[-2000:]
            assert time.monotonic() < deadline, "worker never became healthy"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "ingest worker stopped" in (proc.stdout.read() if proc.stdout else b"").decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def test_a_request_cancelled_while_its_audio_is_fetched_uploads_nothing(ingestor: Ingestor, store: GcsStore,
                                                                         settings: Settings, server: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from parascribe.requests_store import CANCELLED_REASON

    rid = request_id()
    store.write(settings.state_bucket, record_name(rid),
                ApiRequest(request_id=rid, url=f"{server}/talk.mp4").to_bytes(), if_generation_match=0)
    real = ingestor._extract

    def extract_then_cancel(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        ingestor.records.cancel(rid)  # the user cancels while the download runs
        return out

    monkeypatch.setattr(ingestor, "_extract", extract_then_cancel)
    outcome = ingestor.handle(Message(data=IngestRequest(request_id=rid, url=f"{server}/talk.mp4").to_bytes()))
    assert outcome is not None and outcome.upload is None
    assert list(store.list(settings.uploads_bucket, f"ingest/{rid}/")) == []
    rec = record(store, settings, rid)
    assert (rec.state, rec.reason, rec.job_id) == ("failed", CANCELLED_REASON, None) and rec.cancelled_at

"""The Deepgram worker's push handler with in-memory storage and publishing, the real SDK and the local server."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest
import soundfile as sf
from flask.testing import FlaskClient
from pydantic import SecretStr

from parascribe import names
from parascribe.config import Settings, load_settings
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_CHUNK_RESULT,
    TYPE_JOB_FAILED,
    AudioInfo,
    ChunkResult,
    ChunkSpec,
    ChunkTask,
    JobFailed,
    JobStatus,
    SourceRef,
)
from parascribe.deepgram.app import create_app
from parascribe.deepgram.client import DeepgramOptions, DeepgramTranscriber, DeepgramTranscript
from parascribe.deepgram.worker import DeepgramWorker
from parascribe.errors import MalformedMessageError, NewerSchemaError, TransientError
from parascribe.gcp.pubsub import Message
from parascribe.gcp.source_cache import SourceCache
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import EndedJobs, JobStore
from parascribe.local.deepgram_server import RunningServer, start_in_thread
from tests.fakes import MemoryStore, RecordingPublisher
from tests.speech import speak, word_error_rate

KEY = "worker-test-key"
SENTENCE = "open the door and turn on the light in the kitchen"
LEAD_SILENCE_S = 3.0
BUCKET = "uploads"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    srv = start_in_thread(api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def no_faults(server: RunningServer) -> Iterator[None]:
    yield
    httpx.delete(server.url + "/_faults")


@pytest.fixture(scope="module")
def padded_speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """WAV: :data:`LEAD_SILENCE_S` of silence, then the spoken :data:`SENTENCE`."""
    path = speak(SENTENCE, tmp_path_factory.mktemp("dg-worker") / "speech.wav", rate=140)
    samples, sr = sf.read(str(path), dtype="float32")
    padded = np.concatenate([np.zeros(int(LEAD_SILENCE_S * sr), dtype=np.float32), samples])
    buf = io.BytesIO()
    sf.write(buf, padded, sr, format="WAV")
    return buf.getvalue()


class StoreFiles(BaseHTTPRequestHandler):
    """Serves ``GET /<bucket>/<name>`` from a MemoryStore, like a signed-URL endpoint."""

    store: MemoryStore

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        bucket, _, name = urlparse(self.path).path.lstrip("/").partition("/")
        blob = self.store.read(bucket, name)
        if blob is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob.data)))
        self.end_headers()
        self.wfile.write(blob.data)

    def log_message(self, *args: object) -> None:
        pass


class Rig:
    def __init__(self, server: RunningServer, tmp: Path, key: str = KEY, max_retries: int = 2,
                 **overrides: object) -> None:
        self.store = MemoryStore()
        self.publisher = RecordingPublisher()
        values: dict[str, object] = {"deepgram_base_url": server.url, "deepgram_api_key": SecretStr(key),
                                     "storage_emulator_host": None}
        values.update(overrides)
        self.settings: Settings = load_settings(**values)
        handler = type("Handler", (StoreFiles,), {"store": self.store})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.signed: list[str] = []
        self.worker = DeepgramWorker(
            transcriber=DeepgramTranscriber(DeepgramOptions.from_settings(self.settings), max_retries=max_retries),
            store=self.store,
            publisher=self.publisher,
            cache=SourceCache(self.store, tmp / "cache", 1 << 26),
            signer=self.sign,
            max_concurrency=self.settings.deepgram_max_concurrency,
            timeout_seconds=self.settings.deepgram_timeout_seconds,
        )

    def sign(self, source: SourceRef, expires: timedelta) -> str:
        url = (f"http://127.0.0.1:{self.httpd.server_address[1]}/{source.bucket}/{source.name}"
               f"?X-Goog-Expires={int(expires.total_seconds())}&X-Goog-Signature=test")
        self.signed.append(url)
        return url

    def upload(self, name: str, data: bytes) -> SourceRef:
        gen = self.store.write(BUCKET, name, data, content_type="audio/wav")
        return SourceRef(bucket=BUCKET, name=name, generation=str(gen), size=len(data), content_type="audio/wav")

    def results(self) -> list[tuple[ChunkResult, dict[str, str]]]:
        out = []
        for topic, message, attrs in self.publisher.messages:
            assert topic == names.TOPIC_ASR_RESULTS
            assert isinstance(message, ChunkResult)
            out.append((message, attrs))
        return out

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def rig(server: RunningServer, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(server, tmp_path)
    yield r
    r.close()


def task_for(source: SourceRef, duration: float, start: float = 0.0, end: float | None = None,
             whole_file: bool = False, fallback_reason: str | None = None) -> ChunkTask:
    end = duration if end is None else end
    return ChunkTask(
        job_id="j-test",
        source=source,
        audio=AudioInfo(duration_s=duration, sample_rate=22_050, channels=1, codec="pcm_s16le", container="wav"),
        chunk=ChunkSpec(index=3, start_s=start, end_s=end, core_start_s=start, core_end_s=end),
        n_chunks=5,
        path="deepgram",
        whole_file=whole_file,
        fallback_reason=fallback_reason,
    )


def push(client: FlaskClient, task: ChunkTask | bytes) -> int:
    data = task if isinstance(task, bytes) else task.to_bytes()
    envelope = {"message": {"data": base64.b64encode(data).decode(), "messageId": "m1", "attributes": {}},
                "subscription": f"projects/p/subscriptions/{names.SUB_ASR_DEEPGRAM}", "deliveryAttempt": 2}
    return int(client.post("/pubsub", data=json.dumps(envelope), content_type="application/json").status_code)


def duration_of(data: bytes) -> float:
    info = sf.info(io.BytesIO(data))
    return float(info.frames / info.samplerate)


def test_chunk_span_is_cut_encoded_and_transcribed_in_file_time(
    rig: Rig, server: RunningServer, padded_speech: bytes
) -> None:
    total = duration_of(padded_speech)
    source = rig.upload("talk.wav", padded_speech)
    start = 2.0
    rig.worker.handle(Message(data=task_for(source, total, start=start, fallback_reason="gpu_timeout").to_bytes()))

    [(result, attrs)] = rig.results()
    assert attrs[ATTR_TYPE] == TYPE_CHUNK_RESULT
    assert (result.engine, result.path, result.chunk_index, result.n_chunks) == ("deepgram", "deepgram", 3, 5)
    assert result.error is None and result.fallback_reason == "gpu_timeout"
    assert word_error_rate(SENTENCE, " ".join(w.text for w in result.words)) <= 0.35
    # Speech starts LEAD_SILENCE_S into the file; the span started at 2.0 s, so offsets were added.
    assert result.words[0].start >= LEAD_SILENCE_S - 0.5
    assert result.words[-1].end <= total + 0.05
    assert result.audio_seconds == pytest.approx(total - start)
    assert result.billed_seconds == pytest.approx(total - start, abs=0.05)  # only the span was sent
    assert result.processing_seconds > 0
    assert rig.signed == []
    assert httpx.get(server.url + "/_stats").json()["last_source"] == "bytes"


def test_whole_file_goes_by_signed_url(rig: Rig, server: RunningServer, padded_speech: bytes) -> None:
    total = duration_of(padded_speech)
    source = rig.upload("whole.wav", padded_speech)
    rig.worker.handle(Message(data=task_for(source, total, whole_file=True).to_bytes()))

    [(result, _)] = rig.results()
    assert len(rig.signed) == 1 and "/uploads/whole.wav" in rig.signed[0]
    assert int(parse_qs(urlparse(rig.signed[0]).query)["X-Goog-Expires"][0]) >= 900
    assert httpx.get(server.url + "/_stats").json()["last_source"] == "url"
    assert word_error_rate(SENTENCE, " ".join(w.text for w in result.words)) <= 0.35
    assert result.words[0].start >= LEAD_SILENCE_S - 0.5
    assert result.billed_seconds == pytest.approx(total, abs=0.05)


def test_push_app_acks_after_publishing(rig: Rig, padded_speech: bytes) -> None:
    total = duration_of(padded_speech)
    source = rig.upload("push.wav", padded_speech)
    client = create_app(rig.worker).test_client()
    assert client.get("/healthz").status_code == 200
    assert push(client, task_for(source, total, start=2.5)) == 204
    [(result, _)] = rig.results()
    assert result.words and result.error is None


def test_undecodable_span_publishes_an_error_result_and_acks(rig: Rig) -> None:
    source = rig.upload("broken.wav", b"RIFF" + b"\x00garbage" * 200)
    client = create_app(rig.worker).test_client()
    assert push(client, task_for(source, 10.0, start=0.0, end=5.0)) == 204
    [(result, _)] = rig.results()
    assert result.error and result.words == [] and result.chunk_index == 3


def test_audio_deepgram_rejects_publishes_an_error_result_and_acks(rig: Rig) -> None:
    source = rig.upload("broken-whole.wav", b"\x00not audio at all" * 100)
    client = create_app(rig.worker).test_client()
    assert push(client, task_for(source, 10.0, whole_file=True)) == 204
    [(result, _)] = rig.results()
    assert result.error is not None and "corrupt or unsupported data" in result.error


def test_rejected_key_nacks_without_publishing(server: RunningServer, tmp_path: Path, padded_speech: bytes) -> None:
    rig = Rig(server, tmp_path, key="the-wrong-key")
    try:
        source = rig.upload("auth.wav", padded_speech)
        client = create_app(rig.worker).test_client()
        assert push(client, task_for(source, duration_of(padded_speech), start=2.0)) == 503
        assert rig.publisher.messages == []
    finally:
        rig.close()


def test_persistent_server_errors_nack_without_publishing(
    server: RunningServer, tmp_path: Path, padded_speech: bytes
) -> None:
    rig = Rig(server, tmp_path, max_retries=0)
    try:
        httpx.post(server.url + "/_faults", json={"status": 503, "count": 1}).raise_for_status()
        source = rig.upload("busy.wav", padded_speech)
        client = create_app(rig.worker).test_client()
        assert push(client, task_for(source, duration_of(padded_speech), whole_file=True)) == 503
        assert rig.publisher.messages == []
    finally:
        rig.close()


def test_malformed_task_is_acked_and_dropped(rig: Rig) -> None:
    client = create_app(rig.worker).test_client()
    assert push(client, b'{"job_id": 5}') == 204
    assert rig.publisher.messages == []


class SlowTranscriber:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def _work(self) -> DeepgramTranscript:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay_s)
        with self._lock:
            self.active -= 1
        return DeepgramTranscript(billed_seconds=1.0)

    def transcribe_bytes(self, data: bytes, offset_s: float = 0.0, language: str | None = None) -> DeepgramTranscript:
        return self._work()

    def transcribe_url(self, url: str, offset_s: float = 0.0, language: str | None = None) -> DeepgramTranscript:
        return self._work()


WorkerAndPublisher = tuple[DeepgramWorker, RecordingPublisher]
SlotWorker = Callable[[SlowTranscriber, int, float], WorkerAndPublisher]


@pytest.fixture
def slot_worker(tmp_path: Path) -> SlotWorker:
    """Makes a worker over fakes with ``max_concurrency`` slots; it signs a stub URL, so storage is never read."""

    def make(transcriber: SlowTranscriber, max_concurrency: int, timeout_seconds: float) -> WorkerAndPublisher:
        store, publisher = MemoryStore(), RecordingPublisher()
        worker = DeepgramWorker(transcriber, store, publisher, SourceCache(store, tmp_path, 1 << 20),
                                signer=lambda source, expires: "http://unused.invalid/x",
                                max_concurrency=max_concurrency, timeout_seconds=timeout_seconds)
        return worker, publisher

    return make


def whole_file_message() -> Message:
    source = SourceRef(bucket=BUCKET, name="x.wav", generation="1", size=1)
    return Message(data=task_for(source, 1.0, whole_file=True).to_bytes())


def test_requests_in_flight_never_exceed_the_concurrency_limit(slot_worker: SlotWorker) -> None:
    slow = SlowTranscriber(0.2)
    worker, publisher = slot_worker(slow, 2, 300.0)
    msg = whole_file_message()
    threads = [threading.Thread(target=worker.handle, args=(msg,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert slow.peak == 2
    assert len(publisher.messages) == 6


def test_no_free_slot_in_time_is_transient(slot_worker: SlotWorker) -> None:
    worker, publisher = slot_worker(SlowTranscriber(1.0), 1, 0.2)
    msg = whole_file_message()
    busy = threading.Thread(target=worker.handle, args=(msg,))
    busy.start()
    time.sleep(0.05)
    with pytest.raises(TransientError, match="slot"):
        worker.handle(msg)
    busy.join()
    assert len(publisher.messages) == 1


def test_emulator_signed_url_points_at_the_emulator_and_pins_the_generation() -> None:
    store = GcsStore.create("parascribe-local", emulator_host="127.0.0.1:4443")
    url = store.signed_url("uploads", "a b/c.wav", timedelta(minutes=20), generation="17")
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    assert f"{parsed.scheme}://{parsed.netloc}" == "http://127.0.0.1:4443"
    assert parsed.path == "/uploads/a%20b/c.wav"
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"] and query["X-Goog-Expires"] == ["1200"]
    assert query["generation"] == ["17"] and len(query["X-Goog-Signature"][0]) == 512


JOB = "j" + "1" * 20


def ended_worker(tmp_path: Path, state: str | None) -> tuple[DeepgramWorker, RecordingPublisher, SlowTranscriber]:
    store, publisher, transcriber = MemoryStore(), RecordingPublisher(), SlowTranscriber(0.0)
    jobs = JobStore(store, "state")
    if state is not None:
        jobs.update_status(JOB, lambda _: JobStatus(job_id=JOB, state=state, reason="chunk 2 of 4 was corrupt"))
    worker = DeepgramWorker(transcriber, store, publisher, SourceCache(store, tmp_path, 1 << 20),
                            signer=lambda source, expires: "http://unused.invalid/x",
                            max_concurrency=1, timeout_seconds=5.0, ended=EndedJobs(jobs))
    return worker, publisher, transcriber


def whole_file_task() -> ChunkTask:
    task = task_for(SourceRef(bucket=BUCKET, name="x.wav", generation="1", size=1), 1.0, whole_file=True)
    return task.model_copy(update={"job_id": JOB})


def test_a_chunk_of_a_failed_job_is_acked_without_paying_deepgram(tmp_path: Path) -> None:
    worker, publisher, transcriber = ended_worker(tmp_path, "failed")
    worker.handle(Message(data=whole_file_task().to_bytes()))
    assert transcriber.peak == 0 and publisher.messages == []


def test_a_chunk_of_a_running_job_is_sent(tmp_path: Path) -> None:
    worker, publisher, transcriber = ended_worker(tmp_path, None)
    worker.handle(Message(data=whole_file_task().to_bytes()))
    assert transcriber.peak == 1 and len(publisher.messages) == 1


def test_a_malformed_task_whose_job_id_can_be_read_fails_that_job(tmp_path: Path) -> None:
    worker, publisher, transcriber = ended_worker(tmp_path, None)
    with pytest.raises(MalformedMessageError, match="malformed ChunkTask"):
        worker.handle(Message(data=json.dumps({"job_id": JOB, "chunk": None}).encode()))
    [(topic, failed, attrs)] = publisher.messages
    assert topic == names.TOPIC_ASR_RESULTS and attrs == {ATTR_TYPE: TYPE_JOB_FAILED, "job_id": JOB}
    assert isinstance(failed, JobFailed) and "could not be read (malformed ChunkTask" in failed.reason
    assert transcriber.peak == 0


def test_a_task_from_a_newer_release_is_nacked(tmp_path: Path) -> None:
    worker, publisher, transcriber = ended_worker(tmp_path, None)
    newer = whole_file_task().model_copy(update={"schema_version": 2})
    with pytest.raises(NewerSchemaError):
        worker.handle(Message(data=newer.to_bytes()))
    assert transcriber.peak == 0 and publisher.messages == []


# --- spans that trust no header: capped, corrupt-tolerant, read by range, held while read ---


class RecordingTranscriber:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.urls: list[str] = []
        self.languages: list[str | None] = []

    def transcribe_bytes(self, data: bytes, offset_s: float = 0.0, language: str | None = None) -> DeepgramTranscript:
        self.sent.append(data)
        self.languages.append(language)
        return DeepgramTranscript(billed_seconds=duration_of(data))

    def transcribe_url(self, url: str, offset_s: float = 0.0, language: str | None = None) -> DeepgramTranscript:
        self.urls.append(url)
        self.languages.append(language)
        return DeepgramTranscript(billed_seconds=1.0)


class RangeStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.downloads: list[str] = []
        self.range_bytes = 0

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None:
        self.downloads.append(name)
        super().download_to(bucket, name, dest, generation)

    def read_range(self, bucket: str, name: str, start: int, end: int, generation: str | None = None) -> bytes:
        data = super().read_range(bucket, name, start, end, generation)
        self.range_bytes += len(data)
        return data


def fake_worker(tmp_path: Path, store: MemoryStore, cache: SourceCache | None = None,
                ) -> tuple[DeepgramWorker, RecordingPublisher, RecordingTranscriber]:
    publisher, transcriber = RecordingPublisher(), RecordingTranscriber()
    worker = DeepgramWorker(transcriber, store, publisher, cache or SourceCache(store, tmp_path / "cache", 1 << 26),
                            signer=lambda source, expires: "http://unused.invalid/x",
                            max_concurrency=2, timeout_seconds=5.0)
    return worker, publisher, transcriber


def put_source(store: MemoryStore, name: str, data: bytes) -> SourceRef:
    gen = store.write(BUCKET, name, data)
    return SourceRef(bucket=BUCKET, name=name, generation=str(gen), size=len(data))


def span_task(source: SourceRef, info: AudioInfo, start: float, end: float, index: int, n: int,
              whole_file: bool = False) -> ChunkTask:
    return ChunkTask(job_id="j-span", source=source, audio=info,
                     chunk=ChunkSpec(index=index, start_s=start, end_s=end, core_start_s=start, core_end_s=end),
                     n_chunks=n, path="deepgram", whole_file=whole_file)


def only_result(publisher: RecordingPublisher) -> ChunkResult:
    [(_, result, _)] = publisher.messages
    assert isinstance(result, ChunkResult)
    return result


def mp3_info(duration: float) -> AudioInfo:
    return AudioInfo(duration_s=duration, sample_rate=44_100, channels=1, codec="mp3", container="mp3")


@pytest.mark.parametrize("whole_file", [False, True])
def test_a_lying_header_fails_the_chunk_instead_of_sending_the_tail(tmp_path: Path, whole_file: bool) -> None:
    from tests.bad_audio import claimed_seconds, lying_mp3

    store = MemoryStore()
    source = put_source(store, "lying.mp3", lying_mp3())  # the header says 0.57 s; it holds 120 s
    worker, publisher, transcriber = fake_worker(tmp_path, store)
    claimed = claimed_seconds()
    worker.handle(Message(data=span_task(source, mp3_info(claimed), 0.0, claimed, 0, 1, whole_file).to_bytes()))
    result = only_result(publisher)
    assert result.error is not None and "more audio than its header claims" in result.error
    assert "MAX_AUDIO_MINUTES" in result.error
    assert transcriber.sent == [] and transcriber.urls == []  # neither 120 s of bytes nor the URL went out


def test_corrupt_packets_are_skipped_and_counted_on_the_result(tmp_path: Path) -> None:
    from tests.bad_audio import damage, mp3_bytes

    store = MemoryStore()
    source = put_source(store, "damaged.mp3", damage(mp3_bytes(20.0), (0.3, 0.5, 0.7), 3000))
    worker, publisher, transcriber = fake_worker(tmp_path, store)
    worker.handle(Message(data=span_task(source, mp3_info(20.0), 0.0, 20.0, 0, 1).to_bytes()))
    result = only_result(publisher)
    assert result.error is None and result.corrupt_packets > 0
    assert duration_of(transcriber.sent[0]) > 18.0


def test_a_pcm_wav_span_is_read_by_byte_range_not_downloaded(tmp_path: Path) -> None:
    sr, seconds = 44_100, 60.0
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, np.stack([0.3 * np.sin(2 * np.pi * 300 * t)] * 2, axis=1).astype(np.float32), sr, format="WAV",
             subtype="PCM_16")
    data = buf.getvalue()
    store = RangeStore()
    source = put_source(store, "long.wav", data)
    info = AudioInfo(duration_s=seconds, sample_rate=sr, channels=2, codec="pcm_s16le", container="wav")
    worker, publisher, transcriber = fake_worker(tmp_path, store)
    worker.handle(Message(data=span_task(source, info, 20.0, 30.0, 1, 3).to_bytes()))
    assert only_result(publisher).error is None
    assert store.downloads == []
    span_bytes = 10 * sr * 4
    assert span_bytes <= store.range_bytes <= span_bytes + 128 * 1024, store.range_bytes
    assert duration_of(transcriber.sent[0]) == pytest.approx(10.0, abs=1e-3)
    # The last chunk reads to the end of the data, by range too.
    worker.handle(Message(data=span_task(source, info, 50.0, 60.0, 2, 3).to_bytes()))
    assert duration_of(transcriber.sent[1]) == pytest.approx(10.0, abs=1e-3) and store.downloads == []


class RacingCache(SourceCache):
    """Another thread fetches ``other`` just after this one got the path of ``racer``: the worst moment."""

    def __init__(self, store: MemoryStore, cache_dir: Path, max_bytes: int, racer: SourceRef,
                 other: SourceRef) -> None:
        super().__init__(store, cache_dir, max_bytes)
        self.racer, self.other, self.raced = racer, other, False

    def path(self, source: SourceRef) -> Path:
        found = super().path(source)
        if source == self.racer and not self.raced:
            self.raced = True
            super().path(self.other)  # over max_bytes: evicts every entry not held
        return found


def test_a_held_source_survives_another_threads_fetch(tmp_path: Path) -> None:
    def flac(seconds: float) -> bytes:
        out = io.BytesIO()
        sf.write(out, np.random.default_rng(5).uniform(-0.3, 0.3, int(seconds * 16_000)), 16_000, format="FLAC")
        return out.getvalue()

    store = MemoryStore()
    racer, other = put_source(store, "racer.flac", flac(4.0)), put_source(store, "other.flac", flac(4.0))
    cache = RacingCache(store, tmp_path / "cache", racer.size + other.size - 1, racer, other)
    worker, publisher, transcriber = fake_worker(tmp_path, store, cache)
    info = AudioInfo(duration_s=4.0, sample_rate=16_000, channels=1, codec="flac", container="flac")
    worker.handle(Message(data=span_task(racer, info, 1.0, 3.0, 0, 2).to_bytes()))
    assert cache.raced and only_result(publisher).error is None
    assert duration_of(transcriber.sent[0]) == pytest.approx(2.0, abs=1e-3)
    assert cache.total_bytes < racer.size + other.size  # once released, the cache is back under its limit


def test_the_tasks_language_goes_with_the_request(tmp_path: Path) -> None:
    store = MemoryStore()
    buf = io.BytesIO()
    sf.write(buf, np.zeros(6 * 16_000, dtype=np.float32), 16_000, format="WAV", subtype="PCM_16")
    source = put_source(store, "charla.wav", buf.getvalue())
    info = AudioInfo(duration_s=6.0, sample_rate=16_000, channels=1, codec="pcm_s16le", container="wav")
    worker, publisher, transcriber = fake_worker(tmp_path, store)
    spanish = span_task(source, info, 0.0, 3.0, 0, 2).model_copy(update={"language": "es"})
    worker.handle(Message(data=spanish.to_bytes()))
    worker.handle(Message(data=span_task(source, info, 3.0, 6.0, 1, 2).to_bytes()))
    assert transcriber.languages == ["es", None], "None: the worker's DEEPGRAM_LANGUAGE"
    assert all(isinstance(m, ChunkResult) and m.error is None for _, m, _ in publisher.messages)

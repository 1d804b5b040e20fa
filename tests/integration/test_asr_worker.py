"""The ASR worker on the real emulators with the offline engine: real speech in, words in file time out."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1
import numpy as np
import pytest
import soundfile as sf

from parascribe import names
from parascribe.asr.app import build
from parascribe.asr.worker import AsrWorker
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
from parascribe.gcp.pubsub import PubSubPublisher
from parascribe.gcp.source_cache import SourceCache
from parascribe.gcp.storage import GcsStore
from parascribe.local.emulators import Emulators, free_port
from tests.speech import speak, word_error_rate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FIRST = "the quick brown fox jumps over the lazy dog"
SECOND = "we will meet at the station after lunch"
LEAD_S = 1.0
GAP_S = 2.0
ROOT = Path(__file__).resolve().parents[2]


def espeak(path: Path, text: str) -> tuple[np.ndarray, int]:
    samples, sr = sf.read(str(speak(text, path, rate=150)), dtype="float32")
    return samples, int(sr)


@pytest.fixture(scope="module")
def speech(spoken_dir: Path) -> tuple[bytes, float, float]:
    """WAV: LEAD_S silence, FIRST, GAP_S silence, SECOND. Returns (bytes, where SECOND starts, duration)."""
    a, sr = espeak(spoken_dir / "asr-first.wav", FIRST)
    b, _ = espeak(spoken_dir / "asr-second.wav", SECOND)
    lead, gap = np.zeros(int(LEAD_S * sr), np.float32), np.zeros(int(GAP_S * sr), np.float32)
    audio = np.concatenate([lead, a, gap, b])
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV")
    second_at = (len(lead) + len(a) + len(gap)) / sr
    return buf.getvalue(), second_at, len(audio) / sr


@pytest.fixture
def settings(emulators: Emulators) -> Settings:
    return emulators.isolated_settings(asr_engine="offline", gpu_batch_size=4, gpu_batch_linger_ms=300)


def upload(store: GcsStore, settings: Settings, name: str, data: bytes) -> SourceRef:
    gen = store.write(settings.uploads_bucket, name, data, content_type="audio/wav")
    assert gen
    return SourceRef(bucket=settings.uploads_bucket, name=name, generation=str(gen), size=len(data),
                     content_type="audio/wav")


def two_chunks(source: SourceRef, second_at: float, duration: float, job_id: str) -> list[ChunkTask]:
    """Two chunks cut in the middle of the gap, overlapping by 0.5 s on each side of the cut."""
    cut = second_at - GAP_S / 2
    audio = AudioInfo(duration_s=duration, sample_rate=22_050, channels=1, codec="pcm_s16le", container="wav")
    specs = [
        ChunkSpec(index=0, start_s=0.0, end_s=cut + 0.5, core_start_s=0.0, core_end_s=cut),
        ChunkSpec(index=1, start_s=cut - 0.5, end_s=duration, core_start_s=cut, core_end_s=duration),
    ]
    return [ChunkTask(job_id=job_id, source=source, audio=audio, chunk=s, n_chunks=2, path="gpu") for s in specs]


def pull(settings: Settings, sub_name: str, want: int, timeout_s: float = 90.0) -> list[tuple[bytes, dict[str, str]]]:
    subscriber = pubsub_v1.SubscriberClient()
    sub = names.subscription_path(settings.gcp_project, sub_name)
    out: list[tuple[bytes, dict[str, str]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            wait_s = max(0.5, min(10.0, deadline - time.monotonic()))
            resp = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=wait_s)
            if resp.received_messages:
                subscriber.acknowledge(request={"subscription": sub,
                                                "ack_ids": [m.ack_id for m in resp.received_messages]})
            out.extend((m.message.data, dict(m.message.attributes)) for m in resp.received_messages)
    finally:
        subscriber.close()
    return out


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


@pytest.fixture
def running(settings: Settings, tmp_path: Path) -> Iterator[AsrWorker]:
    worker = build(settings, cache_dir=tmp_path / "sources", health_port=0)
    worker.start()
    yield worker
    worker.stop(timeout_s=30)


def test_worker_transcribes_chunks_into_file_time(settings: Settings, store: GcsStore, running: AsrWorker,
                                                  speech: tuple[bytes, float, float]) -> None:
    data, second_at, duration = speech
    source = upload(store, settings, "talk.wav", data)
    tasks = two_chunks(source, second_at, duration, "j-asr-integration")
    assert running.health_port is not None and health(running.health_port) == 200
    publisher = PubSubPublisher(settings.gcp_project)
    for t in tasks:
        publisher.publish(names.TOPIC_ASR_GPU, t)

    got = pull(settings, names.SUB_MERGER, want=2)
    assert len(got) == 2
    results = {}
    for body, attrs in got:
        assert attrs[ATTR_TYPE] == TYPE_CHUNK_RESULT
        res = parse(ChunkResult, body)
        results[res.chunk_index] = res
    first, second = results[0], results[1]
    for task, res in zip(tasks, (first, second), strict=True):
        assert res.error is None and res.engine == "offline" and res.path == "gpu"
        assert res.job_id == task.job_id and res.n_chunks == 2
        assert res.audio_seconds == pytest.approx(task.chunk.duration_s, abs=0.01)
        assert res.processing_seconds > 0
        assert all(task.chunk.start_s <= w.start <= w.end <= task.chunk.end_s for w in res.words)
    assert word_error_rate(FIRST, " ".join([w.text for w in first.words])) <= 0.35
    assert word_error_rate(SECOND, " ".join([w.text for w in second.words])) <= 0.35
    # File time, not chunk time: the second chunk's words start where SECOND is spoken in the file.
    assert abs(first.words[0].start - LEAD_S) < 0.5
    assert abs(second.words[0].start - second_at) < 0.5
    assert running.batch_sizes == [2] and not running.fallbacks  # one batch, thanks to the linger


def test_worker_without_an_engine_forwards_to_deepgram(settings: Settings, store: GcsStore, tmp_path: Path,
                                                       speech: tuple[bytes, float, float]) -> None:
    data, second_at, duration = speech
    source = upload(store, settings, "forward.wav", data)
    worker = AsrWorker(settings, None, store, PubSubPublisher(settings.gcp_project),
                       SourceCache(store, tmp_path, 10_000_000), engine_unavailable_reason="no GPU here")
    worker.start()
    try:
        publisher = PubSubPublisher(settings.gcp_project)
        for t in two_chunks(source, second_at, duration, "j-asr-forward"):
            publisher.publish(names.TOPIC_ASR_GPU, t)
        got = [parse(ChunkTask, body) for body, _ in pull(settings, names.SUB_ASR_DEEPGRAM, want=2)]
    finally:
        worker.stop(timeout_s=30)
    assert sorted(t.chunk.index for t in got) == [0, 1]
    assert all(t.path == "deepgram" and t.fallback_from == "gpu" and t.fallback_reason == "engine_unavailable"
               for t in got)
    assert worker.fallbacks == {"engine_unavailable": 2}
    assert pull(settings, names.SUB_MERGER, want=1, timeout_s=3) == []


def test_service_entry_point_serves_and_stops_on_sigterm(settings: Settings, store: GcsStore, emulators: Emulators,
                                                         speech: tuple[bytes, float, float]) -> None:
    data, second_at, duration = speech
    source = upload(store, settings, "entry.wav", data)
    port = free_port()
    env = {**os.environ, **emulators.env(), "GCP_PROJECT": settings.gcp_project,
           "BUCKET_PREFIX": settings.bucket_prefix, "ASR_ENGINE": "offline", "PORT": str(port),
           "GPU_BATCH_LINGER_MS": "50", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "services/asr_worker/main.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while health(port) != 200:
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()[-2000:]
            assert time.monotonic() < deadline, "worker never became healthy"
            time.sleep(0.2)
        [task] = two_chunks(source, second_at, duration, "j-asr-entry")[1:]
        PubSubPublisher(settings.gcp_project).publish(names.TOPIC_ASR_GPU, task)
        [(body, _)] = pull(settings, names.SUB_MERGER, want=1)
        res = parse(ChunkResult, body)
        assert res.chunk_index == 1 and res.engine == "offline"
        assert word_error_rate(SECOND, " ".join([w.text for w in res.words])) <= 0.35
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        logs = (proc.stdout.read() if proc.stdout else b"").decode()
        assert '"severity": "INFO"' in logs and "ASR worker stopped" in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

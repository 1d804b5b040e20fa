"""The tiny Parakeet through the production loading code and the real worker batcher, on the real emulators.

``ASR_ENGINE=parakeet`` with ``PARAKEET_MODEL_NAME`` pointing at a tiny ``.nemo``
built at test time: ``parascribe.asr.app.build`` loads it through engine selection and
``ParakeetEngine.from_settings``, exactly as the service does. The model's
weights are random, so the test checks structure: one batch, results on the
results topic, words with timestamps in file time.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1
import pytest
import soundfile as sf

from parascribe import names
from parascribe.asr.app import build
from parascribe.asr.worker import AsrWorker
from parascribe.audio import SAMPLE_RATE
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
from parascribe.gcp.storage import GcsStore
from parascribe.local.emulators import Emulators
from tests.nemo_tiny import build_tiny_nemo, noise

pytestmark = [pytest.mark.integration, pytest.mark.nemo, pytest.mark.timeout(240)]

DURATION_S = 9.0
CUT_S = 4.0
OVERLAP_S = 0.5


@pytest.fixture(scope="module")
def tiny_nemo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("nemo.collections.asr", reason="NeMo is not installed (pip install 'parascribe[nemo]')")
    return build_tiny_nemo(tmp_path_factory.mktemp("tiny-parakeet"))


@pytest.fixture
def settings(emulators: Emulators, tiny_nemo: Path) -> Settings:
    return emulators.isolated_settings(asr_engine="parakeet", parakeet_model_name=str(tiny_nemo), asr_device="cpu",
                                       gpu_batch_size=4, gpu_batch_linger_ms=500, enable_fallback=False,
                                       vad_enabled=False)  # whole chunks of noise; test_asr_vad.py covers segments


@pytest.fixture
def running(settings: Settings, tmp_path: Path) -> Iterator[AsrWorker]:
    worker = build(settings, cache_dir=tmp_path / "sources", health_port=0)
    worker.start()
    yield worker
    worker.stop(timeout_s=30)


def upload_noise(store: GcsStore, settings: Settings) -> SourceRef:
    buf = io.BytesIO()
    sf.write(buf, noise(DURATION_S, seed=3), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    gen = store.write(settings.uploads_bucket, "noise.wav", data, content_type="audio/wav")
    assert gen
    return SourceRef(bucket=settings.uploads_bucket, name="noise.wav", generation=str(gen), size=len(data),
                     content_type="audio/wav")


def pull_results(settings: Settings, want: int, timeout_s: float = 120.0) -> list[ChunkResult]:
    subscriber = pubsub_v1.SubscriberClient()
    sub = names.subscription_path(settings.gcp_project, names.SUB_MERGER)
    out: list[ChunkResult] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            resp = subscriber.pull(request={"subscription": sub, "max_messages": 10},
                                   timeout=max(0.5, min(10.0, deadline - time.monotonic())))
            if resp.received_messages:
                subscriber.acknowledge(request={"subscription": sub,
                                                "ack_ids": [m.ack_id for m in resp.received_messages]})
            for m in resp.received_messages:
                assert m.message.attributes[ATTR_TYPE] == TYPE_CHUNK_RESULT
                out.append(parse(ChunkResult, m.message.data))
    finally:
        subscriber.close()
    return out


def test_parakeet_worker_publishes_words_in_file_time(settings: Settings, store: GcsStore,
                                                     running: AsrWorker) -> None:
    source = upload_noise(store, settings)
    audio = AudioInfo(duration_s=DURATION_S, sample_rate=SAMPLE_RATE, channels=1, codec="pcm_s16le", container="wav")
    specs = [
        ChunkSpec(index=0, start_s=0.0, end_s=CUT_S + OVERLAP_S, core_start_s=0.0, core_end_s=CUT_S),
        ChunkSpec(index=1, start_s=CUT_S - OVERLAP_S, end_s=DURATION_S, core_start_s=CUT_S, core_end_s=DURATION_S),
    ]
    tasks = [ChunkTask(job_id="j-parakeet-integration", source=source, audio=audio, chunk=s, n_chunks=2, path="gpu")
             for s in specs]
    publisher = PubSubPublisher(settings.gcp_project)
    for task in tasks:
        publisher.publish(names.TOPIC_ASR_GPU, task)

    results = {r.chunk_index: r for r in pull_results(settings, want=2)}

    assert sorted(results) == [0, 1]
    for task in tasks:
        res = results[task.chunk.index]
        assert res.error is None, res.error
        assert res.engine == "parakeet" and res.path == "gpu" and res.job_id == task.job_id
        assert res.audio_seconds == pytest.approx(task.chunk.duration_s, abs=0.01)
        assert res.words, "the tiny model emits words for noise"
        assert all(task.chunk.start_s <= w.start <= w.end <= task.chunk.end_s + 1e-6 for w in res.words)
        starts = [w.start for w in res.words]
        assert starts == sorted(starts)
    # File time, not chunk time: the second chunk's words start at or after its start in the file.
    assert min(w.start for w in results[1].words) >= CUT_S - OVERLAP_S
    assert max(w.end for w in results[1].words) > CUT_S + 1.0
    assert running.batch_sizes == [2] and not running.fallbacks

"""The ASR worker's batching and recovery, with a fake engine, tests/fakes.py and no Pub/Sub."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from google.api_core.exceptions import NotFound

from parascribe import names
from parascribe.asr.worker import AsrWorker, Outcome
from parascribe.audio import SAMPLE_RATE
from parascribe.config import Settings, load_settings
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_CHUNK_RESULT,
    TYPE_JOB_FAILED,
    AudioInfo,
    ChunkResult,
    ChunkSpec,
    ChunkTask,
    Contract,
    EngineName,
    JobFailed,
    JobStatus,
    SourceRef,
    Word,
)
from parascribe.engines.base import AudioChunk, EngineOutput
from parascribe.errors import (
    EngineError,
    EngineOOMError,
    EngineUnavailableError,
    TransientError,
)
from parascribe.gcp.pubsub import Message
from parascribe.gcp.source_cache import SourceCache
from parascribe.jobs import EndedJobs, JobStore
from tests.fakes import MemoryStore, RecordingPublisher

pytestmark = pytest.mark.timeout(60)

SOURCE_S = 6.0


class FakeEngine:
    """Speaks one word per second of audio, in file time; fails on demand, like a real engine at its boundary."""

    name: EngineName = "parakeet"

    def __init__(self, oom_above: int | None = None, fail_keys: Sequence[str] = (), unavailable: bool = False,
                 delay_s: float = 0.0, stray_words: bool = False) -> None:
        self.oom_above = oom_above
        self.fail_keys = set(fail_keys)
        self.unavailable = unavailable
        self.delay_s = delay_s
        self.stray_words = stray_words
        self.calls: list[list[AudioChunk]] = []
        self.closed = False

    def transcribe(self, batch: Sequence[AudioChunk]) -> list[EngineOutput]:
        self.calls.append(list(batch))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.unavailable:
            raise EngineUnavailableError("CUDA device lost")
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise EngineOOMError(f"CUDA out of memory on a batch of {len(batch)}")
        if any(c.key in self.fail_keys for c in batch):
            raise EngineError("decoder produced NaNs")
        outs = []
        for c in batch:
            words = [Word(text=f"w{k}", start=c.offset_s + k + 0.2, end=c.offset_s + k + 0.6)
                     for k in range(int(c.duration_s))]
            if self.stray_words:
                words.append(Word(text="after", start=c.offset_s + c.duration_s + 1, end=c.offset_s + c.duration_s + 2))
                words.append(Word(text="edge", start=c.offset_s + c.duration_s - 0.1, end=c.offset_s + c.duration_s + 0.05))
            outs.append(EngineOutput(words=words, text=" ".join(w.text for w in words)))
        return outs

    def close(self) -> None:
        self.closed = True


class FlakyPublisher(RecordingPublisher):
    def __init__(self, fail_topics: Sequence[str] = ()) -> None:
        super().__init__()
        self.fail_topics = set(fail_topics)

    def publish(self, topic: str, message: Contract, attributes: dict[str, str] | None = None) -> str:
        if topic in self.fail_topics:
            raise TransientError(f"publishing to {topic}: 503 unavailable")
        return super().publish(topic, message, attributes)


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.downloads = 0
        self.fail = False

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None:
        self.downloads += 1
        if self.fail:
            raise TransientError(f"downloading gs://{bucket}/{name}: 503")
        super().download_to(bucket, name, dest, generation)


def wav_bytes(seconds: float = SOURCE_S, sr: int = 22_050) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def upload(store: MemoryStore, name: str, data: bytes) -> SourceRef:
    gen = store.write("uploads", name, data, content_type="audio/wav")
    assert gen is not None
    return SourceRef(bucket="uploads", name=name, generation=str(gen), size=len(data))


def tasks_for(source: SourceRef, n: int, job: str = "jtest", chunk_s: float = 2.0, overlap_s: float = 0.5) -> list[ChunkTask]:
    audio = AudioInfo(duration_s=n * chunk_s, sample_rate=22_050, channels=1, codec="pcm_s16le", container="wav")
    out = []
    for i in range(n):
        core_start, core_end = i * chunk_s, (i + 1) * chunk_s
        spec = ChunkSpec(index=i, start_s=max(0.0, core_start - overlap_s), end_s=min(n * chunk_s, core_end + overlap_s),
                         core_start_s=core_start, core_end_s=core_end)
        out.append(ChunkTask(job_id=job, source=source, audio=audio, chunk=spec, n_chunks=n, path="gpu"))
    return out


def inbound(tasks: Sequence[ChunkTask]) -> list[Message]:
    return [Message(message_id=f"m{t.job_id}-{t.chunk.index}", data=t.to_bytes()) for t in tasks]


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def source(store: FlakyStore) -> SourceRef:
    return upload(store, "talk.wav", wav_bytes())


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"gpu_batch_size": 4, "gpu_batch_linger_ms": 50, "enable_fallback": True}
    base.update(kw)
    return load_settings(**base)


@pytest.fixture
def pub() -> RecordingPublisher:
    """What the worker published (the publisher ``make_worker`` gives a worker unless told otherwise)."""
    return RecordingPublisher()


@pytest.fixture
def make_worker(store: FlakyStore, pub: RecordingPublisher, tmp_path: Path) -> Iterator[Any]:
    made: list[AsrWorker] = []

    def make(engine: FakeEngine | None, publisher: RecordingPublisher | None = None, **kw: Any) -> AsrWorker:
        extra = {k: kw.pop(k) for k in ("engine_unavailable_reason", "health_port", "subscriber", "ended") if k in kw}
        worker = AsrWorker(settings(**kw), engine, store, publisher or pub,
                           SourceCache(store, tmp_path / "cache", 10_000_000), **extra)
        made.append(worker)
        return worker

    yield make
    for w in made:
        w.stop(timeout_s=5)


def results(publisher: RecordingPublisher) -> list[ChunkResult]:
    out = []
    for topic, msg, attrs in publisher.messages:
        if topic == names.TOPIC_ASR_RESULTS:
            assert attrs == {ATTR_TYPE: TYPE_CHUNK_RESULT}
            assert isinstance(msg, ChunkResult)
            out.append(msg)
    return out


def forwarded(publisher: RecordingPublisher) -> list[ChunkTask]:
    return [m for m in publisher.on(names.TOPIC_ASR_DEEPGRAM) if isinstance(m, ChunkTask)]


# --- process_batch ---


def test_batch_publishes_one_result_per_task_in_file_time(make_worker: Any, pub: RecordingPublisher, store: FlakyStore,
                                                          source: SourceRef) -> None:
    engine = FakeEngine()
    worker = make_worker(engine)
    tasks = tasks_for(source, 3)
    outcomes = worker.process_batch(inbound(tasks))

    assert [o.action for o in outcomes] == ["ack"] * 3 and {o.kind for o in outcomes} == {"result"}
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 3
    assert store.downloads == 1  # three chunks, one download
    got = results(pub)
    assert [r.chunk_index for r in got] == [0, 1, 2]
    for task, chunk, res in zip(tasks, engine.calls[0], got, strict=True):
        assert chunk.offset_s == task.chunk.start_s
        assert abs(chunk.duration_s - task.chunk.duration_s) < 1 / SAMPLE_RATE * 2
        assert res.error is None and res.engine == "parakeet" and res.path == "gpu" and res.n_chunks == 3
        assert res.audio_seconds == pytest.approx(task.chunk.duration_s, abs=1e-3)
        assert res.words and all(task.chunk.start_s <= w.start <= w.end <= task.chunk.end_s for w in res.words)
        assert res.words[0].start == pytest.approx(task.chunk.start_s + 0.2)
    # Processing time is the batch's wall time shared in proportion to audio: seconds per audio second agree.
    per_audio = [r.processing_seconds / r.audio_seconds for r in got]
    assert max(per_audio) == pytest.approx(min(per_audio), rel=1e-6)
    assert all(r.processing_seconds > 0 for r in got)


def test_words_outside_the_decode_span_are_dropped_or_clamped(
    make_worker: Any, pub: RecordingPublisher, source: SourceRef
) -> None:
    worker = make_worker(FakeEngine(stray_words=True))
    [task] = tasks_for(source, 3)[1:2]
    worker.process_batch(inbound([task]))
    [res] = results(pub)
    texts = [w.text for w in res.words]
    assert "after" not in texts and "edge" in texts
    assert res.words[-1].end == task.chunk.end_s


def test_last_chunk_reads_to_the_real_end_when_the_header_underestimated(
    make_worker: Any, pub: RecordingPublisher, store: FlakyStore
) -> None:
    source = upload(store, "vbr.wav", wav_bytes(seconds=7.0))
    worker = make_worker(FakeEngine())
    # Planned from a header that claimed 6 s; the stream really holds 7 s.
    first, last = tasks_for(source, 3)[1:]
    worker.process_batch(inbound([first, last]))
    by_index = {r.chunk_index: r for r in results(pub)}
    assert by_index[2].audio_seconds == pytest.approx(7.0 - last.chunk.start_s, abs=0.01)
    assert max(w.end for w in by_index[2].words) > last.chunk.end_s
    assert by_index[1].audio_seconds == pytest.approx(first.chunk.duration_s, abs=0.01)


def test_oom_halves_the_batch_until_it_fits(make_worker: Any, pub: RecordingPublisher, source: SourceRef) -> None:
    engine = FakeEngine(oom_above=1)
    worker = make_worker(engine)
    outcomes = worker.process_batch(inbound(tasks_for(source, 3) + tasks_for(source, 1, job="jother")))
    assert worker.batch_sizes == [4, 2, 1, 1, 2, 1, 1]
    assert [o.kind for o in outcomes] == ["result"] * 4
    assert sorted((r.job_id, r.chunk_index) for r in results(pub)) == [
        ("jother", 0), ("jtest", 0), ("jtest", 1), ("jtest", 2)]
    assert not worker.fallbacks


def test_oom_down_to_one_chunk_falls_back_to_deepgram(
    make_worker: Any, pub: RecordingPublisher, source: SourceRef
) -> None:
    worker = make_worker(FakeEngine(oom_above=0))
    tasks = tasks_for(source, 3)
    outcomes = worker.process_batch(inbound(tasks))
    assert worker.batch_sizes == [3, 1, 2, 1, 1]
    assert [(o.action, o.kind, o.reason) for o in outcomes] == [("ack", "fallback", "oom")] * 3
    assert results(pub) == []
    sent = forwarded(pub)
    assert [t.chunk for t in sent] == [t.chunk for t in tasks]
    assert all(t.path == "deepgram" and t.fallback_from == "gpu" and t.fallback_reason == "oom" for t in sent)
    assert worker.fallbacks == {"oom": 3}


def test_a_chunk_that_fails_alone_is_isolated(make_worker: Any, pub: RecordingPublisher, source: SourceRef) -> None:
    worker = make_worker(FakeEngine(fail_keys=["jtest/2"]))
    outcomes = worker.process_batch(inbound(tasks_for(source, 4)))
    assert [o.kind for o in outcomes] == ["result", "result", "fallback", "result"]
    assert [t.chunk.index for t in forwarded(pub)] == [2]
    assert forwarded(pub)[0].fallback_reason == "engine_error"
    assert sorted(r.chunk_index for r in results(pub)) == [0, 1, 3]
    assert worker.fallbacks == {"engine_error": 1}


def test_fallback_disabled_publishes_an_error_result(
    make_worker: Any, pub: RecordingPublisher, source: SourceRef
) -> None:
    worker = make_worker(FakeEngine(oom_above=0), enable_fallback=False)
    outcomes = worker.process_batch(inbound(tasks_for(source, 2)))
    assert [(o.action, o.kind) for o in outcomes] == [("ack", "error")] * 2
    got = results(pub)
    assert len(got) == 2 and all(r.error and "ENABLE_FALLBACK=false" in r.error and "oom" in r.error for r in got)
    assert forwarded(pub) == [] and not worker.fallbacks


def test_engine_unusable_mid_run_forwards_the_whole_batch_without_splitting(make_worker: Any,
                                                                            source: SourceRef) -> None:
    worker = make_worker(FakeEngine(unavailable=True))
    outcomes = worker.process_batch(inbound(tasks_for(source, 3)))
    assert worker.batch_sizes == [3]
    assert [o.kind for o in outcomes] == ["fallback"] * 3
    assert worker.fallbacks == {"engine_unavailable": 3}


def test_engine_that_never_loaded_forwards_everything(make_worker: Any, store: FlakyStore,
                                                      source: SourceRef) -> None:
    worker = make_worker(None, engine_unavailable_reason="NeMo not installed")
    outcomes = worker.process_batch(inbound(tasks_for(source, 2)))
    assert [o.kind for o in outcomes] == ["fallback"] * 2
    assert store.downloads == 0  # nothing to decode for
    assert worker.fallbacks == {"engine_unavailable": 2}
    with pytest.raises(EngineUnavailableError, match="ENABLE_FALLBACK=false"):
        make_worker(None, enable_fallback=False)


def test_bad_audio_is_a_permanent_error_result(
    make_worker: Any, pub: RecordingPublisher, store: FlakyStore, source: SourceRef
) -> None:
    worker = make_worker(FakeEngine())
    garbage = upload(store, "broken.mp3", b"\x00\x01not audio" * 500)
    good = tasks_for(source, 1, job="jgood")
    bad = tasks_for(garbage, 2, job="jbad")
    outcomes = worker.process_batch(inbound(good + bad))
    assert [(o.action, o.kind) for o in outcomes] == [("ack", "result"), ("ack", "error"), ("ack", "error")]
    by_job = {(r.job_id, r.chunk_index): r for r in results(pub)}
    assert by_job[("jgood", 0)].error is None
    err = by_job[("jbad", 1)].error
    assert err is not None and "gs://uploads/broken.mp3" in err and "chunk 1" in err


def test_span_after_the_end_of_audio_is_an_error_result(
    make_worker: Any, pub: RecordingPublisher, source: SourceRef
) -> None:
    worker = make_worker(FakeEngine())
    tasks = tasks_for(source, 5)  # the source holds 6 s; chunk 4 spans 7.5-10 s
    worker.process_batch(inbound(tasks[4:]))
    [res] = results(pub)
    assert res.error is not None and "ends before" in res.error


JOB = "j" + "0" * 20


def test_chunks_of_a_job_that_already_ended_are_skipped_unpaid(
    make_worker: Any, pub: RecordingPublisher, store: FlakyStore, source: SourceRef
) -> None:
    jobs = JobStore(store, "state")
    jobs.update_status(JOB, lambda _: JobStatus(job_id=JOB, state="failed", reason="chunk 1 of 3 was corrupt"))
    engine = FakeEngine()
    worker = make_worker(engine, ended=EndedJobs(jobs))
    downloads = store.downloads
    outcomes = worker.process_batch(inbound(tasks_for(source, 3, job=JOB)))
    assert [(o.action, o.kind, o.reason) for o in outcomes] == [("ack", "skipped", "job failed")] * 3
    assert engine.calls == [] and pub.messages == [] and store.downloads == downloads


def test_a_malformed_task_whose_job_id_can_be_read_fails_that_job(make_worker: Any, pub: RecordingPublisher) -> None:
    worker = make_worker(FakeEngine())
    body = json.dumps({"job_id": JOB, "chunk": {"index": "zero"}}).encode()
    [outcome] = worker.process_batch([Message(message_id="m1", data=body)])
    assert (outcome.action, outcome.kind) == ("ack", "malformed")
    [(topic, failed, attrs)] = pub.messages
    assert topic == names.TOPIC_ASR_RESULTS and attrs == {ATTR_TYPE: TYPE_JOB_FAILED, "job_id": JOB}
    assert isinstance(failed, JobFailed) and failed.job_id == JOB
    assert failed.reason.startswith("a chunk task for this job could not be read (malformed ChunkTask")


def test_a_task_from_a_newer_release_is_nacked_untouched(
    make_worker: Any, pub: RecordingPublisher, source: SourceRef
) -> None:
    engine = FakeEngine()
    worker = make_worker(engine)
    newer = tasks_for(source, 1)[0].model_copy(update={"schema_version": 2})
    [outcome] = worker.process_batch(inbound([newer]))
    assert (outcome.action, outcome.kind) == ("nack", "retry") and "newer than this reader" in (outcome.reason or "")
    assert engine.calls == [] and pub.messages == []


def test_malformed_messages_are_acked_and_dropped(make_worker: Any, pub: RecordingPublisher, source: SourceRef) -> None:
    worker = make_worker(FakeEngine())
    msgs = [Message(message_id="bad1", data=b"{not json"), Message(message_id="bad2", data=b'{"job_id": "x"}'), *inbound(tasks_for(source, 1))]
    outcomes = worker.process_batch(msgs)
    assert [(o.message_id, o.action, o.kind) for o in outcomes] == [
        ("bad1", "ack", "malformed"), ("bad2", "ack", "malformed"), ("mjtest-0", "ack", "result")]
    assert len(pub.messages) == 1


def test_transient_publish_failure_nacks(make_worker: Any, source: SourceRef) -> None:
    pub = FlakyPublisher(fail_topics=[names.TOPIC_ASR_RESULTS, names.TOPIC_ASR_DEEPGRAM])
    worker = make_worker(FakeEngine(fail_keys=["jtest/1"]), pub)
    outcomes = worker.process_batch(inbound(tasks_for(source, 2)))
    assert [(o.action, o.kind) for o in outcomes] == [("nack", "retry")] * 2
    assert not worker.fallbacks  # a fallback counts only once it was published


def test_transient_storage_failure_nacks(
    make_worker: Any, pub: RecordingPublisher, store: FlakyStore, source: SourceRef
) -> None:
    engine = FakeEngine()
    worker = make_worker(engine)
    store.fail = True
    outcomes = worker.process_batch(inbound(tasks_for(source, 2)))
    assert [(o.action, o.kind) for o in outcomes] == [("nack", "retry")] * 2
    assert pub.messages == [] and engine.calls == []


# --- the inference thread ---


class Handle:
    """A received message's ack/nack, checking that the message's effect was published first."""

    def __init__(self, msg_id: str, publisher: RecordingPublisher, log: list[tuple[str, str, float]]) -> None:
        self.msg_id = msg_id
        self.publisher = publisher
        self.log = log
        self.published_at_ack: int | None = None

    def ack(self) -> None:
        self.published_at_ack = len(self.publisher.messages)
        self.log.append((self.msg_id, "ack", time.monotonic()))

    def nack(self) -> None:
        self.log.append((self.msg_id, "nack", time.monotonic()))


def wait_for(cond: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_thread_honours_batch_size_and_acks_after_publishing(
    make_worker: Any, pub: RecordingPublisher, source: SourceRef
) -> None:
    settled: list[tuple[str, str, float]] = []
    engine = FakeEngine(delay_s=0.05)
    worker = make_worker(engine, gpu_batch_size=3, gpu_batch_linger_ms=100)
    worker.start(pull=False)
    handles = []
    for msg in inbound(tasks_for(source, 7, chunk_s=0.8, overlap_s=0.1)):
        handles.append(Handle(msg.message_id, pub, settled))
        worker.submit(msg, handles[-1])
    wait_for(lambda: len(settled) == 7)
    assert [len(c) for c in engine.calls] == [3, 3, 1]
    assert all(action == "ack" for _, action, _ in settled)
    published_ids = [f"m{m.job_id}-{m.chunk_index}" for m in results(pub)]  # type: ignore[attr-defined]
    for h in handles:
        assert h.published_at_ack is not None
        assert h.msg_id in published_ids[: h.published_at_ack], "acked before its result was published"


def test_thread_lingers_for_a_partial_batch(make_worker: Any, pub: RecordingPublisher, source: SourceRef) -> None:
    settled: list[tuple[str, str, float]] = []
    engine = FakeEngine()
    worker = make_worker(engine, gpu_batch_size=8, gpu_batch_linger_ms=400)
    worker.start(pull=False)
    msgs = inbound(tasks_for(source, 3))
    t0 = time.monotonic()
    worker.submit(msgs[0], Handle(msgs[0].message_id, pub, settled))
    time.sleep(0.1)
    worker.submit(msgs[1], Handle(msgs[1].message_id, pub, settled))
    wait_for(lambda: len(settled) == 2)
    assert [len(c) for c in engine.calls] == [2]  # the second joined the first's batch
    assert settled[0][2] - t0 >= 0.39  # and the batch waited out the linger
    worker.submit(msgs[2], Handle(msgs[2].message_id, pub, settled))
    wait_for(lambda: len(settled) == 3)
    assert [len(c) for c in engine.calls] == [2, 1]


def test_next_batch_is_fetched_and_decoded_while_the_engine_runs(make_worker: Any, pub: RecordingPublisher,
                                                                 store: FlakyStore, source: SourceRef) -> None:
    settled: list[tuple[str, str, float]] = []
    other = upload(store, "other.wav", wav_bytes(2.0))
    engine = FakeEngine(delay_s=1.0)
    worker = make_worker(engine, gpu_batch_size=1, gpu_batch_linger_ms=0)
    worker.start(pull=False)
    [first] = inbound(tasks_for(source, 1))
    [second] = inbound(tasks_for(other, 1, job="jother"))
    worker.submit(first, Handle(first.message_id, pub, settled))
    wait_for(lambda: len(engine.calls) == 1)
    worker.submit(second, Handle(second.message_id, pub, settled))
    wait_for(lambda: store.downloads == 2, timeout_s=0.8)  # fetched while the first batch is still in the engine
    assert len(engine.calls) == 1 and settled == []
    wait_for(lambda: len(settled) == 2)
    assert [a for _, a, _ in settled] == ["ack", "ack"]


def test_stop_finishes_the_batch_in_hand_and_nacks_the_queue(
    make_worker: Any, pub: RecordingPublisher, source: SourceRef
) -> None:
    settled: list[tuple[str, str, float]] = []
    engine = FakeEngine(delay_s=0.5)
    worker = make_worker(engine, gpu_batch_size=2, gpu_batch_linger_ms=2000)
    worker.start(pull=False)
    for msg in inbound(tasks_for(source, 5)):
        worker.submit(msg, Handle(msg.message_id, pub, settled))
    wait_for(lambda: len(engine.calls) == 1)
    worker.stop(timeout_s=10)
    actions = {mid: action for mid, action, _ in settled}
    assert actions == {"mjtest-0": "ack", "mjtest-1": "ack", "mjtest-2": "nack", "mjtest-3": "nack",
                       "mjtest-4": "nack"}
    assert len(results(pub)) == 2 and engine.closed
    late: list[tuple[str, str, float]] = []
    worker.submit(inbound(tasks_for(source, 1))[0], Handle("late", pub, late))
    assert [a for _, a, _ in late] == ["nack"]


# --- Pub/Sub wiring, health, signals ---


class FakeSubscriber:
    """Speaks the unary-pull calls the worker makes; ``fail_with`` makes the next pull fail for good."""

    def __init__(self) -> None:
        self.inbox: list[Any] = []
        self.pulled_from: set[str] = set()
        self.acked: list[str] = []
        self.deadlines: list[tuple[list[str], int]] = []
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()

    def put(self, msg: Message, ack_id: str) -> None:
        received = types.SimpleNamespace(ack_id=ack_id, delivery_attempt=1, message=types.SimpleNamespace(
            data=msg.data, attributes={"k": "v"}, message_id=msg.message_id))
        with self._lock:
            self.inbox.append(received)

    def pull(self, request: dict[str, Any], timeout: float) -> Any:
        self.pulled_from.add(request["subscription"])
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            batch, self.inbox = self.inbox[: request["max_messages"]], self.inbox[request["max_messages"]:]
        if not batch:
            time.sleep(0.02)
        return types.SimpleNamespace(received_messages=batch)

    def acknowledge(self, request: dict[str, Any]) -> None:
        self.acked.extend(request["ack_ids"])

    def modify_ack_deadline(self, request: dict[str, Any]) -> None:
        self.deadlines.append((list(request["ack_ids"]), request["ack_deadline_seconds"]))


def get_health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_pull_health_and_failure(make_worker: Any, pub: RecordingPublisher, source: SourceRef) -> None:
    sub = FakeSubscriber()
    worker = make_worker(FakeEngine(), subscriber=sub, health_port=0, gpu_batch_size=5, gpu_batch_linger_ms=0)
    worker.start()
    wait_for(lambda: sub.pulled_from == {f"projects/parascribe-local/subscriptions/{names.SUB_ASR_GPU}"})
    assert get_health(worker.health_port) == (200, "ok")

    sub.put(inbound(tasks_for(source, 1))[0], "ack-1")
    wait_for(lambda: sub.acked == ["ack-1"])
    assert len(results(pub)) == 1

    sub.fail_with = NotFound("subscription deleted")
    wait_for(lambda: get_health(worker.health_port)[0] == 503)


def test_a_message_nacked_at_stop_gets_a_zero_deadline(make_worker: Any, source: SourceRef) -> None:
    sub = FakeSubscriber()
    engine = FakeEngine(delay_s=1.0)
    worker = make_worker(engine, subscriber=sub, gpu_batch_size=1, gpu_batch_linger_ms=0)
    worker.start()
    for i, msg in enumerate(inbound(tasks_for(source, 3))):
        sub.put(msg, f"ack-{i}")
    wait_for(lambda: len(engine.calls) == 1)
    worker.stop(timeout_s=10)
    assert sub.acked == ["ack-0"], "the batch in hand finishes"
    assert [ids for ids, seconds in sub.deadlines if seconds == 0] == [["ack-1"]], "the queued one is nacked"
    assert [m.ack_id for m in sub.inbox] == ["ack-2"], "at most 2 × GPU_BATCH_SIZE messages are leased at once"


def test_degraded_worker_is_healthy_and_says_so(make_worker: Any) -> None:
    worker = make_worker(None, subscriber=FakeSubscriber(), health_port=0, engine_unavailable_reason="no NeMo")
    worker.start()
    status, body = get_health(worker.health_port)
    assert status == 200 and "forwarding to Deepgram" in body and "no NeMo" in body


def test_sigterm_stops_gracefully_with_exit_code_zero(make_worker: Any) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    engine = FakeEngine()
    sub = FakeSubscriber()
    worker = make_worker(engine, subscriber=sub)
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        code = worker.run_forever()
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    assert code == 0 and engine.closed and worker.ready is False


def test_outcome_is_a_plain_record() -> None:
    o = Outcome("m1", "ack", "result")
    assert o.published == [] and o.reason is None


# --- engine selection ---


class StubOffline:
    name: EngineName = "offline"

    def __init__(self, model_path: str | None = None, cpu_threads: int = 2) -> None:
        self.model_path = model_path

    def transcribe(self, batch: Sequence[AudioChunk]) -> list[EngineOutput]:
        return [EngineOutput() for _ in batch]

    def close(self) -> None:
        pass


class StubParakeetModule:
    """Stands in for parascribe.engines.parakeet.engine (brief D's module) at the boundary select.py uses."""

    def __init__(self, available: bool, loads: bool = True) -> None:
        self.available = available
        self.loads = loads
        stub = self

        class ParakeetEngine(StubOffline):
            name: EngineName = "parakeet"

            @classmethod
            def from_settings(cls, settings: Settings) -> ParakeetEngine:
                if not stub.loads:
                    raise EngineUnavailableError("CUDA driver too old")
                return cls()

        self.ParakeetEngine = ParakeetEngine

    def weights_available(self, settings: Settings) -> bool:
        return self.available


@pytest.fixture
def stub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import parascribe.engines.offline as offline

    monkeypatch.setattr(offline, "OfflineEngine", StubOffline)


def test_select_offline(stub_offline: None) -> None:
    from parascribe.engines.select import load_engine

    engine = load_engine(settings(asr_engine="offline", offline_model_path="/models/whisper"))
    assert isinstance(engine, StubOffline) and engine.model_path == "/models/whisper"


def test_select_auto_without_weights_warns_and_uses_offline(stub_offline: None, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from parascribe.engines import select

    monkeypatch.setattr(select, "_parakeet_module", lambda: StubParakeetModule(available=False))
    with caplog.at_level("WARNING", logger="parascribe.engines.select"):
        engine = select.load_engine(settings(asr_engine="auto", parakeet_model_name="/nope/model.nemo"))
    assert engine.name == "offline"
    [record] = [r for r in caplog.records if r.name == "parascribe.engines.select"]
    assert record.levelname == "WARNING" and "OFFLINE" in record.message and "/nope/model.nemo" in record.message


def test_select_auto_with_weights_and_explicit_parakeet(monkeypatch: pytest.MonkeyPatch) -> None:
    from parascribe.engines import select

    monkeypatch.setattr(select, "_parakeet_module", lambda: StubParakeetModule(available=True))
    assert select.load_engine(settings(asr_engine="auto")).name == "parakeet"
    assert select.load_engine(settings(asr_engine="parakeet")).name == "parakeet"
    monkeypatch.setattr(select, "_parakeet_module", lambda: StubParakeetModule(available=True, loads=False))
    with pytest.raises(EngineUnavailableError, match="CUDA driver"):
        select.load_engine(settings(asr_engine="parakeet"))
    monkeypatch.setattr(select, "_parakeet_module", lambda: None)
    with pytest.raises(EngineUnavailableError, match="cannot be imported"):
        select.load_engine(settings(asr_engine="parakeet"))


def test_select_auto_with_the_real_parakeet_module_and_no_weights(stub_offline: None) -> None:
    from parascribe.engines import select

    module = select._parakeet_module()
    if module is None:
        pytest.skip("parascribe.engines.parakeet.engine is not importable here")
    engine = select.load_engine(settings(asr_engine="auto", parakeet_model_name="/definitely/missing.nemo"))
    assert engine.name == "offline"


# --- headers that lie, packets that will not decode ---


def _mp3_task(source: SourceRef, claimed_s: float, index: int = 0, n: int = 1) -> ChunkTask:
    audio = AudioInfo(duration_s=claimed_s, sample_rate=44_100, channels=1, codec="mp3", container="mp3")
    spec = ChunkSpec(index=index, start_s=0.0, end_s=claimed_s, core_start_s=0.0, core_end_s=claimed_s)
    return ChunkTask(job_id="jmp3", source=source, audio=audio, chunk=spec, n_chunks=n, path="gpu")


def test_a_last_chunk_past_its_cap_fails_the_job_instead_of_decoding_the_tail(
    make_worker: Any, pub: RecordingPublisher, store: FlakyStore
) -> None:
    from tests.bad_audio import claimed_seconds, lying_mp3

    source = upload(store, "lying.mp3", lying_mp3())  # the header says 0.57 s; it holds 120 s
    engine = FakeEngine()
    worker = make_worker(engine)
    outcomes = worker.process_batch(inbound([_mp3_task(source, claimed_seconds())]))
    assert [(o.action, o.kind) for o in outcomes] == [("ack", "error")]
    [res] = results(pub)
    assert res.error is not None and "more audio than its header claims" in res.error
    assert "MAX_AUDIO_MINUTES" in res.error
    assert engine.calls == [] and forwarded(pub) == []


def test_corrupt_packets_are_skipped_and_reported_on_the_result(
    make_worker: Any, pub: RecordingPublisher, store: FlakyStore
) -> None:
    from tests.bad_audio import damage, mp3_bytes

    source = upload(store, "damaged.mp3", damage(mp3_bytes(20.0), (0.3, 0.5, 0.7), 3000))
    worker = make_worker(FakeEngine())
    outcomes = worker.process_batch(inbound([_mp3_task(source, 20.0)]))
    assert [o.kind for o in outcomes] == ["result"]
    [res] = results(pub)
    assert res.error is None and res.words and res.corrupt_packets > 0
    assert res.audio_seconds > 18.0

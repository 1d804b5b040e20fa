"""The worker's batch with a segmenter: segments of every chunk batched by length, words in file time,
speech and skipped seconds reported, chunks without speech empty; and how the merger reports them."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parascribe import names
from parascribe.asr import units
from parascribe.asr.batch import BatchProcessor
from parascribe.asr.segments import Segmenter, Speech
from parascribe.audio import SAMPLE_RATE
from parascribe.config import load_settings
from parascribe.contracts import AudioInfo, ChunkResult, ChunkSpec, ChunkTask, EngineName, JobSummary, SourceRef, Word
from parascribe.costs import Prices
from parascribe.engines.base import AudioChunk, EngineOutput
from parascribe.errors import EngineError
from parascribe.gcp.pubsub import Message
from parascribe.gcp.source_cache import SourceCache
from parascribe.merger.formats import NO_SPEECH_NOTE, to_json
from parascribe.merger.stitch import Transcript
from parascribe.merger.summary import summarise
from tests.fakes import MemoryStore, RecordingPublisher
from tests.stand_in_vad import loud_windows

SR = SAMPLE_RATE
# (start, end) seconds of "speech" (a loud tone) in a 40 s file; 18-40 s is silent apart from 30-31 s.
TONES = [(1.0, 4.0), (4.5, 9.0), (12.0, 16.0), (30.0, 31.0)]
DURATION_S = 40.0

Rig = tuple[MemoryStore, RecordingPublisher, SourceRef, list[ChunkTask]]


class LengthEngine:
    """One word per whole second of each input, in file time; records what it was given."""

    name: EngineName = "parakeet"

    def __init__(self, fail_keys: Sequence[str] = ()) -> None:
        self.calls: list[list[AudioChunk]] = []
        self.fail_keys = set(fail_keys)

    def transcribe(self, batch: Sequence[AudioChunk]) -> list[EngineOutput]:
        self.calls.append(list(batch))
        if any(c.key in self.fail_keys for c in batch):
            raise EngineError("decoder produced NaNs")
        return [EngineOutput(words=[Word(text=f"w{k}", start=c.offset_s + k + 0.2, end=c.offset_s + k + 0.6)
                                    for k in range(int(c.duration_s))], text="x") for c in batch]

    def close(self) -> None: ...


def wav() -> bytes:
    audio = np.zeros(int(DURATION_S * SR), np.float32)
    t = np.arange(len(audio)) / SR
    for s, e in TONES:
        audio[int(s * SR): int(e * SR)] = 0.3 * np.sin(2 * np.pi * 220 * t[int(s * SR): int(e * SR)])
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV")
    return buf.getvalue()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    store, pub = MemoryStore(), RecordingPublisher()
    data = wav()
    gen = store.write("uploads", "talk.wav", data, content_type="audio/wav")
    source = SourceRef(bucket="uploads", name="talk.wav", generation=str(gen), size=len(data))
    audio = AudioInfo(duration_s=DURATION_S, sample_rate=SR, channels=1, codec="pcm_s16le", container="wav")
    spans = [(0.0, 20.0, 0.0, 19.0), (18.0, 29.0, 19.0, 28.0), (27.0, 40.0, 28.0, 40.0)]
    tasks = [ChunkTask(job_id="jseg", source=source, audio=audio, n_chunks=3, path="gpu",
                       chunk=ChunkSpec(index=i, start_s=s, end_s=e, core_start_s=cs, core_end_s=ce))
             for i, (s, e, cs, ce) in enumerate(spans)]
    return store, pub, source, tasks


def run(rig: Rig, engine: LengthEngine, tmp_path: Path, detect: Callable[[np.ndarray], Speech] = loud_windows,
        **kw: object) -> dict[int, ChunkResult]:
    store, pub, _, tasks = rig
    settings = load_settings(**({"gpu_batch_size": 1, "segment_batch_size": 2, "vad_speech_pad_ms": 0,
                                 "segment_max_seconds": 6} | kw))
    proc = BatchProcessor(settings, engine, pub, SourceCache(store, tmp_path / "c", 10_000_000),
                          segmenter=Segmenter.from_settings(settings, detect))
    try:
        outcomes = proc.process_batch([Message(message_id=f"m{t.chunk.index}", data=t.to_bytes()) for t in tasks])
    finally:
        proc.close()
    assert all(o.action == "ack" for o in outcomes)
    return {m.chunk_index: m for m in pub.on(names.TOPIC_ASR_RESULTS) if isinstance(m, ChunkResult)}


def test_segments_of_all_chunks_are_batched_by_length_in_file_time(rig: Rig, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(units, "MIN_LENGTH_RATIO", 0.0)  # cut by count only, so the 1 s segment joins a call
    engine = LengthEngine()
    results = run(rig, engine, tmp_path)
    sent = [c for call in engine.calls for c in call]
    lengths = [len(c.samples) for c in sent]
    assert lengths == sorted(lengths, reverse=True), "segments go longest first"
    assert all(len(call) <= 2 for call in engine.calls), "at most SEGMENT_BATCH_SIZE segments per call"
    assert max(len(call) for call in engine.calls) == 2, "GPU_BATCH_SIZE (messages) does not limit segments"
    assert {c.key.split("#")[0] for c in engine.calls[-1]} == {"jseg/0", "jseg/2"}, "chunks share a batch"
    assert all(c.duration_s <= 6.0 + 1e-9 for c in sent)
    # Chunk 0 (0-20 s): speech at 1-4, 4.5-9 (one run of 8 s, cut at the 0.5 s pause) and 12-16.
    r0 = results[0]
    assert r0.error is None and r0.speech_s == pytest.approx(3 + 4.5 + 4, abs=0.1)
    assert r0.skipped_s == pytest.approx(20 - r0.speech_s, abs=0.01)
    starts = [w.start for w in r0.words]
    assert starts == sorted(starts)
    # file time: each segment's words start 0.2 s after its own start in the file
    assert pytest.approx(1.2, abs=0.05) == starts[0]
    assert any(abs(s - 12.2) < 0.05 for s in starts)
    assert not any(9.1 < s < 11.9 for s in starts), "no words in the pause"
    # Chunk 1 (18-29 s) holds no speech: an empty result, not an error, and the engine never saw it.
    r1 = results[1]
    assert r1.error is None and r1.words == [] and r1.speech_s == 0 and r1.skipped_s == pytest.approx(11.0)
    assert not any(c.key.startswith("jseg/1") for c in sent)
    # Chunk 2 (27-40 s): the one second of tone at 30 s.
    r2 = results[2]
    assert r2.speech_s == pytest.approx(1.0, abs=0.07)
    assert [w.text for w in r2.words] == ["w0"] and r2.words[0].start == pytest.approx(30.2, abs=0.05)
    # The batch's time goes to the chunks that sent audio, by how much they sent.
    assert r1.processing_seconds == 0.0
    assert r0.processing_seconds > r2.processing_seconds > 0


def test_an_engine_call_never_pads_an_input_by_more_than_a_quarter(rig: Rig, tmp_path: Path) -> None:
    engine = LengthEngine()
    run(rig, engine, tmp_path, segment_batch_size=64)
    # Segments of about 4.5, 4, 3 and 1 s: 3 s would pad to 4.5 s (a third), so it starts a new call.
    lengths = [[round(c.duration_s) for c in call] for call in engine.calls]
    assert lengths == [[5, 4], [3], [1]], lengths
    assert all(min(len(c.samples) for c in call) >= 0.75 * max(len(c.samples) for c in call) for call in engine.calls)


class WindowEngine(LengthEngine):
    """Like Whisper: reads fixed windows, so the worker packs segments into inputs of at most 10 s."""

    window_seconds = 10.0


def test_a_window_engine_gets_segments_packed_with_word_times_mapped_back(rig: Rig, tmp_path: Path) -> None:
    engine = WindowEngine()
    results = run(rig, engine, tmp_path, segment_batch_size=8)
    sent = {c.key: c for call in engine.calls for c in call}
    # Chunk 0's segments (about 1-4, 4.5-9 and 12-16 s): the first two share a window, the third is alone.
    assert sorted(k for k in sent if k.startswith("jseg/0")) == ["jseg/0#w0", "jseg/0#w1"]
    assert sent["jseg/0#w0"].duration_s == pytest.approx(3 + 4.5, abs=0.1)
    assert sent["jseg/0#w1"].offset_s == pytest.approx(12.0, abs=0.05)
    assert all(c.duration_s <= 10.0 for c in sent.values())
    # The engine said w0..w6 at k + 0.2 s into the window; the 0.5 s pause between the pieces is not
    # in the window, so the words after it move by their own piece's shift.
    r0 = results[0]
    starts = [w.start for w in r0.words]
    assert starts == pytest.approx([1.2, 2.2, 3.2, 4.7, 5.7, 6.7, 7.7, 12.2, 13.2, 14.2, 15.2], abs=0.05)
    assert all(w.end > w.start for w in r0.words)
    assert r0.speech_s == pytest.approx(3 + 4.5 + 4, abs=0.1)
    assert results[1].words == [] and results[2].words[0].start == pytest.approx(30.2, abs=0.05)


def test_a_failing_segment_sends_its_chunk_to_deepgram(rig: Rig, tmp_path: Path) -> None:
    engine = LengthEngine(fail_keys=["jseg/2#0"])
    _, pub, _, _ = rig
    results = run(rig, engine, tmp_path)
    assert sorted(results) == [0, 1]
    forwarded = pub.on(names.TOPIC_ASR_DEEPGRAM)
    assert [t.chunk.index for t in forwarded if isinstance(t, ChunkTask)] == [2]


def test_a_failing_vad_sends_the_chunk_whole(rig: Rig, tmp_path: Path) -> None:
    def broken(samples: np.ndarray) -> Speech:
        raise RuntimeError("onnxruntime: bad input")

    engine = LengthEngine()
    results = run(rig, engine, tmp_path, detect=broken, gpu_batch_size=4)
    assert engine.calls and [len(c) for c in engine.calls] == [3]
    assert results[0].speech_s == pytest.approx(20.0) and results[0].skipped_s == 0


def test_summary_and_transcript_report_speech_and_skipped_seconds() -> None:
    def result(i: int, speech: float | None, skipped: float, error: str | None = None) -> ChunkResult:
        return ChunkResult(job_id="j", chunk_index=i, n_chunks=3, engine="parakeet", path="gpu",
                           audio_seconds=10.0, processing_seconds=1.0, speech_s=speech, skipped_s=skipped, error=error)

    prices = Prices(deepgram_per_second=0.0043 / 60, gpu_instance_per_second=0.0003)
    summary = summarise(None, [result(0, 4.0, 6.0), result(1, None, 0.0), result(2, 0.0, 10.0, error="x")], prices)
    assert summary.speech_s == 14.0 and summary.skipped_s == 6.0
    empty = Transcript(words=[], segments=[], duration_s=10.0)
    meta = json.loads(to_json(empty, "j", None, JobSummary(speech_s=0.0, skipped_s=10.0)))["metadata"]
    assert meta["speech_seconds"] == 0.0 and meta["skipped_seconds"] == 10.0 and meta["note"] == NO_SPEECH_NOTE
    meta = json.loads(to_json(empty, "j", None, summary))["metadata"]
    assert meta["speech_seconds"] == 14.0 and "note" not in meta
    # old results without the fields still parse, as all speech
    old = ChunkResult.model_validate_json(result(0, 1.0, 1.0).model_dump_json(exclude={"speech_s", "skipped_s"}))
    assert old.speech_s is None and old.skipped_s == 0.0

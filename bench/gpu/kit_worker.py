"""The worker's real batch path (:class:`parascribe.asr.batch.BatchProcessor`) on a test rig, no Pub/Sub.

Chunk tasks of one WAV file in an in-memory store go through the processor as the worker hands them over:
decode threads, the engine, OOM halving, results published with words in file time. :func:`worker_check`
runs the tiny test model (``tests/nemo_tiny.py``) loaded through ``ParakeetEngine.from_settings``, the
worker's own loading path, with chunks whole and cut into speech segments by a stand-in VAD, and checks
that every word lies inside its chunk's span in file time. :func:`process` is also what the forced-OOM
mode of ``run.py`` drives with the full-size model.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
SPEECH = [(1.0, 9.0), (12.0, 16.0), (28.0, 36.0)]
"""(start, end) seconds of the stand-in speech in the worker check's 40-s file; silence elsewhere."""
CHUNKS = [(0.0, 20.0, 0.0, 19.0), (18.0, 29.0, 19.0, 28.0), (27.0, 40.0, 28.0, 40.0)]
"""(start, end, core start, core end) of its three chunks, overlapping as the router plans them."""


def settings(**overrides: Any) -> Any:
    """The process settings with ``overrides``, leaving out names this release does not know."""
    from parascribe.config import Settings, load_settings

    return load_settings(**{k: v for k, v in overrides.items() if k in Settings.model_fields})


@dataclass
class Rig:
    """One WAV file in an in-memory store and the chunk tasks the router would plan for it."""

    store: Any
    tasks: list[Any]
    publisher: Any = None
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpu-kit-cache-")))


def make_rig(audio: np.ndarray, chunks: Sequence[tuple[float, float, float, float]], job_id: str) -> Rig:
    """Store ``audio`` as ``uploads/<job_id>.wav`` and plan one task per ``(start, end, core_start, core_end)``."""
    import soundfile as sf

    from parascribe.contracts import AudioInfo, ChunkSpec, ChunkTask, SourceRef
    from tests.fakes import MemoryStore

    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    store = MemoryStore()
    gen = store.write("uploads", f"{job_id}.wav", data, content_type="audio/wav")
    source = SourceRef(bucket="uploads", name=f"{job_id}.wav", generation=str(gen), size=len(data))
    info = AudioInfo(duration_s=len(audio) / SAMPLE_RATE, sample_rate=SAMPLE_RATE, channels=1, codec="pcm_s16le",
                     container="wav")
    tasks = [ChunkTask(job_id=job_id, source=source, audio=info, n_chunks=len(chunks), path="gpu",
                       chunk=ChunkSpec(index=i, start_s=s, end_s=e, core_start_s=cs, core_end_s=ce))
             for i, (s, e, cs, ce) in enumerate(chunks)]
    return Rig(store, tasks)


def process(rig: Rig, engine: Any, cfg: Any, segmenter: Any = None) -> dict[str, Any]:
    """Run every task of ``rig`` through one ``BatchProcessor.process_batch`` call; the processor closes the engine.

    Returns:
        ``outcomes`` (kind per message), ``results`` (ChunkResult by chunk index), ``batch_sizes`` (every
        engine call, retried halves included), ``fallbacks``, ``seconds``.
    """
    from parascribe import names
    from parascribe.asr.batch import BatchProcessor
    from parascribe.contracts import ChunkResult
    from parascribe.gcp.pubsub import Message
    from parascribe.gcp.source_cache import SourceCache
    from tests.fakes import RecordingPublisher

    rig.publisher = RecordingPublisher()
    proc = BatchProcessor(cfg, engine, rig.publisher, SourceCache(rig.store, rig.cache_dir, 2**31),
                          segmenter=segmenter)
    messages = [Message(message_id=f"m{t.chunk.index}", data=t.to_bytes()) for t in rig.tasks]
    start = time.perf_counter()
    try:
        outcomes = proc.process_batch(messages)
    finally:
        seconds = time.perf_counter() - start
        proc.close()
    results = {m.chunk_index: m for m in rig.publisher.on(names.TOPIC_ASR_RESULTS) if isinstance(m, ChunkResult)}
    return {
        "outcomes": [o.kind for o in outcomes],
        "results": results,
        "batch_sizes": list(proc.batch_sizes),
        "fallbacks": dict(proc.fallbacks),
        "seconds": seconds,
    }


def energy_vad(samples: np.ndarray) -> Any:
    """A stand-in VAD (Silero needs faster-whisper's weights): ``tests.stand_in_vad.loud_windows``."""
    from tests.stand_in_vad import loud_windows

    return loud_windows(samples)


def speechy_file(seconds: float = 40.0) -> np.ndarray:
    """Silence with the tiny model's favourite noise (``tests.nemo_tiny.noise``) where :data:`SPEECH` says."""
    from tests.nemo_tiny import noise

    audio = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    for k, (s, e) in enumerate(SPEECH):
        piece = noise(e - s, seed=k, level=0.2)
        audio[int(s * SAMPLE_RATE): int(s * SAMPLE_RATE) + len(piece)] = piece
    return audio


def summarise(run: dict[str, Any], tasks: Sequence[Any]) -> tuple[dict[str, Any], list[str]]:
    """Per chunk: words, first and last word in file time; and every check that failed."""
    failed: list[str] = []
    chunks: dict[str, Any] = {}
    if any(kind != "result" for kind in run["outcomes"]):
        failed.append(f"not every task ended in a result: {run['outcomes']}")
    for task in tasks:
        spec = task.chunk
        result = run["results"].get(spec.index)
        if result is None or result.error:
            failed.append(f"chunk {spec.index}: {'no result' if result is None else result.error}")
            continue
        words = result.words
        starts = [w.start for w in words]
        if starts != sorted(starts):
            failed.append(f"chunk {spec.index}: words out of order")
        outside = [w for w in words if w.start < spec.start_s - 1e-6 or w.end > spec.end_s + 1e-6]
        if outside:
            failed.append(f"chunk {spec.index}: {len(outside)} words outside {spec.start_s}-{spec.end_s} s")
        chunks[str(spec.index)] = {
            "span_s": [spec.start_s, spec.end_s],
            "words": len(words),
            "first_word": _word(words[0]) if words else None,
            "last_word": _word(words[-1]) if words else None,
            "speech_s": result.speech_s,
            "skipped_s": result.skipped_s,
            "processing_s": round(result.processing_seconds, 3),
        }
    late = chunks.get(str(len(tasks) - 1))
    if late is not None and not late["words"]:
        failed.append("the last chunk, which holds speech, has no words")
    if late is not None and late["first_word"] and late["first_word"][1] < tasks[-1].chunk.start_s:
        failed.append("the last chunk's words are not in file time")
    return {"chunks": chunks, "batch_sizes": run["batch_sizes"], "seconds": round(run["seconds"], 3),
            "fallbacks": run["fallbacks"]}, failed


def _word(w: Any) -> list[Any]:
    """[text (random weights make long nonsense: cut to 16 characters), start, end] in file time."""
    return [w.text[:16], round(w.start, 2), round(w.end, 2)]


def worker_check(device: str, workdir: Path) -> dict[str, Any]:
    """The tiny model on ``device`` through the worker's loading path and BatchProcessor, whole and segmented.

    Raises:
        AssertionError: a check failed; the message lists every failure (the figures are in ``.partial``).
    """
    from parascribe.asr.segments import Segmenter
    from parascribe.engines.parakeet.engine import ParakeetEngine
    from tests.nemo_tiny import build_tiny_nemo

    start = time.perf_counter()
    path = build_tiny_nemo(workdir)
    cfg = settings(parakeet_model_name=str(path), asr_device=device, gpu_batch_size=4, segment_batch_size=4,
                   vad_speech_pad_ms=0, segment_max_seconds=6)
    audio = speechy_file()
    out: dict[str, Any] = {"model": "tests/nemo_tiny.py (EncDecRNNTBPEModel, TDT), via ParakeetEngine.from_settings",
                           "chunks_planned": [list(c[:2]) for c in CHUNKS], "speech_s": SPEECH}
    failed: list[str] = []
    for name, segmenter in (("whole", None), ("segmented", Segmenter.from_settings(cfg, energy_vad))):
        engine = ParakeetEngine.from_settings(cfg)
        out["engine_device"], out["precision"] = str(engine.device), engine.precision
        rig = make_rig(audio, CHUNKS, f"kit-{name}")
        summary, problems = summarise(process(rig, engine, cfg, segmenter), rig.tasks)
        out[name] = summary
        failed += [f"{name}: {p}" for p in problems]
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["checks_failed"] = failed
    if failed:
        err = AssertionError("; ".join(failed))
        err.partial = out  # type: ignore[attr-defined]
        raise err
    return out

"""Speech segmentation against fixed chunks, on a long synthetic recording, in one run.

Run: ``.venv/bin/python bench/vad_segmentation.py [--minutes 10] [--chunk-seconds 300] [--parakeet none|tiny|full]
[--batch-size 16] [--segment-batch-size 64]``.
Prints one JSON object on stdout.

The recording is built offline: sentences spoken by several espeak-ng voices at several rates,
pauses of 0.3-8 s between them, one long silence, a stretch of music (chords of sine tones, no
speech) and background noise under everything. The reference text and where every utterance
starts are known.

Both modes go through the worker's own code: chunks planned as the router plans them
(``plan_chunks``), decoded, transcribed by :class:`~parascribe.asr.batch.BatchProcessor`, and
each chunk's words kept by the merger's rule (a word belongs to the core span holding its
midpoint). ``fixed`` sends each chunk whole (``VAD_ENABLED=false``); ``segmented`` runs Silero VAD
and sends speech segments of at most ``SEGMENT_MAX_SECONDS`` (packed into 29 s windows for the offline
engine, which always encodes 30 s windows). Reported per mode: word error rate,
words emitted inside the music and the long silence, utterance onset errors (median and worst),
seconds sent as speech and skipped, wall time and RTFx; and the ratios segmented / fixed.

``--parakeet tiny|full`` adds the same two modes for throughput only with the Parakeet engine (random
weights, so no WER): ``tiny`` is the test model, ``full`` the parakeet-tdt-0.6b-v2 architecture
(slow on a CPU: minutes per mode). GPU cost per audio hour uses each mode's measured RTFx.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _repo  # noqa: F401  (puts the repository root on sys.path for tests.*)
import numpy as np
import soundfile as sf

from parascribe.asr.app import load_segmenter
from parascribe.asr.batch import BatchProcessor
from parascribe.audio import SAMPLE_RATE, decode_span
from parascribe.config import Settings, load_settings
from parascribe.contracts import AudioInfo, ChunkResult, ChunkTask, SourceRef, Word, in_span
from parascribe.costs import Prices
from parascribe.engines.base import AsrEngine, AudioChunk, EngineOutput, window_seconds
from parascribe.gcp.pubsub import Message
from parascribe.gcp.source_cache import SourceCache
from parascribe.router.planner import plan_chunks
from tests.fakes import MemoryStore, RecordingPublisher
from tests.speech import speak, word_error_rate

SR = SAMPLE_RATE
VOICES = ["en", "en-us", "en-gb-x-rp", "en-us+f3", "en-gb-scotland", "en-us+m3"]
RATES = [140, 155, 170]
PAUSES_S = [0.3, 0.6, 1.0, 1.5, 2.5, 4.0, 8.0]
MUSIC_S = 90.0
SILENCE_S = 30.0
NOISE_STD = 0.004
TEXT = """The committee will meet again on Thursday to review the budget.
Please send the final report to everyone before the end of the week.
We moved the servers to the new data center last month.
The train to the airport leaves every twenty minutes.
She asked whether the contract could be signed by Friday.
Our sales grew in the spring but slowed down during the summer.
The museum opens at nine and closes at five in the evening.
He forgot his umbrella and walked home in the rain.
Fresh bread is delivered to the bakery every morning.
The children planted tomatoes and beans in the garden.
Remember to back up your files before you install the update.
The river flooded the lower fields after three days of storms.
A new bridge will connect the two halves of the city.
The doctor said the results of the test look normal.
They watched the sunset from the top of the hill.
The library has extended its opening hours for students.
We need two more volunteers for the event on Saturday.
The pilot announced that we would land twenty minutes early.
Coffee prices rose sharply after the poor harvest.
The engineers found the fault in the cooling system.""".splitlines()


@dataclass
class Utterance:
    text: str
    start_s: float
    end_s: float


@dataclass
class Recording:
    audio: np.ndarray
    utterances: list[Utterance]
    music: tuple[float, float]
    silence: tuple[float, float]

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SR

    @property
    def reference(self) -> str:
        return " ".join(u.text for u in self.utterances)


def music(seconds: float) -> np.ndarray:
    """Chords of sine tones with harmonics, changing every half second: loud, tonal, no speech."""
    t = np.arange(int(seconds * SR)) / SR
    roots = (220.0, 261.6, 196.0, 246.9, 293.7, 174.6)
    out = np.zeros_like(t)
    step = SR // 2
    for i in range(0, len(t), step):
        root, seg = roots[(i // step) % len(roots)], t[i: i + step]
        env = np.minimum(1.0, np.arange(len(seg)) / 400)
        out[i: i + step] = env * sum(0.06 / h * np.sin(2 * np.pi * root * r * h * seg)
                                     for r in (1.0, 1.26, 1.5) for h in (1, 2, 3))
    return out.astype(np.float32)


def build_recording(minutes: float, workdir: Path, seed: int = 0) -> Recording:
    """At least ``minutes`` of audio: speech, pauses, a long silence and the music in the middle."""
    rng = np.random.default_rng(seed)
    target = minutes * 60
    pieces: list[np.ndarray] = [np.zeros(SR, np.float32)]
    at = SR
    utterances: list[Utterance] = []
    music_span = silence_span = (0.0, 0.0)
    i = 0
    while at / SR < target:
        if not music_span[1] and at / SR >= 0.4 * target:
            pieces.append(music(MUSIC_S))
            music_span = (at / SR, at / SR + MUSIC_S)
            at += int(MUSIC_S * SR)
        elif not silence_span[1] and at / SR >= 0.75 * target:
            pieces.append(np.zeros(int(SILENCE_S * SR), np.float32))
            silence_span = (at / SR, at / SR + SILENCE_S)
            at += int(SILENCE_S * SR)
        text = TEXT[i % len(TEXT)]
        voice, rate = VOICES[i % len(VOICES)], RATES[(i // len(VOICES)) % len(RATES)]
        speech = decode_span(speak(text, workdir / f"u{i}.wav", rate=rate, voice=voice)).samples
        loud = np.flatnonzero(np.abs(speech) > 0.01)
        utterances.append(Utterance(text, (at + loud[0]) / SR, (at + loud[-1]) / SR))
        pause = np.zeros(int(PAUSES_S[int(rng.integers(len(PAUSES_S)))] * SR), np.float32)
        pieces += [speech, pause]
        at += len(speech) + len(pause)
        i += 1
    audio = np.concatenate(pieces)
    audio += (rng.standard_normal(len(audio)) * NOISE_STD).astype(np.float32)
    return Recording(audio.astype(np.float32), utterances, music_span, silence_span)


class Borrowed:
    """An engine lent to one BatchProcessor, which closes its engine when it closes: this one stays open."""

    def __init__(self, engine: AsrEngine) -> None:
        self.name = engine.name
        self.window_seconds = window_seconds(engine)  # so the worker packs segments for Whisper as it would
        self._engine = engine

    def transcribe(self, batch: Sequence[AudioChunk]) -> list[EngineOutput]:
        return self._engine.transcribe(batch)

    def close(self) -> None:
        pass


def transcribe(recording: Recording, engine: AsrEngine, settings: Settings, chunk_s: float,
               workdir: Path) -> tuple[list[Word], list[ChunkResult], float]:
    """The recording through router chunking and the worker's batch; the words each chunk owns."""
    store, publisher = MemoryStore(), RecordingPublisher()
    buf = io.BytesIO()
    sf.write(buf, recording.audio, SR, format="WAV", subtype="PCM_16")
    gen = store.write("uploads", "bench.wav", buf.getvalue(), content_type="audio/wav")
    source = SourceRef(bucket="uploads", name="bench.wav", generation=str(gen), size=len(buf.getvalue()))
    info = AudioInfo(duration_s=recording.duration_s, sample_rate=SR, channels=1, codec="pcm_s16le", container="wav")
    specs = plan_chunks(recording.duration_s, chunk_s, settings.chunk_overlap_seconds)
    tasks = [ChunkTask(job_id="jbench", source=source, audio=info, chunk=s, n_chunks=len(specs), path="gpu")
             for s in specs]
    processor = BatchProcessor(settings, Borrowed(engine), publisher, SourceCache(store, workdir / "cache", 2**31),
                               segmenter=load_segmenter(settings))
    started = time.perf_counter()
    try:
        outcomes = processor.process_batch([Message(message_id=str(t.chunk.index), data=t.to_bytes()) for t in tasks])
    finally:
        processor.close()
    wall = time.perf_counter() - started
    assert all(o.kind == "result" for o in outcomes), [o.reason for o in outcomes]
    results = sorted((m for _, m, _ in publisher.messages if isinstance(m, ChunkResult)), key=lambda r: r.chunk_index)
    words = [w for r, s in zip(results, specs, strict=True) for w in r.words
             if in_span(w.mid, s.core_start_s, s.core_end_s if s.index < len(specs) - 1 else np.inf)]
    return words, results, wall


def onset_errors(recording: Recording, words: list[Word]) -> list[float]:
    """Per utterance, how far the first word heard in it starts from where it is spoken (missed ones left out)."""
    errors = []
    for u in recording.utterances:
        inside = [w for w in words if u.start_s - 0.5 <= w.mid <= u.end_s + 0.5]
        if inside:
            errors.append(abs(min(w.start for w in inside) - u.start_s))
    return errors


def measure(recording: Recording, engine: AsrEngine, settings: Settings, chunk_s: float, workdir: Path,
            accuracy: bool) -> dict[str, Any]:
    words, results, wall = transcribe(recording, engine, settings, chunk_s, workdir)
    speech = sum(r.audio_seconds if r.speech_s is None else r.speech_s for r in results)
    out: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "rtfx": round(recording.duration_s / wall, 2),
        "sent_s": round(speech, 1),
        "skipped_s": round(sum(r.skipped_s for r in results), 1),
        "chunks": len(results),
    }
    if accuracy:
        (m0, m1), (s0, s1) = recording.music, recording.silence
        errors = onset_errors(recording, words)
        out |= {
            "wer": round(word_error_rate(recording.reference, " ".join(w.text for w in words)), 4),
            "words_in_music": [w.text for w in words if m0 + 0.5 < w.mid < m1 - 0.5],
            "words_in_silence": [w.text for w in words if s0 + 0.5 < w.mid < s1 - 0.5],
            "onset_error_median_s": round(statistics.median(errors), 3) if errors else None,
            "onset_error_worst_s": round(max(errors), 3) if errors else None,
            "utterances_heard": f"{len(errors)}/{len(recording.utterances)}",
        }
    return out


def compare(recording: Recording, engine: AsrEngine, base: dict[str, Any], chunk_s: float, workdir: Path,
            accuracy: bool, prices: Prices) -> dict[str, Any]:
    modes = {}
    for name, vad in (("fixed", False), ("segmented", True)):
        modes[name] = measure(recording, engine, load_settings(**(base | {"vad_enabled": vad})), chunk_s,
                              workdir, accuracy)
        # GPU instance seconds and dollars per audio hour at this RTFx (the GPU path's cost rule).
        modes[name]["usd_per_audio_hour_at_this_rtfx"] = round(prices.gpu(3600 / modes[name]["rtfx"]), 4)
    modes["speedup"] = round(modes["segmented"]["rtfx"] / modes["fixed"]["rtfx"], 2)
    return modes


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    return f"{model}; " + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def parakeet_engine(kind: str, workdir: Path) -> AsrEngine:
    from parascribe.engines.parakeet.engine import ParakeetEngine

    if kind == "tiny":
        from tests.nemo_tiny import build_tiny_nemo

        from nemo.collections.asr.models import ASRModel  # isort: skip

        model = ASRModel.restore_from(str(build_tiny_nemo(workdir)), map_location="cpu")
    else:
        from tests.parakeet_arch import PARAKEET_TDT_0_6B_V2, build_tdt_model

        model = build_tdt_model(PARAKEET_TDT_0_6B_V2, workdir / "build")
    engine = ParakeetEngine(model, "cpu")
    engine.warm_up()
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the recording (default 10)")
    parser.add_argument("--chunk-seconds", type=float, default=300.0, help="router chunk length (default 300)")
    parser.add_argument("--parakeet", choices=["none", "tiny", "full"], default="none",
                        help="also measure Parakeet throughput (random weights)")
    parser.add_argument("--batch-size", type=int, default=16, help="GPU_BATCH_SIZE, chunks per batch (default 16)")
    parser.add_argument("--segment-batch-size", type=int, default=64,
                        help="SEGMENT_BATCH_SIZE, segments (or packed windows) per engine call (default 64)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    base: dict[str, Any] = {"gpu_batch_size": args.batch_size, "segment_batch_size": args.segment_batch_size}
    prices = Prices.from_settings(load_settings())
    with tempfile.TemporaryDirectory(prefix="vad-bench-") as tmp:
        workdir = Path(tmp)
        made = time.perf_counter()
        recording = build_recording(args.minutes, workdir)
        speech_truth = sum(u.end_s - u.start_s for u in recording.utterances)
        report: dict[str, Any] = {
            "command": "bench/vad_segmentation.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "cpu": cpu_name(),
            "espeak_ng": subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip(),
            "recording": {
                "duration_s": round(recording.duration_s, 1), "utterances": len(recording.utterances),
                "voices": VOICES, "speech_s_truth": round(speech_truth, 1),
                "music_s": MUSIC_S, "silence_s": SILENCE_S, "pauses_s": PAUSES_S, "noise_std": NOISE_STD,
                "built_in_s": round(time.perf_counter() - made, 1),
            },
            "chunk_seconds": args.chunk_seconds,
        }
        from parascribe.engines.offline import OfflineEngine

        offline = OfflineEngine(cpu_threads=2)
        report["offline"] = compare(recording, offline, base, args.chunk_seconds, workdir, True, prices)
        offline.close()
        if args.parakeet != "none":
            engine = parakeet_engine(args.parakeet, workdir)
            report[f"parakeet_{args.parakeet}"] = compare(recording, engine, base, args.chunk_seconds, workdir,
                                                          False, prices)
            engine.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stitching speed on a six-hour transcript, against a naive baseline in the same run.

Run: ``.venv/bin/python bench/stitch_speed.py [--words 60000] [--repeat 5]``. Prints one JSON object.

The baseline is the obvious implementation: for every word, scan all chunks for
the one whose core holds its midpoint, copy the word, sort everything, and grow
segment text by string concatenation. (It also doubles or drops words at seams
when engines disagree slightly; only its speed is compared here.)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

from parascribe.contracts import (
    AudioInfo,
    ChunkResult,
    JobManifest,
    PlannedChunk,
    Segment,
    SourceRef,
    Word,
)
from parascribe.merger.stitch import SegmentRules, stitch

CHUNK_S = 600.0
OVERLAP_S = 2.0


def build_job(n_words: int, seed: int = 1) -> tuple[JobManifest, list[ChunkResult]]:
    rng = random.Random(seed)
    words, t = [], 0.2
    for _ in range(n_words):
        dur = rng.uniform(0.15, 0.4)
        words.append(Word(text=rng.choice(["alpha", "beta", "gamma.", "delta,", "epsilon"]), start=t, end=t + dur))
        t += dur + rng.uniform(0.02, 0.15)
    duration = t + 1.0
    edges = [0.0]
    while edges[-1] + CHUNK_S < duration - CHUNK_S / 4:
        edges.append(edges[-1] + CHUNK_S)
    edges.append(duration)
    chunks = [
        PlannedChunk(index=i, start_s=max(0.0, edges[i] - OVERLAP_S), end_s=min(duration, edges[i + 1] + OVERLAP_S),
                     core_start_s=edges[i], core_end_s=edges[i + 1], path="gpu" if i % 2 else "deepgram")
        for i in range(len(edges) - 1)
    ]
    results = []
    for c in chunks:
        jitter = 0.03 if c.path == "deepgram" else 0.0
        heard = [
            Word(text=w.text, start=max(0.0, w.start + jitter), end=w.end + jitter, confidence=0.9)
            for w in words
            if w.start >= c.start_s and w.end <= c.end_s
        ]
        results.append(ChunkResult(job_id="jbench", chunk_index=c.index, n_chunks=len(chunks), engine="parakeet",
                                   path=c.path, words=heard, audio_seconds=c.duration_s, processing_seconds=1.0))
    manifest = JobManifest(
        job_id="jbench",
        source=SourceRef(bucket="uploads", name="six-hours.wav", generation="1", size=1),
        audio=AudioInfo(duration_s=duration, sample_rate=16000, channels=1, codec="pcm_s16le", container="wav"),
        method="hybrid", deadline_minutes=60, chunks=chunks,
    )
    return manifest, results


def naive_stitch(manifest: JobManifest, results: list[ChunkResult]) -> tuple[list[Word], list[Segment]]:
    chunks = manifest.chunks
    kept = []
    for r in results:
        for w in r.words:
            mid = (w.start + w.end) / 2
            owner = None
            for c in chunks:
                last = c.index == len(chunks) - 1
                if c.core_start_s <= mid and (mid < c.core_end_s or last):
                    owner = c.index
            if owner == r.chunk_index:
                kept.append(w.model_copy())
    kept.sort(key=lambda w: w.start)
    segments: list[Segment] = []
    text, start, prev = "", 0.0, None
    for w in kept:
        if prev is not None and (w.start - prev.end >= 0.8 or prev.text.endswith((".", "?", "!"))):
            segments.append(Segment(text=text, start=start, end=prev.end))
            text = ""
        if not text:
            start = w.start
        text = (text + " " + w.text).strip()
        prev = w
    if prev is not None:
        segments.append(Segment(text=text, start=start, end=prev.end))
    return kept, segments


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--words", type=int, default=60_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    manifest, results = build_job(args.words)
    transcript = stitch(manifest, results)
    fast = timed(lambda: stitch(manifest, results, SegmentRules()), args.repeat)
    slow = timed(lambda: naive_stitch(manifest, results), max(1, args.repeat // 2))
    fast_s, slow_s = statistics.median(fast), statistics.median(slow)
    print(json.dumps({
        "benchmark": "stitch_speed",
        "words_in": sum(len(r.words) for r in results),
        "words_out": len(transcript.words),
        "segments": len(transcript.segments),
        "chunks": manifest.n_chunks,
        "audio_hours": round(manifest.audio.duration_s / 3600, 2),
        "stitch_median_s": round(fast_s, 4),
        "naive_median_s": round(slow_s, 4),
        "speedup_vs_naive": round(slow_s / fast_s, 1) if fast_s else None,
        "under_1s": fast_s < 1.0,
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()

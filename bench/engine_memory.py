"""Parakeet engine memory over thousands of batches: does RSS grow?

Run: ``.venv/bin/python bench/engine_memory.py [--batches 2000] [--batch-size 4]``. Prints one JSON object.

A tiny model of the production class (``EncDecRNNTBPEModel`` with the TDT decoder)
is built from its config, saved as ``.nemo`` and loaded through
``ParakeetEngine.from_settings``, the worker's own loading path. It then
transcribes ``--batches`` batches of chunks of varying length. The baseline is
the RSS after a warm-up of 50 batches, in the same run; the result is the growth
over that baseline and the fitted slope in MB per 1,000 batches.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _repo  # noqa: F401  (puts the repository root on sys.path for tests.parakeet_arch)
import numpy as np

from parascribe.audio import SAMPLE_RATE
from parascribe.config import load_settings
from parascribe.engines.base import AudioChunk
from parascribe.engines.parakeet.engine import ParakeetEngine
from tests.parakeet_arch import TINY, build_tdt_model

WARM_UP = 50


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def batch(rng: np.random.Generator, size: int, index: int) -> list[AudioChunk]:
    out = []
    for k in range(size):
        seconds = float(rng.uniform(0.5, 4.0))
        samples = (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
        out.append(AudioChunk(key=f"{index}/{k}", samples=samples, offset_s=float(index * 10 + k)))
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as workdir:
        model = build_tdt_model(TINY, Path(workdir) / "build")
        path = Path(workdir) / "tiny.nemo"
        model.save_to(str(path))
        del model
        engine = ParakeetEngine.from_settings(load_settings(parakeet_model_name=str(path), asr_device="cpu"))
    batches = [batch(rng, args.batch_size, i) for i in range(16)]  # reused, so input allocation is not measured
    for i in range(WARM_UP):
        engine.transcribe(batches[i % len(batches)])
    gc.collect()
    baseline = rss_mb()
    samples: list[tuple[int, float]] = [(0, baseline)]
    words = 0
    start = time.perf_counter()
    for i in range(1, args.batches + 1):
        words += sum(len(o.words) for o in engine.transcribe(batches[i % len(batches)]))
        if i % args.sample_every == 0:
            gc.collect()
            samples.append((i, rss_mb()))
    elapsed = time.perf_counter() - start
    xs = np.array([s[0] for s in samples], dtype=float)
    ys = np.array([s[1] for s in samples], dtype=float)
    slope = float(np.polyfit(xs, ys, 1)[0]) * 1000 if len(samples) > 2 else 0.0
    return {
        "benchmark": "engine_memory",
        "model": "tiny EncDecRNNTBPEModel (TDT), loaded via ParakeetEngine.from_settings",
        "batches": args.batches,
        "batch_size": args.batch_size,
        "words": words,
        "seconds": round(elapsed, 1),
        "rss_baseline_mb": round(baseline, 1),
        "rss_end_mb": round(samples[-1][1], 1),
        "rss_max_mb": round(max(ys), 1),
        "growth_mb": round(samples[-1][1] - baseline, 1),
        "slope_mb_per_1000_batches": round(slope, 2),
        "samples": [[i, round(v, 1)] for i, v in samples],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sample-every", type=int, default=100)
    print(json.dumps(run(p.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

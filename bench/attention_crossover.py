"""Full against local attention, by chunk length: where local attention starts to pay.

Run: ``.venv/bin/python bench/attention_crossover.py [--seconds 15 30 60 120 300] [--device auto|cpu|cuda]
[--precision auto|fp32|bf16] [--repeats 2]``. Prints one JSON object on stdout.

The full parakeet-tdt-0.6b-v2 architecture with random weights (nothing is downloaded) encodes
one chunk of each length with NeMo's full ``rel_pos`` attention (the baseline: the model's own
set-up) and with ``rel_pos_local_attn`` [128, 128] plus conv chunking, as the engine switches to
it. Only the preprocessor and encoder run, since attention is all that differs; the modes
alternate within each length so that both see the same load. The engine's default long-audio
threshold on a CPU (``CPU_LOCAL_ATTENTION_S``) comes from this measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import _repo  # noqa: F401  (puts the repository root on sys.path for tests.parakeet_arch)
import torch
from asr_throughput import PeakMemory, encode, report, synthetic_audio, timed

from parascribe.engines.parakeet.engine import ParakeetEngine
from parascribe.engines.parakeet.runtime import choose_bf16, choose_device
from tests.parakeet_arch import PARAKEET_TDT_0_6B_V2, build_tdt_model


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = choose_device(args.device)
    with tempfile.TemporaryDirectory() as workdir:
        model = build_tdt_model(PARAKEET_TDT_0_6B_V2, workdir).to(device)
    bf16 = choose_bf16(device, args.precision)
    engine = ParakeetEngine(model, device, bf16=bf16)
    memory = PeakMemory(device)
    warm = synthetic_audio(5.0, 99)
    rows = []
    for seconds in args.seconds:
        audio = synthetic_audio(seconds, 1)
        rtfx: dict[str, list[float]] = {"full": [], "local": []}
        peak: dict[str, float] = {}
        for _ in range(args.repeats):
            for mode in ("full", "local"):
                engine.set_attention(mode == "local")
                encode(engine.model, [warm], device, bf16)
                memory.reset()
                rtfx[mode].append(seconds / timed(device, lambda a=audio: encode(engine.model, [a], device, bf16)))
                peak[mode] = max(peak.get(mode, 0.0), memory.extra_mb())
        full, local = statistics.median(rtfx["full"]), statistics.median(rtfx["local"])
        rows.append({
            "seconds": seconds,
            "encoder_rtfx_full": round(full, 2),
            "encoder_rtfx_local": round(local, 2),
            "local_speedup": round(local / full, 2),
            "runs_full": [round(x, 2) for x in rtfx["full"]],
            "runs_local": [round(x, 2) for x in rtfx["local"]],
            "working_set_full_mb": round(peak["full"], 1),
            "working_set_local_mb": round(peak["local"], 1),
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    faster = [r["seconds"] for r in rows if r["local_speedup"] >= 1.0]
    return {
        "benchmark": "attention_crossover",
        "model": "parakeet-tdt-0.6b-v2 architecture, random weights",
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "precision": "bf16" if bf16 else "fp32",
        "memory_kind": f"{memory.kind} above the memory in use before the forward",
        "baseline": "full attention (rel_pos)",
        "local_attention": "rel_pos_local_attn [128, 128] + conv chunking",
        "lengths": rows,
        "shortest_where_local_is_faster_s": min(faster) if faster else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[15.0, 30.0, 60.0, 120.0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    return report(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

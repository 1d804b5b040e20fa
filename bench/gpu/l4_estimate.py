"""From the kit's figures on a large GPU to an estimate for Cloud Run's NVIDIA L4: RTFx and cost per audio hour.

An estimate, not a measurement: nothing here has run on an L4. It scales each throughput mode the kit
measured by the ratio of the two devices' rates, from their datasheets:

- NVIDIA L4: 121 TFLOP/s dense bf16 on tensor cores (242 with sparsity), 300 GB/s GDDR6, 24 GB.
- NVIDIA H200 SXM: 989 TFLOP/s dense bf16 (1,979 with sparsity), 4.8 TB/s HBM3e, 141 GB.
- NVIDIA H100 SXM (same compute, 3.35 TB/s) is accepted too, for a kit run on an H100.

The method, per mode:

- Encoder time (preprocessor + encoder, the kit's ``encoder_seconds``) is matmul-bound: it scales by the
  ratio of the datasheet bf16 rates, which assumes both devices reach the same fraction of their peak
  (the kit's ``matmul`` mode shows the measured device's fraction; an L4 held to 72 W may reach less).
- The rest of the time (TDT decoding, feature and copy work: small kernels) is bracketed. ``central``
  scales it like the encoder; ``conservative`` scales it by the memory-bandwidth ratio, which is the
  worse of the two for an L4 (16×). The kit's random weights emit about a token per encoder frame,
  more than speech does, so the decoding share is already overstated.
- A mode counts for the L4 only if its peak memory fits in ``L4_USABLE_GB``; otherwise the L4 runs a
  smaller batch and the figure is marked ``fits_l4: false``.

It covers the engine only: the worker's CPU stages (decoding with PyAV, Silero VAD on onnxruntime) run on
the instance's 4 vCPUs, on decode threads ahead of inference, and are not in these figures; at a few hundred
times real time they should keep up, which a worker run on an L4 would have to confirm.

``GPU_EXPECTED_RTFX`` is the planner's figure for one L4 on speech. The suggestion is the conservative
estimate of the segments regime (VAD segments ≤ 30 s, which is what the worker sends) at the largest
measured batch that fits, rounded down to 10.

Run: ``.venv/bin/python bench/gpu/l4_estimate.py gpu.json`` (the JSON a kit run wrote); ``run.py`` also puts
the same estimate in its summary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@dataclass(frozen=True)
class Device:
    name: str
    bf16_tflops: float
    """Dense bf16 tensor-core peak from the vendor's datasheet (no sparsity)."""
    bandwidth_tbs: float
    memory_gb: float


L4 = Device("NVIDIA L4", 121.0, 0.300, 24.0)
KNOWN = {"H200": Device("NVIDIA H200", 989.0, 4.8, 141.0), "H100": Device("NVIDIA H100", 989.0, 3.35, 80.0)}
L4_USABLE_GB = 20.0
"""Of the L4's 24 GB: what a batch may peak at, leaving room for the CUDA context and the allocator's slack."""
SEGMENTS = "segments"


def measured_device(name: str | None) -> Device | None:
    """The datasheet entry for the device the kit ran on, from its name (``NVIDIA H200``...); None if unknown."""
    upper = (name or "").upper()
    return next((d for key, d in KNOWN.items() if key in upper), None)


def _prices() -> tuple[float, float]:
    """(L4 instance $ per second, Deepgram $ per audio second) from the product's own price settings."""
    if str(ROOT / "shared") not in sys.path:
        sys.path.append(str(ROOT / "shared"))
    from parascribe.config import load_settings
    from parascribe.costs import Prices

    prices = Prices.from_settings(load_settings())
    return prices.gpu_instance_per_second, prices.deepgram_per_second


def estimate(data: dict[str, Any]) -> dict[str, Any]:
    """The L4 estimate from a kit JSON document; ``applies: false`` with the reason when it cannot be made."""
    modes = data.get("modes", {})
    env = modes.get("env", {})
    if data.get("device") != "cuda" or data.get("quick"):
        return {"applies": False, "why": "only a full kit run on a GPU (not --quick, not a CPU) is scaled to an L4"}
    source = measured_device(env.get("device_name"))
    if source is None:
        return {"applies": False, "why": f"no datasheet figures for {env.get('device_name')!r} (known: {sorted(KNOWN)})"}
    bf16_rate = modes.get("matmul", {}).get("bf16_flop_per_s")
    compute_ratio = source.bf16_tflops / L4.bf16_tflops
    bandwidth_ratio = source.bandwidth_tbs / L4.bandwidth_tbs
    instance_per_s, deepgram_per_s = _prices()

    def cost(rtfx: float) -> dict[str, float]:
        per_hour = instance_per_s * 3600.0 / rtfx
        return {"usd_per_audio_hour": round(per_hour, 5),
                "percent_of_deepgram": round(100.0 * per_hour / (deepgram_per_s * 3600.0), 2)}

    rows: dict[str, Any] = {}
    for name, m in modes.items():
        if m.get("status") != "ok" or "rtfx" not in m or "naive" in name or "graphs_off" in name:
            continue
        seconds, encoder = float(m["seconds"]), min(float(m["encoder_seconds"]), float(m["seconds"]))
        rest = seconds - encoder
        central_s = seconds * compute_ratio
        conservative_s = encoder * compute_ratio + rest * bandwidth_ratio
        rtfx_central, rtfx_conservative = m["audio_s"] / central_s, m["audio_s"] / conservative_s
        rows[name] = {
            "regime": m.get("regime"), "batch": m.get("batch"), "measured_rtfx": m["rtfx"],
            "encoder_fraction_of_time": round(encoder / seconds, 3),
            "peak_memory_gb": round(m.get("peak_memory_mb", math.nan) / 1024, 2),
            "fits_l4": m.get("peak_memory_mb", math.inf) / 1024 <= L4_USABLE_GB,
            "l4_rtfx_central": round(rtfx_central, 1), "l4_rtfx_conservative": round(rtfx_conservative, 1),
            "cost_central": cost(rtfx_central), "cost_conservative": cost(rtfx_conservative),
        }
    fitting = [r for r in rows.values() if r["regime"] == SEGMENTS and r["fits_l4"]]
    chosen = max(fitting, key=lambda r: r["batch"]) if fitting else None
    suggestion = None if chosen is None else max(10, int(chosen["l4_rtfx_conservative"] // 10 * 10))
    return {
        "applies": True, "is_an_estimate": True,
        "measured_on": {"device": source.name,
                        "bf16_tflop_per_s": round(bf16_rate / 1e12, 1) if bf16_rate else None,
                        "fraction_of_datasheet_peak": round(bf16_rate / (source.bf16_tflops * 1e12), 3)
                        if bf16_rate else None},
        "l4": {"bf16_tflops_datasheet": L4.bf16_tflops, "bandwidth_tb_per_s": L4.bandwidth_tbs,
               "usable_gb": L4_USABLE_GB, "instance_usd_per_second": round(instance_per_s, 7)},
        "compute_ratio": round(compute_ratio, 2), "bandwidth_ratio": round(bandwidth_ratio, 2),
        "deepgram_usd_per_audio_hour": round(deepgram_per_s * 3600.0, 4),
        "modes": rows,
        "suggested_gpu_expected_rtfx": suggestion,
        "suggested_from": None if chosen is None else
        f"segments at batch {chosen['batch']}, conservative (decoding scaled by memory bandwidth), rounded down",
    }


def kit_json_command(argv: list[str] | None, description: str, render: Callable[[dict[str, Any]], str]) -> int:
    """A command on one kit JSON: print ``render`` of it; 2 with the reason when the file cannot be read."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("kit_json", type=Path, help="the JSON file a run of bench/gpu/run.py wrote")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.kit_json.read_text())
    except (OSError, ValueError) as err:
        print(f"cannot read {args.kit_json}: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(render(data))
    return 0


def main(argv: list[str] | None = None) -> int:
    return kit_json_command(argv, __doc__.split("\n\n")[0], lambda data: json.dumps(estimate(data), indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

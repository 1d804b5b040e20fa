"""The kit's JSON as the Markdown tables ``docs/performance.md`` keeps: the throughput modes against the targets,
the forced OOM, the worker check, and the L4 estimate.

Run here on a JSON fetched from the GPU machine (no device time): ``.venv/bin/python bench/gpu/report.py
gpu.json``. Every figure is copied from the JSON; a mode that failed or was skipped says so with its reason.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

TARGET_TEXT = {"segments_b128": "**≥ 6,000**", "chunks_b16": "**≥ 2,000** (best of b16, b32)",
               "chunks_b32": "**≥ 2,000** (best of b16, b32)"}
ORDER = ("segments_naive", "segments_b64", "segments_b128", "segments_b128_graphs_off", "chunks_naive", "chunks_b16",
         "chunks_b32", "chunks_b16_graphs_off")


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _not_ok(mode: dict[str, Any]) -> str:
    return f"{mode.get('status', 'not run')}: {mode.get('error') or mode.get('reason') or ''}".strip(": ")


def throughput_rows(modes: dict[str, Any]) -> Iterable[str]:
    names = [n for n in ORDER if n in modes] + sorted(n for n in modes if n not in ORDER and "rtfx" in modes[n])
    for name in names:
        m = modes[name]
        label = f"`{name}`" + (f" ({m['precision']}, batch {m['batch']}, {m['n']} × {m['clip_s']:g} s)"
                               if m.get("status") == "ok" else "")
        if m.get("status") != "ok":
            yield f"| {label} | {TARGET_TEXT.get(name, '')} | {_not_ok(m)} | | | | |"
            continue
        graphs = m.get("cuda_graphs") or "–"
        yield (f"| {label} | {TARGET_TEXT.get(name, '')} | {_num(m.get('rtfx'))} | {_num(m.get('encoder_rtfx'))} | "
               f"{_num(m.get('encoder_share_of_bf16_bound'), 3)} | {_num(m.get('peak_memory_mb', 0) / 1024, 2)} | "
               f"{graphs} |")


def render(data: dict[str, Any]) -> str:
    """The tables, in the order the docs keep them."""
    modes = data.get("modes", {})
    env, matmul = modes.get("env", {}), modes.get("matmul", {})
    device = env.get("device_name") or data.get("device", "?")
    lines = [f"Device: {device}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}; "
             f"bf16 matmul {_num(matmul.get('bf16_tflop_per_s'))} TFLOP/s ({matmul.get('how', 'matmul mode not ok')}); "
             f"{'quick sizes' if data.get('quick') else 'full sizes'}; {data.get('seconds', '?')} s of modes.", "",
             "| mode | target | RTFx | encoder RTFx | encoder share of bf16 bound | peak GB | CUDA graphs |",
             "|---|---|---|---|---|---|---|"]
    lines += throughput_rows(modes)
    oom = modes.get("oom", {})
    if oom.get("status") == "ok" or "partial" in oom:
        o = oom if oom.get("status") == "ok" else oom["partial"]
        lines += ["", f"OOM (`GPU_MEMORY_LIMIT_GB={o.get('gpu_memory_limit_gb')}`, {o.get('chunks')} × "
                      f"{o.get('chunk_s')} s, simulated: {o.get('simulated')}): batch sizes {o.get('batch_sizes')}, "
                      f"recoveries {o.get('recoveries')}, unrecovered {o.get('unrecovered')}, recovered by halving: "
                      f"{o.get('recovered_by_halving')}."]
    else:
        lines += ["", f"OOM: {_not_ok(oom)}"]
    worker = modes.get("worker", {})
    if worker.get("status") == "ok":
        parts = [f"{k}: {len(v.get('chunks', {}))} chunks, batch sizes {v.get('batch_sizes')}, {v.get('seconds')} s"
                 for k, v in worker.items() if isinstance(v, dict) and "chunks" in v]
        lines += ["", f"Worker ({worker.get('engine_device')}, {worker.get('precision')}): " + "; ".join(parts) + "."]
    else:
        lines += ["", f"Worker: {_not_ok(worker)}"]
    estimate = data.get("summary", {}).get("l4_estimate")
    if estimate is None:
        from l4_estimate import estimate as make_estimate

        estimate = make_estimate(data)
    lines += ["", "**Cloud Run L4, estimated** (`bench/gpu/l4_estimate.py`; not measured):"]
    if not estimate.get("applies"):
        lines.append(f"not made: {estimate.get('why') or estimate.get('error')}")
    else:
        lines += ["", "| mode | fits an L4 | L4 RTFx central | L4 RTFx conservative | $ per audio hour (central / "
                      "conservative) | % of Deepgram (central / conservative) |", "|---|---|---|---|---|---|"]
        for name, row in estimate["modes"].items():
            c, k = row["cost_central"], row["cost_conservative"]
            lines.append(f"| `{name}` | {'yes' if row['fits_l4'] else 'no'} | {_num(row['l4_rtfx_central'])} | "
                         f"{_num(row['l4_rtfx_conservative'])} | {c['usd_per_audio_hour']:.4f} / "
                         f"{k['usd_per_audio_hour']:.4f} | {c['percent_of_deepgram']:.2f} / "
                         f"{k['percent_of_deepgram']:.2f} |")
        lines += ["", f"Suggested `GPU_EXPECTED_RTFX`: {estimate.get('suggested_gpu_expected_rtfx')} "
                      f"({estimate.get('suggested_from')})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from l4_estimate import kit_json_command

    return kit_json_command(argv, __doc__.split("\n\n")[0], render)


if __name__ == "__main__":
    sys.exit(main())

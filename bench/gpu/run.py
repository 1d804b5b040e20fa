"""The GPU validation kit: one script that measures Parakeet on a GPU and writes one JSON file.

Run (on the GPU machine, after installing ``bench/gpu/wheels``; see ``bench/gpu/README.md``):
``python bench/gpu/run.py --out $OUT/gpu.json``; here, ``.venv/bin/python bench/gpu/run.py --device cpu --quick
--out /tmp/gpu-cpu.json``.

Modes, in order (each in its own try/except: a failure is recorded with its error and the rest still run;
the JSON is rewritten after every mode, so a run cut short still leaves what it measured):

- ``env``: versions, the device, which packages are missing (a missing PyAV is replaced by a stub, since
  16-kHz WAV decodes through soundfile);
- ``matmul``: the device's bf16 (and fp32) rate on a large square matmul: the ceiling;
- ``worker``: the worker's BatchProcessor with the tiny test model on the device, whole chunks and VAD
  segments, words checked to be in file time;
- ``build`` then ``flops``: the full-size parakeet-tdt-0.6b-v2 architecture with random weights; its
  encoder FLOPs per audio second, from the architecture and counted by torch;
- ``<regime>_naive`` (fp32, one file per call) then ``<regime>_b<N>`` (the engine, bf16 on a GPU, batches
  of N) for the 10-minute ``chunks`` and the 30-second ``segments``; ``..._graphs_off`` with NeMo's CUDA-graph
  decoding off; each with its RTFx, encoder RTFx, peak memory and the encoder's share of the bf16 bound;
- ``oom``: a small ``GPU_MEMORY_LIMIT_GB`` that a batch cannot fit: it must recover by halving.

The summary ends with ``l4_estimate`` (``l4_estimate.py``): the figures scaled to Cloud Run's L4 by the
datasheet rates, with the cost per audio hour and a suggested ``GPU_EXPECTED_RTFX``.

A mode that would start after ``--budget-s`` is skipped, and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT), str(ROOT / "bench"), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SCHEMA = 1
TARGETS = {"segments_rtfx": 6000.0, "chunks_rtfx": 2000.0}
"""Issue 15's targets on the H200: engine RTFx on 30-s segments at batch 128 and on 10-minute chunks."""
PACKAGES = ["torch", "nemo_toolkit", "numpy", "lightning", "pytorch_lightning", "huggingface_hub", "transformers",
            "omegaconf", "hydra_core", "lhotse", "librosa", "soundfile", "av", "pydantic", "parascribe",
            "cuda_bindings", "onnxruntime", "sentencepiece"]
NEEDED = ["torch", "nemo.collections.asr", "omegaconf", "soundfile", "av", "pydantic", "pydantic_settings",
          "google.cloud.pubsub_v1", "google.cloud.storage", "flask", "parascribe.asr.batch"]
GPU_BUDGET_S = 420.0
CPU_BUDGET_S = 1200.0
MODE_GROUPS = ("env", "matmul", "worker", "build", "flops", "naive", "optimised", "graphs", "oom")


@dataclass(frozen=True)
class Regime:
    """One shape of work: ``n`` items of ``seconds`` each, at each of ``batches``; naive on ``naive_n`` items."""

    name: str
    seconds: float
    n: int
    batches: tuple[int, ...]
    naive_n: int


@dataclass(frozen=True)
class Sizes:
    chunks: Regime
    segments: Regime
    graphs_off: tuple[tuple[str, int], ...]
    """(regime, batch) pairs run again with CUDA-graph decoding off."""
    oom_seconds: float
    oom_n: int


SIZES = {
    ("cuda", False): Sizes(Regime("chunks", 600.0, 32, (16, 32), 2), Regime("segments", 30.0, 256, (64, 128), 16),
                           (("segments", 128), ("chunks", 16)), 600.0, 4),
    ("cuda", True): Sizes(Regime("chunks", 600.0, 8, (4, 8), 1), Regime("segments", 30.0, 64, (32, 64), 4),
                          (("segments", 64),), 300.0, 4),
    ("cpu", False): Sizes(Regime("chunks", 60.0, 4, (2, 4), 1), Regime("segments", 15.0, 8, (4, 8), 2),
                          (("segments", 8),), 8.0, 4),
    ("cpu", True): Sizes(Regime("chunks", 8.0, 2, (1, 2), 1), Regime("segments", 3.0, 4, (2, 4), 1),
                         (("segments", 4),), 2.0, 4),
}
"""Per (device kind, --quick): the issue's sizes on a GPU; small ones on a CPU, where the same code runs."""


@dataclass
class Mode:
    name: str
    group: str
    fn: Callable[[], dict[str, Any]]
    needs: tuple[str, ...] = ()


@dataclass
class Report:
    """The JSON document, rewritten at ``path`` after every mode."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


def run_modes(modes: Sequence[Mode], report: Report, budget_s: float, fail: set[str]) -> None:
    """Run each mode in turn; record ok (its figures), error (type, message, traceback tail) or skipped."""
    start = time.perf_counter()
    results: dict[str, Any] = report.data.setdefault("modes", {})
    for mode in modes:
        begun = time.perf_counter()
        blocked = [n for n in mode.needs if results.get(n, {}).get("status") != "ok"]
        if blocked:
            results[mode.name] = {"status": "skipped", "reason": f"needs {', '.join(blocked)}, which did not run ok"}
        elif begun - start > budget_s:
            results[mode.name] = {"status": "skipped", "reason": f"time budget of {budget_s:.0f} s spent"}
        else:
            try:
                if mode.name in fail or mode.group in fail:
                    raise RuntimeError(f"forced failure of mode {mode.name} (--fail)")
                results[mode.name] = {"status": "ok", **mode.fn()}
            except BaseException as err:  # noqa: BLE001  (KeyboardInterrupt included: record it, then stop)
                entry: dict[str, Any] = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000],
                                         "traceback": traceback.format_exc(limit=-6)[-3000:]}
                partial = getattr(err, "partial", None)
                if isinstance(partial, dict):
                    entry["partial"] = partial
                results[mode.name] = entry
                if not isinstance(err, Exception):
                    report.write()
                    raise
        results[mode.name]["wall_s"] = round(time.perf_counter() - begun, 2)
        report.data["seconds"] = round(time.perf_counter() - start, 1)
        print(f"[gpu-kit] {mode.name}: {results[mode.name]['status']} ({results[mode.name]['wall_s']} s)",
              file=sys.stderr, flush=True)
        report.write()


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def stub_av() -> None:
    """Stand in for PyAV when it is missing: parascribe decodes 16-kHz WAV through soundfile without it."""

    class FFmpegError(Exception):
        pass

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise FFmpegError("PyAV is not installed here; the GPU kit put a stub in its place")

    av = types.ModuleType("av")
    av.FFmpegError = FFmpegError  # type: ignore[attr-defined]
    av.open = missing  # type: ignore[attr-defined]
    av.AudioResampler = missing  # type: ignore[attr-defined]
    av.AudioFrame = type("AudioFrame", (), {"from_ndarray": staticmethod(missing)})  # type: ignore[attr-defined]
    sys.modules["av"] = av


def fix_imports() -> dict[str, str]:
    """Before anything imports parascribe: the working tree's package if no wheel is installed, a PyAV stub."""
    fixes: dict[str, str] = {}
    if importlib.util.find_spec("parascribe") is None:
        sys.path.insert(0, str(ROOT / "shared"))
        fixes["parascribe"] = "from the working tree (shared/): no installed wheel"
    try:
        import av  # noqa: F401
    except Exception as err:  # noqa: BLE001
        stub_av()
        fixes["av"] = f"stubbed ({type(err).__name__}: {err}); 16-kHz WAV still decodes through soundfile"
    return fixes


def env_mode(device_arg: str) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "packages": {p: _version(p) for p in PACKAGES}}
    missing: dict[str, str] = {}
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001  (ImportError and what a half-installed package raises)
            missing[name] = f"{type(err).__name__}: {err}"[:300]
    out["missing"] = missing
    import torch

    out["torch"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out |= {"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                "total_memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                "multiprocessors": props.multi_processor_count, "bf16_supported": torch.cuda.is_bf16_supported()}
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device")
    return out


def matmul_mode(device: Any, quick: bool) -> dict[str, Any]:
    import torch
    from kit_flops import matmul_rate

    gpu = device.type == "cuda"
    # A CPU without native bf16 emulates it, slowly: a small bf16 product there, a large enough fp32 one.
    n_bf16, n_fp32 = (8192, 8192) if gpu else (512, 1024 if quick else 2048)
    repeats, warmup = (10, 3) if gpu else (3, 1)
    bf16 = matmul_rate(device, torch.bfloat16, n_bf16, repeats, warmup)
    fp32 = matmul_rate(device, torch.float32, n_fp32, repeats, warmup)
    return {"n_bf16": n_bf16, "n_fp32": n_fp32, "bf16_tflop_per_s": round(bf16 / 1e12, 3),
            "fp32_tflop_per_s": round(fp32 / 1e12, 3), "bf16_flop_per_s": bf16, "fp32_flop_per_s": fp32,
            "how": f"mean of {repeats} square matmuls (n x n x n) after {warmup} warm-ups, random data",
            "tf32_allowed": bool(torch.backends.cuda.matmul.allow_tf32)}


class Kit:
    """Holds what the modes share: the device, the sizes, the full model once built."""

    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args = args
        self.report = report
        self.device: Any = None
        self.full: Any = None
        self.workdir = Path(tempfile.mkdtemp(prefix="gpu-kit-"))

    def kind(self) -> str:
        """``cuda`` or ``cpu``: what ``--device`` asks for, ``auto`` resolved by torch (``cpu`` without torch)."""
        if self.args.device != "auto":
            return str(self.args.device)
        try:
            import torch
        except Exception:  # noqa: BLE001
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _device(self) -> Any:
        if self.device is None:
            import torch

            self.device = torch.device("cuda", 0) if self.kind() == "cuda" else torch.device("cpu")
        return self.device

    def sizes(self) -> Sizes:
        return SIZES[(self.kind(), bool(self.args.quick))]

    def rates(self) -> dict[str, float]:
        """The matmul mode's FLOP/s by precision; empty when it did not run."""
        matmul = self.report.data["modes"].get("matmul", {})
        return {p: float(matmul[f"{p}_flop_per_s"]) for p in ("bf16", "fp32") if matmul.get(f"{p}_flop_per_s")}

    def env(self) -> dict[str, Any]:
        out = env_mode(self.args.device)
        out["device"] = str(self._device())
        from parascribe.engines.parakeet.runtime import cpu_supports_bf16

        out["cpu_native_bf16"] = cpu_supports_bf16()
        return out

    def matmul(self) -> dict[str, Any]:
        return matmul_mode(self._device(), self.args.quick)

    def worker(self) -> dict[str, Any]:
        from kit_worker import worker_check

        return worker_check(self._device().type, self.workdir / "tiny")

    def build(self) -> dict[str, Any]:
        from kit_throughput import FullModel

        sizes = self.sizes()
        self.full = FullModel(self._device(), sizes, self.rates())
        return self.full.build | {"sizes": dataclasses.asdict(sizes)}

    def modes(self) -> list[Mode]:
        modes = [Mode("env", "env", self.env), Mode("matmul", "matmul", self.matmul),
                 Mode("worker", "worker", self.worker), Mode("build", "build", self.build),
                 Mode("flops", "flops", lambda: self.full.flops(), ("build",))]
        sizes = self.sizes()
        regimes = (sizes.chunks, sizes.segments)
        for r in regimes:
            modes.append(Mode(f"{r.name}_naive", "naive", lambda r=r: self.full.naive(r.name), ("build",)))
        for r in regimes:
            for b in r.batches:
                modes.append(Mode(f"{r.name}_b{b}", "optimised", lambda r=r, b=b: self.full.optimised(r.name, b),
                                  ("build",)))
        for name, b in sizes.graphs_off:
            modes.append(Mode(f"{name}_b{b}_graphs_off", "graphs",
                              lambda name=name, b=b: self.full.optimised(name, b, graphs=False), ("build",)))
        modes.append(Mode("oom", "oom", lambda: self.full.oom(), ("build",)))
        wanted = set(self.args.only.split(",")) if self.args.only else set(MODE_GROUPS)
        return [m for m in modes if m.group in wanted or m.name in wanted]


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, and whether each target was met (None where it was not measured)."""
    modes = data.get("modes", {})
    ok = {k: v for k, v in modes.items() if v.get("status") == "ok"}
    on_gpu = data.get("device") == "cuda" and not data.get("quick")

    def best(prefix: str) -> float | None:
        rtfx = [v["rtfx"] for k, v in ok.items() if k.startswith(prefix) and "rtfx" in v and "naive" not in k
                and "graphs_off" not in k]
        return max(rtfx) if rtfx else None

    seg = ok.get("segments_b128", {}).get("rtfx")
    chunks = best("chunks_b")
    oom = modes.get("oom", {})
    return {
        "modes_ok": sorted(ok), "modes_failed": sorted(k for k, v in modes.items() if v.get("status") == "error"),
        "modes_skipped": sorted(k for k, v in modes.items() if v.get("status") == "skipped"),
        "rtfx_segments_b128": seg, "rtfx_chunks_best": chunks, "rtfx_segments_best": best("segments_b"),
        "encoder_share_of_bf16_bound": {k: v.get("encoder_share_of_bf16_bound") for k, v in ok.items()
                                        if "encoder_share_of_bf16_bound" in v},
        "peak_memory_mb": {k: v.get("peak_memory_mb") for k, v in ok.items() if "peak_memory_mb" in v},
        "oom_recovered": oom.get("recovered_by_halving") if oom.get("status") == "ok" else False if oom else None,
        "targets": TARGETS,
        "targets_met": {
            "segments_rtfx": (seg >= TARGETS["segments_rtfx"]) if on_gpu and seg is not None else None,
            "chunks_rtfx": (chunks >= TARGETS["chunks_rtfx"]) if on_gpu and chunks is not None else None,
        },
        "targets_apply": on_gpu,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU run takes a few minutes)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"start no mode after this (default {GPU_BUDGET_S:.0f} on a GPU, {CPU_BUDGET_S:.0f} on a CPU)")
    parser.add_argument("--only", default="", help=f"comma-separated modes or groups: {', '.join(MODE_GROUPS)}")
    parser.add_argument("--fail", default="", help="comma-separated modes or groups forced to raise (tests)")
    args = parser.parse_args(argv)
    report = Report(args.out, {"kit": "parascribe GPU validation kit (bench/gpu)", "schema": SCHEMA,
                               "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "argv": list(argv if argv is not None else sys.argv[1:]), "quick": args.quick,
                               "modes": {}})
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    kit = Kit(args, report)
    try:
        report.data["import_fixes"] = fix_imports()
    except Exception as err:  # noqa: BLE001  (recorded; the modes then say what they cannot import)
        report.data["import_fixes"] = {"error": f"{type(err).__name__}: {err}"}
    report.data["device"] = kit.kind()
    with contextlib.redirect_stdout(sys.stderr):  # NeMo and SentencePiece print; stdout gets the summary only
        with contextlib.suppress(Exception):
            from nemo.utils import logging as nemo_logging

            nemo_logging.setLevel(logging.ERROR)
        modes = kit.modes()
        budget = args.budget_s or (GPU_BUDGET_S if report.data.get("device") == "cuda" else CPU_BUDGET_S)
        report.data["budget_s"] = budget
        run_modes(modes, report, budget, {f for f in args.fail.split(",") if f})
    report.data["summary"] = summarise(report.data)
    try:
        from l4_estimate import estimate

        report.data["summary"]["l4_estimate"] = estimate(report.data)
    except Exception as err:  # noqa: BLE001  (the measurements matter more than the estimate drawn from them)
        report.data["summary"]["l4_estimate"] = {"applies": False, "error": f"{type(err).__name__}: {err}"}
    report.write()
    print(json.dumps(report.data["summary"], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

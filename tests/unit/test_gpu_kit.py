"""The GPU validation kit (bench/gpu): its pins, its FLOPs estimate, and a JSON that survives a failing mode."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "bench" / "gpu"


def _load(name: str) -> ModuleType:
    """Import a kit module from bench/gpu by path (bench is not a package)."""
    if str(KIT) not in sys.path:
        sys.path.insert(0, str(KIT))
    spec = importlib.util.spec_from_file_location(f"gpu_kit_{name}", KIT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepare() -> ModuleType:
    return _load("prepare")


@pytest.fixture(scope="module")
def run() -> ModuleType:
    return _load("run")


@pytest.fixture(scope="module")
def flops() -> ModuleType:
    return _load("kit_flops")


@pytest.fixture(scope="module")
def l4() -> ModuleType:
    return _load("l4_estimate")


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return _load("report")


# --- the pins ---


def test_requirements_pin_exact_versions_and_never_carry_torch_or_cuda(prepare: ModuleType) -> None:
    pins = prepare.read_pins()
    assert pins["nemo-toolkit"] == "3.0.0" and "parascribe" in pins
    lines = [ln.split("#", 1)[0].strip() for ln in (KIT / "requirements.txt").read_text().splitlines()]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", ln) for ln in lines if ln)
    for name in pins:
        assert not re.match(r"(torch|torchaudio|torchvision|triton|nvidia-|cuda-|cupy|jax)", name), name


def test_requirements_agree_with_the_project_constraints(prepare: ModuleType) -> None:
    """What the kit carries is what the tests here run against."""
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            constraints[prepare.normalize(name)] = version.strip()
    pins = prepare.read_pins()
    differ = {n: (v, constraints[n]) for n, v in pins.items() if n in constraints and constraints[n] != v}
    assert differ == {}


def test_requirements_carry_only_what_the_gpu_image_lacks(prepare: ModuleType) -> None:
    image = prepare.read_image()
    assert image["torch"] == "2.11.0" and "numpy" in image
    assert set(prepare.read_pins()) & set(image) == {"lightning", "protobuf"}, "only the two marked overrides"
    assert prepare.source_only() == {"antlr4-python3-runtime"}


@pytest.mark.parametrize("line, message", [
    ("numpy>=2", "not an exact pin"),
    ("torch==2.11.0", "GPU machine's own"),
    ("nvidia-cublas==13.0.0", "GPU machine's own"),
    ("omegaconf==2.3.0\nomegaconf==2.3.0", "pinned twice"),
])
def test_a_loose_or_forbidden_pin_is_refused(prepare: ModuleType, tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text(f"# comment\n{line}\n")
    with pytest.raises(ValueError, match=message):
        prepare.read_pins(path)


def test_prune_keeps_one_version_of_each_pin(prepare: ModuleType, tmp_path: Path) -> None:
    for name in ("omegaconf-2.3.0-py3-none-any.whl", "omegaconf-2.2.0-py3-none-any.whl",
                 "hydra_core-1.3.2-py3-none-any.whl", "stray-1.0-py3-none-any.whl", "notes.txt"):
        (tmp_path / name).write_text("x")
    removed = prepare.prune(tmp_path, {"omegaconf": "2.3.0", "hydra-core": "1.3.2"})
    assert sorted(removed) == ["notes.txt", "omegaconf-2.2.0-py3-none-any.whl", "stray-1.0-py3-none-any.whl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hydra_core-1.3.2-py3-none-any.whl",
                                                           "omegaconf-2.3.0-py3-none-any.whl"]


# --- the FLOPs estimate ---


def test_flops_of_the_full_architecture(flops: ModuleType) -> None:
    from tests.parakeet_arch import PARAKEET_TDT_0_6B_V2

    arch = flops.Arch.of(PARAKEET_TDT_0_6B_V2)
    per_s_30 = flops.flops_per_audio_second(arch, 30.0)
    per_s_600 = flops.flops_per_audio_second(arch, 600.0)
    # 24 layers x ~50 d^2 FLOPs per frame at 12.5 frames/s, plus attention growing with length.
    assert 15e9 < per_s_30 < 18.5e9
    assert 30e9 < per_s_600 < 38e9, "full attention is quadratic: 10-minute chunks cost about twice per second"
    assert flops.flops_per_audio_second(arch, 600.0, local_window=257) < 0.6 * per_s_600
    samples = 30 * 16_000
    one, two = flops.encoder_flops(arch, samples), flops.encoder_flops(arch, samples, batch=2)
    assert one < two < 2 * one, "the relative-position projection runs once per batch"
    assert two == pytest.approx(2 * one, rel=0.05)
    assert flops.encoder_frames(samples) == 376


def test_share_of_bound(flops: ModuleType) -> None:
    assert flops.share_of_bound(8e12, 2.0, 8e12) == pytest.approx(0.5)
    assert flops.share_of_bound(1e12, 0.0, 8e12) is None
    assert flops.share_of_bound(1e12, 1.0, float("nan")) is None


@pytest.mark.nemo
@pytest.mark.slow
def test_flops_estimate_matches_torchs_count_on_the_tiny_model(flops: ModuleType, tmp_path: Path) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tests.parakeet_arch import TINY, build_tdt_model

    model = build_tdt_model(TINY, tmp_path)
    for seconds, batch in ((1.0, 1), (3.3, 2), (10.0, 1)):
        n = int(seconds * 16_000)
        signal = torch.randn(batch, n) * 0.1
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model.forward(input_signal=signal, input_signal_length=torch.full((batch,), n))
        assert flops.encoder_flops(flops.Arch.of(TINY), n, batch) == pytest.approx(counter.get_total_flops(), rel=1e-6)


# --- the run: every mode recorded, a failure does not stop the rest ---


def _modes(run: ModuleType, calls: list[str]) -> list[Any]:
    def ok(name: str, **figures: Any) -> Any:
        def fn() -> dict[str, Any]:
            calls.append(name)
            return figures
        return fn

    def boom() -> dict[str, Any]:
        calls.append("build")
        err = RuntimeError("CUDA error: an illegal memory access was encountered")
        err.partial = {"seconds": 1.5}  # type: ignore[attr-defined]
        raise err

    return [run.Mode("env", "env", ok("env", python="3.12")), run.Mode("build", "build", boom),
            run.Mode("segments_b128", "optimised", ok("segments_b128", rtfx=7000.0), ("build",)),
            run.Mode("matmul", "matmul", ok("matmul", bf16_flop_per_s=7.9e14))]


def test_a_failing_mode_is_recorded_with_its_error_and_the_rest_still_run(run: ModuleType, tmp_path: Path) -> None:
    calls: list[str] = []
    report = run.Report(tmp_path / "out" / "gpu.json", {"modes": {}})
    run.run_modes(_modes(run, calls), report, budget_s=60, fail=set())
    data = json.loads(report.path.read_text())
    modes = data["modes"]
    assert calls == ["env", "build", "matmul"]
    assert modes["env"] == {"status": "ok", "python": "3.12", "wall_s": modes["env"]["wall_s"]}
    assert modes["build"]["status"] == "error" and "illegal memory access" in modes["build"]["error"]
    assert "RuntimeError" in modes["build"]["traceback"] and modes["build"]["partial"] == {"seconds": 1.5}
    assert modes["segments_b128"]["status"] == "skipped" and "build" in modes["segments_b128"]["reason"]
    assert modes["matmul"]["status"] == "ok", "a mode after the failure still runs"
    assert all("wall_s" in m for m in modes.values())


def test_forced_failures_and_the_time_budget(run: ModuleType, tmp_path: Path) -> None:
    calls: list[str] = []
    report = run.Report(tmp_path / "gpu.json", {"modes": {}})
    run.run_modes(_modes(run, calls), report, budget_s=60, fail={"matmul"})
    assert report.data["modes"]["matmul"]["error"].startswith("RuntimeError: forced failure of mode matmul")
    calls.clear()
    report = run.Report(tmp_path / "late.json", {"modes": {}})
    run.run_modes(_modes(run, calls), report, budget_s=-1, fail=set())
    assert calls == [] and {m["status"] for m in report.data["modes"].values()} == {"skipped"}


def test_summary_judges_targets_on_a_full_gpu_run_only(run: ModuleType) -> None:
    modes = {"segments_b128": {"status": "ok", "rtfx": 6500.0, "encoder_share_of_bf16_bound": 0.3,
                               "peak_memory_mb": 9000.0},
             "chunks_b16": {"status": "ok", "rtfx": 1500.0}, "chunks_b32": {"status": "ok", "rtfx": 2100.0},
             "chunks_b16_graphs_off": {"status": "ok", "rtfx": 9000.0},
             "oom": {"status": "ok", "recovered_by_halving": True}, "worker": {"status": "error", "error": "x"}}
    gpu = run.summarise({"device": "cuda", "quick": False, "modes": modes})
    assert gpu["targets_met"] == {"segments_rtfx": True, "chunks_rtfx": True}
    assert gpu["rtfx_chunks_best"] == 2100.0, "graphs-off and naive modes are not the engine's best"
    assert gpu["oom_recovered"] is True and gpu["modes_failed"] == ["worker"]
    assert gpu["encoder_share_of_bf16_bound"] == {"segments_b128": 0.3}
    cpu = run.summarise({"device": "cpu", "quick": True, "modes": modes})
    assert cpu["targets_met"] == {"segments_rtfx": None, "chunks_rtfx": None} and cpu["targets_apply"] is False


# --- the L4 estimate drawn from a GPU run ---


def _h200_run(**modes: dict[str, Any]) -> dict[str, Any]:
    """A kit document as a full H200 run writes it; the figures are made up for the arithmetic."""
    return {"device": "cuda", "quick": False,
            "modes": {"env": {"status": "ok", "device_name": "NVIDIA H200"},
                      "matmul": {"status": "ok", "bf16_flop_per_s": 7.9e14}, **modes}}


def _throughput(regime: str, batch: int, rtfx: float, encoder_fraction: float, peak_gb: float) -> dict[str, Any]:
    audio_s = 3600.0
    seconds = audio_s / rtfx
    return {"status": "ok", "regime": regime, "batch": batch, "audio_s": audio_s, "rtfx": rtfx,
            "seconds": seconds, "encoder_seconds": seconds * encoder_fraction, "peak_memory_mb": peak_gb * 1024}


def test_the_l4_estimate_scales_encoder_time_by_compute_and_the_rest_by_a_bracket(l4: ModuleType) -> None:
    from parascribe.config import Settings
    from parascribe.costs import Prices

    data = _h200_run(segments_b64=_throughput("segments", 64, 6000.0, 0.75, 12.0),
                     segments_b128=_throughput("segments", 128, 7000.0, 0.8, 31.0),
                     segments_b128_graphs_off=_throughput("segments", 128, 5000.0, 0.6, 31.0),
                     chunks_b16=_throughput("chunks", 16, 2500.0, 0.9, 60.0))
    out = l4.estimate(data)
    assert out["applies"] and out["is_an_estimate"]
    compute, bandwidth = 989.0 / 121.0, 4.8 / 0.3
    assert out["compute_ratio"] == round(compute, 2) and out["bandwidth_ratio"] == round(bandwidth, 2)
    assert out["measured_on"]["fraction_of_datasheet_peak"] == round(7.9e14 / 989e12, 3)
    seg = out["modes"]["segments_b64"]
    assert seg["l4_rtfx_central"] == round(6000.0 / compute, 1)
    # 0.75 of the time scales by compute, 0.25 by bandwidth: 1 / (0.75 * 8.17 + 0.25 * 16) of the H200's rate.
    assert seg["l4_rtfx_conservative"] == round(6000.0 / (0.75 * compute + 0.25 * bandwidth), 1)
    assert seg["l4_rtfx_conservative"] < seg["l4_rtfx_central"]
    assert seg["fits_l4"] and not out["modes"]["segments_b128"]["fits_l4"] and not out["modes"]["chunks_b16"]["fits_l4"]
    assert "segments_b128_graphs_off" not in out["modes"], "graphs-off runs are not what the worker runs"
    prices = Prices.from_settings(Settings())
    per_hour = prices.gpu_instance_per_second * 3600 / seg["l4_rtfx_central"]
    assert seg["cost_central"]["usd_per_audio_hour"] == pytest.approx(per_hour, abs=1e-5)
    assert seg["cost_central"]["percent_of_deepgram"] == pytest.approx(
        100 * per_hour / (prices.deepgram_per_second * 3600), abs=0.01)
    # The largest segments batch that fits an L4 (64, not the 31-GB 128), conservative, rounded down to 10.
    assert out["suggested_gpu_expected_rtfx"] == int(seg["l4_rtfx_conservative"] // 10 * 10)
    assert "batch 64" in out["suggested_from"]


def test_the_l4_estimate_refuses_what_it_cannot_scale(l4: ModuleType) -> None:
    seg = _throughput("segments", 64, 6000.0, 0.75, 12.0)
    assert not l4.estimate({"device": "cpu", "quick": True, "modes": {"segments_b64": seg}})["applies"]
    assert not l4.estimate({**_h200_run(segments_b64=seg), "quick": True})["applies"]
    unknown = _h200_run(segments_b64=seg)
    unknown["modes"]["env"]["device_name"] = "Some Accelerator"
    assert "no datasheet figures" in l4.estimate(unknown)["why"]
    too_big = l4.estimate(_h200_run(segments_b128=_throughput("segments", 128, 7000.0, 0.8, 31.0)))
    assert too_big["applies"] and too_big["suggested_gpu_expected_rtfx"] is None, "nothing measured fits an L4"


def test_the_report_renders_every_figure_from_the_json_and_says_what_failed(report: ModuleType) -> None:
    seg = _throughput("segments", 128, 6400.0, 0.8, 18.0) | {"precision": "bf16", "n": 256, "clip_s": 30.0,
                                                             "encoder_rtfx": 8000.0, "cuda_graphs": "full_graph",
                                                             "encoder_share_of_bf16_bound": 0.31}
    data = _h200_run(segments_b128=seg, chunks_b16={"status": "error", "error": "RuntimeError: CUDA error: boom"},
                     oom={"status": "ok", "gpu_memory_limit_gb": 20.5, "chunks": 4, "chunk_s": 600.0,
                          "simulated": False, "batch_sizes": [4, 2, 1, 1, 2, 1, 1], "recoveries": {"oom": 3},
                          "unrecovered": 0, "recovered_by_halving": True})
    text = report.render(data)
    assert "| `segments_b128` (bf16, batch 128, 256 × 30 s) | **≥ 6,000** | 6,400.0 | 8,000.0 | 0.310 | 18.00 | " \
           "full_graph |" in text
    assert "| `chunks_b16` | **≥ 2,000** (best of b16, b32) | error: RuntimeError: CUDA error: boom |" in text
    assert "recovered by halving: True" in text and "`GPU_MEMORY_LIMIT_GB=20.5`" in text
    assert "Worker: not run" in text, "a mode missing from the JSON is said to be missing"
    assert "| `segments_b128` | yes |" in text and "Suggested `GPU_EXPECTED_RTFX`:" in text


@pytest.mark.nemo
@pytest.mark.slow
def test_the_script_writes_its_json_when_a_mode_is_forced_to_fail(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(KIT / "run.py"), "--device", "cpu", "--quick", "--only",
                           "env,matmul,build,flops", "--fail", "build", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["schema"] == 1 and data["device"] == "cpu" and data["quick"] is True
    modes = data["modes"]
    assert list(modes) == ["env", "matmul", "build", "flops"]
    assert modes["env"]["status"] == "ok" and modes["env"]["missing"] == {}
    assert modes["matmul"]["status"] == "ok" and modes["matmul"]["fp32_tflop_per_s"] > 0
    assert modes["build"]["status"] == "error" and "forced failure" in modes["build"]["error"]
    assert modes["flops"]["status"] == "skipped"
    assert data["summary"]["modes_failed"] == ["build"] and json.loads(done.stdout)["modes_ok"] == ["env", "matmul"]
    assert data["summary"]["l4_estimate"]["applies"] is False, "a CPU run is never scaled to an L4"

"""Throughput, CUDA-graph decoding and forced OOM on the full-size Parakeet architecture with random weights.

Reuses ``bench/asr_throughput.py`` (the :class:`Optimized` timing of the engine as the worker runs it, the
encoder-only timing, peak memory) and the project's own engine; nothing of the engine is re-implemented.

- naive: NeMo's defaults, fp32, one file per ``transcribe()`` call, word timestamps on;
- optimised: :class:`~parascribe.engines.parakeet.engine.ParakeetEngine` on batches (bf16 cast on a GPU,
  length-sorted, timestamps configured once, attention planned and cut to the free memory), with
  NeMo's CUDA-graph TDT decoding on (``decoding.greedy.use_cuda_graph_decoder``, NeMo's default) or off;
- oom: the worker's :class:`~parascribe.asr.batch.BatchProcessor` on a batch that cannot fit under a small
  ``GPU_MEMORY_LIMIT_GB`` (the attention planner off, so the batch is not cut up front): it must recover by
  halving. On a CPU the cap does nothing, so the model's ``transcribe`` raises a simulated CUDA OOM for
  batches over one item instead, and the result says so.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from asr_throughput import Optimized, PeakMemory, encode, encoder_flops, synthetic_audio, timed
from kit_flops import Arch, flops_per_audio_second, share_of_bound

from parascribe.audio import SAMPLE_RATE
from parascribe.engines.base import AudioChunk
from parascribe.engines.parakeet.engine import ParakeetEngine
from parascribe.engines.parakeet.runner import LOCAL_ATTENTION_CONTEXT
from parascribe.engines.parakeet.runtime import cap_gpu_memory, choose_bf16
from tests.parakeet_arch import PARAKEET_TDT_0_6B_V2, build_tdt_model

LOCAL_WINDOW = sum(LOCAL_ATTENTION_CONTEXT) + 1
DISTINCT = 4
"""Different synthetic clips per regime; the rest repeat them (random weights: content does not matter)."""


def set_cuda_graphs(model: Any, on: bool) -> None:
    """Allow or forbid NeMo's CUDA-graph greedy decoding; the engine's Runner applies the config when built."""
    from omegaconf import open_dict

    with open_dict(model.cfg.decoding):
        if model.cfg.decoding.get("greedy") is None:
            model.cfg.decoding.greedy = {}
        model.cfg.decoding.greedy.use_cuda_graph_decoder = on


def cuda_graphs_mode(model: Any) -> str | None:
    """The CUDA-graph mode NeMo's TDT label-looping decoder ended up in (``full_graph``, ``no_graphs``...)."""
    computer = getattr(getattr(getattr(model, "decoding", None), "decoding", None), "decoding_computer", None)
    mode = getattr(computer, "cuda_graphs_mode", None)
    return None if mode is None else str(getattr(mode, "value", mode))


class FullModel:
    """The full-size model on one device, and the audio of each regime; modes run in order on it."""

    def __init__(self, device: torch.device, sizes: Any, rates: dict[str, float]) -> None:
        """Build the model on ``device``.

        Args:
            device: where it runs.
            sizes: a ``run.Sizes`` (the regimes and the OOM batch).
            rates: the device's matmul FLOP/s by precision (``bf16``, ``fp32``): the bounds.
        """
        self.device = device
        self.sizes = sizes
        self.rates = rates
        self.bf16 = choose_bf16(device, "auto")
        self.arch = Arch.of(PARAKEET_TDT_0_6B_V2)
        self.memory = PeakMemory(device)
        self.warm = synthetic_audio(5.0, 99)
        self._audio: dict[str, list[np.ndarray]] = {}
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            self.model = build_tdt_model(PARAKEET_TDT_0_6B_V2, workdir).to(device)
        self.build = {"seconds": round(time.perf_counter() - start, 1),
                      "parameters": sum(p.numel() for p in self.model.parameters()),
                      "precision_optimised": "bf16" if self.bf16 else "fp32"}

    def regime(self, name: str) -> Any:
        return getattr(self.sizes, name)

    def audio(self, name: str, n: int) -> list[np.ndarray]:
        r = self.regime(name)
        if name not in self._audio:
            self._audio[name] = [synthetic_audio(r.seconds, seed) for seed in range(DISTINCT)]
        clips = self._audio[name]
        return [clips[i % len(clips)] for i in range(n)]

    def chunks(self, name: str, n: int) -> list[AudioChunk]:
        r = self.regime(name)
        return [AudioChunk(key=f"{name}/{i}", samples=a, offset_s=i * r.seconds) for i, a in enumerate(self.audio(name, n))]

    def flops(self) -> dict[str, Any]:
        """Encoder GFLOP per audio second per regime: from the architecture, and counted by torch on the device."""
        out: dict[str, Any] = {"source": "bench/gpu/kit_flops.py (architecture), torch.utils.flop_counter (counted)"}
        for r in (self.sizes.chunks, self.sizes.segments):
            estimate = flops_per_audio_second(self.arch, r.seconds)
            self.model.eval()
            counted = encoder_flops(self.audio(r.name, 1), self.model, self.device, False)
            out[r.name] = {"seconds": r.seconds, "gflop_per_audio_s": round(estimate / 1e9, 3),
                           "counted_gflop_per_audio_s": round(counted / 1e9, 3),
                           "estimate_over_counted": round(estimate / counted, 4),
                           "local_attention_gflop_per_audio_s": round(
                               flops_per_audio_second(self.arch, r.seconds, LOCAL_WINDOW) / 1e9, 3)}
        return out

    def _figures(self, r: Any, audio_s: float, seconds: float, encoder_s: float, local: bool,
                 precision: str) -> dict[str, Any]:
        """RTFx, encoder RTFx, and the encoder's share of the bf16 bound and of its own precision's bound.

        The encoder share divides the encoder's FLOPs by its own time (preprocessor + encoder alone);
        the end-to-end share by the whole transcription's time.
        """
        flops = flops_per_audio_second(self.arch, r.seconds, LOCAL_WINDOW if local else None) * audio_s

        def share(secs: float, rate: float | None) -> float | None:
            value = share_of_bound(flops, secs, rate or float("nan"))
            return None if value is None else round(value, 4)

        return {
            "audio_s": audio_s, "seconds": round(seconds, 3), "rtfx": round(audio_s / seconds, 1),
            "encoder_seconds": round(encoder_s, 3), "encoder_rtfx": round(audio_s / encoder_s, 1),
            "encoder_tflop_per_s": round(flops / encoder_s / 1e12, 3),
            "encoder_share_of_bf16_bound": share(encoder_s, self.rates.get("bf16")),
            "e2e_encoder_share_of_bf16_bound": share(seconds, self.rates.get("bf16")),
            "encoder_share_of_own_precision_bound": share(encoder_s, self.rates.get(precision)),
        }

    def naive(self, name: str) -> dict[str, Any]:
        """NeMo's defaults, fp32, one file per call: run before any optimised mode casts the model to bf16."""
        r = self.regime(name)
        audio = self.audio(name, r.naive_n)
        model, device = self.model, self.device
        if next(model.parameters()).dtype != torch.float32:
            raise RuntimeError("the model was already cast by an optimised mode; naive runs first")

        def one(a: np.ndarray) -> None:
            model.transcribe([a], batch_size=1, timestamps=True, verbose=False)

        model.eval()
        one(self.warm)
        self.memory.reset()
        seconds = timed(device, lambda: [one(a) for a in audio])
        peak = self.memory.peak_mb()
        model.eval()
        encode(model, [self.warm], device, False)
        encoder_s = timed(device, lambda: [encode(model, [a], device, False) for a in audio])
        out = {"regime": name, "clip_s": r.seconds, "n": len(audio), "batch": 1, "precision": "fp32",
               "attention": "full", "cuda_graphs": cuda_graphs_mode(model)}
        out |= self._figures(r, r.seconds * len(audio), seconds, encoder_s, False, "fp32")
        out |= {"memory_kind": self.memory.kind, "peak_memory_mb": round(peak, 1)}
        return out

    def engine(self, graphs: bool) -> ParakeetEngine:
        set_cuda_graphs(self.model, graphs)
        engine = ParakeetEngine(self.model, self.device, bf16=self.bf16)
        engine.warm_up()
        engine.fit_attention_to_free_memory()
        return engine

    def optimised(self, name: str, batch: int, graphs: bool = True) -> dict[str, Any]:
        """The engine as the worker runs it, on ``n`` items of the regime at ``batch``."""
        r = self.regime(name)
        chunks = self.chunks(name, r.n)
        engine = self.engine(graphs)
        opt = Optimized(engine, chunks, batch, self.memory, self.warm, self.bf16, count_flops=False)
        local = opt.modes == {"local"}
        out = {"regime": name, "clip_s": r.seconds, "n": len(chunks), "batch": batch, "precision": engine.precision,
               "attention": "+".join(sorted(opt.modes)), "cuda_graphs_asked": graphs,
               "cuda_graphs": cuda_graphs_mode(self.model)}
        out |= self._figures(r, r.seconds * len(chunks), opt.seconds, opt.encoder_seconds, local, engine.precision)
        out |= {"memory_kind": self.memory.kind, "peak_memory_mb": round(opt.peak_mb, 1),
                "words_per_audio_minute": round(opt.words / (r.seconds * len(chunks) / 60), 1),
                "attention_switch_seconds": round(opt.switch_seconds, 2)}
        set_cuda_graphs(self.model, True)
        return out

    def oom(self) -> dict[str, Any]:
        """A batch that cannot fit under a small GPU_MEMORY_LIMIT_GB, through the worker's BatchProcessor."""
        from kit_worker import make_rig, process, settings

        s, n = self.sizes.oom_seconds, self.sizes.oom_n
        audio = np.concatenate([synthetic_audio(s, k) for k in range(n)])
        rig = make_rig(audio, [(k * s, (k + 1) * s, k * s, (k + 1) * s) for k in range(n)], "kit-oom")
        set_cuda_graphs(self.model, True)
        engine = ParakeetEngine(self.model, self.device, bf16=self.bf16, attention_budget_bytes=None)
        engine.warm_up()
        out: dict[str, Any] = {"chunk_s": s, "chunks": n, "planner": "off (attention_budget_bytes=None)"}
        limit_gb = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            weights = torch.cuda.memory_allocated(self.device)
            one = engine.attention_planner.full_attention_bytes(int(s * SAMPLE_RATE), 1)
            # One chunk's estimated attention peak plus room: a batch of several cannot fit, one can.
            limit_gb = math.ceil(2 * (weights + one + 2 * 2**30) / 2**30) / 2
            out |= {"simulated": False, "weights_gb": round(weights / 2**30, 2),
                    "one_chunk_attention_estimate_gb": round(one / 2**30, 2)}
        else:
            out |= {"simulated": True, "why": "GPU_MEMORY_LIMIT_GB caps CUDA memory only: on a CPU the model's "
                    "transcribe raises torch.OutOfMemoryError for batches of more than one item"}
        cfg = settings(gpu_memory_limit_gb=limit_gb, gpu_batch_size=n, asr_device=self.device.type)
        out["gpu_memory_limit_gb"] = cfg.gpu_memory_limit_gb
        with self._capped(cfg.gpu_memory_limit_gb), self._simulated_oom(self.device.type != "cuda"):
            self.memory.reset()
            run = process(rig, engine, cfg)
            out["peak_memory_mb"] = round(self.memory.peak_mb(), 1)
        results = run["results"]
        words = sum(len(r.words) for r in results.values())
        failed = [i for i in range(n) if i not in results or results[i].error]
        out |= {"batch_sizes": run["batch_sizes"], "recoveries": dict(engine.recoveries),
                "outcomes": run["outcomes"], "fallbacks": run["fallbacks"], "words": words,
                "seconds": round(run["seconds"], 2), "unrecovered": len(failed),
                "recovered_by_halving": engine.recoveries.get("oom", 0) > 0 and not failed
                and len(run["batch_sizes"]) > 1 and run["batch_sizes"][1] < run["batch_sizes"][0]}
        if not out["recovered_by_halving"]:
            err = AssertionError(f"the forced OOM did not recover by halving: batch sizes {run['batch_sizes']}, "
                                 f"recoveries {dict(engine.recoveries)}, failed chunks {failed}")
            err.partial = out  # type: ignore[attr-defined]
            raise err
        return out

    @contextlib.contextmanager
    def _capped(self, limit_gb: float | None) -> Iterator[None]:
        cap_gpu_memory(self.device, limit_gb)
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.set_per_process_memory_fraction(1.0, self.device)
                torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _simulated_oom(self, on: bool) -> Iterator[None]:
        if not on:
            yield
            return
        model = self.model
        real = model.transcribe

        def transcribe(audio: Any, *args: Any, **kwargs: Any) -> Any:
            if len(audio) > 1:
                raise torch.OutOfMemoryError(f"CUDA out of memory (simulated by the GPU kit for {len(audio)} items)")
            return real(audio, *args, **kwargs)

        model.transcribe = transcribe
        try:
            yield
        finally:
            del model.transcribe  # back to the class's method

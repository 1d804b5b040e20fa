"""Parakeet throughput: NeMo used naively against the engine as the worker runs it, in one run.

Run: ``.venv/bin/python bench/asr_throughput.py [--quick] [--device auto|cpu|cuda] [--batch-size N]
[--chunk-seconds S] [--n-chunks N] [--precision auto|fp32|bf16] [--long-audio-threshold S] [--no-local]
[--no-int8]``.
Prints one JSON object on stdout.

The model is the full parakeet-tdt-0.6b-v2 architecture (FastConformer 24 x 1024, TDT decoder,
1024-piece tokenizer) built from its config with random weights, so nothing is downloaded.

- naive: NeMo's defaults, fp32, full attention, one file per ``transcribe()`` call (with word
  timestamps, since the pipeline needs them);
- optimized: :class:`parascribe.engines.parakeet.ParakeetEngine` on batches of ``--batch-size``
  chunks, set up as the worker sets it up: length-sorted, inference mode, bf16 on a GPU and on CPUs
  with native bf16 (fp32 otherwise), timestamps configured once, local attention above the
  long-audio threshold (by default 30 s on a CPU, 900 s on a GPU) and full-attention sub-batches
  sized to the free GPU memory;
- optimized_local (where the optimized mode kept full attention for some chunks, as on a GPU with
  10-minute chunks): the same engine with every chunk in local attention, to show what the
  long-audio threshold costs or saves on this device;
- optimized_int8 (CPU, where the optimized mode runs fp32): the same engine with its Linear and LSTM
  weights dynamically quantized to int8, as the worker runs with ``PARAKEET_CPU_INT8=true``. Quantization
  is in place, so this mode runs last. Its accuracy proxy compares the encoder output of the first
  batch with the fp32 model's (cosine similarity and relative L2 error over the valid frames).

Random weights emit about one token per encoder frame, several times more than real speech, which
inflates decoding time; so the encoder's own RTFx (preprocessor + encoder, no decoding) is reported
for both modes too. The encoder's FLOPs per audio second (counted by ``torch.utils.flop_counter``)
and the best rate of a large matrix multiply on the device give ``encoder_rtfx_gemm_bound``: the
encoder RTFx this precision could reach if every FLOP ran at matmul speed. Peak memory is the
process's peak RSS on a CPU and ``torch.cuda.max_memory_allocated`` on a GPU, reset before each mode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import _repo  # noqa: F401  (puts the repository root on sys.path for tests.parakeet_arch)
import numpy as np
import torch

from parascribe.audio import SAMPLE_RATE
from parascribe.engines.base import AudioChunk
from parascribe.engines.parakeet.engine import ParakeetEngine
from parascribe.engines.parakeet.runtime import choose_bf16, choose_device, cpu_supports_bf16
from tests.parakeet_arch import PARAKEET_TDT_0_6B_V2, build_tdt_model

QUICK = {"cpu": (45.0, 2, 2), "cuda": (600.0, 8, 8)}
"""--quick: (chunk seconds, chunks, batch size) per device kind."""
LOCAL_EVERYWHERE_S = 1e-3
"""A long-audio threshold that sends every chunk to local attention (the optimized_local mode)."""
FULL = {"cpu": (600.0, 1, 1), "cuda": (600.0, 32, 16)}
"""The pipeline's own 10-minute chunks (``CHUNK_DURATION_MINUTES``); one at a time on a CPU, where naive
full attention at that length runs at about 1x real time."""


def synthetic_audio(seconds: float, seed: int) -> np.ndarray:
    """Speech-band tones in noise with a syllable-like envelope: 16 kHz mono float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    pitch = 150 + 1500 * np.abs(np.sin(2 * np.pi * 0.3 * t + seed))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    voiced = 0.2 * envelope * np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE)
    return (voiced + 0.02 * rng.standard_normal(n)).astype(np.float32)


class PeakMemory:
    """Peak RSS (CPU) or peak allocated CUDA memory since :meth:`reset`, in MB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.at_reset_mb = 0.0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.at_reset_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        # Writing 5 resets VmHWM, the peak RSS (Linux 4.0+).
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.at_reset_mb = self._status_mb("VmRSS:")

    def extra_mb(self) -> float:
        """How far the peak rose above the memory in use at :meth:`reset`: the working set of what ran."""
        return self.peak_mb() - self.at_reset_mb

    def _status_mb(self, field: str) -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._status_mb("VmHWM:")

    @property
    def kind(self) -> str:
        return "cuda_max_memory_allocated" if self.device.type == "cuda" else "peak_rss"


def timed(device: torch.device, fn: Callable[[], Any]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def encode(model: Any, audio: Sequence[np.ndarray], device: torch.device, bf16: bool) -> list[torch.Tensor]:
    """Preprocessor + encoder on one padded batch, as ``transcribe`` runs them, without decoding.

    Returns:
        Each item's encoder output, (features, frames), padding frames dropped.
    """
    lengths = torch.tensor([len(a) for a in audio], device=device)
    signal = torch.zeros(len(audio), int(lengths.max()), device=device)
    for i, a in enumerate(audio):
        signal[i, : len(a)] = torch.from_numpy(a)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                enabled=bf16 and device.type == "cpu"):
        encoded, encoded_len = model.forward(input_signal=signal, input_signal_length=lengths)
    return [encoded[i, :, : int(n)] for i, n in enumerate(encoded_len)]


def closeness(test: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Cosine similarity and relative L2 error of ``test`` against ``reference``, all items together."""
    a = torch.cat([t.flatten() for t in test]).double()
    b = torch.cat([t.flatten() for t in reference]).double()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return cosine, ((a - b).norm() / b.norm()).item()


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def each(fn: Callable[[Any], object], items: Sequence[Any]) -> Callable[[], None]:
    """A thunk that calls ``fn`` on every item, for :func:`timed`."""

    def go() -> None:
        for item in items:
            fn(item)

    return go


class Optimized:
    """One engine mode timed end to end, then its encoder alone; the first batch's encoder output kept."""

    def __init__(self, engine: ParakeetEngine, chunks: Sequence[AudioChunk], batch_size: int,
                 memory: PeakMemory, warm: np.ndarray, bf16: bool, count_flops: bool = True) -> None:
        device = engine.device
        planner = engine.attention_planner
        # Warm up in the attention mode the first batch runs in: the worker switches modes only
        # when chunk lengths change, so a switch is a one-time cost, timed on its own here.
        start_local = planner.plan([len(c.samples) for c in chunks[:batch_size]])[0].local
        self.switch_seconds = timed(device, lambda: engine.set_attention(start_local)) if start_local else 0.0
        engine.warm_up()
        memory.reset()
        self.words = 0

        def transcribe() -> None:
            for batch in batches(chunks, batch_size):
                self.words += sum(len(out.words) for out in engine.transcribe(batch))

        self.seconds = timed(device, transcribe)
        self.peak_mb = memory.peak_mb()
        audio = [c.samples for c in chunks]
        engine.set_attention(start_local)
        encode(engine.model, [warm], device, bf16)
        self.first: list[torch.Tensor] = []
        self.modes: set[str] = set()

        def encode_all() -> None:
            for batch in batches(audio, batch_size):
                for group in planner.plan([len(a) for a in batch]):
                    engine.set_attention(group.local)
                    self.modes.add("local" if group.local else "full")
                    out = encode(engine.model, [batch[i] for i in group.ids], device, bf16)
                    if not self.first:
                        self.first = out

        self.encoder_seconds = timed(device, encode_all)
        self.flops_per_audio_s = float("nan")
        if count_flops:  # one chunk: a batch of equal chunks costs the same per second of audio
            engine.set_attention(planner.is_local(len(audio[0])))
            self.flops_per_audio_s = encoder_flops([audio[0]], engine.model, device, bf16)
        # Leave the model in its own (full) attention: an engine built on it next takes that as its full mode.
        engine.set_attention(False)


def encoder_flops(audio: Sequence[np.ndarray], model: Any, device: torch.device, bf16: bool) -> float:
    """FLOPs of the preprocessor and encoder per second of audio (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        encode(model, audio, device, bf16)
    return counter.get_total_flops() / (sum(len(a) for a in audio) / SAMPLE_RATE)


def gemm_flops_per_s(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """The best rate of the encoder's largest matmul shape (frames x 1024 by 1024 x 4096) on ``device``."""
    best = 0.0
    for rows in (1024, 2048, 4096):
        a = torch.randn(rows, 1024, device=device, dtype=dtype)
        b = torch.randn(1024, 4096, device=device, dtype=dtype)
        a @ b
        for _ in range(repeats):
            best = max(best, 2 * rows * 1024 * 4096 / timed(device, lambda a=a, b=b: a @ b))
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = choose_device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    preset = (QUICK if args.quick else FULL)[kind]
    chunk_s = args.chunk_seconds or preset[0]
    n_chunks = args.n_chunks or preset[1]
    batch_size = args.batch_size or preset[2]
    audio = [synthetic_audio(chunk_s, seed) for seed in range(n_chunks)]
    audio_s = chunk_s * n_chunks
    memory = PeakMemory(device)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        model = build_tdt_model(PARAKEET_TDT_0_6B_V2, workdir).to(device)
    build_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    warm = synthetic_audio(5.0, 99)

    # --- naive: NeMo defaults, fp32, one file per call ---
    model.eval()

    def naive_one(a: np.ndarray) -> None:
        model.transcribe([a], batch_size=1, timestamps=True, verbose=False)

    naive_one(warm)
    memory.reset()
    naive_s = timed(device, each(naive_one, audio))
    naive_mem = memory.peak_mb()
    model.eval()
    encode(model, [warm], device, False)
    naive_enc_s = timed(device, each(lambda a: encode(model, [a], device, False), audio))

    # --- optimized: the engine, as the worker runs it ---
    bf16 = choose_bf16(device, args.precision)
    chunks = [AudioChunk(key=str(i), samples=a, offset_s=i * chunk_s) for i, a in enumerate(audio)]
    engine = ParakeetEngine(model, device, bf16=bf16, long_audio_threshold_s=args.long_audio_threshold)
    engine.warm_up()
    engine.fit_attention_to_free_memory()
    opt = Optimized(engine, chunks, batch_size, memory, warm, bf16)
    opt_s, opt_enc_s = opt.seconds, opt.encoder_seconds
    gemm = gemm_flops_per_s(device, torch.bfloat16 if bf16 else torch.float32)

    result = {
        "benchmark": "asr_throughput",
        "model": "parakeet-tdt-0.6b-v2 architecture, random weights",
        "parameters": n_params,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "quick": args.quick,
        "audio_seconds": audio_s,
        "chunk_seconds": chunk_s,
        "n_chunks": n_chunks,
        "batch_size": batch_size,
        "precision_naive": "fp32",
        "precision_optimized": "bf16" if bf16 else "fp32",
        "seconds_naive": round(naive_s, 3),
        "seconds_optimized": round(opt_s, 3),
        "rtfx_naive": round(audio_s / naive_s, 2),
        "rtfx_optimized": round(audio_s / opt_s, 2),
        "speedup": round(naive_s / opt_s, 2),
        "encoder_rtfx_naive": round(audio_s / naive_enc_s, 2),
        "encoder_rtfx_optimized": round(audio_s / opt_enc_s, 2),
        "encoder_speedup": round(naive_enc_s / opt_enc_s, 2),
        "attention_naive": "full",
        "attention_optimized": "+".join(sorted(opt.modes)),
        "long_audio_threshold_s": engine.long_audio_threshold_s,
        "attention_switch_seconds": round(opt.switch_seconds, 2),
        "encoder_gflop_per_audio_second": round(opt.flops_per_audio_s / 1e9, 2),
        "gemm_gflops": round(gemm / 1e9, 1),
        "encoder_rtfx_gemm_bound": round(gemm / opt.flops_per_audio_s, 2),
        "memory_kind": memory.kind,
        "peak_memory_naive_mb": round(naive_mem, 1),
        "peak_memory_optimized_mb": round(opt.peak_mb, 1),
        "words_per_audio_minute_optimized": round(opt.words / (audio_s / 60), 1),
        "build_seconds": round(build_s, 1),
    }

    # --- optimized_local: every chunk with local attention, where the optimized mode kept full attention ---
    if "full" in opt.modes and not args.no_local:
        local_engine = ParakeetEngine(model, device, bf16=bf16, long_audio_threshold_s=LOCAL_EVERYWHERE_S)
        local = Optimized(local_engine, chunks, batch_size, memory, warm, bf16, count_flops=False)
        result.update({
            "seconds_optimized_local": round(local.seconds, 3),
            "rtfx_optimized_local": round(audio_s / local.seconds, 2),
            "speedup_local": round(naive_s / local.seconds, 2),
            "encoder_rtfx_optimized_local": round(audio_s / local.encoder_seconds, 2),
            "peak_memory_optimized_local_mb": round(local.peak_mb, 1),
        })

    # --- optimized_int8: the same engine with PARAKEET_CPU_INT8=true (quantizes the model in place) ---
    if args.no_int8:
        result["int8"] = "skipped: --no-int8"
    elif device.type != "cpu" or bf16:
        result["int8"] = "skipped: PARAKEET_CPU_INT8 applies only where the optimized mode runs fp32 on a CPU"
    else:
        start = time.perf_counter()
        int8_engine = ParakeetEngine(model, device, int8=True, long_audio_threshold_s=args.long_audio_threshold)
        quantize_s = time.perf_counter() - start
        q = Optimized(int8_engine, chunks, batch_size, memory, warm, False, count_flops=False)
        cosine, rel_error = closeness(q.first, opt.first)
        result.update({
            "int8": "measured",
            "precision_optimized_int8": int8_engine.precision,
            "seconds_optimized_int8": round(q.seconds, 3),
            "rtfx_optimized_int8": round(audio_s / q.seconds, 2),
            "speedup_int8": round(naive_s / q.seconds, 2),
            "encoder_rtfx_optimized_int8": round(audio_s / q.encoder_seconds, 2),
            "encoder_speedup_int8": round(naive_enc_s / q.encoder_seconds, 2),
            "int8_encoder_cosine": round(cosine, 5),
            "int8_encoder_rel_error": round(rel_error, 4),
            "peak_memory_optimized_int8_mb": round(q.peak_mb, 1),
            "words_per_audio_minute_optimized_int8": round(q.words / (audio_s / 60), 1),
            "quantize_seconds": round(quantize_s, 1),
        })
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (under 3 minutes on a 2-core CPU)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--chunk-seconds", type=float, default=None)
    parser.add_argument("--n-chunks", type=int, default=None)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="the optimized mode's precision (auto: bf16 on GPUs and CPUs with native bf16)")
    parser.add_argument("--long-audio-threshold", type=float, default=None, metavar="S",
                        help="LONG_AUDIO_THRESHOLD_SECONDS for the engine (default: 30 s on a CPU, 900 s on a GPU)")
    parser.add_argument("--no-local", action="store_true",
                        help="skip the optimized_local mode (run where the optimized mode kept full attention)")
    parser.add_argument("--no-int8", action="store_true",
                        help="skip the optimized_int8 mode (CPU only: PARAKEET_CPU_INT8=true)")
    return report(run, parser.parse_args(argv))


def report(bench: Callable[[argparse.Namespace], dict[str, Any]], args: argparse.Namespace) -> int:
    """Run ``bench`` with library chatter on stderr, then print its result as JSON on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(ImportError):
        from nemo.utils import logging as nemo_logging

        nemo_logging.setLevel(logging.ERROR)
    # NeMo and SentencePiece print progress; stdout carries only the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        result = bench(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

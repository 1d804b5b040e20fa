"""The Parakeet TDT engine: NeMo on a GPU (or CPU), batched, with OOM recovery.

The model loads once at start-up; :meth:`ParakeetEngine.transcribe` then runs
many times from one inference thread (NeMo's ``transcribe`` is not
thread-safe). Each batch is planned first (:mod:`parakeet_attention`): long
chunks run with local attention, the others with full attention in sub-batches
sized to the free GPU memory. When a batch still does not fit the engine raises
:class:`~parascribe.errors.EngineOOMError` so the worker can halve it. A single
chunk that does not fit is retried with local attention, then split in halves
(recursively), then, with ``PARAKEET_CPU_FALLBACK``, run on a CPU copy of the
model, before it fails with :class:`~parascribe.errors.EngineError`.

On a CPU without native bf16 the model runs in fp32, or with ``PARAKEET_CPU_INT8``
with its Linear and LSTM weights dynamically quantized to int8 (faster, slightly
less exact).

This module imports torch and NeMo only when an engine is built, so engine
selection can call :func:`weights_available` anywhere.
"""

from __future__ import annotations

import gc
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from parascribe.audio import SAMPLE_RATE
from parascribe.config import Settings
from parascribe.contracts import EngineName, Word, in_span, midpoint
from parascribe.engines.base import AudioChunk, EngineOutput
from parascribe.engines.parakeet.attention import AttentionPlanner, gpu_attention_budget, long_audio_threshold
from parascribe.engines.parakeet.runtime import (
    ModelSource,
    Precision,
    cap_gpu_memory,
    choose_bf16,
    choose_device,
    weights_available,
)
from parascribe.errors import EngineError, EngineOOMError, EngineUnavailableError

if TYPE_CHECKING:
    import torch

    from parascribe.engines.parakeet.runner import RawWord, Result, Runner

__all__ = ["ParakeetEngine", "stitch_halves", "weights_available"]

log = logging.getLogger(__name__)

SPLIT_OVERLAP_S = 1.0
"""Audio shared by the two halves of a split chunk, so no word is cut at the seam."""
MAX_SPLIT_DEPTH = 3
MIN_SPLIT_S = 2.0


def stitch_halves(left: list[RawWord], right: list[RawWord], cut_s: float) -> list[RawWord]:
    """Join the words of two overlapping pieces at ``cut_s``, each word kept once, by its midpoint.

    A word belongs to the side that holds its midpoint. Both pieces may place the
    same word on either side of the seam with slightly different times, so a right
    word whose midpoint falls inside the last kept left word is that word again.

    Args:
        left: (text, start, end) words of the first piece.
        right: words of the second piece, already shifted into the same time base.
        cut_s: the seam.
    """
    kept = [w for w in left if in_span(midpoint(w[1], w[2]), -math.inf, cut_s)]
    floor = kept[-1][2] if kept else -math.inf
    return kept + [w for w in right if in_span(midpoint(w[1], w[2]), max(cut_s, floor), math.inf)]


class ParakeetEngine:
    """:class:`parascribe.engines.base.AsrEngine` over NeMo Parakeet TDT.

    Not thread-safe: call from one thread.

    Attributes:
        recoveries: how often each recovery step ran: ``oom`` (a batch or chunk did
            not fit), ``local_attention``, ``split``, ``cpu_fallback``.
    """

    name: EngineName = "parakeet"

    def __init__(
        self,
        model: Any,
        device: torch.device | str = "cpu",
        *,
        bf16: bool = False,
        long_audio_threshold_s: float | None = None,
        attention_budget_bytes: int | None = None,
        cpu_fallback: Callable[[], Any] | None = None,
        cpu_bf16: bool = False,
        int8: bool = False,
        cpu_int8: bool = False,
    ) -> None:
        """Wrap a loaded NeMo ASR model. Prefer :meth:`from_settings`.

        Args:
            model: an ``EncDecRNNTBPEModel`` (TDT or RNNT) on ``device``.
            device: where the model lives.
            bf16: cast the model to bf16 and run under bf16 autocast.
            long_audio_threshold_s: a chunk longer than this runs with local attention;
                None for the device's default (30 s on a CPU, 900 s on a GPU).
            attention_budget_bytes: memory the full-attention scores of one batch may take;
                longer batches are cut into sub-batches that fit, and a chunk that does not
                fit alone runs with local attention. None for no limit.
            cpu_fallback: loads a CPU copy of the model; called once, the first time a chunk
                still fails after every GPU recovery step. None disables that step.
            cpu_bf16: run the CPU copy in bf16.
            int8: quantize the model's Linear and LSTM weights to int8, in place; only on a
                CPU and not with ``bf16``.
            cpu_int8: the same for the CPU copy; not with ``cpu_bf16``.

        Raises:
            ValueError: int8 with bf16, or int8 for a model that is not on the CPU.
        """
        import torch

        from parascribe.engines.parakeet.runner import Runner

        self._device = torch.device(device)
        self._primary: Runner | None = Runner(model, self._device, bf16, int8)
        self._planner = AttentionPlanner.for_model(
            model, long_audio_threshold(long_audio_threshold_s, self._device), bf16, attention_budget_bytes)
        self._cpu_loader = cpu_fallback
        self._cpu_bf16 = cpu_bf16
        self._cpu_int8 = cpu_int8
        self._cpu: Runner | None = None
        self.recoveries: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings, precision: Precision = "auto") -> ParakeetEngine:
        """Load Parakeet as configured and warm it up.

        Reads ``PARAKEET_MODEL_NAME`` (a Hugging Face name or a local ``.nemo``), ``ASR_DEVICE``,
        ``GPU_MEMORY_LIMIT_GB``, ``LONG_AUDIO_THRESHOLD_SECONDS``, ``PARAKEET_CPU_FALLBACK`` and
        ``PARAKEET_CPU_INT8``.

        Args:
            settings: the process settings.
            precision: ``auto`` is bf16 on a GPU and on CPUs with native bf16, else fp32.
                ``PARAKEET_CPU_INT8`` turns a CPU model that would run in fp32 into int8.

        Raises:
            EngineUnavailableError: NeMo or torch is missing, there is no GPU where one was
                asked for, or the model cannot be loaded or run.
        """
        try:
            import torch
        except ImportError:
            raise EngineUnavailableError("Parakeet needs torch and NeMo (pip install 'parascribe[nemo]')") from None
        source = ModelSource.from_settings(settings)
        device = choose_device(settings.asr_device)
        cap_gpu_memory(device, settings.gpu_memory_limit_gb)
        model = source.load(device)
        cpu = torch.device("cpu")
        fallback: Callable[[], Any] | None = None
        if settings.parakeet_cpu_fallback and device.type != "cpu":
            fallback = lambda: source.load(cpu)  # noqa: E731
        bf16 = choose_bf16(device, precision)
        cpu_bf16 = choose_bf16(cpu, precision)
        int8 = settings.parakeet_cpu_int8 and device.type == "cpu" and not bf16
        try:
            engine = cls(model, device, bf16=bf16, long_audio_threshold_s=settings.long_audio_threshold_seconds,
                         cpu_fallback=fallback, cpu_bf16=cpu_bf16, int8=int8,
                         cpu_int8=settings.parakeet_cpu_int8 and not cpu_bf16)
            engine.warm_up()
            engine.fit_attention_to_free_memory()
        except Exception as err:
            raise EngineUnavailableError(
                f"Parakeet from {source.name} does not run: {type(err).__name__}: {err}"
            ) from err
        log.info("parakeet loaded from %s on %s (%s); local attention above %.0f s", source.name, device,
                 engine.precision, engine.long_audio_threshold_s)
        return engine

    @property
    def attention(self) -> str:
        """``full`` or ``local``: the attention mode the model is in now."""
        return "local" if self._runner().local else "full"

    @property
    def long_audio_threshold_s(self) -> float:
        """Chunks longer than this run with local attention."""
        return self._planner.long_samples / SAMPLE_RATE

    @property
    def attention_planner(self) -> AttentionPlanner:
        """How a batch is grouped by attention mode and cut to fit memory."""
        return self._planner

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``int8``: how the primary model computes."""
        return self._runner().precision

    @property
    def model(self) -> Any:
        """The NeMo model on the primary device."""
        return self._runner().model

    @property
    def device(self) -> torch.device:
        return self._device

    def fit_attention_to_free_memory(self) -> None:
        """Size full-attention sub-batches to the GPU memory free now; call once, after :meth:`warm_up`.

        Does nothing on a CPU.
        """
        budget = gpu_attention_budget(self._device)
        self._planner = replace(self._planner, budget_bytes=budget)
        if budget is not None:
            log.info("parakeet full-attention scores may take %.1f GB per batch", budget / 2**30)

    def set_attention(self, local: bool) -> None:
        """Put the model in local or full attention, as :meth:`transcribe` does for each group.

        For callers that run the model directly (benchmarks); :meth:`transcribe` needs no help.
        """
        self._runner().set_local(local)

    def warm_up(self) -> None:
        """Run one second of silence through the model, so the first real batch is not slow."""
        self._runner().run([np.zeros(SAMPLE_RATE, dtype=np.float32)])

    def transcribe(self, batch: Sequence[AudioChunk]) -> list[EngineOutput]:
        """Transcribe a batch, longest first; output ``i`` belongs to ``batch[i]``, words in file time.

        Raises:
            EngineOOMError: a batch of more than one chunk did not fit; a smaller one may.
            EngineError: a single chunk failed after every recovery step, or NeMo failed.
        """
        from parascribe.engines.parakeet.runner import OutOfMemory, Result

        runner = self._runner()
        results = [Result([], "") for _ in batch]
        groups = self._planner.plan([len(c.samples) for c in batch])
        if not groups:
            return [EngineOutput() for _ in batch]
        if not runner.local:
            groups.sort(key=lambda g: g.local)  # start in the mode the model is already in
        live = [i for g in groups for i in g.ids]
        try:
            for group in groups:
                runner.set_local(group.local)
                try:
                    outputs = runner.run([_audio(batch[i]) for i in group.ids])
                except OutOfMemory:
                    self.recoveries["oom"] += 1
                    if len(group.ids) > 1:
                        seconds = sum(batch[i].duration_s for i in group.ids)
                        raise EngineOOMError(
                            f"a batch of {len(group.ids)} chunks ({seconds:.0f} s of audio) did not fit in memory "
                            f"on {self._device}"
                        ) from None
                    outputs = [self._recover(_audio(batch[group.ids[0]]), tried_local=group.local)]
                for i, result in zip(group.ids, outputs, strict=True):
                    results[i] = result
        except EngineError:
            raise
        except Exception as err:
            raise EngineError(f"Parakeet failed on a batch of {len(live)}: {type(err).__name__}: {err}") from err
        return [_output(result, chunk) for result, chunk in zip(results, batch, strict=True)]

    def close(self) -> None:
        """Drop the models and give their memory back."""
        self._primary = None
        self._cpu = None
        gc.collect()
        if self._device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # --- one chunk that did not fit ---

    def _recover(self, samples: np.ndarray, tried_local: bool) -> Result:
        from parascribe.engines.parakeet.runner import OutOfMemory

        seconds = len(samples) / SAMPLE_RATE
        try:
            return self._shrink(self._runner(), samples, 0, tried_local)
        except OutOfMemory:
            pass
        if self._cpu_loader is not None:
            self.recoveries["cpu_fallback"] += 1
            log.warning("parakeet: a %.0f s chunk does not fit on %s; running it on a CPU copy", seconds,
                        self._device)
            cpu = self._cpu_runner()
            # Only big chunks get here; local attention keeps their memory linear in length.
            cpu.set_local(True)
            try:
                return cpu.run([samples])[0]
            except OutOfMemory:
                pass
        raise EngineError(
            f"a {seconds:.0f} s chunk does not fit in memory on {self._device}, even with local attention "
            f"and split {2**MAX_SPLIT_DEPTH} ways"
            + ("" if self._cpu_loader is None else ", nor on the CPU")
        )

    def _shrink(self, runner: Runner, samples: np.ndarray, depth: int, tried_local: bool) -> Result:
        """Local attention first, then halves (recursively). Raises OutOfMemory when nothing fits."""
        from parascribe.engines.parakeet.runner import OutOfMemory, Result

        if not tried_local:
            self.recoveries["local_attention"] += 1
            log.warning("parakeet: retrying a %.0f s chunk with local attention", len(samples) / SAMPLE_RATE)
            runner.set_local(True)
            try:
                return runner.run([samples])[0]
            except OutOfMemory:
                pass
        if depth >= MAX_SPLIT_DEPTH or len(samples) < 2 * MIN_SPLIT_S * SAMPLE_RATE:
            raise OutOfMemory()
        self.recoveries["split"] += 1
        log.warning("parakeet: splitting a %.0f s piece in two", len(samples) / SAMPLE_RATE)
        cut = len(samples) // 2
        half_overlap = int(SPLIT_OVERLAP_S * SAMPLE_RATE) // 2
        right_start = cut - half_overlap
        left = self._piece(runner, samples[: cut + half_overlap], depth + 1)
        right = self._piece(runner, samples[right_start:], depth + 1)
        shift = right_start / SAMPLE_RATE
        moved = [(text, start + shift, end + shift) for text, start, end in right.words]
        words = stitch_halves(left.words, moved, cut / SAMPLE_RATE)
        return Result(words=words, text=" ".join(w[0] for w in words))

    def _piece(self, runner: Runner, samples: np.ndarray, depth: int) -> Result:
        from parascribe.engines.parakeet.runner import OutOfMemory

        local = self._planner.is_local(len(samples))
        runner.set_local(local)
        try:
            return runner.run([samples])[0]
        except OutOfMemory:
            self.recoveries["oom"] += 1
            return self._shrink(runner, samples, depth, tried_local=local)

    def _runner(self) -> Runner:
        if self._primary is None:
            raise EngineError("the Parakeet engine is closed")
        return self._primary

    def _cpu_runner(self) -> Runner:
        import torch

        from parascribe.engines.parakeet.runner import Runner

        if self._cpu is None:
            assert self._cpu_loader is not None
            self._cpu = Runner(self._cpu_loader(), torch.device("cpu"), self._cpu_bf16, self._cpu_int8)
            log.info("parakeet CPU copy loaded (%s)", self._cpu.precision)
        return self._cpu


def _audio(chunk: AudioChunk) -> np.ndarray:
    samples = chunk.samples
    if samples.dtype != np.float32 or samples.ndim != 1:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    return samples


def _output(result: Result, chunk: AudioChunk) -> EngineOutput:
    """Move words into file time, clamped to the chunk (frame rounding can overshoot its end)."""
    duration = chunk.duration_s
    words = []
    for text, start, end in result.words:
        start = min(max(start, 0.0), duration)
        end = min(max(end, start), duration)
        words.append(Word(text=text, start=chunk.offset_s + start, end=chunk.offset_s + end))
    return EngineOutput(words=words, text=result.text)

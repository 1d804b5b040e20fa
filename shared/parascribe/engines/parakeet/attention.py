"""Which chunks of a batch run with full attention, and how many at a time.

FastConformer's full (``rel_pos``) attention holds several (batch, heads, T, T) score
tensors per layer, so its memory grows with the square of a chunk's encoder frames T (one
frame per 80 ms). At the pipeline's 10-minute chunks T is about 7,500, and one chunk's scores
alone take about 7 GB in bf16. Local attention (``rel_pos_local_attn``, 128 frames either
side) grows linearly instead, and on a CPU it is also faster from about 30 s of audio up
(``docs/performance.md``).

:class:`AttentionPlanner` sorts a batch into groups before anything runs:

- a chunk longer than the long-audio threshold, or one whose full attention would not fit
  the memory budget even alone, runs with local attention;
- the other chunks run with full attention, in sub-batches whose score tensors fit the
  budget, so a batch of long chunks does not run out of memory, halve, and run out again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parascribe.audio import SAMPLE_RATE

if TYPE_CHECKING:
    import torch

__all__ = [
    "CPU_LOCAL_ATTENTION_S",
    "GPU_LOCAL_ATTENTION_S",
    "SCORE_TENSORS",
    "AttentionPlanner",
    "Group",
    "gpu_attention_budget",
    "long_audio_threshold",
]

SCORE_TENSORS = 8
"""(batch, heads, T, T) tensors alive at the peak of one full-attention layer, with margin.

Measured at 7.0-7.4 on a CPU in fp32 for T of 3,000-6,000 frames (peak RSS of an encoder
forward over batch x heads x T^2 x 4 bytes): the relative-position scores (T x 2T, padded
once more by the shift), the content scores, their sum, the mask fills and the softmax.
"""

CPU_LOCAL_ATTENTION_S = 30.0
"""On a CPU, local attention is as fast as full attention at 15 s and faster from 30 s on
(1.25-1.5x at 60 s, 2.0-2.2x at 120 s, 3.9-5.0x at 300 s: full parakeet-tdt-0.6b-v2, fp32, 2 cores,
``bench/attention_crossover.py``)."""

GPU_LOCAL_ATTENTION_S = 900.0
"""On a GPU, full attention (slightly more accurate) up to 15 minutes, as memory allows."""

GPU_BUDGET_SHARE = 0.6
"""Share of the free GPU memory the score tensors may take; the rest of the forward needs the remainder."""


def long_audio_threshold(setting: float | None, device: torch.device | str) -> float:
    """``LONG_AUDIO_THRESHOLD_SECONDS``, or the device's default when it is not set."""
    if setting is not None:
        return setting
    kind = device if isinstance(device, str) else device.type
    return GPU_LOCAL_ATTENTION_S if kind == "cuda" else CPU_LOCAL_ATTENTION_S


def gpu_attention_budget(device: torch.device) -> int | None:
    """Bytes the full-attention scores of one batch may take on ``device``; None off the GPU.

    Call it after the model is loaded and warmed up: it is a share of what is still free,
    within this process's cap (``GPU_MEMORY_LIMIT_GB``) when one is set.
    """
    if device.type != "cuda":
        return None
    import torch

    torch.cuda.empty_cache()  # blocks cached by loading and warm-up count as used otherwise
    free, total = torch.cuda.mem_get_info(device)
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    if fraction < 1.0:
        free = min(free, int(fraction * total) - torch.cuda.memory_reserved(device))
    return max(0, int(GPU_BUDGET_SHARE * free))


@dataclass(frozen=True)
class Group:
    """Chunks (indices into the batch) that run together in one attention mode."""

    local: bool
    ids: list[int]


@dataclass(frozen=True)
class AttentionPlanner:
    """Plans the attention mode and sub-batches of a batch of chunks.

    Attributes:
        long_samples: a chunk longer than this (in samples) runs with local attention.
        heads: attention heads per layer.
        samples_per_frame: audio samples per encoder frame (hop length x subsampling factor).
        element_bytes: bytes per score element (2 in bf16, 4 in fp32).
        budget_bytes: memory the score tensors of one full-attention sub-batch may take;
            None for no limit (a CPU: its memory is large, and local attention already
            takes every chunk long enough to matter).
    """

    long_samples: int
    heads: int
    samples_per_frame: int
    element_bytes: int
    budget_bytes: int | None = None

    @classmethod
    def for_model(cls, model: Any, threshold_s: float, bf16: bool, budget_bytes: int | None) -> AttentionPlanner:
        """Read heads, hop length and subsampling from a NeMo model's config."""
        encoder = model.cfg.encoder
        hop = round(float(model.cfg.preprocessor.get("window_stride", 0.01)) * SAMPLE_RATE)
        return cls(
            long_samples=int(threshold_s * SAMPLE_RATE),
            heads=int(encoder.get("n_heads", 8)),
            samples_per_frame=hop * int(encoder.get("subsampling_factor", 8)),
            element_bytes=2 if bf16 else 4,
            budget_bytes=budget_bytes,
        )

    def frames(self, samples: int) -> int:
        return math.ceil(samples / self.samples_per_frame)

    def full_attention_bytes(self, samples: int, batch: int = 1) -> int:
        """Peak memory of the score tensors for ``batch`` chunks padded to ``samples``."""
        return SCORE_TENSORS * batch * self.heads * self.frames(samples) ** 2 * self.element_bytes

    def plan(self, lengths: Sequence[int]) -> list[Group]:
        """Group a batch by attention mode; full-attention groups are cut to fit the budget.

        Args:
            lengths: each chunk's length in samples; zero-length chunks are left out.

        Returns:
            Groups in running order, each longest first: the local group (at most one),
            then the full-attention sub-batches.
        """
        order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: -lengths[i])
        local: list[int] = []
        full: list[int] = []
        for i in order:
            (local if self.is_local(lengths[i]) else full).append(i)
        groups = [Group(local=True, ids=local)] if local else []
        current: list[int] = []
        for i in full:
            # Longest first, so a sub-batch pads to its first chunk's length.
            if current and not self._fits(lengths[current[0]], len(current) + 1):
                groups.append(Group(local=False, ids=current))
                current = []
            current.append(i)
        if current:
            groups.append(Group(local=False, ids=current))
        return groups

    def is_local(self, samples: int) -> bool:
        """Whether a chunk of ``samples`` runs with local attention."""
        return samples > self.long_samples or not self._fits(samples, 1)

    def _fits(self, samples: int, batch: int) -> bool:
        return self.budget_bytes is None or self.full_attention_bytes(samples, batch) <= self.budget_bytes

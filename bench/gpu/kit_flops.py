"""The encoder's FLOPs, counted from the architecture, and the device's matmul rate: the ceiling.

:func:`encoder_flops` counts the multiply-adds (2 FLOPs each) of NeMo's preprocessor and FastConformer
encoder for one padded batch, as ``torch.utils.flop_counter`` counts them (matmuls and convolutions; the
FFT, norms, softmax and activations are not counted): the mel filterbank, the ``dw_striding`` subsampling,
and per Conformer layer two feed-forward modules, relative-position self-attention (full, or local with a
window of ``left + right + 1`` frames) and the convolution module. The relative-position projection runs
once per batch (NeMo's position embeddings have batch 1), everything else once per item.

An encoder's share of the device's bound is ``encoder FLOPs / seconds / matmul rate``: how much of the
time would be left if every FLOP ran at the rate of a large bf16 matmul.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

SAMPLE_RATE = 16_000
HOP = 160
"""Samples per feature frame (10 ms)."""
N_FFT = 512
SUBSAMPLING = 8
CONV_KERNEL = 9
FF_EXPANSION = 4


@dataclass(frozen=True)
class Arch:
    """The dimensions that set the encoder's cost (a subset of ``tests.parakeet_arch.ArchSpec``)."""

    d_model: int
    n_layers: int
    features: int
    subsampling_channels: int

    @classmethod
    def of(cls, spec: Any) -> Arch:
        return cls(spec.d_model, spec.n_layers, spec.features, spec.subsampling_channels)


def _half(n: int) -> int:
    """Length after a kernel-3, stride-2, padding-1 convolution."""
    return (n - 1) // 2 + 1


def feature_frames(samples: int) -> int:
    """Mel frames NeMo's preprocessor makes of ``samples`` (centred STFT)."""
    return samples // HOP + 1


def encoder_frames(samples: int) -> int:
    t = feature_frames(samples)
    for _ in range(int(math.log2(SUBSAMPLING))):
        t = _half(t)
    return t


def encoder_flops(arch: Arch, samples: int, batch: int = 1, local_window: int | None = None) -> float:
    """FLOPs of preprocessor + encoder on ``batch`` items padded to ``samples``.

    Args:
        arch: the model's dimensions.
        samples: the padded length, 16 kHz samples.
        batch: items in the batch.
        local_window: None for full attention, else the frames each frame attends to (left + right + 1).
    """
    d, c = arch.d_model, arch.subsampling_channels
    t_in = feature_frames(samples)
    mel = 2 * (N_FFT // 2 + 1) * arch.features * t_in
    # dw_striding: a full 3x3 conv 1 -> c, then (depthwise 3x3 + pointwise 1x1) per further halving.
    t, f = _half(t_in), _half(arch.features)
    sub = 2 * c * t * f * 9
    for _ in range(int(math.log2(SUBSAMPLING)) - 1):
        t, f = _half(t), _half(f)
        sub += 2 * c * t * f * 9 + 2 * c * t * f * c
    sub += 2 * t * (c * f) * d  # the output projection to d_model
    feed_forward = 2 * (2 * t * d * FF_EXPANSION * d)  # d -> 4d -> d
    attention_proj = 4 * (2 * t * d * d)  # q, k, v, out
    conv_module = 2 * t * d * (2 * d) + 2 * t * d * CONV_KERNEL + 2 * t * d * d  # pointwise (GLU), depthwise, pointwise
    per_item_linear = 2 * feed_forward + attention_proj + conv_module  # two (macaron) feed-forward modules
    if local_window is None:
        pos = 2 * t - 1
        scores = 2 * t * t * d + 2 * t * pos * d + 2 * t * t * d  # content, position, weighted values
    else:
        pos = local_window
        scores = 3 * 2 * t * local_window * d
    pos_proj = 2 * pos * d * d  # once per batch
    layers = arch.n_layers * (batch * (per_item_linear + scores) + pos_proj)
    return float(batch * (mel + sub) + layers)


def flops_per_audio_second(arch: Arch, seconds: float, local_window: int | None = None) -> float:
    """Encoder FLOPs per second of audio for items of ``seconds`` each (one item; a batch costs the same per item)."""
    samples = int(seconds * SAMPLE_RATE)
    return encoder_flops(arch, samples, 1, local_window) / seconds


def share_of_bound(flops: float, seconds: float, rate: float) -> float | None:
    """Achieved FLOP rate over the device's matmul rate; None when either is unknown."""
    if seconds <= 0 or not rate or rate != rate:
        return None
    return flops / seconds / rate


def matmul_rate(device: Any, dtype: Any, n: int, repeats: int = 10, warmup: int = 3) -> float:
    """FLOP/s of an ``n x n x n`` matmul on ``device``: the mean of ``repeats`` timed products after ``warmup``."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start_ev = torch.cuda.Event(enable_timing=True)
        end_ev = torch.cuda.Event(enable_timing=True)
        start_ev.record()
        for _ in range(repeats):
            a @ b
        end_ev.record()
        torch.cuda.synchronize(device)
        seconds = start_ev.elapsed_time(end_ev) / 1000
    else:
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = time.perf_counter() - start
    return 2 * n**3 * repeats / seconds

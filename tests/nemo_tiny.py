"""A tiny Parakeet-shaped NeMo model, built at test time (no download).

Same class as nvidia/parakeet-tdt-0.6b-v2 (``EncDecRNNTBPEModel``, FastConformer
encoder, TDT decoder with durations [0,1,2,3,4] in loss and decoding, a
``validation_ds`` with ``defer_setup``), with d_model 64, 2 layers and a
128-piece SentencePiece tokenizer. It builds and saves in well under a second.
Its weights are random, so it emits nonsense words: assert structure, not words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from parascribe.audio import SAMPLE_RATE


def build_tiny_nemo(directory: Path, seed: int = 0) -> Path:
    """Build the tiny model and save it as ``directory/tiny-parakeet.nemo``.

    Args:
        directory: a writable folder (the tokenizer is trained there too).
        seed: fixes the tokenizer and the random weights.

    Returns:
        The path of the ``.nemo`` file.
    """
    from tests.parakeet_arch import TINY, build_tdt_model

    path = directory / "tiny-parakeet.nemo"
    if not path.exists():
        model = build_tdt_model(TINY, directory / "build", seed=seed)
        _make_it_talk(model)
        model.save_to(str(path))
        del model
    return path


def _make_it_talk(model: Any, gain: float = 30.0) -> None:
    """Make the random model's output depend on the audio, so it emits several words.

    An untrained encoder's output barely changes over time, so the joint picks the
    same token every frame and the whole clip becomes one "word". Amplifying the
    joint's encoder projection around the mean encoder output (on reference audio)
    makes the tokens, word boundaries and timestamps vary with the input.
    """
    import torch

    x = torch.from_numpy(noise(3.0, seed=7))[None]
    with torch.no_grad():
        encoded, _ = model.forward(input_signal=x, input_signal_length=torch.tensor([x.shape[1]]))
        centre = model.joint.enc.weight @ encoded[0].mean(dim=1)
        model.joint.enc.bias.sub_((gain - 1.0) * centre)
        model.joint.enc.weight.mul_(gain)
    model.eval()


def noise(seconds: float, seed: int = 0, level: float = 0.1) -> np.ndarray:
    """Deterministic noise-like audio, 16 kHz mono float32: enough to make the tiny model emit words."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t)
    return ((rng.standard_normal(n) * level) + tone * level).astype(np.float32)

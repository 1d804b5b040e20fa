"""The Parakeet TDT architecture as a NeMo config, buildable without a download.

Tests build a tiny model of the same class (``EncDecRNNTBPEModel`` with a TDT
decoder) in a fraction of a second; the benchmark builds the full
parakeet-tdt-0.6b-v2 dimensions with random weights. Both use one config
function, so the code under test and the code benchmarked load the same shape
of model as the real checkpoint.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemo.collections.asr.models import EncDecRNNTBPEModel

log = logging.getLogger(__name__)

TDT_DURATIONS = [0, 1, 2, 3, 4]


@dataclass(frozen=True)
class ArchSpec:
    """The dimensions that differ between the tiny test model and the real one."""

    d_model: int
    n_layers: int
    n_heads: int
    features: int
    subsampling_channels: int
    pred_hidden: int
    joint_hidden: int
    pred_rnn_layers: int
    vocab_size: int


TINY = ArchSpec(
    d_model=64, n_layers=2, n_heads=4, features=80, subsampling_channels=64,
    pred_hidden=64, joint_hidden=64, pred_rnn_layers=1, vocab_size=128,
)
"""Same class and decoder as Parakeet, small enough to build in a test."""

PARAKEET_TDT_0_6B_V2 = ArchSpec(
    d_model=1024, n_layers=24, n_heads=8, features=128, subsampling_channels=256,
    pred_hidden=640, joint_hidden=640, pred_rnn_layers=2, vocab_size=1024,
)
"""nvidia/parakeet-tdt-0.6b-v2: about 618M parameters."""


def tdt_config(spec: ArchSpec, tokenizer_dir: str | Path) -> dict[str, Any]:
    """A FastConformer-TDT model config (the ``model`` section) for ``spec``.

    Args:
        spec: the dimensions.
        tokenizer_dir: a folder holding a SentencePiece ``tokenizer.model``.

    Returns:
        A plain dict; wrap it in an OmegaConf ``DictConfig`` to build the model.
    """
    return {
        "sample_rate": 16000,
        "compute_eval_loss": False,
        "model_defaults": {
            "enc_hidden": spec.d_model,
            "pred_hidden": spec.pred_hidden,
            "joint_hidden": spec.joint_hidden,
            "tdt_durations": list(TDT_DURATIONS),
            "num_tdt_durations": len(TDT_DURATIONS),
        },
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        # transcribe() on file paths reads use_start_end_token from here.
        "validation_ds": {
            "manifest_filepath": None,
            "sample_rate": 16000,
            "batch_size": 4,
            "shuffle": False,
            "use_start_end_token": False,
            "defer_setup": True,
        },
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": spec.features,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 1e-5,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": spec.features,
            "feat_out": -1,
            "n_layers": spec.n_layers,
            "d_model": spec.d_model,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": spec.subsampling_channels,
            "causal_downsampling": False,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": spec.n_heads,
            "att_context_size": [-1, -1],
            "att_context_style": "regular",
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "batch_norm",
            "conv_context_size": None,
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {
                "pred_hidden": spec.pred_hidden,
                "pred_rnn_layers": spec.pred_rnn_layers,
                "t_max": None,
                "dropout": 0.2,
            },
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "num_extra_outputs": len(TDT_DURATIONS),
            "jointnet": {
                "joint_hidden": spec.joint_hidden,
                "activation": "relu",
                "dropout": 0.2,
            },
        },
        "decoding": {
            "strategy": "greedy_batch",
            "model_type": "tdt",
            "durations": list(TDT_DURATIONS),
            "greedy": {"max_symbols": 10},
        },
        "loss": {
            "loss_name": "tdt",
            "tdt_kwargs": {
                "fastemit_lambda": 0.0,
                "clamp": -1.0,
                "durations": list(TDT_DURATIONS),
                "sigma": 0.02,
                "omega": 0.1,
            },
        },
    }


def _corpus(n_words: int, seed: int) -> str:
    """Pronounceable pseudo-English text, enough for SentencePiece to learn ``vocab`` pieces."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "st", "tr", "ch", "sh", "th", "pl", "gr", "br", "cl", "fr"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "ee", "oo"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "ng", "nd", "st", "ck"]
    words = [
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3)))
        for _ in range(3000)
    ]
    lines = []
    for _ in range(n_words // 12):
        lines.append(" ".join(rng.choice(words) for _ in range(12)))
    return "\n".join(lines) + "\n"


def train_tokenizer(workdir: str | Path, vocab_size: int, seed: int = 0) -> Path:
    """Train a SentencePiece BPE tokenizer on generated text, with no download.

    Args:
        workdir: a writable folder; the tokenizer lands in ``workdir/tokenizer``.
        vocab_size: the number of pieces.
        seed: makes the corpus, and so the tokenizer, reproducible.

    Returns:
        The folder that holds ``tokenizer.model``.
    """
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    workdir = Path(workdir)
    out = workdir / "tokenizer"
    if (out / "tokenizer.model").exists():
        return out
    workdir.mkdir(parents=True, exist_ok=True)
    text = workdir / "corpus.txt"
    text.write_text(_corpus(max(20_000, vocab_size * 60), seed))
    create_spt_model(
        str(text), vocab_size, sample_size=-1, do_lower_case=True, tokenizer_type="bpe", output_dir=str(out)
    )
    return out


def build_tdt_model(spec: ArchSpec, workdir: str | Path, seed: int = 0) -> EncDecRNNTBPEModel:
    """Build an untrained ``EncDecRNNTBPEModel`` with a TDT decoder on CPU.

    Args:
        spec: the dimensions (:data:`TINY` or :data:`PARAKEET_TDT_0_6B_V2`).
        workdir: where the tokenizer is trained and kept.
        seed: fixes the random weights.

    Returns:
        The model in eval mode, random weights.
    """
    import torch
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    tok = train_tokenizer(workdir, spec.vocab_size, seed)
    torch.manual_seed(seed)
    cfg = OmegaConf.create(tdt_config(spec, tok))
    model = EncDecRNNTBPEModel(cfg=cfg, trainer=None)
    model.eval()
    return model

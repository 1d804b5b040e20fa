"""One NeMo model on one device: precision, stable decoding set-up, attention mode, OOM detection.

Imported only once a Parakeet engine is built, so that choosing an engine does
not need torch.
"""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch

from parascribe.engines.parakeet.runtime import release_host_memory

log = logging.getLogger(__name__)

LOCAL_ATTENTION = "rel_pos_local_attn"
LOCAL_ATTENTION_CONTEXT = [128, 128]

INT8_LAYERS: set[type[torch.nn.Module]] = {torch.nn.Linear, torch.nn.LSTM}
"""What int8 quantizes: the encoder's, decoder's and joint's matmuls, including the Conformer conv
modules' pointwise convolutions once run as Linear layers (the other convolutions stay fp32)."""

POINTWISE_CONVS = ("pointwise_conv1", "pointwise_conv2")
"""The kernel-1 convolutions of each Conformer conv module (NeMo's ``ConformerConvolution``)."""

# torch 2.13 deprecates eager-mode quantization in favour of torchao's quantize_ API; these are the
# warnings quantize_dynamic emits until that migration (torchao: Int8DynamicActivationInt8WeightConfig).
_QUANTIZE_WARNINGS: list[tuple[type[Warning], str]] = [
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation"),
]

RawWord = tuple[str, float, float]
"""(text, start, end), seconds from the start of the audio the model saw."""


@dataclass
class Result:
    """What the model said about one piece of audio, in that audio's own time."""

    words: list[RawWord]
    text: str


class OutOfMemory(Exception):
    """The model ran out of device memory; the original error and its tensors are already released."""


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is torch running out of (GPU) memory."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


class PointwiseLinear(torch.nn.Module):
    """A kernel-1 Conv1d run as a Linear over the channel axis, so that dynamic quantization covers it.

    Takes and returns (batch, channels, time), as the convolution did.
    """

    def __init__(self, conv: torch.nn.Conv1d) -> None:
        """Copy ``conv``'s weight and bias into a Linear layer.

        Raises:
            ValueError: ``conv`` is not a plain pointwise convolution.
        """
        super().__init__()
        if not is_pointwise(conv):
            raise ValueError(f"not a pointwise convolution: {conv}")
        self.linear = torch.nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                                      device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight.squeeze(-1))
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, time) to (batch, out_channels, time)."""
        return self.linear(x.transpose(1, 2)).transpose(1, 2)


def is_pointwise(module: torch.nn.Module) -> TypeGuard[torch.nn.Conv1d]:
    """Whether ``module`` is a Conv1d that is a matmul over channels: kernel 1, stride 1, one group, no padding."""
    return (type(module) is torch.nn.Conv1d and module.kernel_size == (1,) and module.stride == (1,)
            and module.groups == 1 and module.padding == (0,) and module.dilation == (1,))


def _pointwise_as_linear(model: torch.nn.Module) -> None:
    """Replace the encoder's Conformer conv modules' pointwise convolutions by equivalent Linear layers."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        return
    for module in encoder.modules():
        for name in POINTWISE_CONVS:
            conv = getattr(module, name, None)
            if isinstance(conv, torch.nn.Module) and is_pointwise(conv):
                setattr(module, name, PointwiseLinear(conv))


def quantize_int8(model: torch.nn.Module) -> None:
    """Dynamically quantize the float Linear and LSTM layers of ``model`` to int8, in place.

    The encoder's pointwise convolutions are turned into Linear layers first, so they are
    quantized too. Weights become int8 once; activations are quantized per call. Layers already
    quantized are left as they are. In place because NeMo models cannot be deep-copied.
    The float weights' memory is given back to the OS (glibc keeps it otherwise).
    """
    _pointwise_as_linear(model)
    with warnings.catch_warnings():
        for category, message in _QUANTIZE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        torch.ao.quantization.quantize_dynamic(model, INT8_LAYERS, dtype=torch.qint8, inplace=True)
    release_host_memory()


def float_layers(model: torch.nn.Module) -> list[str]:
    """Names of the Linear and LSTM layers and the encoder's pointwise convolutions still in floating point."""
    return [name for name, m in model.named_modules() if type(m) in INT8_LAYERS or (
        name.startswith("encoder.") and name.rsplit(".", 1)[-1] in POINTWISE_CONVS and is_pointwise(m))]


def _is_quantized(module: torch.nn.Module) -> bool:
    import torch.ao.nn.quantized.dynamic as qd

    return isinstance(module, (qd.Linear, qd.LSTM))


AttentionLayers = dict[str, dict[str, torch.nn.Module]]
"""Per Conformer layer (by name), its attention block's quantized layers (by name)."""


def _quantized_attention(encoder: torch.nn.Module) -> AttentionLayers:
    kept: AttentionLayers = {}
    for name, layer in encoder.named_modules():
        attn = getattr(layer, "self_attn", None)
        if isinstance(attn, torch.nn.Module):
            kept[name] = {child: m for child, m in attn.named_children() if _is_quantized(m)}
    return kept


def _carry_over(encoder: torch.nn.Module, kept: AttentionLayers) -> None:
    """Move the old attention blocks' quantized layers into the new blocks ``change_attention_model`` built.

    NeMo copies the weights into the new blocks with ``load_state_dict(strict=False)``.
    A quantized layer's state-dict keys differ from a float one's, so without this the
    new blocks would silently keep their random initial weights.
    """
    for name, layer in encoder.named_modules():
        attn = getattr(layer, "self_attn", None)
        for child, quantized in kept.get(name, {}).items():
            fresh = getattr(attn, child, None)
            same_shape = isinstance(fresh, torch.nn.Linear) and (fresh.in_features, fresh.out_features) == (
                getattr(quantized, "in_features", None), getattr(quantized, "out_features", None))
            if not same_shape:
                raise RuntimeError(f"cannot carry the int8 weights of {name}.self_attn.{child} into the new "
                                   f"attention block ({type(fresh).__name__})")
            setattr(attn, child, quantized)


def _transcribe_config(batch_size: int) -> Any:
    from nemo.collections.asr.parts.mixins.transcription import TranscribeConfig

    cfg = TranscribeConfig(
        batch_size=batch_size, return_hypotheses=True, num_workers=0, timestamps=True, verbose=False
    )
    # NeMo pads clips under 1 s on both sides, which would shift their timestamps.
    cfg.pad_direction = "right"  # type: ignore[attr-defined]
    return cfg


def _result_of(hyp: Any) -> Result:
    stamps = getattr(hyp, "timestamp", None) or {}
    words = [(str(w["word"]), float(w["start"]), float(w["end"])) for w in stamps.get("word") or []]
    return Result(words=words, text=str(getattr(hyp, "text", "") or ""))


class Runner:
    """One model on one device: its precision, decoding set-up and attention mode.

    Attributes:
        precision: ``fp32``, ``bf16`` or ``int8`` (int8 Linear, LSTM and pointwise-conv weights, the rest fp32).
    """

    def __init__(self, model: Any, device: torch.device, bf16: bool, int8: bool = False) -> None:
        """Set ``model`` up for inference on ``device``.

        Args:
            model: a NeMo ``EncDecRNNTBPEModel`` already on ``device``.
            device: where it runs.
            bf16: cast the model to bf16 (and autocast on a CPU).
            int8: quantize its Linear, LSTM and pointwise-conv weights to int8, in place (a CPU without bf16 only).

        Raises:
            ValueError: int8 was asked for with bf16 or off the CPU.
        """
        from omegaconf import open_dict

        if int8 and (bf16 or device.type != "cpu"):
            raise ValueError(f"int8 runs on a CPU in place of fp32, not with bf16={bf16} on {device}")
        self.model = model
        self.device = device
        self.bf16 = bf16
        self.int8 = int8
        self.precision = "bf16" if bf16 else "int8" if int8 else "fp32"
        encoder = model.cfg.encoder
        self._full = (str(encoder.get("self_attention_model", "rel_pos")),
                      list(encoder.get("att_context_size", [-1, -1])))
        self._chunking = int(encoder.get("subsampling_conv_chunking_factor", 1))
        self.local = self._full[0] == LOCAL_ATTENTION
        # timestamps=True rewrites the decoding config on the first call and the change
        # persists; doing it once here keeps every later call on one stable config.
        with open_dict(model.cfg.decoding):
            model.cfg.decoding.compute_timestamps = True
            if model.cfg.decoding.get("strategy") == "greedy":
                model.cfg.decoding.strategy = "greedy_batch"
        model.change_decoding_strategy(model.cfg.decoding, verbose=False)
        if bf16:
            # As the Open ASR Leaderboard runs it: the model cast to bf16, while NeMo's
            # preprocessor still computes the features in fp32 internally.
            model.to(torch.bfloat16)
        # On a CPU, autocast also covers the fp32 ops that remain; on a GPU the cast is
        # enough, and NeMo's CUDA-graph decoder runs as the leaderboard runs it.
        self.autocast = bf16 and device.type == "cpu"
        if int8:
            quantize_int8(model)
        model.eval()

    def set_local(self, local: bool) -> None:
        """Switch to local attention (long audio) or back to the model's own full attention."""
        if local == self.local:
            return
        kept = _quantized_attention(self.model.encoder) if self.int8 else {}
        if local:
            self.model.change_attention_model(LOCAL_ATTENTION, LOCAL_ATTENTION_CONTEXT)
            self.model.change_subsampling_conv_chunking_factor(1)
        else:
            self.model.change_attention_model(self._full[0], self._full[1])
            self.model.change_subsampling_conv_chunking_factor(self._chunking)
        # The new attention layers are built in fp32.
        if self.bf16:
            self.model.to(torch.bfloat16)
        if self.int8:
            _carry_over(self.model.encoder, kept)
            quantize_int8(self.model)  # any float layer the switch added
        self.model.eval()
        self.local = local
        log.info("parakeet attention is now %s", "local [128,128]" if local else "full")

    def run(self, audio: Sequence[np.ndarray]) -> list[Result]:
        """Transcribe ``audio`` as one batch.

        Raises:
            OutOfMemory: the device ran out of memory (the cache is already emptied).
        """
        out_of_memory = False
        hyps: Any = None
        try:
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)
            with torch.inference_mode(), autocast:
                hyps = self.model.transcribe(list(audio), override_config=_transcribe_config(len(audio)))
        except Exception as err:
            if not is_oom(err):
                raise
            out_of_memory = True  # leave the except block first so the error's frames (and tensors) are freed
        finally:
            self.model.eval()  # NeMo leaves encoder, decoder and joint in train mode
        if out_of_memory:
            self.release_cache()
            raise OutOfMemory()
        if isinstance(hyps, tuple):
            hyps = hyps[0]
        return [_result_of(h) for h in hyps]

    def release_cache(self) -> None:
        """Return cached GPU blocks to the driver after an OOM."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

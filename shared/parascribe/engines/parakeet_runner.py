"""One NeMo model on one device: precision, stable decoding set-up, attention mode, OOM detection.

Imported only once a Parakeet engine is built, so that choosing an engine does
not need torch.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

LOCAL_ATTENTION = "rel_pos_local_attn"
LOCAL_ATTENTION_CONTEXT = [128, 128]

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
    """One model on one device: its precision, decoding set-up and attention mode."""

    def __init__(self, model: Any, device: torch.device, bf16: bool) -> None:
        from omegaconf import open_dict

        self.model = model
        self.device = device
        self.bf16 = bf16
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
        model.eval()

    def set_local(self, local: bool) -> None:
        """Switch to local attention (long audio) or back to the model's own full attention."""
        if local == self.local:
            return
        if local:
            self.model.change_attention_model(LOCAL_ATTENTION, LOCAL_ATTENTION_CONTEXT)
            self.model.change_subsampling_conv_chunking_factor(1)
        else:
            self.model.change_attention_model(self._full[0], self._full[1])
            self.model.change_subsampling_conv_chunking_factor(self._chunking)
        if self.bf16:
            self.model.to(torch.bfloat16)  # the new attention layers are built in fp32
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

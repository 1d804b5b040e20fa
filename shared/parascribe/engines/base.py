"""The ASR engine interface every engine implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from parascribe.audio import SAMPLE_RATE
from parascribe.contracts import EngineName, Word


@dataclass
class AudioChunk:
    """Decoded audio for one chunk: 16 kHz mono float32, starting at ``offset_s`` in file time."""

    key: str
    samples: np.ndarray
    offset_s: float = 0.0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass
class EngineOutput:
    """Words for one chunk, already offset into file time."""

    words: list[Word] = field(default_factory=list)
    text: str = ""


class AsrEngine(Protocol):
    """Transcribes batches. Implementations are not thread-safe: call from one thread.

    An engine may also have a ``window_seconds`` attribute: see :func:`window_seconds`.
    """

    name: EngineName

    def transcribe(self, batch: Sequence[AudioChunk]) -> list[EngineOutput]:
        """Transcribe a batch; output ``i`` belongs to ``batch[i]``.

        Raises:
            EngineOOMError: the batch did not fit in memory (a smaller one may).
            EngineError: the engine failed for another reason.
        """
        ...

    def close(self) -> None: ...


def window_seconds(engine: object) -> float | None:
    """The fixed window an engine always encodes, in seconds, or None when its cost follows the audio's length.

    Whisper reads audio in 30 s windows, so a 4 s input costs as much as 30 s: for such an engine the
    worker packs a chunk's consecutive speech segments into inputs of at most this length
    (:mod:`parascribe.asr.units`). Parakeet has no such window (None), so short segments go alone,
    batched by length. An optional attribute: an engine without it has no window.
    """
    value = getattr(engine, "window_seconds", None)
    return float(value) if value else None

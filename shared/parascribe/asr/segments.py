"""Speech regions into segments of at most ``SEGMENT_MAX_SECONDS``, cut at the longest pauses.

Pure numpy and Python: :func:`plan_segments` takes a chunk's speech regions (from the VAD) and
returns the spans of it to transcribe. Every span is a contiguous piece of the chunk's audio, so
a word at time ``t`` in a segment is at ``chunk offset + segment start + t`` in the file
(:func:`file_time`), exactly. What lies outside every span is skipped.

How a chunk is cut:

1. each region is padded by ``pad`` on both sides (within the chunk); overlapping ones merge;
2. a region still longer than ``max_len`` (speech with no pause) is cut where the speech
   probability is lowest in the second half of its allowed length, or evenly without
   probabilities;
3. a pause longer than ``max_pause`` (``SEGMENT_MAX_PAUSE_SECONDS``) always ends a segment, so long
   silences are never sent;
4. a run of regions longer than ``max_len`` is cut at its longest pause, then each half in
   the same way, until every piece fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from parascribe.audio import SAMPLE_RATE
from parascribe.config import Settings

__all__ = ["Segmenter", "Span", "Speech", "default_max_pause", "file_time", "plan_segments", "speech_seconds"]

Span = tuple[int, int]
"""``(start, end)`` in samples from the start of the chunk; half-open."""



def default_max_pause() -> int:
    """``SEGMENT_MAX_PAUSE_SECONDS``'s default, in samples: the settings model holds the one value."""
    return int(Settings.model_fields["segment_max_pause_seconds"].default * SAMPLE_RATE)


@dataclass(frozen=True)
class Speech:
    """What a VAD found in one piece of audio."""

    regions: list[Span]
    """Speech regions in samples, ordered and disjoint, unpadded."""
    probs: np.ndarray | None = None
    """The speech probability of each window, when the VAD gives them."""


def file_time(chunk_offset_s: float, segment_start: int, t: float) -> float:
    """Where ``t`` seconds into a segment starting at sample ``segment_start`` of a chunk lies in the file."""
    return chunk_offset_s + segment_start / SAMPLE_RATE + t


def speech_seconds(spans: Sequence[Span]) -> float:
    """Total length of ``spans`` in seconds."""
    return sum(e - s for s, e in spans) / SAMPLE_RATE


def _padded(regions: Sequence[Span], total: int, pad: int) -> list[Span]:
    merged: list[Span] = []
    for s, e in sorted(regions):
        s, e = max(0, s - pad), min(total, e + pad)
        if e <= s:
            continue
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _split_long(span: Span, max_len: int, probs: np.ndarray | None, window: int) -> list[Span]:
    """Cut one unbroken span into pieces of at most ``max_len``, at the quietest windows."""
    start, end = span
    pieces: list[Span] = []
    while end - start > max_len:
        lo, hi = start + max_len // 2, start + max_len
        cut = hi
        if probs is not None and len(probs):
            first, last = -(-lo // window), min(hi // window, len(probs))
            if last > first:
                cut = (first + int(np.argmin(probs[first:last]))) * window
        if not lo <= cut <= hi or cut <= start:
            cut = hi
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def _fit(run: list[Span], max_len: int) -> list[Span]:
    """One segment per group of regions, cutting the run at its longest pause until each fits."""
    if run[-1][1] - run[0][0] <= max_len:
        return [(run[0][0], run[-1][1])]
    gaps = [run[i + 1][0] - run[i][1] for i in range(len(run) - 1)]
    longest = max(gaps)
    # Of equal pauses, the one nearest the middle: fewer, more even segments.
    middle = (run[0][0] + run[-1][1]) / 2
    at = min((i for i, g in enumerate(gaps) if g == longest), key=lambda i: abs(run[i][1] - middle))
    return _fit(run[: at + 1], max_len) + _fit(run[at + 1:], max_len)


def plan_segments(regions: Sequence[Span], total: int, *, max_len: int, pad: int = 0,
                  max_pause: int | None = None, probs: np.ndarray | None = None, window: int = 512) -> list[Span]:
    """The spans of a chunk to transcribe, given where its speech is.

    Args:
        regions: speech regions in samples (any order; clipped to ``[0, total)``).
        total: the chunk's length in samples.
        max_len: the longest segment, in samples (padding included).
        pad: samples added before and after each region.
        max_pause: a pause (after padding) longer than this, in samples, always ends a segment:
            it is skipped, not transcribed. None for ``SEGMENT_MAX_PAUSE_SECONDS``' default.
        probs: per-window speech probabilities, to cut unbroken speech at its quietest point.
        window: samples per probability.

    Returns:
        Ordered, disjoint spans, each at most ``max_len`` long, covering every region.
        Empty when there is no speech.

    Raises:
        ValueError: ``max_len`` is not positive.
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    pause = default_max_pause() if max_pause is None else max_pause
    pieces = [p for span in _padded(regions, total, pad) for p in _split_long(span, max_len, probs, window)]
    out: list[Span] = []
    run: list[Span] = []
    for piece in pieces:
        if run and piece[0] - run[-1][1] > pause:
            out += _fit(run, max_len)
            run = []
        run.append(piece)
    if run:
        out += _fit(run, max_len)
    return out


@dataclass(frozen=True)
class Segmenter:
    """VAD plus :func:`plan_segments`, with the worker's settings: what a decode thread calls on each chunk.

    Attributes:
        detect: where the speech is in 16 kHz audio (``SileroVad.detect``).
        max_len: ``SEGMENT_MAX_SECONDS`` in samples.
        pad: ``VAD_SPEECH_PAD_MS`` in samples.
        max_pause: ``SEGMENT_MAX_PAUSE_SECONDS`` in samples: a longer pause always ends a segment.
    """

    detect: Callable[[np.ndarray], Speech]
    max_len: int
    pad: int
    max_pause: int = field(default_factory=default_max_pause)

    @classmethod
    def from_settings(cls, settings: Settings,
                      detect: Callable[[np.ndarray], Speech]) -> Segmenter:
        return cls(detect=detect, max_len=int(settings.segment_max_seconds * SAMPLE_RATE),
                   pad=int(settings.vad_speech_pad_ms * SAMPLE_RATE / 1000),
                   max_pause=int(settings.segment_max_pause_seconds * SAMPLE_RATE))

    def plan(self, samples: np.ndarray) -> list[Span]:
        """The spans of ``samples`` to transcribe; empty when it holds no speech."""
        speech = self.detect(samples)
        return plan_segments(speech.regions, len(samples), max_len=self.max_len, pad=self.pad,
                             max_pause=self.max_pause, probs=speech.probs)

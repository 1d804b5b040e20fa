"""What the engine is sent for a chunk's speech segments: each segment alone, or several packed into one window.

Parakeet's cost follows the audio's length, so each segment goes alone and short segments batch
well. Whisper always encodes a fixed window (30 s): a 4 s segment costs as much as 30 s of
audio. An engine like that says so with ``window_seconds`` (see
:func:`parascribe.engines.base.window_seconds`), and a chunk's consecutive segments are packed
into windows of at most that length, as faster-whisper's own ``collect_chunks`` does: their
samples one after another, the skipped audio between them left out.

Packing moves audio, so a :class:`TimeMap` goes with each window: where each piece lies in the
window and where it starts in the file. A word is placed by the piece that holds its midpoint
and moved by that piece's own shift, so the pauses left out never shift a time.

:func:`length_batches` then cuts the inputs, longest first, into engine calls: at most
``SEGMENT_BATCH_SIZE`` each, and none padding its shortest input by more than a quarter of its
longest. A batch is padded to its longest input and the encoder computes every padded frame, so
cutting only by count wastes much: on the 10-minute benchmark recording, 39 segments of 2.6-29 s
in calls of 64 would compute 3.7x the speech (1.9x in calls of 16); with the bound, 1.12x.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from parascribe.asr.segments import Span
from parascribe.audio import SAMPLE_RATE
from parascribe.contracts import Word
from parascribe.engines.base import AudioChunk, EngineOutput

__all__ = ["MIN_LENGTH_RATIO", "EngineInput", "TimeMap", "length_batches", "pack", "segment_inputs"]

T = TypeVar("T")

MIN_LENGTH_RATIO = 0.75
"""An input joins an engine call only when it is at least this share of the call's longest input,
so padding takes at most a quarter of what the encoder computes (fewer, fuller calls below that
cost more in padding than they save in per-call overhead, on a CPU and on a GPU)."""


@dataclass(frozen=True)
class TimeMap:
    """Window time to file time for a window packed from several pieces of a chunk.

    Piece ``i`` fills samples ``[starts[i], ends[i])`` of the window and begins at ``file_s[i]``
    seconds in the file; the pieces are in order and back to back (``ends[i] == starts[i + 1]``).
    """

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    file_s: tuple[float, ...]

    def piece(self, t: float) -> int:
        """The piece holding window time ``t`` (seconds); the first or last one outside the window."""
        return min(bisect.bisect_right(self.ends, t * SAMPLE_RATE), len(self.ends) - 1)

    def to_file(self, t: float, i: int) -> float:
        """Window time ``t`` as file time, moved by piece ``i``'s shift and kept within that piece."""
        start, end = self.starts[i] / SAMPLE_RATE, self.ends[i] / SAMPLE_RATE
        return self.file_s[i] + min(max(t, start), end) - start

    def word(self, w: Word) -> Word:
        """A word the engine placed in window time, in file time (by the piece that holds its midpoint)."""
        i = self.piece((w.start + w.end) / 2)
        start = self.to_file(w.start, i)
        return w.model_copy(update={"start": start, "end": max(start, self.to_file(w.end, i))})

    def output(self, out: EngineOutput) -> EngineOutput:
        """The engine's output for the window, its words in file time."""
        return EngineOutput(words=[self.word(w) for w in out.words], text=out.text)


@dataclass(frozen=True)
class EngineInput:
    """One input for the engine: a segment (words come back in file time), or a packed window and its map."""

    audio: AudioChunk
    tmap: TimeMap | None = None

    def in_file_time(self, out: EngineOutput) -> EngineOutput:
        return out if self.tmap is None else self.tmap.output(out)


def pack(spans: Sequence[Span], window: int) -> list[list[Span]]:
    """Consecutive spans grouped so that each group's total length is at most ``window`` samples.

    Greedy, in order, as ``collect_chunks`` does; a span longer than ``window`` is a group alone.
    """
    groups: list[list[Span]] = []
    used = 0
    for s, e in spans:
        if groups and used + (e - s) <= window:
            groups[-1].append((s, e))
            used += e - s
        else:
            groups.append([(s, e)])
            used = e - s
    return groups


def segment_inputs(chunk: AudioChunk, spans: Sequence[Span], window: int | None) -> list[EngineInput]:
    """What to send the engine for ``chunk``'s speech ``spans`` (samples from its start), in file order.

    Args:
        chunk: the chunk's samples and its offset in the file.
        spans: ordered, disjoint spans to transcribe.
        window: the engine's fixed window in samples, to pack spans into; None sends each span alone.
    """
    if window is None:
        return [EngineInput(_piece(chunk, span, f"{chunk.key}#{i}")) for i, span in enumerate(spans)]
    inputs = []
    for i, group in enumerate(pack(spans, window)):
        if len(group) == 1:
            inputs.append(EngineInput(_piece(chunk, group[0], f"{chunk.key}#w{i}")))
            continue
        lengths = np.cumsum([0] + [e - s for s, e in group]).tolist()
        tmap = TimeMap(starts=tuple(lengths[:-1]), ends=tuple(lengths[1:]),
                       file_s=tuple(chunk.offset_s + s / SAMPLE_RATE for s, _ in group))
        samples = np.concatenate([chunk.samples[s:e] for s, e in group])
        inputs.append(EngineInput(AudioChunk(key=f"{chunk.key}#w{i}", samples=samples, offset_s=0.0), tmap))
    return inputs


def length_batches(items: Sequence[T], length: Callable[[T], int], size: int,
                   min_ratio: float | None = None) -> list[list[T]]:
    """``items`` longest first, cut into engine calls of at most ``size``, each input at least
    ``min_ratio`` (:data:`MIN_LENGTH_RATIO` when None) of its call's longest."""
    ratio = MIN_LENGTH_RATIO if min_ratio is None else min_ratio
    calls: list[list[T]] = []
    for item in sorted(items, key=lambda x: -length(x)):
        if not calls or len(calls[-1]) >= size or length(item) < ratio * length(calls[-1][0]):
            calls.append([])
        calls[-1].append(item)
    return calls


def _piece(chunk: AudioChunk, span: Span, key: str) -> AudioChunk:
    """One segment of a chunk, as the engine takes it: its own samples and its own offset in file time."""
    start, end = span
    return AudioChunk(key=key, samples=chunk.samples[start:end], offset_s=chunk.offset_s + start / SAMPLE_RATE)

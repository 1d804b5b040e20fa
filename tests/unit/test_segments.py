"""Segment planning: properties over any speech layout (hypothesis), and the cases that matter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parascribe.asr.segments import Segmenter, Speech, file_time, plan_segments, speech_seconds
from parascribe.audio import SAMPLE_RATE
from parascribe.config import load_settings

SR = SAMPLE_RATE


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int, int, int]:
    """Disjoint speech regions in a chunk, a maximum segment length and a pad (samples)."""
    n = draw(st.integers(0, 30))
    cursor = draw(st.integers(0, 5 * SR))
    regions = []
    for _ in range(n):
        length = draw(st.integers(1, 70 * SR))
        regions.append((cursor, cursor + length))
        cursor += length + draw(st.integers(0, 10 * SR))
    total = cursor + draw(st.integers(0, 5 * SR))
    max_len = draw(st.integers(2 * SR, 40 * SR))
    pad = draw(st.integers(0, SR // 2))
    return regions, total, max_len, pad


@settings(max_examples=300, deadline=None)
@given(layouts(), st.booleans())
def test_segments_fit_cover_and_never_overlap(layout: tuple[list[tuple[int, int]], int, int, int],
                                              with_probs: bool) -> None:
    regions, total, max_len, pad = layout
    probs = np.random.default_rng(len(regions)).random(-(-total // 512)) if with_probs else None
    spans = plan_segments(regions, total, max_len=max_len, pad=pad, probs=probs)
    assert all(0 <= s < e <= total for s, e in spans)
    assert all(e - s <= max_len for s, e in spans), "a segment is longer than the maximum"
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), "segments overlap or are out of order"
    for s, e in regions:  # every speech sample lies in a segment
        covered = s
        for a, b in spans:
            if a <= covered < b:
                covered = b
        assert covered >= min(e, total), f"speech {s}-{e} is not covered"
    assert not regions or spans
    if not regions:
        assert spans == []


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 36_000, allow_nan=False), st.integers(0, 3600 * SR), st.floats(0, 30, allow_nan=False))
def test_file_time_is_the_chunk_offset_plus_the_segment_start(offset: float, start: int, t: float) -> None:
    assert file_time(offset, start, t) == pytest.approx(offset + start / SR + t, abs=1e-9)
    # a sample index maps back exactly: the segment's first sample is at its start in the file
    assert file_time(offset, start, 0.0) * SR == pytest.approx(offset * SR + start, abs=1e-6)


def test_no_speech_gives_no_segments() -> None:
    assert plan_segments([], 10 * SR, max_len=30 * SR, pad=SR // 5) == []


def test_short_pauses_are_kept_long_pauses_are_skipped() -> None:
    regions = [(1 * SR, 3 * SR), (3 * SR + SR // 2, 6 * SR), (20 * SR, 22 * SR)]
    spans = plan_segments(regions, 30 * SR, max_len=30 * SR, pad=SR // 5)
    assert spans == [(1 * SR - SR // 5, 6 * SR + SR // 5), (20 * SR - SR // 5, 22 * SR + SR // 5)]
    assert speech_seconds(spans) == pytest.approx(5.4 + 2.4)


def test_a_long_run_is_cut_at_its_longest_pause() -> None:
    # ten 3.5 s utterances with 0.5 s pauses, one 1.5 s pause after the fourth: 40 s in all
    regions, at = [], 0
    for i in range(10):
        regions.append((at, at + int(3.5 * SR)))
        at += int(3.5 * SR) + (int(1.5 * SR) if i == 3 else SR // 2)
    spans = plan_segments(regions, at, max_len=30 * SR, pad=0)
    assert len(spans) == 2
    assert spans[0][1] == regions[3][1] and spans[1][0] == regions[4][0]


def test_unbroken_speech_is_cut_where_it_is_quietest() -> None:
    total = 70 * SR
    probs = np.full(-(-total // 512), 0.9)
    quiet = (25 * SR) // 512
    probs[quiet] = 0.1
    spans = plan_segments([(0, total)], total, max_len=30 * SR, pad=0, probs=probs)
    assert spans[0] == (0, quiet * 512)
    assert all(e - s <= 30 * SR for s, e in spans) and spans[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_max_pause_is_two_seconds_by_default() -> None:
    gap = int(load_settings().segment_max_pause_seconds * SR)
    assert gap == 2 * SR
    kept = plan_segments([(0, SR), (SR + gap, 2 * SR + gap)], 10 * SR, max_len=30 * SR)
    split = plan_segments([(0, SR), (SR + gap + 1, 2 * SR + gap + 1)], 10 * SR, max_len=30 * SR)
    assert len(kept) == 1 and len(split) == 2


def test_max_len_must_be_positive() -> None:
    with pytest.raises(ValueError):
        plan_segments([(0, 1)], 10, max_len=0)


def test_segmenter_reads_the_settings() -> None:
    s = load_settings(segment_max_seconds=10, vad_speech_pad_ms=100)
    seg = Segmenter.from_settings(s, lambda x: Speech(regions=[(SR, 25 * SR)]))
    assert seg.max_len == 10 * SR and seg.pad == SR // 10
    spans = seg.plan(np.zeros(30 * SR, dtype=np.float32))
    assert spans[0][0] == SR - SR // 10 and spans[-1][1] == 25 * SR + SR // 10
    assert all(e - s <= 10 * SR for s, e in spans)


def test_segmenter_reads_the_max_pause_setting() -> None:
    regions = [(0, SR), (4 * SR, 5 * SR)]  # a 3 s pause
    def detect(x: np.ndarray) -> Speech:
        return Speech(regions=regions)

    split = Segmenter.from_settings(load_settings(vad_speech_pad_ms=0), detect)
    assert split.max_pause == 2 * SR and split.plan(np.zeros(10 * SR, np.float32)) == regions
    kept = Segmenter.from_settings(load_settings(vad_speech_pad_ms=0, segment_max_pause_seconds=3.5), detect)
    assert kept.max_pause == int(3.5 * SR) and kept.plan(np.zeros(10 * SR, np.float32)) == [(0, 5 * SR)]

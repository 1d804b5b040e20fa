"""Packing a chunk's speech segments into fixed windows (Whisper), and mapping word times back exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parascribe.asr.units import MIN_LENGTH_RATIO, TimeMap, length_batches, pack, segment_inputs
from parascribe.audio import SAMPLE_RATE
from parascribe.contracts import Word
from parascribe.engines.base import AudioChunk, EngineOutput, window_seconds

SR = SAMPLE_RATE


@st.composite
def spans_and_window(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int, int]:
    """Ordered, disjoint spans (samples) in a chunk, the chunk's length and a window."""
    cursor = draw(st.integers(0, 3 * SR))
    spans = []
    for _ in range(draw(st.integers(0, 25))):
        length = draw(st.integers(1, 40 * SR))
        spans.append((cursor, cursor + length))
        cursor += length + draw(st.integers(0, 10 * SR))
    return spans, cursor + 1, draw(st.integers(SR, 35 * SR))


@settings(max_examples=100, deadline=None)
@given(spans_and_window())
def test_windows_keep_every_span_in_order_and_fit(case: tuple[list[tuple[int, int]], int, int]) -> None:
    spans, _, window = case
    groups = pack(spans, window)
    assert [s for g in groups for s in g] == spans
    assert all(len(g) == 1 or sum(e - s for s, e in g) <= window for g in groups)
    # greedy: the next group's first span would not have fitted in the group before
    for a, b in zip(groups, groups[1:], strict=False):
        assert sum(e - s for s, e in a) + b[0][1] - b[0][0] > window


@settings(max_examples=100, deadline=None)
@given(spans_and_window(), st.floats(0, 3600), st.data())
def test_mapping_window_time_back_to_file_time_is_exact(case: tuple[list[tuple[int, int]], int, int],
                                                        offset_s: float, data: st.DataObject) -> None:
    spans, total, window = case
    samples = np.arange(total, dtype=np.float64)  # each sample holds its own index: where it came from
    chunk = AudioChunk("j/0", samples, offset_s)
    inputs = segment_inputs(chunk, spans, window)
    seen = []
    for inp in inputs:
        if inp.tmap is None:  # a lone span: the engine's offset does the mapping
            s = int(inp.audio.samples[0])
            assert inp.audio.offset_s == pytest.approx(offset_s + s / SR, abs=1e-9)
            seen += inp.audio.samples.astype(int).tolist()
            continue
        assert inp.audio.offset_s == 0.0 and len(inp.audio.samples) <= window
        seen += inp.audio.samples.astype(int).tolist()
        # A word inside any piece lands at the file time of the samples it was heard in.
        at = data.draw(st.integers(0, len(inp.audio.samples) - 1))
        i = inp.tmap.piece((at + 0.5) / SR)
        assert inp.tmap.starts[i] <= at < inp.tmap.ends[i]
        heard = int(inp.audio.samples[at])
        assert inp.tmap.to_file(at / SR, i) == pytest.approx(offset_s + heard / SR, abs=1e-6)
    assert seen == [i for s, e in spans for i in range(s, e)], "every span's samples, in order, once"


def test_words_move_by_their_own_piece_and_stay_inside_it() -> None:
    # Pieces: 2 s from 10 s in the file, then 3 s from 20 s; window times 0-2 and 2-5.
    tmap = TimeMap(starts=(0, 2 * SR), ends=(2 * SR, 5 * SR), file_s=(10.0, 20.0))
    out = tmap.output(EngineOutput(words=[
        Word(text="a", start=0.5, end=0.9),
        Word(text="b", start=1.7, end=2.1),  # midpoint 1.9: the first piece, its end clamped to it
        Word(text="c", start=1.9, end=2.5),  # midpoint 2.2: the second piece, its start clamped to it
        Word(text="d", start=4.8, end=5.6),  # past the window (the engine's tail): the last piece
    ], text="a b c d"))
    assert [(w.text, round(w.start, 6), round(w.end, 6)) for w in out.words] == [
        ("a", 10.5, 10.9), ("b", 11.7, 12.0), ("c", 20.0, 20.5), ("d", 22.8, 23.0)]
    assert out.text == "a b c d"


def test_window_seconds_is_optional_and_whisper_fits_one_window() -> None:
    class NoWindow:
        name = "parakeet"

    assert window_seconds(NoWindow()) is None
    pytest.importorskip("faster_whisper", reason="the offline engine needs faster-whisper")
    from parascribe.engines.offline import TAIL_SILENCE_S, WHISPER_WINDOW_S, OfflineEngine

    assert OfflineEngine.window_seconds is not None
    assert OfflineEngine.window_seconds + TAIL_SILENCE_S <= WHISPER_WINDOW_S


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 30 * SR), max_size=60), st.integers(1, 16))
def test_length_batches_bound_count_and_padding(lengths: list[int], size: int) -> None:
    calls = length_batches(lengths, lambda n: n, size)
    flat = [n for call in calls for n in call]
    assert flat == sorted(lengths, reverse=True), "every input once, longest first"
    assert all(1 <= len(call) <= size for call in calls)
    assert all(call[-1] >= MIN_LENGTH_RATIO * call[0] for call in calls)
    # a new call starts only when the previous one is full or the input would pad it too much
    for a, b in zip(calls, calls[1:], strict=False):
        assert len(a) == size or b[0] < MIN_LENGTH_RATIO * a[0]

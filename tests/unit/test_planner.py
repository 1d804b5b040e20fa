"""Chunk tiling and per-chunk path choice for every method."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parascribe.audio import COMPRESSED_MAX_BPS, plausible_max_bytes
from parascribe.config import load_settings
from parascribe.contracts import AudioInfo, PlannedChunk, Route
from parascribe.costs import Prices
from parascribe.errors import PermanentError
from parascribe.router.planner import (
    DEEPGRAM_MAX_BYTES,
    PlannerOptions,
    estimate_cost,
    estimate_deepgram_only,
    estimate_finish_s,
    header_may_lie,
    is_whole_file,
    make_plan,
    plan_chunks,
    plan_paths,
    resolve_method,
)

HOUR = 3600.0


def cfg(**overrides: object) -> PlannerOptions:
    """Round numbers: a 10-minute chunk takes the GPU 4 s and Deepgram 3 + 10 s."""
    values: dict[str, object] = {
        "chunk_duration_minutes": 10,
        "chunk_overlap_seconds": 0,
        "gpu_startup_seconds": 60,
        "gpu_expected_rtfx": 150,
        "deepgram_expected_rtfx": 60,
        "deepgram_request_overhead_seconds": 3,
        "deepgram_max_concurrency": 16,
        "enable_gpu_transcription": True,
        "cost_optimization": True,
        "enable_fallback": True,
        "transcription_method": "auto",
        # These tests predate VAD: GPU time scaled with the whole file. EXPECTED_SPEECH_RATIO=1 keeps that.
        "expected_speech_ratio": 1.0,
    }
    values.update(overrides)
    return PlannerOptions.from_settings(load_settings(**values))


def paths(plan: list[PlannedChunk]) -> str:
    return "".join("G" if c.path == "gpu" else "D" for c in plan)


# --- options ---

def test_options_take_what_the_planner_reads_from_the_settings() -> None:
    s = load_settings(chunk_duration_minutes=5, chunk_overlap_seconds=1.5, gpu_expected_rtfx=120, gpu_startup_seconds=30,
                      deepgram_expected_rtfx=50, deepgram_request_overhead_seconds=2, deepgram_max_concurrency=8,
                      deepgram_max_instances=3, enable_gpu_transcription=True, enable_fallback=False, cost_optimization=False,
                      expected_speech_ratio=0.7, gpu_max_instances=3)
    assert PlannerOptions.from_settings(s) == PlannerOptions(
        chunk_seconds=300.0, chunk_overlap_seconds=1.5, enable_gpu_transcription=True, enable_fallback=False,
        cost_optimization=False, gpu_expected_rtfx=120.0, gpu_startup_seconds=30.0,
        expected_speech_ratio=0.7, gpu_max_instances=3, deepgram_expected_rtfx=50.0,
        deepgram_request_overhead_seconds=2.0, deepgram_max_concurrency=8, deepgram_max_instances=3,
        prices=Prices.from_settings(s),
    )
    assert PlannerOptions.from_settings(s).deepgram_slots == 24


# --- chunks ---

@settings(deadline=None)
@given(
    duration=st.floats(min_value=0.01, max_value=50_000, allow_nan=False),
    chunk=st.floats(min_value=30, max_value=3600),
    overlap=st.floats(min_value=0, max_value=30),
)
def test_cores_tile_the_audio_exactly(duration: float, chunk: float, overlap: float) -> None:
    chunks = plan_chunks(duration, chunk, overlap)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].core_start_s == 0.0
    assert chunks[-1].core_end_s == duration
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.core_end_s == b.core_start_s
    for c in chunks:
        assert c.core_start_s < c.core_end_s <= c.core_start_s + 1.25 * chunk * (1 + 1e-9)
        assert c.start_s == max(0.0, c.core_start_s - overlap)
        assert c.end_s == min(duration, c.core_end_s + overlap)
    if len(chunks) > 1:
        assert all(c.core_end_s - c.core_start_s >= 0.25 * chunk * (1 - 1e-9) for c in chunks)
    if duration <= chunk:
        assert len(chunks) == 1


def test_overlap_is_added_on_both_sides_and_clipped() -> None:
    chunks = plan_chunks(1500.0, 600.0, 2.0)
    assert [(c.start_s, c.end_s, c.core_start_s, c.core_end_s) for c in chunks] == [
        (0.0, 602.0, 0.0, 600.0),
        (598.0, 1202.0, 600.0, 1200.0),
        (1198.0, 1500.0, 1200.0, 1500.0),
    ]


def test_tiny_tail_joins_the_previous_chunk() -> None:
    assert [c.core_end_s for c in plan_chunks(1349.0, 600.0, 0.0)] == [600.0, 1349.0]  # tail 149 s < 150 s
    assert [c.core_end_s for c in plan_chunks(1350.0, 600.0, 0.0)] == [600.0, 1200.0, 1350.0]
    assert [c.core_end_s for c in plan_chunks(700.0, 600.0, 0.0)] == [700.0]


def test_short_audio_is_one_chunk() -> None:
    (only,) = plan_chunks(42.0, 600.0, 2.0)
    assert (only.start_s, only.end_s, only.core_start_s, only.core_end_s) == (0.0, 42.0, 0.0, 42.0)


@pytest.mark.parametrize(("duration", "chunk", "overlap"), [(0.0, 600, 0), (10.0, 0, 0), (10.0, 600, -1)])
def test_invalid_chunking_arguments(duration: float, chunk: float, overlap: float) -> None:
    with pytest.raises(ValueError):
        plan_chunks(duration, chunk, overlap)


# --- methods ---

def test_gpu_sends_everything_to_the_gpu_even_past_the_deadline() -> None:
    plan = make_plan(6 * HOUR, cfg(), "gpu", deadline_s=30)
    assert paths(plan.chunks) == "G" * 36
    assert plan.meets_deadline is False
    assert plan.estimated_finish_s == pytest.approx(60 + 36 * 4)


def test_deepgram_sends_the_whole_file_when_it_meets_the_deadline() -> None:
    s = cfg()
    plan = make_plan(6 * HOUR, s, "deepgram", deadline_s=HOUR)
    assert plan.whole_file and is_whole_file(plan.chunks)
    (whole,) = plan.chunks
    assert (whole.start_s, whole.end_s, whole.core_start_s, whole.core_end_s) == (0.0, 6 * HOUR, 0.0, 6 * HOUR)
    assert plan.estimated_finish_s == pytest.approx(3 + 6 * HOUR / 60)


def test_deepgram_splits_into_parallel_chunks_when_the_whole_file_is_too_slow() -> None:
    plan = make_plan(6 * HOUR, cfg(), "deepgram", deadline_s=120)  # whole file: 363 s
    assert paths(plan.chunks) == "D" * 36 and not plan.whole_file
    assert plan.estimated_finish_s == pytest.approx(3 * (3 + 10))  # 36 chunks, 16 at a time: 3 waves
    assert plan.meets_deadline


def test_no_whole_file_request_above_deepgrams_size_limit() -> None:
    planned = plan_paths(plan_chunks(6 * HOUR, 600, 0), cfg(), "deepgram", HOUR, size_bytes=DEEPGRAM_MAX_BYTES + 1)
    assert paths(planned) == "D" * 36


def test_auto_puts_everything_on_the_gpu_when_there_is_time() -> None:
    plan = make_plan(6 * HOUR, cfg(), "auto", deadline_s=HOUR)
    assert paths(plan.chunks) == "G" * 36
    assert plan.estimated_cost_usd < plan.estimated_deepgram_only_usd / 10


def test_auto_spills_what_the_gpu_cannot_finish_to_deepgram() -> None:
    # The GPU finishes k chunks after 60 + 4k s: 10 fit in 100 s; Deepgram takes the other 26 in two waves.
    plan = make_plan(6 * HOUR, cfg(), "auto", deadline_s=100)
    assert paths(plan.chunks) == "G" * 10 + "D" * 26
    assert plan.meets_deadline
    assert plan.estimated_finish_s == pytest.approx(100.0)


def test_auto_takes_the_fastest_plan_and_warns_when_nothing_meets_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="parascribe.router.planner"):
        plan = make_plan(6 * HOUR, cfg(), "auto", deadline_s=10)
    assert paths(plan.chunks) == "D" * 36  # 39 s, versus at least 60 s once the GPU is involved
    assert not plan.meets_deadline
    assert "no plan meets the 10 s deadline" in caplog.text


def test_auto_without_cost_optimization_is_hybrid() -> None:
    s = cfg(cost_optimization=False, gpu_startup_seconds=0)
    assert resolve_method("auto", s) == "hybrid"
    assert make_plan(6 * HOUR, s, "auto", HOUR).chunks == make_plan(6 * HOUR, s, "hybrid", HOUR).chunks


def test_hybrid_balances_both_paths_with_the_gpu_first() -> None:
    s = cfg(gpu_startup_seconds=0, deepgram_max_concurrency=4)
    plan = make_plan(6 * HOUR, s, "hybrid", deadline_s=HOUR)
    route = paths(plan.chunks)
    k = route.count("G")
    assert route == "G" * k + "D" * (36 - k) and 0 < k < 36
    gpu_done = estimate_finish_s([c for c in plan.chunks if c.path == "gpu"], s)
    deepgram_done = estimate_finish_s([c for c in plan.chunks if c.path == "deepgram"], s)
    assert abs(gpu_done - deepgram_done) <= 3 + 10  # within one Deepgram wave of each other
    # No other split that uses both paths is faster.
    for other in range(1, 36):
        alt = plan_chunks(6 * HOUR, 600, 0)
        candidate = [PlannedChunk(**c.model_dump(exclude={"schema_version"}), path="gpu" if c.index < other else "deepgram")
                     for c in alt]
        assert estimate_finish_s(candidate, s) >= plan.estimated_finish_s - 1e-9


def test_hybrid_keeps_both_paths_busy_even_when_gpu_startup_is_slow() -> None:
    plan = make_plan(HOUR, cfg(gpu_startup_seconds=60), "hybrid", deadline_s=HOUR)
    assert paths(plan.chunks) == "G" + "D" * 5  # Deepgram alone would take 13 s; the GPU's first chunk 64 s


def test_hybrid_single_chunk_takes_the_faster_path() -> None:
    assert paths(make_plan(300.0, cfg(gpu_startup_seconds=60), "hybrid", HOUR).chunks) == "D"
    assert paths(make_plan(300.0, cfg(gpu_startup_seconds=0), "hybrid", HOUR).chunks) == "G"


@pytest.mark.parametrize("method", ["auto", "hybrid", "deepgram"])
def test_gpu_disabled_makes_auto_and_hybrid_deepgram(method: str) -> None:
    s = cfg(enable_gpu_transcription=False, transcription_method="deepgram")
    plan = make_plan(HOUR, s, method, deadline_s=HOUR)  # type: ignore[arg-type]
    assert plan.method == "deepgram"
    assert set(paths(plan.chunks)) == {"D"}


def test_gpu_requested_with_gpu_disabled() -> None:
    off = {"enable_gpu_transcription": False, "transcription_method": "deepgram"}
    assert resolve_method("gpu", cfg(**off, enable_fallback=True)) == "deepgram"
    with pytest.raises(PermanentError, match="ENABLE_GPU_TRANSCRIPTION=false"):
        resolve_method("gpu", cfg(**off, enable_fallback=False))


# --- costs ---

def test_costs_come_from_the_configured_prices() -> None:
    s = cfg(deepgram_price_per_minute=0.006, gpu_price_per_second=0.0002, cpu_price_per_vcpu_second=0.00001,
            memory_price_per_gib_second=0.000001, gpu_instance_vcpus=4, gpu_instance_memory_gib=16)
    chunks = plan_chunks(1800.0, 600.0, 0.0)
    routes: list[Route] = ["gpu", "gpu", "deepgram"]
    mixed = [PlannedChunk(**c.model_dump(exclude={"schema_version"}), path=p) for c, p in zip(chunks, routes, strict=True)]
    instance_per_s = 0.0002 + 4 * 0.00001 + 16 * 0.000001
    assert estimate_cost(mixed, s) == pytest.approx(1200 / 150 * instance_per_s + 10 * 0.006)
    assert estimate_deepgram_only(1800.0, s) == pytest.approx(30 * 0.006)


def test_overlap_is_billed_on_deepgram_chunks() -> None:
    s = cfg(chunk_overlap_seconds=2)
    plan = make_plan(1800.0, s, "deepgram", deadline_s=20)  # too tight for the whole file (33 s)
    assert not plan.whole_file
    assert sum(c.duration_s for c in plan.chunks) == pytest.approx(1800 + 4 * 2)
    assert plan.estimated_cost_usd > plan.estimated_deepgram_only_usd


# --- a whole-file request only when the object's size fits its header's duration ---

def _audio(duration: float, codec: str, container: str, rate: int = 44_100, channels: int = 2) -> AudioInfo:
    return AudioInfo(duration_s=duration, sample_rate=rate, channels=channels, codec=codec, container=container)


def test_the_plausible_size_is_pcm_for_uncompressed_and_2_mbit_s_for_compressed() -> None:
    overhead = plausible_max_bytes(0.0, "mp3", 44_100, 2)
    assert 0 < overhead <= 1 << 20
    assert plausible_max_bytes(600.0, "mp3", 44_100, 2) - overhead == pytest.approx(600 * COMPRESSED_MAX_BPS / 8)
    assert COMPRESSED_MAX_BPS == 2_000_000
    assert plausible_max_bytes(600.0, "pcm_s24le", 96_000, 2) - overhead == pytest.approx(600 * 96_000 * 2 * 3)
    assert plausible_max_bytes(600.0, "flac", 48_000, 1) - overhead == pytest.approx(600 * 48_000 * 4)


def test_a_short_header_on_a_large_file_is_not_sent_whole() -> None:
    s = cfg()
    lying = _audio(0.57, "mp3", "mp3", channels=1)  # an mp3 whose Xing header says 0.57 s but that holds 120 s
    plan = make_plan(0.57, s, "deepgram", HOUR, size_bytes=960_488, audio=lying)
    assert [c.path for c in plan.chunks] == ["deepgram"]
    assert not plan.whole_file and not is_whole_file(plan.chunks, lying, 960_488)
    assert header_may_lie(lying, 960_488)
    honest = make_plan(0.57, s, "deepgram", HOUR, size_bytes=9_000, audio=lying)
    assert honest.whole_file and is_whole_file(honest.chunks, lying, 9_000)


@pytest.mark.parametrize(("codec", "container", "rate", "whole"), [
    ("mp3", "mp3", 44_100, False),  # 300 MB is 4 Mbit/s for 10 minutes: more than any mp3
    ("pcm_s24le", "wav", 96_000, True),  # but less than 10 minutes of 96 kHz 24-bit stereo PCM
])
def test_the_size_check_depends_on_the_codec(codec: str, container: str, rate: int, whole: bool) -> None:
    audio = _audio(1800.0, codec, container, rate=rate)
    size = 300 * 10**6 * 3
    plan = make_plan(1800.0, cfg(), "deepgram", HOUR, size_bytes=size, audio=audio)
    assert plan.whole_file is whole and is_whole_file(plan.chunks, audio, size) is whole
    assert len(plan.chunks) == (1 if whole else 3)


def test_without_the_codec_only_an_impossible_size_stops_a_whole_file_request() -> None:
    assert make_plan(1800.0, cfg(), "deepgram", HOUR, size_bytes=1_000_000_000).whole_file
    plan = make_plan(60.0 * 10, cfg(), "deepgram", HOUR, size_bytes=DEEPGRAM_MAX_BYTES - 1)
    assert plan.whole_file  # 2 GB in 10 minutes is less than the most any PCM could take
    plan = make_plan(60.0, cfg(), "deepgram", HOUR, size_bytes=DEEPGRAM_MAX_BYTES - 1)
    assert not plan.whole_file

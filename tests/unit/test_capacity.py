"""Both paths' load and capacity as planner inputs (the GPU backlog, the Deepgram queue), and the plans they lead to."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parascribe.config import load_settings
from parascribe.contracts import AudioInfo, JobManifest, PlannedChunk, SourceRef
from parascribe.jobs import JobStore
from parascribe.router.capacity import (
    Capacity,
    GpuCapacity,
    MonitoringLoad,
    PathLoad,
    StateBucketLoad,
    asr_service_name,
)
from parascribe.router.planner import PlannerOptions, estimate_cost, estimate_finish_s, make_plan, plan_chunks
from parascribe.router.policy import plan_job
from tests.fakes import MemoryStore

HOUR = 3600.0


def cfg(**overrides: object) -> PlannerOptions:
    """A 10-minute chunk takes the GPU 4 s (RTFx 150, all speech) and Deepgram 3 + 10 s."""
    values: dict[str, object] = {
        "chunk_duration_minutes": 10, "chunk_overlap_seconds": 0, "gpu_startup_seconds": 60, "gpu_expected_rtfx": 150,
        "deepgram_expected_rtfx": 60, "deepgram_request_overhead_seconds": 3, "deepgram_max_concurrency": 16,
        "expected_speech_ratio": 1.0, "transcription_method": "auto",
    }
    values.update(overrides)
    return PlannerOptions.from_settings(load_settings(**values))


def cap(backlog_s: float = 0.0, running: int = 0, instances: int = 1, ratio: float = 1.0) -> Capacity:
    return Capacity(backlog_s, running, instances, 150.0, 60.0, ratio, "test")


def paths(chunks: list[PlannedChunk]) -> str:
    return "".join("G" if c.path == "gpu" else "D" for c in chunks)


# --- the capacity model ---

def test_the_assumed_capacity_is_the_old_one_idle_gpu() -> None:
    assumed = Capacity.assumed(150.0, 60.0)
    assert assumed.finish_s([600.0] * 36) == pytest.approx(60 + 36 * 4)
    assert assumed.finish_s([]) == 0.0


def test_speech_ratio_scales_gpu_time() -> None:
    assert cap(ratio=0.5).finish_s([600.0] * 10) == pytest.approx(60 + 10 * 2)


def test_backlog_instances_and_warm_starts() -> None:
    assert cap(backlog_s=150 * 100).finish_s([600.0]) == pytest.approx(60 + 100 + 4)
    # Four cold instances share the backlog and the job.
    assert cap(backlog_s=150 * 100, instances=4).finish_s([600.0]) == pytest.approx(60 + 104 / 4)
    # One running instance works from 0 s; the other three join after the 60 s start.
    assert cap(backlog_s=150 * 400, running=1, instances=4).finish_s([600.0]) == pytest.approx((404 + 3 * 60) / 4)
    # A job is never done before one of its chunks could be.
    assert cap(running=1, instances=8).finish_s([600.0]) == pytest.approx(4)


# --- policy ---

def test_backlog_pushes_the_fewest_chunks_to_deepgram() -> None:
    s = cfg()
    idle = make_plan(6 * HOUR, s, "auto", deadline_s=300, capacity=cap())
    assert paths(idle.chunks) == "G" * 36  # 60 + 144 s
    busy = make_plan(6 * HOUR, s, "auto", deadline_s=300, capacity=cap(backlog_s=150 * 120))
    assert paths(busy.chunks) == "G" * 30 + "D" * 6  # 60 + 120 + 4k <= 300 s: k = 30
    assert busy.meets_deadline
    # One more GPU chunk would miss the deadline: no plan moves fewer chunks.
    more = [c.model_copy(update={"path": "gpu"}) if c.index == 30 else c for c in busy.chunks]
    assert estimate_finish_s(more, s, cap(backlog_s=150 * 120)) > 300
    _, why = plan_job(6 * HOUR, s, "auto", 300, cap(backlog_s=150 * 120))
    assert why.spill_reason == "backlog" and why.deepgram_chunks == 6 and "already queued for the GPU" in why.summary
    _, why = plan_job(6 * HOUR, s, "auto", 100, cap())
    assert why.spill_reason == "deadline"


def dg_cap(requests: int, backlog_s: float = 0.0, audio_s: float = 600.0) -> Capacity:
    """``cap`` with ``requests`` Deepgram requests of ``audio_s`` each already queued or in flight."""
    return replace(cap(backlog_s=backlog_s), deepgram_queue=(audio_s,) * requests)


def test_the_deepgram_queue_goes_first_on_the_shared_request_slots() -> None:
    s = cfg()  # 16 slots; a 10-minute chunk takes Deepgram 3 + 10 s
    whole = [c.model_copy(update={"path": "deepgram"}) for c in make_plan(HOUR, s, "gpu", HOUR).chunks]
    assert estimate_finish_s(whole, s, cap()) == pytest.approx(13)  # 6 chunks, one wave
    assert estimate_finish_s(whole, s, dg_cap(16)) == pytest.approx(26)  # a full pool ahead: one wave later
    assert estimate_finish_s(whole, s, dg_cap(11)) == pytest.approx(26)  # 5 slots free: the sixth chunk waits
    assert estimate_finish_s(whole, s, dg_cap(10)) == pytest.approx(13)
    # Four instances of 16: 64 slots take the same queue and the job in one wave.
    assert estimate_finish_s(whole, cfg(deepgram_max_instances=4), dg_cap(58)) == pytest.approx(13)
    # Unequal requests: each chunk takes the first slot to come free, not a whole wave's.
    one = cfg(deepgram_max_concurrency=1)
    assert estimate_finish_s(whole[:1], one, dg_cap(1, audio_s=6000)) == pytest.approx(3 + 100 + 13)


def test_a_busy_deepgram_path_keeps_chunks_on_the_gpu_and_the_plan_says_why() -> None:
    s = cfg()
    # The GPU's backlog makes the 300 s deadline need Deepgram for 6 chunks while Deepgram is idle.
    assert paths(make_plan(6 * HOUR, s, "auto", 300, capacity=cap(backlog_s=150 * 120)).chunks) == "G" * 30 + "D" * 6
    # With 16 × 30 requests ahead, Deepgram cannot meet it either: the fastest plan is taken, and it knows.
    busy = dg_cap(16 * 30, backlog_s=150 * 120)
    plan, why = plan_job(6 * HOUR, s, "auto", 300, busy)
    assert paths(plan.chunks) == "G" * 36 and not plan.meets_deadline
    assert plan.estimated_finish_s == pytest.approx(60 + 120 + 36 * 4)  # sooner than any Deepgram chunk: 30 × 13 + 13
    assert why.deepgram_queued_requests == 480 and why.deepgram_queued_audio_s == 480 * 600.0
    assert why.deepgram_slots == 16
    assert "480 requests already queued for Deepgram" in why.summary
    _, idle = plan_job(6 * HOUR, s, "auto", 300, cap(backlog_s=150 * 120))
    assert "queued for Deepgram" not in idle.summary and idle.deepgram_queued_requests == 0


def test_more_gpu_instances_absorb_the_same_backlog() -> None:
    plan = make_plan(6 * HOUR, cfg(), "auto", deadline_s=300, capacity=cap(backlog_s=150 * 120, instances=3))
    assert paths(plan.chunks) == "G" * 36


@settings(max_examples=60, deadline=None)
@given(
    hours=st.floats(0.05, 6.0),
    deadline=st.floats(10.0, 4 * HOUR),
    backlog=st.floats(0.0, 500 * HOUR),
    overlap=st.sampled_from([0.0, 2.0, 30.0]),
    instances=st.integers(1, 4),
)
def test_auto_never_costs_more_than_all_deepgram_and_meets_the_deadline_when_it_can(
    hours: float, deadline: float, backlog: float, overlap: float, instances: int
) -> None:
    s = cfg(chunk_overlap_seconds=overlap)
    c = cap(backlog_s=backlog, instances=instances)
    plan = make_plan(hours * HOUR, s, "auto", deadline, capacity=c)
    assert plan.estimated_cost_usd <= plan.estimated_deepgram_only_usd + 1e-9
    chunks = plan_chunks(hours * HOUR, s.chunk_seconds, overlap)
    ceiling = plan.estimated_deepgram_only_usd + 1e-9
    for k in range(len(chunks), -1, -1):  # the "GPU takes the first k" candidates, most GPU first
        cand = [PlannedChunk(**x.model_dump(exclude={"schema_version"}), path="gpu" if x.index < k else "deepgram")
                for x in chunks]
        if estimate_cost(cand, s) <= ceiling and estimate_finish_s(cand, s, c) <= deadline:
            assert plan.meets_deadline, f"k={k} meets the deadline but the plan does not"
            # The GPU is preferred at equal feasibility: the plan spills no more chunks than the best candidate.
            assert paths(plan.chunks).count("D") <= len(chunks) - k or plan.whole_file
            break


def test_the_method_wins_over_the_backlog() -> None:
    s = cfg()
    assert paths(make_plan(6 * HOUR, s, "gpu", 300, capacity=cap(backlog_s=150 * 3600)).chunks) == "G" * 36
    plan, why = plan_job(HOUR, s, "deepgram", HOUR, cap())
    assert plan.whole_file and why.spill_reason == "method"
    assert paths(make_plan(HOUR, cfg(transcription_method="gpu"), "gpu", 10, capacity=cap()).chunks) == "G" * 6


def test_cost_optimization_off_keeps_the_hybrid_policy() -> None:
    s = cfg(cost_optimization=False, gpu_startup_seconds=0)
    c = cap(backlog_s=150 * 60)
    auto = make_plan(6 * HOUR, s, "auto", HOUR, capacity=c)
    assert auto.method == "hybrid"
    assert auto.chunks == make_plan(6 * HOUR, s, "hybrid", HOUR, capacity=c).chunks
    assert 0 < paths(auto.chunks).count("G") < 36


# --- sources ---

class _Failing:
    name = "broken"

    def load(self) -> PathLoad:
        raise ConnectionError("state bucket unreachable")


def test_a_failed_source_degrades_to_the_old_assumption_and_the_plan_says_so() -> None:
    capacity = GpuCapacity([_Failing()], 4, 150.0, 60.0, 1.0, cache_s=5).capacity()
    assert capacity.degraded and "state bucket unreachable" in capacity.degraded
    assert (capacity.backlog_audio_s, capacity.running_instances, capacity.max_instances) == (0.0, 0, 1)
    plan, why = plan_job(6 * HOUR, cfg(), "auto", HOUR, capacity)
    assert why.degraded == capacity.degraded and why.backlog_source == "assumed"
    assert why.summary.startswith("GPU backlog unknown (broken: state bucket unreachable)")
    assert plan.estimated_finish_s == pytest.approx(60 + 36 * 4)


class _Counting:
    name = "counting"

    def __init__(self, load: PathLoad) -> None:
        self.calls = 0
        self._load = load

    def load(self) -> PathLoad:
        self.calls += 1
        return self._load


def test_reads_are_cached_and_the_larger_backlog_wins() -> None:
    now = [0.0]
    bucket = _Counting(PathLoad(600.0, 1, "state-bucket"))
    monitoring = _Counting(PathLoad(1200.0, 3, "cloud-monitoring"))
    gpu = GpuCapacity([bucket, monitoring], 2, 150.0, 60.0, 0.8, cache_s=5, clock=lambda: now[0])
    first = gpu.capacity()
    assert (first.backlog_audio_s, first.running_instances, first.source) == (1200.0, 2, "state-bucket+cloud-monitoring")
    now[0] = 4.9
    assert gpu.capacity() is first and bucket.calls == 1
    now[0] = 5.0
    gpu.capacity()
    assert bucket.calls == monitoring.calls == 2


def _manifest(job: str, routes: str) -> JobManifest:
    chunks = plan_chunks(len(routes) * 600.0, 600.0, 0.0)
    return JobManifest(
        job_id=job, source=SourceRef(bucket="u", name=f"{job}.wav", generation="1", size=10),
        audio=AudioInfo(duration_s=len(routes) * 600.0, sample_rate=16000, channels=1, codec="pcm_s16le",
                        container="wav"),
        method="auto", deadline_minutes=60,
        chunks=[PlannedChunk(**c.model_dump(exclude={"schema_version"}), path="gpu" if r == "G" else "deepgram")
                for c, r in zip(chunks, routes, strict=True)],
    )


def test_the_state_bucket_backlog_is_the_open_jobs_gpu_chunks_without_a_result() -> None:
    from parascribe.contracts import ChunkResult, FinalOutcome, utcnow

    jobs = JobStore(MemoryStore(), "state")
    assert StateBucketLoad(jobs).load() == PathLoad(0.0, None, "state-bucket")
    for job, routes in (("ja", "GGGD"), ("jb", "GG"), ("jc", "GGG")):
        jobs.create_manifest(_manifest(job, routes))
        jobs.mark_open(job)
    jobs.put_chunk_result(ChunkResult(job_id="ja", chunk_index=0, n_chunks=4, engine="parakeet", path="gpu",
                                      audio_seconds=600, processing_seconds=4))
    jobs.claim_final(FinalOutcome(job_id="jc", state="failed", finished_at=utcnow(), claimed_at=utcnow()))
    load = StateBucketLoad(jobs).load()
    assert load.backlog_audio_s == pytest.approx(2 * 600 + 2 * 600)  # ja: chunks 1, 2; jb: both; jc has failed
    assert load.running_instances == 1
    assert load.deepgram_queue == (600.0,)  # ja's chunk 3


def test_the_state_bucket_lists_each_open_deepgram_request() -> None:
    from parascribe.contracts import ChunkResult

    jobs = JobStore(MemoryStore(), "state")
    for job, routes in (("jd", "DDD"), ("je", "GD")):
        jobs.create_manifest(_manifest(job, routes))
        jobs.mark_open(job)
    jobs.put_chunk_result(ChunkResult(job_id="jd", chunk_index=1, n_chunks=3, engine="deepgram", path="deepgram",
                                      audio_seconds=600, processing_seconds=12))
    load = StateBucketLoad(jobs).load()
    assert (load.backlog_audio_s, load.running_instances) == (600.0, 1)
    assert sorted(load.deepgram_queue) == [600.0, 600.0, 600.0]  # jd: chunks 0 and 2; je: chunk 1
    only_deepgram = JobStore(MemoryStore(), "state")
    only_deepgram.create_manifest(_manifest("jf", "D"))
    only_deepgram.mark_open("jf")
    assert StateBucketLoad(only_deepgram).load() == PathLoad(0.0, None, "state-bucket", (600.0,))


def test_the_longer_deepgram_queue_of_two_sources_wins() -> None:
    bucket = _Counting(PathLoad(0.0, None, "state-bucket", (600.0,) * 4))
    monitoring = _Counting(PathLoad(0.0, 1, "cloud-monitoring", (600.0,) * 9))
    got = GpuCapacity([bucket, monitoring], 1, 150.0, 60.0, 1.0, cache_s=5).capacity()
    assert got.deepgram_queue == (600.0,) * 9 and got.deepgram_queued_audio_s == 5400.0


class _Reader:
    def __init__(self, messages: float | None, instances: float | None, deepgram: float | None = None) -> None:
        self.filters: list[str] = []
        self._values = [messages, instances, deepgram]

    def latest(self, filter_: str, within_s: float) -> float | None:
        self.filters.append(filter_)
        return self._values[len(self.filters) - 1]


def test_monitoring_converts_messages_to_audio_seconds() -> None:
    reader = _Reader(12, 2, 3)
    load = MonitoringLoad(reader, chunk_seconds=600.0).load()
    assert load == PathLoad(12 * 600.0, 2, "cloud-monitoring", (600.0, 600.0, 600.0))
    assert 'subscription_id="asr-gpu-pull"' in reader.filters[0]
    assert f'service_name="{asr_service_name()}"' in reader.filters[1] and asr_service_name() == "asr-worker"
    assert 'subscription_id="asr-deepgram-push"' in reader.filters[2]
    assert MonitoringLoad(_Reader(1, 1, None), chunk_seconds=600.0).load().deepgram_queue == (), \
        "no Deepgram series in the window: nothing queued there"
    with pytest.raises(LookupError):
        MonitoringLoad(_Reader(None, 1), chunk_seconds=600.0).load()


@settings(max_examples=200, deadline=None)
@given(
    slots=st.integers(1, 20),
    queue=st.lists(st.floats(1.0, 4000.0), max_size=60),
    chunks=st.lists(st.floats(1.0, 4000.0), min_size=1, max_size=40),
    extra=st.floats(1.0, 4000.0),
)
def test_deepgram_slots_keep_their_promises(slots: int, queue: list[float], chunks: list[float], extra: float) -> None:
    from parascribe.router.deepgram_slots import DeepgramSlots

    path = DeepgramSlots(slots, 3.0, 60.0, queue)
    done = path.finish_s(chunks)
    assert done >= max(map(path.request_s, chunks)) - 1e-9, "no request is done before it could run alone"
    if len(queue) + len(chunks) <= slots:
        assert done == pytest.approx(max(map(path.request_s, chunks))), "with a slot each, nothing waits"
    longer = DeepgramSlots(slots, 3.0, 60.0, [*queue, extra])
    assert longer.finish_s(chunks) >= done - 1e-9, "more queued work never finishes the job sooner"
    assert path.finish_s(chunks) == done, "timing a plan leaves the slots as they were"


@given(slots=st.integers(1, 20), n=st.integers(1, 100), audio_s=st.floats(1.0, 4000.0))
def test_an_idle_pool_runs_equal_chunks_in_waves(slots: int, n: int, audio_s: float) -> None:
    from parascribe.router.deepgram_slots import DeepgramSlots

    path = DeepgramSlots(slots, 3.0, 60.0)
    assert path.finish_s([audio_s] * n) == pytest.approx(-(-n // slots) * (3.0 + audio_s / 60.0))

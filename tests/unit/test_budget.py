"""The monthly spend ledger (sharded, compare-and-swap) and the budget policies."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parascribe import metric_names as mn
from parascribe.budget import (
    SHARDS,
    Ledger,
    SpendEntry,
    budget_state,
    level_of,
    record_spend,
    shard_of,
    shard_path,
)
from parascribe.config import load_settings
from parascribe.contracts import ChunkResult, JobStatus, JobSummary, Method
from parascribe.costs import Prices
from parascribe.jobs import JobStore
from parascribe.router.capacity import Capacity
from parascribe.router.planner import PlannerOptions
from parascribe.router.policy import BudgetExhaustedError, BudgetInput, plan_job
from tests.fakes import MemoryStore

DEC = datetime(2026, 12, 5, 12, tzinfo=UTC)
HOUR = 3600.0


def entry(job: str, cost: float = 0.25, when: datetime = DEC, **kw: Any) -> SpendEntry:
    return SpendEntry(job_id=job, state="done", finished_at=when, duration_s=HOUR, cost_usd=cost,
                      cost_by_method={"gpu": cost}, deepgram_only_usd=0.258, savings_usd=0.258 - cost, **kw)


# --- the ledger ---

def test_concurrent_writers_on_one_shard_never_lose_an_update() -> None:
    store = MemoryStore()
    ledger = Ledger(store, "state", shards=1)
    threads = [threading.Thread(target=lambda t=t: [ledger.record(entry(f"j{t}-{i}", 0.01 * (t + 1)))
                                                    for i in range(15)]) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = ledger.month_total("2026-12")
    assert total.jobs == 8 * 15
    assert total.spent_usd == pytest.approx(15 * 0.01 * sum(range(1, 9)))
    assert len(ledger.entries("2026-12")) == 120


@settings(max_examples=15, deadline=None)
@given(costs=st.lists(st.floats(0, 5), min_size=1, max_size=24), shards=st.integers(1, 4))
def test_every_update_counts_whatever_the_interleaving(costs: list[float], shards: int) -> None:
    ledger = Ledger(MemoryStore(), "state", shards=shards)
    threads = [threading.Thread(target=ledger.record, args=(entry(f"j{i}", c),)) for i, c in enumerate(costs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = ledger.month_total("2026-12")
    assert total.jobs == len(costs) and total.spent_usd == pytest.approx(sum(costs))


def test_a_job_counts_once_and_lands_on_its_own_shard() -> None:
    store = MemoryStore()
    ledger = Ledger(store, "state")
    assert ledger.record(entry("jabc")) is True
    assert ledger.record(entry("jabc")) is False  # a merger completing the job again
    assert ledger.month_total("2026-12").jobs == 1
    assert store.read("state", shard_path("2026-12", shard_of("jabc"))) is not None
    assert len(store.list("state", "budget/2026-12/shard-")) == 1 and SHARDS == 32
    assert ledger.month_total("2027-01").jobs == 0  # a new month starts empty


def test_record_spend_counts_the_job_and_reports_the_budget_gauges() -> None:
    store = MemoryStore()
    jobs = JobStore(store, "state")
    records: list[tuple[str, float, dict[str, str]]] = []

    class Exporter:
        def record(self, metric: str, value: float, labels: Mapping[str, str] | None = None) -> None:
            records.append((metric, value, dict(labels or {})))

        def flush(self) -> None: ...

        def close(self) -> None: ...

    status = JobStatus(job_id="jdone", state="done", finished_at=DEC,
                       summary=JobSummary(duration_s=HOUR, cost_usd=0.3, cost_by_method={"gpu": 0.1, "deepgram": 0.2},
                                          deepgram_only_usd=0.258, savings_usd=-0.042))
    fell = ChunkResult(job_id="jdone", chunk_index=0, n_chunks=1, engine="deepgram", path="deepgram",
                       audio_seconds=600, processing_seconds=9, fallback_reason="gpu timed out")
    prices = Prices.from_settings(load_settings())
    record_spend(store, jobs, status, [fell], prices, Exporter(), budget_usd=2.0)
    total = Ledger(store, "state").month_total("2026-12")
    assert total.spent_usd == pytest.approx(0.3) and total.by_method == {"gpu": 0.1, "deepgram": 0.2}
    assert total.fallbacks == 1 and total.fallback_usd == pytest.approx(prices.deepgram(600))
    assert (mn.BUDGET_USED_FRACTION, pytest.approx(0.15), {}) in records
    assert (mn.SPILLED_CHUNKS, 1, {"reason": "failure"}) in records


def test_record_spend_never_raises() -> None:
    class Broken(MemoryStore):
        def write(self, *a: Any, **k: Any) -> int | None:
            raise ConnectionError("gcs down")

    status = JobStatus(job_id="jx", state="done", finished_at=DEC)
    record_spend(Broken(), JobStore(Broken(), "state"), status, [], Prices(0.0, 0.0), _NullExporter(), 1.0)


class _NullExporter:
    def record(self, metric: str, value: float, labels: Mapping[str, str] | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


# --- budget levels and policies ---

def test_levels_at_50_80_and_100_percent() -> None:
    assert [level_of(f) for f in (None, 0.49, 0.5, 0.79, 0.8, 0.999, 1.0)] == [
        "unlimited", "ok", "warning_50", "warning_50", "warning_80", "warning_80", "exhausted"]
    assert budget_state(90.0, 100.0, "reject", "2026-12", planned_usd=20.0).level == "exhausted"
    assert budget_state(None, 100.0, "reject", "2026-12").level == "unknown"


def options() -> PlannerOptions:
    return PlannerOptions.from_settings(load_settings(chunk_duration_minutes=10, chunk_overlap_seconds=0,
                                                      gpu_startup_seconds=60, expected_speech_ratio=1.0))


IDLE = Capacity.assumed(150.0, 60.0)


def test_reject_fails_the_job_with_a_reason_a_person_can_act_on() -> None:
    with pytest.raises(BudgetExhaustedError) as err:
        plan_job(6 * HOUR, options(), "auto", 100, IDLE, BudgetInput(10.0, 9.99, "reject", "2026-12"))
    assert "MONTHLY_BUDGET_USD=$10.00" in err.value.reason and "BUDGET_EXHAUSTED_POLICY=gpu_only" in err.value.reason


def test_gpu_only_sends_everything_to_the_gpu_regardless_of_the_deadline_and_says_so() -> None:
    plan, why = plan_job(6 * HOUR, options(), "auto", 100, IDLE, BudgetInput(10.0, 9.99, "gpu_only", "2026-12"))
    assert all(c.path == "gpu" for c in plan.chunks) and not plan.meets_deadline
    assert "BUDGET_EXHAUSTED_POLICY=gpu_only" in why.summary and why.budget.level == "exhausted"
    # hybrid leaves the split to the planner too, so gpu_only moves it.
    plan, why = plan_job(6 * HOUR, options(), "hybrid", HOUR, IDLE, BudgetInput(10.0, 10.0, "gpu_only", "2026-12"))
    assert all(c.path == "gpu" for c in plan.chunks) and "BUDGET_EXHAUSTED_POLICY=gpu_only" in why.summary


def test_a_method_that_names_a_path_wins_over_gpu_only() -> None:
    # The issue: TRANSCRIPTION_METHOD and the per-upload method always win; gpu_only applies to auto and hybrid.
    plan, why = plan_job(HOUR, options(), "deepgram", HOUR, IDLE, BudgetInput(10.0, 10.0, "gpu_only", "2026-12"))
    assert plan.whole_file and why.method == "deepgram" and why.budget.level == "exhausted"
    assert "budget exhausted, but method deepgram wins over BUDGET_EXHAUSTED_POLICY=gpu_only" in why.summary
    configured = PlannerOptions.from_settings(load_settings(transcription_method="deepgram"))
    plan, _ = plan_job(HOUR, configured, "deepgram", HOUR, IDLE, BudgetInput(10.0, 10.0, "gpu_only", "2026-12"))
    assert all(c.path == "deepgram" for c in plan.chunks)
    # reject still refuses it: the policy does not choose a path, it stops the spend.
    with pytest.raises(BudgetExhaustedError):
        plan_job(HOUR, options(), "deepgram", HOUR, IDLE, BudgetInput(10.0, 10.0, "reject", "2026-12"))


def test_gpu_only_without_a_gpu_rejects() -> None:
    no_gpu = PlannerOptions.from_settings(load_settings(enable_gpu_transcription=False))
    with pytest.raises(BudgetExhaustedError, match="ENABLE_GPU_TRANSCRIPTION=false"):
        plan_job(HOUR, no_gpu, "auto", HOUR, IDLE, BudgetInput(1.0, 1.0, "gpu_only", "2026-12"))


def test_allow_and_a_budget_with_room_plan_as_usual() -> None:
    free, _ = plan_job(6 * HOUR, options(), "auto", 100, IDLE, BudgetInput(None, None, "reject", "2026-12"))
    allowed, why = plan_job(6 * HOUR, options(), "auto", 100, IDLE, BudgetInput(10.0, 50.0, "allow", "2026-12"))
    assert allowed.chunks == free.chunks and why.budget.level == "exhausted"
    roomy, why = plan_job(6 * HOUR, options(), "auto", 100, IDLE, BudgetInput(100.0, 60.0, "reject", "2026-12"))
    assert roomy.chunks == free.chunks and why.budget.level == "warning_50" and "budget 60% used" in why.summary


@settings(max_examples=40, deadline=None)
@given(spent=st.floats(0, 200), budget=st.floats(1, 100), hours=st.floats(0.1, 6),
       deadline=st.floats(30, 4 * HOUR), policy=st.sampled_from(["reject", "gpu_only", "allow"]),
       method=st.sampled_from(["auto", "hybrid", "gpu", "deepgram"]))
def test_the_budget_policies_hold(spent: float, budget: float, hours: float, deadline: float, policy: str,
                                  method: Method) -> None:
    free, _ = plan_job(hours * HOUR, options(), method, deadline, IDLE)
    over = spent + free.estimated_cost_usd > budget
    try:
        plan, why = plan_job(hours * HOUR, options(), method, deadline, IDLE,
                             BudgetInput(budget, spent, policy, "2026-12"))
    except BudgetExhaustedError:
        assert over and policy == "reject"
        return
    assert why.budget.exhausted == over
    if over and policy == "gpu_only" and method in ("auto", "hybrid"):
        assert all(c.path == "gpu" for c in plan.chunks)
    else:  # allow, room in the budget, or a method that names its path: planned as without a budget
        assert plan.chunks == free.chunks

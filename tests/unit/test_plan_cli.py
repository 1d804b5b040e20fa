"""``parascribe plan`` and ``parascribe costs``, and the plan the router stores in each manifest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from parascribe.budget import Ledger, SpendEntry
from parascribe.cli import main
from parascribe.config import load_settings
from parascribe.contracts import JobManifest, make_job_id
from parascribe.router.planner import PlannerOptions
from parascribe.router.report import _replay, costs_report, months_between, parse_since, render
from tests.fakes import MemoryStore
from tests.unit.test_router import Stack, pubsub_event, wav

KEYS = {"cost_usd", "deepgram_only_usd", "savings_usd", "finish_s", "meets_deadline", "chunks", "summary"}


def run_plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["plan", *args, "--json"]) == 0
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


def test_plan_json_for_one_hour(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_plan(capsys, "--duration", "1")
    assert set(doc) >= KEYS
    chunks = doc["chunks"]
    assert isinstance(chunks, list) and len(chunks) == 6 and {c["path"] for c in chunks} == {"gpu"}
    assert doc["meets_deadline"] is True
    assert doc["cost_usd"] < doc["deepgram_only_usd"]  # type: ignore[operator]
    assert doc["savings_usd"] == pytest.approx(doc["deepgram_only_usd"] - doc["cost_usd"])  # type: ignore[operator]


def test_plan_with_a_backlog_spills_to_deepgram_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    # 90,000 s of queued audio is 480 s of GPU time (80 % speech, RTFx 150): 18 chunks still fit in 10 minutes.
    doc = run_plan(capsys, "--duration", "6", "--deadline-minutes", "10", "--backlog-seconds", "90000")
    paths = [c["path"] for c in doc["chunks"]]  # type: ignore[attr-defined]
    assert "deepgram" in paths and "gpu" in paths and paths == sorted(paths, key=lambda p: p != "gpu")
    assert doc["spill_reason"] == "backlog" and doc["meets_deadline"] is True
    assert doc["backlog_audio_s"] == 90000 and paths.count("gpu") == 18


def test_a_queue_on_deepgram_delays_the_chunks_spilled_there(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--duration", "6", "--deadline-minutes", "10", "--backlog-seconds", "90000"]
    idle = run_plan(capsys, *base)
    # 2,000 requests of 10 minutes ahead, 16 at a time, 13 s each: Deepgram is 27 minutes out.
    busy = run_plan(capsys, *base, "--deepgram-queue", "2000")
    assert (busy["deepgram_queued_requests"], busy["deepgram_slots"]) == (2000, 16)
    assert busy["deepgram_queued_audio_s"] == 2000 * 600
    assert busy["finish_s"] > idle["finish_s"] and busy["meets_deadline"] is False  # type: ignore[operator]
    paths = [c["path"] for c in busy["chunks"]]  # type: ignore[attr-defined]
    assert paths == ["gpu"] * 36, "nothing meets the deadline: the fastest plan avoids the queue"
    assert "2000 requests already queued for Deepgram" in str(busy["summary"])


def test_plan_honours_the_method(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_plan(capsys, "--duration", "1", "--method", "deepgram")
    assert doc["whole_file"] is True and doc["spill_reason"] == "method" and doc["savings_usd"] == 0


def test_plan_probes_a_local_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audio = tmp_path / "tone.wav"
    audio.write_bytes(wav(3.0))
    doc = run_plan(capsys, str(audio))
    assert doc["duration_s"] == pytest.approx(3.0) and doc["file"] == str(audio)
    assert main(["plan", str(audio)]) == 0
    assert "1 chunk: 1 on the GPU" in capsys.readouterr().out


def test_plan_refuses_neither_or_both(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan"]) == 2
    assert "give a FILE or --duration" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing.wav")]) == 2


# --- the router stores and logs the explanation ---

def test_the_manifest_carries_the_plan_and_a_spent_budget_rejects(caplog: pytest.LogCaptureFixture) -> None:
    stack = Stack()
    body = stack.upload("a.wav", wav(2.0))
    with caplog.at_level("INFO", logger="parascribe.router.service"):
        stack.router.handle_event(pubsub_event(body))
    manifest = stack.jobs.manifest(make_job_id(body["bucket"], body["name"], body["generation"]))
    assert isinstance(manifest, JobManifest) and manifest.plan is not None
    assert manifest.plan.backlog_source == "state-bucket" and manifest.plan.cost_usd == pytest.approx(manifest.estimated_cost_usd, abs=1e-6)
    assert manifest.plan.summary in caplog.text

    broke = Stack(monthly_budget_usd=1.0, budget_exhausted_policy="reject")
    Ledger(broke.store, broke.settings.state_bucket).record(SpendEntry(
        job_id="jspent", state="done", finished_at=datetime.now(UTC), cost_usd=1.5))
    body = broke.upload("b.wav", wav(2.0))
    broke.router.handle_event(pubsub_event(body))
    (failed, _), = broke.failures()
    assert "the monthly budget is spent" in failed.reason and not broke.tasks()


# --- costs ---

NOW = datetime(2026, 12, 20, tzinfo=UTC)


def test_costs_report_totals_spills_and_a_replayed_recommendation() -> None:
    settings = load_settings(gpu_max_instances=1, chunk_overlap_seconds=0, expected_speech_ratio=1.0,
                             gpu_startup_seconds=60, monthly_budget_usd=10.0)
    ledger = Ledger(MemoryStore(), "state")
    for i in range(4):  # six-hour files with 10-minute deadlines, planned behind a GPU backlog
        ledger.record(SpendEntry(
            job_id=f"j{i}", state="done", finished_at=NOW - timedelta(days=i), duration_s=6 * 3600,
            deadline_minutes=10, cost_usd=1.0, cost_by_method={"gpu": 0.02, "deepgram": 0.98},
            deepgram_only_usd=1.548, savings_usd=0.548, chunks={"gpu": 10, "deepgram": 26},
            spilled={"backlog": 26}, backlog_audio_s=150 * 500))  # 500 s of GPU work: 10 chunks fit
    ledger.record(SpendEntry(job_id="jold", state="done", finished_at=NOW - timedelta(days=45), cost_usd=99.0))
    doc = costs_report(ledger, settings, timedelta(days=30), now=NOW)
    assert doc["jobs"] == 4 and doc["spent_usd"] == pytest.approx(4.0)
    assert doc["by_method_usd"] == {"deepgram": pytest.approx(3.92), "gpu": pytest.approx(0.08)}
    assert doc["savings_usd"] == pytest.approx(4 * 0.548) and doc["spilled"] == {"backlog": 104}
    assert doc["deepgram_share"] == pytest.approx(26 / 36, abs=1e-4)
    assert doc["budget"]["spent_usd"] == pytest.approx(4.0) and doc["budget"]["level"] == "ok"
    more = [r for r in doc["recommendations"] if r["setting"] == "GPU_MAX_INSTANCES=2"]
    assert more and more[0]["saves_usd"] > 0 and more[0]["fewer_deepgram_chunks"] > 0
    assert "with 2 GPU instances instead of 1" in render(doc, as_json=False)


def test_jobs_that_only_deepgram_could_do_are_not_replayed_as_gpu_work() -> None:
    """A job in Spanish went to Deepgram because of its language: no setting would have moved it."""
    settings = load_settings(gpu_max_instances=1, chunk_overlap_seconds=0, expected_speech_ratio=1.0,
                             gpu_startup_seconds=60)
    ledger = Ledger(MemoryStore(), "state")
    for i in range(3):  # as in the test above, where a second GPU would have moved chunks off Deepgram
        ledger.record(SpendEntry(
            job_id=f"j{i}", state="done", finished_at=NOW - timedelta(days=i), duration_s=6 * 3600,
            deadline_minutes=10, cost_usd=1.548, cost_by_method={"deepgram": 1.548}, deepgram_only_usd=1.548,
            chunks={"deepgram": 36}, spilled={"language": 36}, backlog_audio_s=150 * 500))
    doc = costs_report(ledger, settings, timedelta(days=30), now=NOW)
    assert doc["spilled"] == {"language": 108} and doc["recommendations"] == []


def test_replays_plan_against_the_deepgram_queue_the_job_met() -> None:
    """The ledger keeps the Deepgram queue of each plan, so a what-if replay does not assume an idle Deepgram."""
    options = PlannerOptions.from_settings(load_settings(chunk_overlap_seconds=0, expected_speech_ratio=1.0))
    entry = SpendEntry(job_id="j", state="done", finished_at=NOW, duration_s=6 * 3600, deadline_minutes=10,
                       backlog_audio_s=150 * 500)

    def replayed(e: SpendEntry) -> int:
        return _replay([e], options, 1, lambda x: x.deadline_minutes * 60)[1]

    assert replayed(entry) == 26  # Deepgram idle: 10 chunks fit on the GPU in time, 26 spill
    queued = entry.model_copy(update={"deepgram_queued_requests": 2000, "deepgram_queued_audio_s": 2000 * 600.0})
    assert replayed(queued) == 0  # 27 minutes of Deepgram work ahead: nothing meets it, the GPU is sooner


def test_since_and_months() -> None:
    assert parse_since("30d") == timedelta(days=30) and parse_since("12h") == timedelta(hours=12)
    with pytest.raises(ValueError):
        parse_since("soon")
    assert months_between(datetime(2026, 11, 20, tzinfo=UTC), NOW) == ["2026-11", "2026-12"]
    assert months_between(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 2, tzinfo=UTC)) == ["2026-12", "2027-01"]

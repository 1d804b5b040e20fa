"""The old system's scenarios as a table: five file lengths, each under four GPU queue and budget states.

The table is what ``parascribe plan --duration H [--backlog-seconds S] --json`` prints with the
default settings (10-minute chunks, 2 s overlap, RTFx 150, 80 % speech, 60 s start, one GPU,
60-minute deadline). The README carries it verbatim: this test fails when the two part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parascribe.config import load_settings
from parascribe.router.explain import plan_report
from parascribe.router.policy import BudgetExhaustedError

README = Path(__file__).resolve().parents[2] / "README.md"
HOURS = (0.5, 1.5, 3.0, 5.0, 6.0)
TWO_AUDIO_HOURS = 7200.0
FULL_QUEUE = 660_000.0
"""Audio seconds queued: × 0.8 speech / RTFx 150 = 3,520 s of GPU work, plus the 60 s start: 20 s left of the hour."""
BUDGET = 100.0


def plan(hours: float, backlog: float | None = None, spent: float | None = None) -> dict[str, Any]:
    settings = load_settings(monthly_budget_usd=BUDGET if spent is not None else None)
    return plan_report(settings, duration_hours=hours, backlog_seconds=backlog, spent_usd=spent)


def cell(doc: dict[str, Any]) -> str:
    gpu = sum(c["path"] == "gpu" for c in doc["chunks"])
    where = "whole file on Deepgram" if doc["whole_file"] else f"{gpu} GPU / {len(doc['chunks']) - gpu} DG"
    late = "" if doc["meets_deadline"] else " (late)"
    return f"{where}, {doc['finish_s']:,.0f} s{late}, ${doc['cost_usd']:.4f} (saves ${doc['savings_usd']:.4f})"


def table() -> str:
    head = ("| file | empty queue | 2 h of audio queued | queue full (660,000 s) | queue full, budget spent "
            "(`gpu_only`) |\n|---|---|---|---|---|")
    rows = [
        f"| {h:g} h | {cell(plan(h))} | {cell(plan(h, TWO_AUDIO_HOURS))} | {cell(plan(h, FULL_QUEUE))} "
        f"| {cell(plan(h, FULL_QUEUE, spent=BUDGET))} |"
        for h in HOURS
    ]
    return "\n".join([head, *rows])


def test_the_readme_carries_the_table() -> None:
    text = table()
    assert text in README.read_text(encoding="utf-8"), "README.md's plan table is stale; paste:\n" + text


@pytest.mark.parametrize("hours", HOURS)
def test_each_scenario(hours: float) -> None:
    empty, queued, full = plan(hours), plan(hours, TWO_AUDIO_HOURS), plan(hours, FULL_QUEUE)
    spent = plan(hours, FULL_QUEUE, spent=BUDGET)
    for doc in (empty, queued, full, spent):
        assert doc["cost_usd"] <= doc["deepgram_only_usd"] + 1e-9
    # An empty queue and two hours of audio (38 s of GPU work) both leave every chunk on the GPU.
    for doc in (empty, queued):
        assert doc["meets_deadline"] and {c["path"] for c in doc["chunks"]} == {"gpu"}
    assert queued["finish_s"] > empty["finish_s"]
    # A full queue spills chunks to Deepgram for the deadline, and says it was the backlog.
    assert full["meets_deadline"] and full["spill_reason"] == ("none" if hours == 0.5 else "backlog")
    # The budget spent: gpu_only puts everything back on the GPU, late, and says so.
    assert {c["path"] for c in spent["chunks"]} == {"gpu"} and spent["budget"]["level"] == "exhausted"
    assert "BUDGET_EXHAUSTED_POLICY=gpu_only" in spent["summary"] or full["spill_reason"] == "none"


def test_reject_fails_every_scenario_with_a_reason() -> None:
    settings = load_settings(monthly_budget_usd=BUDGET, budget_exhausted_policy="reject")
    for hours in HOURS:
        with pytest.raises(BudgetExhaustedError, match="the monthly budget is spent"):
            plan_report(settings, duration_hours=hours, spent_usd=BUDGET)

"""``parascribe costs``: what a period cost, where the Deepgram chunks came from, and what would cost less.

The figures come from the budget ledger (:mod:`parascribe.budget`): one entry per
finished job with its cost by method, its all-Deepgram baseline, its fallbacks, and
the numbers its plan was made with (duration, deadline, GPU backlog, Deepgram queue). The local
metrics file, when there is one, gives the GPU's measured RTFx.

Every recommendation is a what-if replay: the period's ``auto`` jobs are planned again
by :func:`parascribe.router.planner.make_plan` with one thing changed (one more GPU
instance, a 90-minute deadline, the measured RTFx), against the same replay with
nothing changed, so the planner's own estimates are compared with each other.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from parascribe.budget import Ledger, SpendEntry, level_of, month_of
from parascribe.config import Settings
from parascribe.contracts import utcnow
from parascribe.gcp.storage import BlobStore
from parascribe.router.capacity import Capacity
from parascribe.router.planner import PlannerOptions, make_plan

WHAT_IF_DEADLINE_MINUTES = 90.0
GPU_ENGINES = ("parakeet", "offline")


def months_between(start: datetime, end: datetime) -> list[str]:
    """``YYYY-MM`` of every month from ``start`` to ``end``, inclusive."""
    out: list[str] = []
    y, m = start.year, start.month
    while (y, m) <= (end.year, end.month):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def measured_gpu_rtfx(metrics_path: Path) -> float | None:
    """Audio seconds over processing seconds of the GPU engines, from a local metrics file."""
    if not metrics_path.is_file():
        return None
    audio = processing = 0.0
    with metrics_path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                engine, metric, value = rec["labels"].get("engine"), str(rec["metric"]), float(rec["value"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if engine in GPU_ENGINES:
                audio += value if metric.endswith("/audio_seconds") else 0.0
                processing += value if metric.endswith("/processing_seconds") else 0.0
    return audio / processing if processing > 0 and audio > 0 else None


def _replay(entries: Sequence[SpendEntry], options: PlannerOptions, max_instances: int,
            deadline: Callable[[SpendEntry], float]) -> tuple[float, int]:
    """Planned cost and Deepgram chunks of the ``auto`` jobs, replanned with these settings."""
    cost, deepgram = 0.0, 0
    for e in entries:
        n = e.deepgram_queued_requests  # the queue's requests, each of their mean length
        cap = Capacity(e.backlog_audio_s, min(e.gpu_instances_running, max_instances), max_instances,
                       options.gpu_expected_rtfx, options.gpu_startup_seconds, options.expected_speech_ratio, "replay",
                       deepgram_queue=(e.deepgram_queued_audio_s / n,) * n if n else ())
        plan = make_plan(e.duration_s, options, "auto", deadline(e), capacity=cap)
        cost += plan.estimated_cost_usd
        deepgram += sum(c.path == "deepgram" for c in plan.chunks)
    return cost, deepgram


def _recommendations(entries: list[SpendEntry], settings: Settings, rtfx: float | None) -> list[dict[str, Any]]:
    # Jobs the planner was free to place: asked for auto, and in a language the GPU transcribes.
    replayable = [e for e in entries if e.requested_method == "auto" and e.duration_s > 0 and e.state == "done"
                  and "language" not in e.spilled]
    if not replayable:
        return []
    options = PlannerOptions.from_settings(settings)
    m = settings.gpu_max_instances

    def as_planned(e: SpendEntry) -> float:
        return (e.deadline_minutes or settings.default_deadline_minutes) * 60

    base_cost, base_dg = _replay(replayable, options, m, as_planned)
    out: list[dict[str, Any]] = []

    def add(change: str, setting: str, cost: float, dg: int) -> None:
        saved, fewer = base_cost - cost, base_dg - dg
        if saved > 1e-6 or fewer > 0:
            share = fewer / base_dg if base_dg else 0.0
            out.append({"change": change, "setting": setting, "saves_usd": round(saved, 4),
                        "fewer_deepgram_chunks": fewer, "fewer_deepgram_share": round(share, 4),
                        "text": f"with {change}, ${saved:.2f} less over the period and {share:.0%} fewer chunks "
                                f"on Deepgram ({fewer} of {base_dg}) [{setting}]"})

    if m < 100:
        add(f"{m + 1} GPU instances instead of {m}", f"GPU_MAX_INSTANCES={m + 1}",
            *_replay(replayable, options, m + 1, as_planned))
    add(f"deadlines of {WHAT_IF_DEADLINE_MINUTES:.0f} minutes", f"DEFAULT_DEADLINE_MINUTES={WHAT_IF_DEADLINE_MINUTES:.0f}",
        *_replay(replayable, options, m, lambda e: max(as_planned(e), WHAT_IF_DEADLINE_MINUTES * 60)))
    if rtfx is not None and abs(rtfx - options.gpu_expected_rtfx) / options.gpu_expected_rtfx > 0.25:
        measured = replace(options, gpu_expected_rtfx=rtfx)
        cost, dg = _replay(replayable, measured, m, as_planned)
        out.append({"change": f"the measured GPU RTFx ({rtfx:.0f}) instead of {options.gpu_expected_rtfx:g}",
                    "setting": f"GPU_EXPECTED_RTFX={rtfx:.0f}", "saves_usd": round(base_cost - cost, 4),
                    "fewer_deepgram_chunks": base_dg - dg, "fewer_deepgram_share": 0.0,
                    "text": f"the GPU measured RTFx {rtfx:.0f} but the planner assumes {options.gpu_expected_rtfx:g}: "
                            f"planning with the measured speed moves {base_dg - dg:+d} chunks off Deepgram "
                            f"[GPU_EXPECTED_RTFX={rtfx:.0f}]"})
    return out


def costs_report(ledger: Ledger, settings: Settings, since: timedelta, now: datetime | None = None,
                 metrics_path: Path | None = None) -> dict[str, Any]:
    """The period's spend, savings, fallbacks and spills, budget state and recommendations."""
    now = now or utcnow()
    start = now - since
    entries = [e for month in months_between(start, now) for e in ledger.entries(month) if e.finished_at >= start]
    by_method: dict[str, float] = {}
    chunks: dict[str, int] = {}
    spilled: dict[str, int] = {}
    for e in entries:
        for k, cost in e.cost_by_method.items():
            by_method[k] = by_method.get(k, 0.0) + cost
        for counts, values in ((chunks, e.chunks), (spilled, e.spilled)):
            for k, n in values.items():
                counts[k] = counts.get(k, 0) + n
    spent = sum(e.cost_usd for e in entries)
    baseline = sum(e.deepgram_only_usd for e in entries if e.state == "done")
    total_chunks = sum(chunks.values())
    month = month_total = None
    if settings.monthly_budget_usd:
        month = month_of(now)
        month_total = ledger.month_total(month).spent_usd
    rtfx = measured_gpu_rtfx(metrics_path) if metrics_path else None
    return {
        "since": start.isoformat(timespec="seconds"),
        "until": now.isoformat(timespec="seconds"),
        "jobs": len(entries),
        "jobs_failed": sum(e.state == "failed" for e in entries),
        "audio_hours": round(sum(e.duration_s for e in entries) / 3600, 3),
        "spent_usd": round(spent, 4),
        "by_method_usd": {k: round(v, 4) for k, v in sorted(by_method.items())},
        "deepgram_only_usd": round(baseline, 4),
        "savings_usd": round(sum(e.savings_usd for e in entries), 4),
        "fallbacks": sum(e.fallbacks for e in entries),
        "fallback_usd": round(sum(e.fallback_usd for e in entries), 4),
        "chunks": dict(sorted(chunks.items())),
        "spilled": dict(sorted(spilled.items())),
        "deepgram_share": round(chunks.get("deepgram", 0) / total_chunks, 4) if total_chunks else 0.0,
        "budget": {"month": month, "budget_usd": settings.monthly_budget_usd, "spent_usd": month_total,
                   "level": level_of(month_total / settings.monthly_budget_usd)
                   if settings.monthly_budget_usd and month_total is not None else "unlimited"},
        "measured_gpu_rtfx": round(rtfx, 1) if rtfx else None,
        "recommendations": _recommendations(entries, settings, rtfx),
    }


def render(doc: dict[str, Any], as_json: bool) -> str:
    """The report as JSON, or as a short table and the recommendations."""
    if as_json:
        return json.dumps(doc, indent=2)
    methods = ", ".join(f"{k} ${v:.2f}" for k, v in doc["by_method_usd"].items()) or "-"
    spills = ", ".join(f"{k} {v}" for k, v in doc["spilled"].items()) or "none"
    lines = [
        f"costs {doc['since']} .. {doc['until']}: {doc['jobs']} jobs ({doc['jobs_failed']} failed), "
        f"{doc['audio_hours']:.1f} audio hours",
        f"  spent          ${doc['spent_usd']:.2f} ({methods})",
        f"  all-Deepgram   ${doc['deepgram_only_usd']:.2f}; saved ${doc['savings_usd']:.2f}",
        f"  fallbacks      {doc['fallbacks']} chunks, ${doc['fallback_usd']:.2f}",
        f"  on Deepgram    {doc['deepgram_share']:.0%} of chunks; why: {spills}",
    ]
    b = doc["budget"]
    if b["budget_usd"]:
        lines.append(f"  budget {b['month']}  ${b['spent_usd'] or 0:.2f} of ${b['budget_usd']:.2f} ({b['level']})")
    if doc["measured_gpu_rtfx"]:
        lines.append(f"  gpu rtfx       {doc['measured_gpu_rtfx']} measured")
    lines.append("recommendations:" if doc["recommendations"] else "recommendations: none (nothing would cost less)")
    lines += [f"  - {r['text']}" for r in doc["recommendations"]]
    return "\n".join(lines)


def parse_since(text: str) -> timedelta:
    """``30d`` or ``30`` as days; ``12h`` as hours.

    Raises:
        ValueError: anything else, or a span that is not positive.
    """
    unit = 3600.0 if text.endswith("h") else 86400.0
    try:
        value = float(text.removesuffix("h").removesuffix("d"))
    except ValueError:
        raise ValueError(f"--since expects days such as 30d (or hours: 12h), got {text!r}") from None
    if not value > 0:
        raise ValueError(f"--since must be positive, got {text!r}")
    return timedelta(seconds=value * unit)


def run(args: argparse.Namespace, settings: Settings, store: BlobStore, metrics_path: Path | None = None) -> int:
    """``parascribe costs``: the report from the state bucket's ledger and the local metrics file."""
    try:
        since = parse_since(args.since)
    except ValueError as err:
        print(f"parascribe: {err}", file=sys.stderr)
        return 2
    doc = costs_report(Ledger(store, settings.state_bucket), settings, since,
                       metrics_path=metrics_path)
    print(render(doc, args.json))
    return 0

"""The month's spend, in the state bucket: a sharded ledger updated by compare-and-swap.

Layout (state bucket)
    - ``budget/<YYYY-MM>/shard-<NN>.json``: :class:`SpendShard`, running totals. A job adds
      to one shard, chosen by a hash of its id, under a generation precondition, so
      concurrent mergers never lose an update: the loser re-reads and adds again.
    - ``budget/<YYYY-MM>/jobs/<job_id>.json``: :class:`SpendEntry`, one per finished job,
      written once; ``parascribe costs`` reads them to replay the period through the planner.

Why shards
    GCS sustains about one write per second to one object. One finished job is one
    shard write, so :data:`SHARDS` objects take ``SHARDS`` job completions a second
    between them: 10,000 audio hours a day in one-hour files is 0.12 a second, and a
    burst of 100 times that is 12 a second, 0.36 per shard (docs/capacity.md has 30-minute files: 0.72). A reader
    sums the shards: 32 small reads, cached by the router.

Idempotence
    The merger may complete a job twice (a claimer that died half-way is completed
    again after its lease). Each shard keeps the ids of its last :data:`RECENT_IDS`
    jobs and adds a job only once; a job always lands on the same shard.

The month is UTC, by the job's finish time. Nothing here may fail a job:
:func:`record_spend` logs and carries on when the ledger cannot be written.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from pydantic import Field

from parascribe import metric_names as mn
from parascribe.contracts import ChunkResult, Contract, JobManifest, JobStatus, parse, utcnow
from parascribe.costs import Prices
from parascribe.errors import TransientError
from parascribe.gcp.storage import BlobStore
from parascribe.jobs import JobStore
from parascribe.metrics import MetricsExporter
from parascribe.plan_contract import BudgetLevel, BudgetState

log = logging.getLogger(__name__)

SHARDS = 32
RECENT_IDS = 256
PREFIX = "budget/"
_CAS_ATTEMPTS = 30
_BACKOFF_S = 0.02
_BACKOFF_CAP_S = 1.0


def month_of(when: datetime | None = None) -> str:
    """``YYYY-MM`` of ``when`` (now by default), UTC."""
    return f"{(when or utcnow()):%Y-%m}"


def shard_of(job_id: str, shards: int = SHARDS) -> int:
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) % shards


def shard_path(month: str, index: int) -> str:
    return f"{PREFIX}{month}/shard-{index:02d}.json"


def entry_path(month: str, job_id: str) -> str:
    return f"{PREFIX}{month}/jobs/{job_id}.json"


def level_of(fraction: float | None) -> BudgetLevel:
    """The alert level of a used fraction of the budget (the 50, 80 and 100 % thresholds)."""
    if fraction is None:
        return "unlimited"
    return "exhausted" if fraction >= 1 else "warning_80" if fraction >= 0.8 else "warning_50" if fraction >= 0.5 \
        else "ok"


class SpendEntry(Contract):
    """What one finished job cost, and what its plan was: one object per job, written once."""

    job_id: str
    state: str
    finished_at: datetime
    duration_s: float = 0.0
    deadline_minutes: float = 0.0
    method: str = "auto"
    requested_method: str = "auto"
    cost_usd: float = 0.0
    cost_by_method: dict[str, float] = Field(default_factory=dict)
    deepgram_only_usd: float = 0.0
    savings_usd: float = 0.0
    chunks: dict[str, int] = Field(default_factory=dict)
    """Chunks transcribed per path (after fallbacks)."""
    spilled: dict[str, int] = Field(default_factory=dict)
    """Chunks on Deepgram per reason: the plan's (deadline, backlog, method, ...) and ``failure`` for fallbacks."""
    fallbacks: int = 0
    fallback_usd: float = 0.0
    backlog_audio_s: float = 0.0
    gpu_instances_running: int = 0
    deepgram_queued_requests: int = 0
    deepgram_queued_audio_s: float = 0.0
    """The Deepgram queue the plan was made against, so a replay sees it too."""


class SpendShard(Contract):
    """Running totals of one shard of one month; :meth:`Ledger.month_total` sums the shards."""

    month: str
    spent_usd: float = 0.0
    by_method: dict[str, float] = Field(default_factory=dict)
    deepgram_only_usd: float = 0.0
    savings_usd: float = 0.0
    jobs: int = 0
    jobs_failed: int = 0
    chunks: dict[str, int] = Field(default_factory=dict)
    spilled: dict[str, int] = Field(default_factory=dict)
    fallbacks: int = 0
    fallback_usd: float = 0.0
    recent: list[str] = Field(default_factory=list)

    def add(self, e: SpendEntry) -> None:
        self.spent_usd += e.cost_usd
        self.deepgram_only_usd += e.deepgram_only_usd
        self.savings_usd += e.savings_usd
        self.jobs += 1
        self.jobs_failed += e.state == "failed"
        self.fallbacks += e.fallbacks
        self.fallback_usd += e.fallback_usd
        _merge(self.by_method, e.cost_by_method)
        _merge(self.chunks, e.chunks)
        _merge(self.spilled, e.spilled)

    def merged(self, other: SpendShard) -> SpendShard:
        out = self.model_copy(deep=True)
        for name in ("spent_usd", "deepgram_only_usd", "savings_usd", "jobs", "jobs_failed", "fallbacks",
                     "fallback_usd"):
            setattr(out, name, getattr(out, name) + getattr(other, name))
        _merge(out.by_method, other.by_method)
        _merge(out.chunks, other.chunks)
        _merge(out.spilled, other.spilled)
        out.recent = []
        return out


def _merge(into: dict, add: Mapping) -> None:  # type: ignore[type-arg]
    for k, v in add.items():
        into[k] = into.get(k, 0) + v


class Ledger:
    """The monthly spend ledger over a :class:`BlobStore` (see the module docstring)."""

    def __init__(self, store: BlobStore, bucket: str, shards: int = SHARDS, *,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self._store = store
        self._bucket = bucket
        self._shards = shards
        self._sleep = sleep
        self._rng = rng or random.Random()

    def record(self, entry: SpendEntry) -> bool:
        """Count a finished job in its month once. True when this call counted it.

        Raises:
            TransientError: the shard kept changing under us.
        """
        month = month_of(entry.finished_at)
        self._store.write(self._bucket, entry_path(month, entry.job_id), entry.to_bytes(), if_generation_match=0)
        path = shard_path(month, shard_of(entry.job_id, self._shards))
        for attempt in range(_CAS_ATTEMPTS):
            blob = self._store.read(self._bucket, path)
            shard = parse(SpendShard, blob.data) if blob else SpendShard(month=month)
            if entry.job_id in shard.recent:
                return False
            shard.add(entry)
            shard.recent = (shard.recent + [entry.job_id])[-RECENT_IDS:]
            if self._store.write(self._bucket, path, shard.to_bytes(),
                                 if_generation_match=blob.generation if blob else 0) is not None:
                return True
            self._sleep(self._rng.uniform(0.0, min(_BACKOFF_CAP_S, _BACKOFF_S * 2**attempt)))
        raise TransientError(f"the budget shard {path} kept changing under us ({_CAS_ATTEMPTS} attempts)")

    def month_total(self, month: str | None = None) -> SpendShard:
        """The month's totals: every shard summed."""
        month = month or month_of()
        total = SpendShard(month=month)
        for name in self._store.list(self._bucket, f"{PREFIX}{month}/shard-"):
            blob = self._store.read(self._bucket, name)
            if blob is not None:
                total = total.merged(parse(SpendShard, blob.data))
        return total

    def entries(self, month: str) -> list[SpendEntry]:
        """Every job counted in ``month``, oldest first."""
        out = []
        for name in self._store.list(self._bucket, f"{PREFIX}{month}/jobs/"):
            blob = self._store.read(self._bucket, name)
            if blob is not None:
                out.append(parse(SpendEntry, blob.data))
        return sorted(out, key=lambda e: e.finished_at)


def budget_state(spent_usd: float | None, budget_usd: float | None, policy: str, month: str,
                 planned_usd: float = 0.0, note: str | None = None) -> BudgetState:
    """Where the month stands for a job that would add ``planned_usd``.

    The level is ``exhausted`` once the spend *with this job* would pass the budget.
    """
    if budget_usd is None:
        return BudgetState(level="unlimited", month=month, spent_usd=spent_usd, policy=policy,  # type: ignore[arg-type]
                           note=note)
    if spent_usd is None:
        return BudgetState(level="unknown", month=month, budget_usd=budget_usd, policy=policy,  # type: ignore[arg-type]
                           note=note or "the ledger could not be read; planned as if within budget")
    fraction = spent_usd / budget_usd
    level = "exhausted" if spent_usd + planned_usd > budget_usd else level_of(fraction)
    return BudgetState(level=level, month=month, budget_usd=budget_usd, spent_usd=round(spent_usd, 6),  # type: ignore[arg-type]
                       used_fraction=round(fraction, 6), policy=policy, note=note)  # type: ignore[arg-type]


def entry_for(status: JobStatus, results: list[ChunkResult], manifest: JobManifest | None,
              prices: Prices) -> SpendEntry:
    """The ledger entry of a finished job, from its status summary, results and plan."""
    summary = status.summary
    chunks: dict[str, int] = {}
    for r in results:
        chunks[r.path] = chunks.get(r.path, 0) + 1
    spilled: dict[str, int] = {}
    plan = manifest.plan if manifest is not None else None
    if plan is not None and plan.deepgram_chunks and plan.spill_reason != "none":
        spilled[plan.spill_reason] = plan.deepgram_chunks
    falls = [r for r in results if r.fallback_reason]
    if falls:
        spilled["failure"] = len(falls)
    return SpendEntry(
        job_id=status.job_id, state=status.state, finished_at=status.finished_at or utcnow(),
        duration_s=summary.duration_s if summary else 0.0,
        deadline_minutes=manifest.deadline_minutes if manifest else 0.0,
        method=manifest.method if manifest else "auto",
        requested_method=plan.requested_method if plan else (manifest.method if manifest else "auto"),
        cost_usd=summary.cost_usd if summary else 0.0,
        cost_by_method=dict(summary.cost_by_method) if summary else {},
        deepgram_only_usd=summary.deepgram_only_usd if summary else 0.0,
        savings_usd=summary.savings_usd if summary else 0.0,
        chunks=chunks, spilled=spilled, fallbacks=len(falls),
        fallback_usd=round(sum(prices.deepgram(r.billed_seconds or r.audio_seconds) for r in falls
                               if r.path == "deepgram"), 6),
        backlog_audio_s=plan.backlog_audio_s if plan else 0.0,
        gpu_instances_running=plan.gpu_instances_running if plan else 0,
        deepgram_queued_requests=plan.deepgram_queued_requests if plan else 0,
        deepgram_queued_audio_s=plan.deepgram_queued_audio_s if plan else 0.0,
    )


def record_spend(store: BlobStore, jobs: JobStore, status: JobStatus, results: list[ChunkResult], prices: Prices,
                 exporter: MetricsExporter, budget_usd: float | None) -> None:
    """Count a finished job in the month's ledger and report the budget gauges. Never raises.

    The merger calls this where it records a job's metrics.
    """
    try:
        entry = entry_for(status, results, jobs.manifest(status.job_id), prices)
        ledger = Ledger(store, jobs.bucket)
        if not ledger.record(entry):
            return
        for reason, n in entry.spilled.items():
            exporter.record(mn.SPILLED_CHUNKS, n, {"reason": reason})
        if budget_usd:
            total = ledger.month_total(month_of(entry.finished_at))
            exporter.record(mn.BUDGET_SPENT_USD, total.spent_usd)
            exporter.record(mn.BUDGET_USED_FRACTION, total.spent_usd / budget_usd)
    except Exception as err:  # the job is done; a lost ledger update must not undo that
        log.error("could not record the job's spend in the budget ledger: %s", err, extra={"job_id": status.job_id})

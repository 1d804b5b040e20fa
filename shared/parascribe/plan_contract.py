"""Why a job was planned the way it was: the numbers behind each plan, stored in its manifest.

:class:`PlanExplanation` is written by the router into ``JobManifest.plan`` and logged,
printed by ``parascribe plan``, and read back by ``parascribe costs`` to replay a
period's jobs through the planner. It is a :class:`~parascribe.contracts.Value`: no
version of its own, tolerant of fields it does not know.

These models subclass pydantic's ``BaseModel`` with ``extra="ignore"``, which is what
:class:`parascribe.contracts.Value` is, rather than import it: ``contracts`` imports this
module for ``JobManifest.plan``, and importing back would be a cycle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BudgetLevel = Literal["unlimited", "ok", "warning_50", "warning_80", "exhausted", "unknown"]
SpillReason = Literal["none", "deadline", "backlog", "budget", "method", "gpu_disabled", "language"]
"""Why chunks went to Deepgram at plan time (runtime fallbacks are counted apart, as ``failure``)."""


class Value(BaseModel):
    """A value inside a contract, as :class:`parascribe.contracts.Value`: tolerant of unknown fields."""

    model_config = ConfigDict(extra="ignore")


class BudgetState(Value):
    """The month's spend against ``MONTHLY_BUDGET_USD`` when the job was planned."""

    level: BudgetLevel = "unlimited"
    month: str = ""
    budget_usd: float | None = None
    spent_usd: float | None = None
    """Spent this month before this job (from the ledger); None when the ledger could not be read."""
    used_fraction: float | None = None
    policy: Literal["reject", "gpu_only", "allow"] = "gpu_only"
    note: str | None = None

    @property
    def exhausted(self) -> bool:
        return self.level == "exhausted"


class PlanExplanation(Value):
    """One line for a person, and the numbers a person (or a replay) needs to check it."""

    summary: str
    requested_method: str
    method: str
    language: str | None = None
    """The spoken language the upload named; one the GPU cannot transcribe sends every chunk to Deepgram."""
    duration_s: float = Field(ge=0)
    deadline_s: float = Field(ge=0)
    chunk_count: int = Field(default=0, ge=0)
    gpu_chunks: int = Field(default=0, ge=0)
    deepgram_chunks: int = Field(default=0, ge=0)
    whole_file: bool = False
    spill_reason: SpillReason = "none"
    backlog_audio_s: float = Field(default=0.0, ge=0)
    """Audio seconds already queued or in flight on the GPU path when the job was planned."""
    backlog_source: str = "assumed"
    degraded: str | None = None
    """Set when the backlog source failed: the plan assumed one idle GPU and an empty queue."""
    gpu_instances_running: int = Field(default=0, ge=0)
    gpu_max_instances: int = Field(default=1, ge=1)
    gpu_rtfx: float = Field(default=1.0, gt=0)
    speech_ratio: float = Field(default=1.0, gt=0, le=1)
    gpu_startup_s: float = Field(default=0.0, ge=0)
    deepgram_queued_requests: int = Field(default=0, ge=0)
    """Requests queued or in flight on the Deepgram path when the job was planned; they go first."""
    deepgram_queued_audio_s: float = Field(default=0.0, ge=0)
    deepgram_slots: int = Field(default=1, ge=1)
    """Requests the Deepgram path holds in flight at once (DEEPGRAM_MAX_INSTANCES × DEEPGRAM_MAX_CONCURRENCY)."""
    finish_s: float = Field(default=0.0, ge=0)
    meets_deadline: bool = True
    cost_usd: float = 0.0
    deepgram_only_usd: float = 0.0
    savings_usd: float = 0.0
    budget: BudgetState = Field(default_factory=BudgetState)

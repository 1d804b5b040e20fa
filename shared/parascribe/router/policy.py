"""The plan for one job, given the GPU's backlog and the month's budget, and why.

:func:`plan_job` wraps :func:`parascribe.router.planner.make_plan`:

1. Plan against the GPU path's capacity (:mod:`parascribe.router.capacity`): the
   cheapest plan that meets the deadline, the fewest chunks spilled to Deepgram,
   never more than all-Deepgram. ``TRANSCRIPTION_METHOD`` and the upload's method
   win over that; ``COST_OPTIMIZATION=false`` keeps the simple (hybrid) policy.
2. Check the budget (``MONTHLY_BUDGET_USD``). When the month's spend plus this plan
   would pass it, ``BUDGET_EXHAUSTED_POLICY`` decides: ``reject`` fails the job with a
   reason, ``gpu_only`` sends every chunk of an ``auto`` or ``hybrid`` job to the GPU
   whatever the deadline (the cheap path keeps working), ``allow`` plans as usual. A
   method that names one path (``gpu``, ``deepgram``) always wins, as the issue asks
   of ``TRANSCRIPTION_METHOD`` and the upload's method: ``gpu_only`` does not move a
   ``deepgram`` job, and the plan says that the budget is exhausted.
3. Language: a job whose language the GPU cannot transcribe (:mod:`parascribe.languages`; Parakeet is
   English only) is planned as ``deepgram``; one that asks for ``gpu`` fails with a reason, and so does an
   ``auto`` or ``hybrid`` one when the budget is spent under ``gpu_only`` (it has no cheap path).
4. Explain: a :class:`~parascribe.plan_contract.PlanExplanation` with one line for a
   person and the numbers behind it, stored in the manifest and logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from parascribe.budget import budget_state, month_of
from parascribe.contracts import AudioInfo, Method
from parascribe.errors import PermanentError
from parascribe.languages import GPU_LANGUAGES, gpu_transcribes
from parascribe.plan_contract import BudgetState, PlanExplanation, SpillReason
from parascribe.router.capacity import Capacity
from parascribe.router.planner import Plan, PlannerOptions, default_capacity, make_plan

PLANNER_CHOOSES: frozenset[str] = frozenset({"auto", "hybrid"})
"""The methods that leave the paths to the planner, so ``BUDGET_EXHAUSTED_POLICY=gpu_only`` may move them."""


class BudgetExhaustedError(PermanentError):
    """The month's budget is spent and ``BUDGET_EXHAUSTED_POLICY=reject``."""


@dataclass(frozen=True)
class BudgetInput:
    """The month's spend as the router read it."""

    budget_usd: float | None = None
    spent_usd: float | None = 0.0
    """None when the ledger could not be read (the plan then goes ahead and says so)."""
    policy: str = "gpu_only"
    month: str = ""
    note: str | None = None


def plan_job(
    duration_s: float,
    options: PlannerOptions,
    requested: Method,
    deadline_s: float,
    capacity: Capacity | None = None,
    budget: BudgetInput | None = None,
    size_bytes: int | None = None,
    audio: AudioInfo | None = None,
    language: str | None = None,
) -> tuple[Plan, PlanExplanation]:
    """Plan one job against the GPU's backlog and the budget (see the module docstring).

    Raises:
        BudgetExhaustedError: the budget is spent and the policy is ``reject`` (or the job has no cheap path).
        PermanentError: the method cannot be honoured with these settings or in this language.
    """
    cap = capacity or default_capacity(options)
    budget = budget or BudgetInput(month=month_of())
    gpu_ok = gpu_transcribes(language)
    if not gpu_ok and requested == "gpu":
        raise PermanentError(f"the job's method is gpu (parascribe-method or TRANSCRIPTION_METHOD) but its language "
                             f"is {language!r}, and the GPU path transcribes {GPU_LANGUAGES}; re-upload with "
                             "method auto or deepgram")
    plan = make_plan(duration_s, options, requested if gpu_ok else "deepgram", deadline_s, size_bytes, audio, cap)
    state = budget_state(budget.spent_usd, budget.budget_usd, budget.policy, budget.month or month_of(),
                         plan.estimated_cost_usd, budget.note)
    forced = False
    if state.exhausted and budget.policy == "gpu_only" and not gpu_ok and requested in PLANNER_CHOOSES:
        raise BudgetExhaustedError(_rejection(state, plan, gpu_off=False, language=language))
    if state.exhausted and budget.policy != "allow":
        if budget.policy == "reject" or not options.enable_gpu_transcription:
            raise BudgetExhaustedError(_rejection(state, plan, gpu_off=budget.policy != "reject"))
        if plan.method in PLANNER_CHOOSES and any(c.path == "deepgram" for c in plan.chunks):
            plan = make_plan(duration_s, options, "gpu", deadline_s, size_bytes, audio, cap)
            forced = True
    spill: SpillReason = "language" if not gpu_ok else \
        _spill_reason(plan, options, requested, deadline_s, cap, size_bytes, audio)
    return plan, explain(plan, options, requested, duration_s, deadline_s, cap, state, spill, forced, language)


def _rejection(state: BudgetState, plan: Plan, gpu_off: bool, language: str | None = None) -> str:
    spent, budget = state.spent_usd or 0.0, state.budget_usd or 0.0
    why = (f"the monthly budget is spent: ${spent:.2f} of MONTHLY_BUDGET_USD=${budget:.2f} in {state.month}, "
           f"and this job would add ${plan.estimated_cost_usd:.2f}")
    if language is not None:
        return (f"{why}; in language {language!r} it can only go to Deepgram (the GPU transcribes "
                f"{GPU_LANGUAGES}), and BUDGET_EXHAUSTED_POLICY=gpu_only spends no more there: raise "
                "MONTHLY_BUDGET_USD, re-upload with method deepgram to spend anyway, or re-upload next month")
    if gpu_off:
        return (f"{why}; BUDGET_EXHAUSTED_POLICY=gpu_only needs the GPU but ENABLE_GPU_TRANSCRIPTION=false: "
                "enable the GPU, raise MONTHLY_BUDGET_USD, or re-upload next month")
    return (f"{why}: raise MONTHLY_BUDGET_USD, set BUDGET_EXHAUSTED_POLICY=gpu_only to keep transcribing "
            "on the GPU, or re-upload next month")


def _spill_reason(plan: Plan, options: PlannerOptions, requested: Method, deadline_s: float, cap: Capacity,
                  size_bytes: int | None, audio: AudioInfo | None) -> SpillReason:
    deepgram = sum(c.path == "deepgram" for c in plan.chunks)
    if not deepgram:
        return "none"
    if not options.enable_gpu_transcription:
        return "gpu_disabled"
    if plan.method != "auto":
        return "method"
    if cap.backlog_audio_s > 0:
        idle = make_plan(plan.chunks[-1].core_end_s, options, requested, deadline_s, size_bytes, audio,
                         cap.with_backlog(0.0))
        if sum(c.path == "deepgram" for c in idle.chunks) < deepgram:
            return "backlog"
    return "deadline"


def _money(usd: float) -> str:
    return f"${usd:.4f}" if usd < 1 else f"${usd:,.2f}"


def _span(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 \
        else f"{seconds:.0f} s"


def explain(plan: Plan, options: PlannerOptions, requested: Method, duration_s: float, deadline_s: float, cap: Capacity,
            budget: BudgetState, spill: SpillReason, forced_gpu: bool = False,
            language: str | None = None) -> PlanExplanation:
    """The explanation of ``plan``: one line and the numbers behind it."""
    gpu = sum(c.path == "gpu" for c in plan.chunks)
    deepgram = len(plan.chunks) - gpu
    savings = plan.estimated_deepgram_only_usd - plan.estimated_cost_usd
    parts: list[str] = []
    if cap.degraded:
        parts.append(f"GPU backlog unknown ({cap.degraded}): assumed one idle GPU and an empty queue")
    if forced_gpu:
        parts.append(f"budget exhausted ({_money(budget.spent_usd or 0)} of {_money(budget.budget_usd or 0)}): "
                     "BUDGET_EXHAUSTED_POLICY=gpu_only sends every chunk to the GPU regardless of the deadline")
    elif budget.exhausted and budget.policy == "gpu_only" and plan.method not in PLANNER_CHOOSES \
            and any(c.path == "deepgram" for c in plan.chunks):
        parts.append(f"budget exhausted, but method {plan.method} wins over BUDGET_EXHAUSTED_POLICY=gpu_only")
    where = "whole file on Deepgram" if plan.whole_file else \
        f"{len(plan.chunks)} chunk{'s' if len(plan.chunks) != 1 else ''}: {gpu} on the GPU, {deepgram} on Deepgram"
    why = {
        "backlog": f" ({_span(cap.backlog_audio_s)} of audio already queued for the GPU)",
        "deadline": " (the GPU alone cannot meet the deadline)",
        "method": f" (method {plan.method})",
        "gpu_disabled": " (ENABLE_GPU_TRANSCRIPTION=false)",
        "language": f" (language {language}: the GPU transcribes English only)",
    }.get(spill, "")
    parts.append(where + why)
    queued = len(cap.deepgram_queue)
    if queued and (deepgram or plan.method in PLANNER_CHOOSES):  # where it could have changed the plan
        parts.append(f"{queued} request{'s' if queued != 1 else ''} already queued for Deepgram "
                     f"({_span(cap.deepgram_queued_audio_s)} of audio, {options.deepgram_slots} at a time)")
    parts.append(f"done in ~{_span(plan.estimated_finish_s)} against a {_span(deadline_s)} deadline"
                 + ("" if plan.meets_deadline else " (misses it)"))
    parts.append(f"{_money(plan.estimated_cost_usd)} vs {_money(plan.estimated_deepgram_only_usd)} all-Deepgram "
                 f"(saves {_money(savings)})")
    if budget.used_fraction is not None:
        parts.append(f"budget {budget.used_fraction:.0%} used ({budget.level})")
    elif budget.level == "unknown":
        parts.append(f"budget unknown ({budget.note or 'the ledger could not be read'})")
    return PlanExplanation(
        summary="; ".join(parts),
        requested_method=requested,
        method=plan.method,
        language=language,
        duration_s=round(duration_s, 3),
        deadline_s=round(deadline_s, 3),
        chunk_count=len(plan.chunks),
        gpu_chunks=gpu,
        deepgram_chunks=deepgram,
        whole_file=plan.whole_file,
        spill_reason=spill,
        backlog_audio_s=round(cap.backlog_audio_s, 3),
        backlog_source=cap.source,
        degraded=cap.degraded,
        gpu_instances_running=cap.running_instances,
        gpu_max_instances=cap.max_instances,
        gpu_rtfx=cap.rtfx,
        speech_ratio=cap.speech_ratio,
        gpu_startup_s=cap.startup_s,
        deepgram_queued_requests=len(cap.deepgram_queue),
        deepgram_queued_audio_s=round(cap.deepgram_queued_audio_s, 3),
        deepgram_slots=options.deepgram_slots,
        finish_s=round(plan.estimated_finish_s, 3),
        meets_deadline=plan.meets_deadline,
        cost_usd=round(plan.estimated_cost_usd, 6),
        deepgram_only_usd=round(plan.estimated_deepgram_only_usd, 6),
        savings_usd=round(savings, 6),
        budget=budget,
    )

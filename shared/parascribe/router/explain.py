"""``parascribe plan``: what the planner would do with a file or a duration, without submitting it.

A FILE is probed locally with :func:`parascribe.router.probe.probe` (ranged reads of the
file, as the router reads an object), so no stack is needed. ``--duration HOURS``
skips the probe. ``--backlog-seconds S`` plans as if S seconds of audio were already
queued for the GPU; without it the queue is empty and no instance is running.
``--deepgram-queue N`` plans as if N requests, a chunk each, were queued or in flight on
the Deepgram path; without it Deepgram is idle. The
budget is the configured ``MONTHLY_BUDGET_USD``; this command does not read the ledger,
so the month's spend is unknown unless given (``spent_usd``: what-if, such as a spent budget).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, cast

from parascribe.budget import month_of
from parascribe.config import Settings, load_settings
from parascribe.contracts import AudioInfo, Method, SourceRef
from parascribe.errors import PermanentError
from parascribe.gcp.storage import BlobStore
from parascribe.router.capacity import Capacity
from parascribe.router.planner import PlannerOptions
from parascribe.router.policy import BudgetInput, plan_job
from parascribe.router.probe import probe


class _LocalFile:
    """The one :class:`BlobStore` read the probe makes, over a local file."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def read_range(self, bucket: str, name: str, start: int, end: int, generation: str | None = None) -> bytes:
        with self._path.open("rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))


def probe_file(path: Path, settings: Settings) -> AudioInfo:
    """Probe a local file as the router probes an upload.

    Raises:
        FileNotFoundError: no such file.
        BadAudioError: not audio the pipeline can read.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    source = SourceRef(bucket="local", name=path.name, generation="1", size=path.stat().st_size)
    return probe(cast(BlobStore, _LocalFile(path)), source, settings.max_audio_minutes * 60.0)


def plan_report(
    settings: Settings,
    file: Path | None = None,
    duration_hours: float | None = None,
    deadline_minutes: float | None = None,
    backlog_seconds: float | None = None,
    method: Method | None = None,
    spent_usd: float | None = None,
    language: str | None = None,
    deepgram_queue: int | None = None,
) -> dict[str, Any]:
    """The plan for a file or a duration, as the JSON ``parascribe plan --json`` prints.

    Keys: every :class:`~parascribe.plan_contract.PlanExplanation` field (``cost_usd``,
    ``deepgram_only_usd``, ``savings_usd``, ``finish_s``, ``meets_deadline``, ``summary``, ...)
    and ``chunks``, each with its span and ``path``.

    Raises:
        ValueError: neither or both of ``file`` and ``duration_hours``, or a non-positive duration.
        PermanentError: the plan cannot be made (a budget rejection, a method the settings forbid).
    """
    if (file is None) == (duration_hours is None):
        raise ValueError("give a FILE or --duration HOURS (one of them)")
    size: int | None = None
    audio: AudioInfo | None = None
    if file is not None:
        audio = probe_file(file, settings)
        duration_s, size = audio.duration_s, file.stat().st_size
    else:
        duration_s = float(duration_hours or 0) * 3600.0
    if not duration_s > 0:
        raise ValueError(f"the duration must be positive, got {duration_s:g} s")
    options = PlannerOptions.from_settings(settings)
    capacity = Capacity(
        backlog_audio_s=max(0.0, backlog_seconds or 0.0), running_instances=0,
        max_instances=settings.gpu_max_instances, rtfx=settings.gpu_expected_rtfx,
        startup_s=settings.gpu_startup_seconds, speech_ratio=settings.expected_speech_ratio,
        source="--backlog-seconds" if backlog_seconds is not None else "none given (empty queue)",
        deepgram_queue=(settings.chunk_seconds,) * max(0, deepgram_queue or 0),
    )
    unknown = settings.monthly_budget_usd is not None and spent_usd is None
    budget = BudgetInput(settings.monthly_budget_usd, None if unknown else (spent_usd or 0.0),
                         settings.budget_exhausted_policy, month_of(),
                         "parascribe plan does not read the ledger" if unknown else None)
    deadline_s = (deadline_minutes or settings.default_deadline_minutes) * 60.0
    plan, why = plan_job(duration_s, options, method or settings.transcription_method, deadline_s, capacity, budget,
                         size_bytes=size, audio=audio, language=language)
    doc: dict[str, Any] = {"file": str(file) if file else None, **why.model_dump(mode="json")}
    doc["chunks"] = [c.model_dump(mode="json", exclude={"schema_version"}) for c in plan.chunks]
    return doc


def render(doc: dict[str, Any], as_json: bool) -> str:
    """The report as JSON, or as the summary line and a few aligned numbers."""
    if as_json:
        return json.dumps(doc, indent=2)
    paths = "".join("G" if c["path"] == "gpu" else "D" for c in doc["chunks"])
    lines = [
        doc["summary"],
        f"  duration      {doc['duration_s'] / 60:.1f} min, deadline {doc['deadline_s'] / 60:.0f} min, "
        f"method {doc['method']} (asked {doc['requested_method']})",
        f"  gpu backlog   {doc['backlog_audio_s']:.0f} s of audio ({doc['backlog_source']}), "
        f"{doc['gpu_instances_running']} of {doc['gpu_max_instances']} instances running, "
        f"RTFx {doc['gpu_rtfx']:g}, speech {doc['speech_ratio']:.0%}",
        f"  deepgram      queue of {doc['deepgram_queued_requests']} ({doc['deepgram_queued_audio_s']:.0f} s "
        f"of audio), {doc['deepgram_slots']} requests in flight at once",
        f"  finish        {doc['finish_s']:.0f} s ({'meets' if doc['meets_deadline'] else 'misses'} the deadline)",
        f"  cost          ${doc['cost_usd']:.4f}; all-Deepgram ${doc['deepgram_only_usd']:.4f}; "
        f"saves ${doc['savings_usd']:.4f}",
        f"  budget        {doc['budget']['level']}",
        f"  chunks        {paths}  (G gpu, D deepgram)",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``parascribe plan``: print the plan; 2 with the reason when it cannot be made."""
    try:
        doc = plan_report(load_settings(), Path(args.file) if args.file else None, args.duration,
                          args.deadline_minutes, args.backlog_seconds, args.method, getattr(args, "spent_usd", None),
                          getattr(args, "language", None), getattr(args, "deepgram_queue", None))
    except (ValueError, PermanentError) as err:
        print(f"parascribe: {getattr(err, 'reason', err)}", file=sys.stderr)
        return 2
    print(render(doc, args.json))
    return 0

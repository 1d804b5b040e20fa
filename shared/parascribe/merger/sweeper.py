"""The sweeper: no job stays in progress forever.

It walks the open-job index (``open/<job_id>`` in the state bucket, written by the
router, removed when a job is finished) and, for each job:

- finished (final status, webhook settled): closes it in the index;
- finished but its webhook failed (the receiver was down): sends it again every
  ``WEBHOOK_RESEND_SECONDS`` (:data:`WEBHOOK_RETRY_EVERY_S`), for up to :data:`WEBHOOK_GIVE_UP_S`, then closes it;
- claimed but not finished, with the claim's lease run out: completes it from the claim;
- every chunk stored but never finalised (the last result's merger died): finalises it;
- past the later of its deadline and the planner's estimate, plus ``SWEEP_GRACE_MINUTES``:
  fails it with a reason naming the chunks that never came back, and sends the webhook;
- otherwise: refreshes its progress, which the merger writes at most every few seconds.

In GCP Cloud Scheduler calls the merger's ``POST /sweep``; the local stack sweeps on a
timer (``SWEEP_INTERVAL_SECONDS``). Sweeps may overlap or repeat: every action goes
through the same once-only claim as the merger's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from parascribe.contracts import JobStatus, utcnow
from parascribe.errors import TransientError
from parascribe.jobs import REDELIVERY_NOTE, JobStore
from parascribe.merger.service import Merger, is_finished
from parascribe.merger.webhook import undelivered

log = logging.getLogger(__name__)

WEBHOOK_RETRY_EVERY_S = 300.0
"""Default of ``WEBHOOK_RESEND_SECONDS``."""
WEBHOOK_GIVE_UP_S = 86_400.0


@dataclass
class SweepReport:
    """What one sweep did."""

    checked: int = 0
    closed: int = 0
    resumed: int = 0
    webhooks_resent: int = 0
    finalised: int = 0
    failed: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Sweeper:
    """Resumes or ends jobs that nothing else will move on."""

    def __init__(self, merger: Merger, jobs: JobStore, *, grace_s: float,
                 webhook_resend_s: float = WEBHOOK_RETRY_EVERY_S, clock: Callable[[], datetime] = utcnow) -> None:
        self._webhook_resend_s = webhook_resend_s
        self._merger = merger
        self._jobs = jobs
        self._grace_s = grace_s
        self._clock = clock
        self._timer_stop = threading.Event()
        self._timer: threading.Thread | None = None

    def sweep(self) -> SweepReport:
        """One pass over the open jobs. A job that cannot be swept now is left for the next pass."""
        report = SweepReport()
        for job_id in self._jobs.open_jobs():
            report.checked += 1
            try:
                self._sweep_one(job_id, report)
            except Exception as err:  # one job's trouble must not stop the sweep of the others
                report.errors += 1
                log.warning("sweeping job %s failed, left for the next sweep: %s", job_id, err,
                            extra={"job_id": job_id})
        if report.resumed or report.finalised or report.failed or report.errors:
            log.info("sweep: %s", report.as_dict())
        return report

    def _sweep_one(self, job_id: str, report: SweepReport) -> None:
        status = self._jobs.status(job_id)
        if status is not None and status.final and undelivered(status):
            self._resend(status, report)
            return
        if is_finished(status):
            self._jobs.close(job_id)
            report.closed += 1
            return
        if self._jobs.final_outcome(job_id) is not None:
            try:
                if self._merger.finish_claimed(job_id):
                    report.resumed += 1
            except TransientError:
                pass  # a fresh claim: its owner is still finishing the job
            return
        manifest = self._jobs.manifest(job_id)
        created = manifest.created_at if manifest else status.created_at if status else None
        if manifest is None and created is None:
            self._merger.finalise_failed(job_id, "the job has no plan and no status; upload the file again")
            report.failed += 1
            return
        n = manifest.n_chunks if manifest else 0
        stored = self._jobs.chunk_indices(job_id) & set(range(n))
        if manifest is not None and len(stored) == n:
            log.warning("every chunk of job %s is stored but it was never finalised; finalising", job_id,
                        extra={"job_id": job_id})
            self._merger.finalise_done(manifest)
            report.finalised += 1
            return
        assert created is not None
        allowed_s = self._grace_s + (max(manifest.deadline_minutes * 60.0, manifest.estimated_finish_s)
                                     if manifest else 0.0)
        age_s = (self._clock() - created).total_seconds()
        if age_s > allowed_s:
            self._merger.finalise_failed(job_id, overdue_reason(allowed_s, self._grace_s, n, stored),
                                         manifest=manifest)
            report.failed += 1
        elif manifest is not None and (status is None or status.chunks_done < len(stored)):
            self._merger.record_progress(manifest, len(stored))

    def _resend(self, status: JobStatus, report: SweepReport) -> None:
        now = self._clock()
        if status.finished_at is not None and (now - status.finished_at).total_seconds() > WEBHOOK_GIVE_UP_S:
            log.error("giving up on the webhook of job %s after %.0f h; `parascribe webhook redeliver %s` sends it",
                      status.job_id, WEBHOOK_GIVE_UP_S / 3600, status.job_id, extra={"job_id": status.job_id})
            self._jobs.close(status.job_id)
            report.closed += 1
            return
        requested = any(d is not None and (d.last_error or "").startswith(REDELIVERY_NOTE)
                        for d in (status.webhook, status.callback))
        if not requested and (now - status.updated_at).total_seconds() < self._webhook_resend_s:
            return
        if self._merger.resend_webhook(status):
            report.webhooks_resent += 1

    # --- the local timer ---
    def start_timer(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` on a daemon thread until :meth:`stop_timer`."""

        def loop() -> None:
            while not self._timer_stop.wait(interval_s):
                self.sweep()

        self._timer = threading.Thread(target=loop, name="sweeper", daemon=True)
        self._timer.start()

    def stop_timer(self) -> None:
        self._timer_stop.set()
        if self._timer is not None:
            self._timer.join(timeout=30)


def overdue_reason(allowed_s: float, grace_s: float, n_chunks: int, stored: set[int]) -> str:
    """Why a job was ended by the sweeper, naming what never came back."""
    missing = sorted(set(range(n_chunks)) - stored)
    shown = ", ".join(str(i + 1) for i in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    what = (f"{len(stored)} of {n_chunks} chunks were transcribed; chunk(s) {shown} never came back"
            if n_chunks else "it was never planned")
    return (f"the job did not finish within {allowed_s / 60:.0f} min (its deadline or estimate plus a "
            f"{grace_s / 60:g}-minute grace): {what}; check the ASR and Deepgram workers' logs, then re-upload")

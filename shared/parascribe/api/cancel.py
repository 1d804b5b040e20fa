"""``POST /v1/jobs/{id}/cancel``: end a job that has not ended, as ``failed`` with a reason saying so.

Nothing is cut short in place: the job is failed the way any failure is, through a
:class:`~parascribe.contracts.JobFailed` on ``asr-results``, so the merger finalises it once, sends the
webhook and the callback (``failed``, the reason), and counts it. The workers then skip its chunks that are
not yet transcribed (they ask :class:`~parascribe.jobs.EndedJobs` before decoding or paying for one); a
request already at Deepgram finishes and is billed.

Wherever the job is, the cancel holds:

- the request is still being fetched or uploaded: its record is marked; the ingest worker uploads
  nothing once it sees the mark, and the router fails a job whose request is marked;
- the router is planning it: the API marks the request, then reads the job's status. The router reads the
  mark after writing the status, so one of the two always sees the other;
- it is queued or transcribing: the API publishes the failure;
- it has ended: 409, and nothing changes. A job that finishes while the cancel is on its way stays done.
"""

from __future__ import annotations

import logging
from typing import Any

from parascribe import names
from parascribe.api.errors import ApiError
from parascribe.api.views import JobsView
from parascribe.contracts import JobFailed
from parascribe.gcp.pubsub import Publisher
from parascribe.jobs import JobStore
from parascribe.requests_store import CANCELLED_REASON, RequestStore

log = logging.getLogger(__name__)


def cancel_job(any_id: str, view: JobsView, requests: RequestStore, jobs: JobStore,
               publisher: Publisher) -> dict[str, Any]:
    """Cancel the job or request ``any_id`` names; the answer says what happens next.

    Raises:
        ApiError: 404 for an unknown id, 409 when the job or request has already ended.
    """
    status, request = view.resolve(any_id)
    if status is not None and status.final:
        why = f" ({status.reason})" if status.reason else ""
        raise ApiError(409, f"job {status.job_id} has already ended: {status.state}{why}")
    if status is None and request is not None and request.state == "failed" and request.cancelled_at is None:
        raise ApiError(409, f"request {request.request_id} has already ended: failed ({request.reason})")
    if request is not None:
        request = requests.cancel(request.request_id) or request
    job_id = status.job_id if status else request.job_id if request else None
    status = jobs.status(job_id) if job_id else None  # read after the mark: see the module docstring
    if status is not None and not status.final:
        failed = JobFailed(job_id=status.job_id, reason=CANCELLED_REASON, source=status.source, origin=status.origin)
        publisher.publish(names.TOPIC_ASR_RESULTS, failed, failed.attributes())
        log.info("job %s cancelled through the API", status.job_id, extra={"job_id": status.job_id})
        note = "the job ends failed (cancelled) once the merger has it; chunks not yet transcribed are skipped"
    elif status is not None:
        note = f"the job ended {status.state} before the cancel reached it"
    else:
        note = "nothing was transcribed: the job is failed (cancelled) if its upload still lands"
    return {"job_id": job_id, "request_id": request.request_id if request else None, "cancelled": True,
            "note": note}

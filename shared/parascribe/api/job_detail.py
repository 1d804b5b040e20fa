"""What the console's job page reads beyond a job's status: its plan, its words, its links, and a redelivery.

- :func:`plan_view`: the manifest's plan (``JobManifest.plan``: the planner's numbers and its one-line
  reason), each chunk's planned path next to where it was transcribed and why it fell back, and the
  webhook's and callback's delivery state.
- :func:`words_view`: the words and segments of the ``json`` output, read through the store.
- :func:`links_view`: short-lived signed URLs of the source and of every output, for the page's player
  and download links (a browser cannot send the API key with ``<audio src>`` or a plain link).
- :func:`request_redelivery`: the webhook is sent by the merger, and the API may not import the merger
  stage. So the API marks the job's webhook and callback ``webhook_failed`` with
  :data:`~parascribe.jobs.REDELIVERY_NOTE` and re-opens the job in the sweeper's index
  (``open/<job_id>``): the sweeper resends failed webhooks of open jobs (``Merger.resend_webhook``),
  and one marked so on its next pass (every 30 s on the local stack, `sweep_schedule` in GCP) rather than after
  ``WEBHOOK_RESEND_SECONDS``; it gives up on jobs finished more than :data:`SWEEPER_GIVE_UP_S` ago, so those are refused
  here with the CLI command that sends at once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from parascribe.api.errors import ApiError
from parascribe.contracts import JobStatus, WebhookState, utcnow
from parascribe.gcp.storage import BlobStore
from parascribe.jobs import REDELIVERY_NOTE, JobStore

SWEEPER_GIVE_UP_S = 86_400.0
"""``parascribe.merger.sweeper.WEBHOOK_GIVE_UP_S`` (a unit test keeps the two equal)."""
_REDELIVERABLE = ("delivered", "webhook_failed")
MAX_WORDS_JSON_BYTES = 64 * 1024 * 1024
"""The largest ``json`` output the API reads into memory for the viewer (many hours of speech)."""


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name


def plan_view(jobs: JobStore, status: JobStatus | None, job_id: str | None) -> dict[str, Any]:
    """The job's plan, per-chunk paths and fallbacks, and its deliveries (``GET /v1/jobs/{id}/plan``)."""
    manifest = jobs.manifest(job_id) if job_id else None
    results = {r.chunk_index: r for r in jobs.chunk_results(job_id)} if manifest is not None and job_id else {}
    chunks = []
    for c in manifest.chunks if manifest else []:
        r = results.get(c.index)
        chunks.append({
            "index": c.index, "start_s": c.core_start_s, "end_s": c.core_end_s, "planned": c.path,
            "path": r.path if r else None, "engine": r.engine if r else None,
            "fallback_reason": r.fallback_reason if r else None, "error": r.error if r else None,
            "processing_s": r.processing_seconds if r else None, "audio_s": r.audio_seconds if r else None,
        })
    webhook = status.webhook if status else WebhookState()
    return {
        "job_id": job_id,
        "state": status.state if status else None,
        "method": manifest.method if manifest else None,
        "deadline_minutes": manifest.deadline_minutes if manifest else None,
        "language": manifest.language if manifest else None,
        "duration_s": manifest.audio.duration_s if manifest else None,
        "estimated_cost_usd": manifest.estimated_cost_usd if manifest else None,
        "estimated_deepgram_only_usd": manifest.estimated_deepgram_only_usd if manifest else None,
        "plan": manifest.plan.model_dump(mode="json") if manifest and manifest.plan else None,
        "chunks": chunks,
        "fallbacks": sum(1 for c in chunks if c["fallback_reason"]),
        "webhook": webhook.model_dump(mode="json"),
        "callback": status.callback.model_dump(mode="json") if status and status.callback else None,
        "has_callback": bool(status and status.origin.callback_url),
        "note": None if manifest else "no plan: the router has not planned this job (yet), or rejected its upload",
    }


def words_view(store: BlobStore, status: JobStatus | None, job_id: str) -> dict[str, Any]:
    """Words and segments of a done job (``GET /v1/jobs/{id}/words``).

    Raises:
        ApiError: 409 while the job is not done; 404 when it has no ``json`` output; 413 when that is too big.
    """
    if status is None or status.state != "done":
        raise ApiError(409, f"job {job_id} is {status.progress if status else 'not started'}; "
                            "its words are readable once it is done")
    uri = status.outputs.get("json")
    if not uri:
        raise ApiError(404, f"job {job_id} has no json output")
    bucket, name = _split(uri)
    info = store.info(bucket, name)
    if info is None:
        raise ApiError(404, f"{uri} is missing (deleted by a retention rule?)")
    if info.size > MAX_WORDS_JSON_BYTES:
        raise ApiError(413, f"the transcript is {info.size / 1048576:.0f} MB; download it instead")
    blob = store.read(bucket, name)
    if blob is None:
        raise ApiError(404, f"{uri} is missing")
    import json

    doc = json.loads(blob.data)
    return {"job_id": status.job_id, "duration_s": doc.get("duration_s"), "words": doc.get("words", []),
            "segments": doc.get("segments", [])}


def links_view(store: BlobStore, status: JobStatus | None, ttl: timedelta) -> dict[str, Any]:
    """Signed URLs of the source (pinned to its generation) and of every output (``GET /v1/jobs/{id}/links``)."""
    audio = None
    if status is not None and status.source is not None:
        s = status.source
        audio = store.signed_url(s.bucket, s.name, ttl, generation=s.generation)
    outputs = {}
    if status is not None and status.state == "done":
        for fmt, uri in sorted(status.outputs.items()):
            if uri.startswith("gs://"):
                outputs[fmt] = store.signed_url(*_split(uri), ttl)
    return {"audio": audio, "outputs": outputs, "expires_in_s": int(ttl.total_seconds())}


def request_redelivery(jobs: JobStore, job_id: str) -> dict[str, Any]:
    """Mark a finished job's webhook (and callback) for the sweeper to send again (see the module's docstring).

    Raises:
        ApiError: 404 for an unknown job; 409 while it runs, while a delivery is in flight, when nothing
            is configured to deliver to, or when the sweeper would no longer resend it.
    """
    status = jobs.status(job_id)
    if status is None:
        raise ApiError(404, f"no job {job_id}")
    if not status.final:
        raise ApiError(409, f"job {job_id} is {status.progress}; its webhook is sent once it is done or failed")
    if status.finished_at and (utcnow() - status.finished_at).total_seconds() > SWEEPER_GIVE_UP_S - 600:
        raise ApiError(409, f"job {job_id} finished more than a day ago, when the sweeper stops resending; "
                            f"send it now with `parascribe webhook redeliver {job_id}`")
    targets = [t for t, s in (("webhook", status.webhook), ("callback", status.callback)) if s is not None]
    if any(getattr(status, t).state == "pending" for t in targets):
        raise ApiError(409, "a delivery is in flight; look again in a minute")
    targets = [t for t in targets if getattr(status, t).state in _REDELIVERABLE]
    if not targets:
        raise ApiError(409, "nothing to redeliver: no webhook is configured (CONVEX_WEBHOOK_URL) and the job "
                            "has no callback_url")
    note = f"{REDELIVERY_NOTE} at {utcnow():%Y-%m-%d %H:%M:%S} UTC; the sweeper sends it on its next pass"

    def mark(current: JobStatus | None) -> JobStatus | None:
        if current is None:
            return None
        for t in targets:
            state: WebhookState = getattr(current, t)
            if state.state in _REDELIVERABLE:
                setattr(current, t, state.model_copy(update={"state": "webhook_failed", "last_error": note}))
        return current

    updated = jobs.update_status(job_id, mark)
    jobs.mark_open(job_id)
    assert updated is not None
    return {"job_id": job_id, "targets": targets, "detail": note,
            "webhook": updated.webhook.model_dump(mode="json"),
            "callback": updated.callback.model_dump(mode="json") if updated.callback else None}

"""Submitting files and following their jobs: what ``parascribe submit`` does.

A submission is a plain upload through the GCS API into the uploads bucket; the
bucket's notification triggers the pipeline exactly as a user's drop would.
Options travel as the object's custom metadata.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import google.cloud.storage as storage

from parascribe.config import Settings
from parascribe.contracts import JobStatus, make_job_id
from parascribe.contracts_api import upload_metadata
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import JobStore


@dataclass
class Submission:
    file: Path
    bucket: str
    name: str
    generation: str
    job_id: str

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


def upload(
    client: storage.Client,
    settings: Settings,
    file: Path,
    method: str | None = None,
    deadline_minutes: float | None = None,
    language: str | None = None,
) -> Submission:
    """Upload one file to the uploads bucket; return its deterministic job id."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    blob = client.bucket(settings.uploads_bucket).blob(file.name)
    metadata = upload_metadata(method=method, deadline_minutes=deadline_minutes, language=language)
    blob.metadata = metadata or None
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    blob.upload_from_filename(str(file), content_type=content_type)
    generation = str(blob.generation)
    return Submission(
        file=file, bucket=settings.uploads_bucket, name=file.name, generation=generation,
        job_id=make_job_id(settings.uploads_bucket, file.name, generation),
    )


def wait_for(
    jobs: JobStore,
    job_ids: list[str],
    timeout_s: float,
    on_progress: Callable[[str, JobStatus | None], None] | None = None,
    poll_s: float = 0.5,
) -> dict[str, JobStatus | None]:
    """Poll until every job is final or ``timeout_s`` passes; return the last statuses."""
    latest: dict[str, JobStatus | None] = {j: None for j in job_ids}
    deadline = time.monotonic() + timeout_s
    while True:
        for job_id in job_ids:
            if latest[job_id] is not None and latest[job_id].final:  # type: ignore[union-attr]
                continue
            latest[job_id] = jobs.status(job_id)
            if on_progress:
                on_progress(job_id, latest[job_id])
        if all(s is not None and s.final for s in latest.values()) or time.monotonic() > deadline:
            return latest
        time.sleep(poll_s)


def transcript_text(store: GcsStore, status: JobStatus) -> str | None:
    """The TXT output of a done job, read from the transcripts bucket."""
    uri = status.outputs.get("txt")
    if not uri or not uri.startswith("gs://"):
        return None
    bucket, _, name = uri[5:].partition("/")
    blob = store.read(bucket, name)
    return blob.data.decode() if blob else None


def result_record(sub: Submission, status: JobStatus | None, text: str | None, timed_out: bool) -> dict[str, object]:
    """The one JSON object ``submit --wait --json`` prints per file."""
    reason: str | None
    if status is None:
        state, reason = ("timeout" if timed_out else "unknown"), "the job never reported a status"
    elif not status.final:
        state, reason = "timeout", f"still {status.progress} when the wait ended"
    else:
        state, reason = status.state, status.reason
    return {
        "file": str(sub.file),
        "source": sub.uri,
        "job_id": sub.job_id,
        "status": state,
        "reason": reason,
        "text": text,
        "outputs": status.outputs if status else {},
        "engines": status.engines if status else [],
        "language": status.summary.language if status and status.summary else None,
        "webhook": status.webhook.state if status else None,
    }

"""What ``GET /v1/jobs/{id}`` answers: the pipeline job's status, or the API request's before the job exists.

The answer is the dict ``parascribe status --json`` prints (a :class:`JobStatus`) plus
``progress``, ``request_id``, ``url`` and ``title``. An upload's job id becomes known when
its object lands: the first look after that finds the object under ``api/<request_id>/``,
takes its generation for :func:`make_job_id`, and records the id in the request.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from parascribe import names
from parascribe.api.errors import ApiError
from parascribe.api.uploads import Uploads, request_id_of, upload_prefix
from parascribe.contracts import JobStatus, make_job_id
from parascribe.contracts_api import ApiRequest, is_request_id
from parascribe.jobs import JobStore
from parascribe.requests_store import RequestStore, index_key

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"j[0-9a-f]{20}")

ListFilter = Literal["active", "done", "failed"]
ENDED = frozenset({"done", "failed"})
FILTER_SCAN = 500
"""Records a filtered page reads at most: the filter costs one status read per record."""


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.fullmatch(value))


def describe(status: JobStatus | None, request: ApiRequest | None) -> dict[str, Any]:
    """The status dict of a job, of a request, or of both."""
    if status is not None:
        out: dict[str, Any] = status.model_dump(mode="json")
        out["progress"] = status.progress
    else:
        assert request is not None
        out = JobStatus(job_id="", state="queued", reason=request.reason, created_at=request.created_at,
                        updated_at=request.updated_at).model_dump(mode="json")
        out.update(job_id=request.job_id, state=request.state, progress=request.state, webhook=None)
        if request.state == "failed":
            out["finished_at"] = out["updated_at"]
    out["request_id"] = request.request_id if request else None
    out["url"] = (request.url or request.gcs_uri) if request else None
    out["title"] = request.title if request else None
    return out


class JobsView:
    """Resolves an id the API handed out, or a pipeline job id, to what is known about it."""

    def __init__(self, requests: RequestStore, jobs: JobStore, uploads: Uploads) -> None:
        self._requests = requests
        self._jobs = jobs
        self._uploads = uploads

    def resolve(self, any_id: str) -> tuple[JobStatus | None, ApiRequest | None]:
        """The job's status and the request behind it.

        Raises:
            ApiError: 404 when the id names neither.
        """
        if is_request_id(any_id):
            request = self._requests.get(any_id)
            if request is None:
                raise ApiError(404, f"no job or request {any_id}")
            request = self._with_job(request)
            return (self._jobs.status(request.job_id) if request.job_id else None), request
        if is_job_id(any_id):
            status = self._jobs.status(any_id)
            if status is None:
                raise ApiError(404, f"no job {any_id} (yet: a job appears moments after its upload lands)")
            rid = status.origin.request_id or (request_id_of(status.source.name) if status.source else None)
            return status, (self._requests.get(rid) if rid else None)
        raise ApiError(404, f"{any_id!r} is neither a request id (r + 20 hex) nor a job id (j + 20 hex)")

    def resolve_many(self, requests: list[ApiRequest]) -> list[dict[str, Any]]:
        return [self._describe(r) for r in requests]

    def page(self, limit: int, cursor: str | None, state: ListFilter | None = None) -> tuple[list[dict[str, Any]],
                                                                                          str | None]:
        """Jobs newest first, and the cursor after them (None on the last page).

        With ``state``, only the jobs in it (``active``: not yet ended). Such a page reads at most
        :data:`FILTER_SCAN` records, so it may hold fewer than ``limit`` jobs and still have a cursor.

        Raises:
            ValueError: ``cursor`` is not one this API handed out.
        """
        if state is None:
            records, after = self._requests.recent(limit, cursor)
            return self.resolve_many(records), after
        found: list[dict[str, Any]] = []
        scanned = 0
        while scanned < FILTER_SCAN:
            records, after = self._requests.recent(min(100, FILTER_SCAN - scanned), cursor)
            for i, record in enumerate(records):
                scanned += 1
                job = self._describe(record)
                if (job["state"] not in ENDED) if state == "active" else job["state"] == state:
                    found.append(job)
                if len(found) == limit:
                    last = i == len(records) - 1 and after is None
                    return found, None if last else index_key(record.request_id, record.created_at)
            if after is None:
                return found, None
            cursor = after
        return found, cursor

    def _describe(self, request: ApiRequest) -> dict[str, Any]:
        request = self._with_job(request)
        return describe(self._jobs.status(request.job_id) if request.job_id else None, request)

    def _with_job(self, request: ApiRequest) -> ApiRequest:
        """``request``, with its job id once its upload has landed under ``api/<request_id>/``."""
        if request.job_id:
            return request
        # A URL request's upload is the ingest worker's; it may land after the record was failed (the worker
        # died after uploading and the message was dead-lettered): the landed upload wins.
        prefixes = [upload_prefix(request.request_id)]
        if request.url:
            prefixes.append(f"{names.INGEST_UPLOAD_PREFIX}{request.request_id}/")
        found = next((f for f in map(self._uploads.find, prefixes) if f is not None), None)
        if found is None:
            return request
        job_id = make_job_id(self._uploads.bucket, found.name, found.generation)
        uri = f"gs://{self._uploads.bucket}/{found.name}"

        def record(current: ApiRequest) -> ApiRequest | None:
            if current.job_id:
                return None
            return current.model_copy(update={"job_id": job_id, "state": "submitted", "upload_uri": uri})

        log.info("request %s landed as job %s", request.request_id, job_id, extra={"job_id": job_id})
        return self._requests.update(request.request_id, record) or request

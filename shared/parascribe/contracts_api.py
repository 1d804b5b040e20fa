"""Contracts of the API and URL ingest: what the API hands out before a pipeline job exists.

The pipeline's own contracts are in :mod:`parascribe.contracts`; these follow the
same rules (versioned, tolerant of unknown fields).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import Field

from parascribe import names
from parascribe.contracts import Contract, Method, utcnow

_REQUEST_ID = re.compile(r"r[0-9a-f]{20}")
RequestState = Literal["accepted", "ingesting", "submitted", "failed"]
"""An API request's own life before its upload exists: ``submitted`` means the pipeline's job has started."""


def is_request_id(value: str) -> bool:
    return bool(_REQUEST_ID.fullmatch(value))


class IngestRequest(Contract):
    """A URL to fetch into the uploads bucket, published by the API to ``ingest-requests``.

    The ingest worker streams the audio into ``uploads`` with these options as the
    object's ``parascribe-*`` metadata; the bucket notification then starts the job.
    """

    request_id: str = Field(pattern=_REQUEST_ID.pattern)
    url: str
    method: Method | None = None
    deadline_minutes: float | None = Field(default=None, gt=0)
    language: str | None = None
    callback_url: str | None = None
    submitted_at: datetime = Field(default_factory=utcnow)


class ApiRequest(Contract):
    """``requests/<request_id>.json`` in the state bucket: what the API answers for an id it handed out.

    Once the upload exists, ``job_id`` names the pipeline's job and the job's own
    status is the truth; before that (or when ingest fails) this record is.
    """

    request_id: str = Field(pattern=_REQUEST_ID.pattern)
    state: RequestState = "accepted"
    reason: str | None = None
    url: str | None = None
    gcs_uri: str | None = None
    title: str | None = None
    job_id: str | None = None
    upload_uri: str | None = None
    method: Method | None = None
    deadline_minutes: float | None = None
    language: str | None = None
    callback_url: str | None = None
    cancelled_at: datetime | None = None
    """Set by ``POST /v1/jobs/{id}/cancel``: the router fails the job, whenever its upload lands."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


def upload_metadata(request_id: str | None = None, *, method: str | None = None,
                    deadline_minutes: float | None = None, language: str | None = None,
                    callback_url: str | None = None, source_url: str | None = None,
                    title: str | None = None) -> dict[str, str]:
    """The ``parascribe-*`` custom metadata of an upload: how a client asks for other than the defaults, and
    where an upload made on a user's behalf came from. The router reads it back (``router/events.py``)."""
    pairs = ((names.META_REQUEST_ID, request_id), (names.META_METHOD, method),
             (names.META_DEADLINE, None if deadline_minutes is None else f"{deadline_minutes:g}"),
             (names.META_LANGUAGE, language), (names.META_CALLBACK_URL, callback_url),
             (names.META_SOURCE_URL, source_url), (names.META_TITLE, title))
    return {key: value for key, value in pairs if value}

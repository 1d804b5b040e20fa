"""API request records in the state bucket, and the index that lists them newest first.

- ``requests/<request_id>.json``: one :class:`ApiRequest`. The API creates it when it accepts
  a request (``if_generation_match=0``); after that the API, the ingest worker and the
  merger's dead-letter handler change it only by compare-and-swap on its generation, so no
  writer overwrites another.
- ``requests-recent/<16-digit inverted microseconds>-<request_id>``: an empty marker per request.
  GCS lists names in lexical order, and the inverted creation time makes that newest first,
  so a page of recent requests is one list call with ``max_results`` and ``start_offset``,
  however many requests there have been. The cursor is the last marker's key.

What a late writer cannot undo (:meth:`RequestStore.update` enforces it for every writer):

- a final state (``submitted``, ``failed``) never goes back to ``accepted`` or ``ingesting``
  (a redelivered ingest request that finds it ``submitted`` leaves it so);
- a recorded job id stays, with its state: once the upload exists the job's own status is the truth;
- ``failed`` becomes ``submitted`` only with a job id: the upload landed after all (an ingest
  that outlived its dead-lettered message), so its job runs and the record says so.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from parascribe.contracts import parse, utcnow
from parascribe.contracts_api import ApiRequest, IngestRequest, is_request_id
from parascribe.errors import TransientError
from parascribe.gcp.storage import BlobStore

RECORD_PREFIX = "requests/"
INDEX_PREFIX = "requests-recent/"
FINAL_STATES = ("submitted", "failed")
CANCELLED_REASON = "cancelled at the user's request (POST /v1/jobs/{id}/cancel)"
_INVERT_US = 9_999_999_999_999_999
_CURSOR = re.compile(r"\d{16}-r[0-9a-f]{20}")
_CAS_ATTEMPTS = 20
_CAS_BACKOFF_S = 0.05
_CAS_BACKOFF_CAP_S = 2.0


def new_request_id() -> str:
    """A fresh request id: ``r`` and 20 random hex digits."""
    return "r" + secrets.token_hex(10)


def record_name(request_id: str) -> str:
    return f"{RECORD_PREFIX}{request_id}.json"


def index_key(request_id: str, created_at: datetime) -> str:
    """The marker's key: sorts newest first, then by request id."""
    micros = int(created_at.timestamp()) * 1_000_000 + created_at.microsecond
    return f"{_INVERT_US - micros:016d}-{request_id}"


def is_cursor(value: str) -> bool:
    return bool(_CURSOR.fullmatch(value))


def request_id_of(data: bytes) -> str | None:
    """The request id of a message that may not parse as an :class:`IngestRequest`, when one can be read."""
    try:
        body = json.loads(data)
    except (ValueError, TypeError):
        return None
    value = body.get("request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and is_request_id(value) else None


def seed_of(request: IngestRequest) -> ApiRequest:
    """The record to create for an ingest request whose record is missing (the API's write has not landed)."""
    return ApiRequest(request_id=request.request_id, state="accepted", url=request.url, method=request.method,
                      deadline_minutes=request.deadline_minutes, language=request.language,
                      callback_url=request.callback_url, created_at=request.submitted_at)


def _takes_back(current: ApiRequest, new: ApiRequest) -> bool:
    """Whether ``new`` would undo what ``current`` settled (see the module's docstring)."""
    if current.state in FINAL_STATES and new.state not in FINAL_STATES:
        return True
    if current.job_id and (new.job_id != current.job_id or new.state != current.state):
        return True
    return current.state == "failed" and new.state != "failed" and not new.job_id


class PagedLister(Protocol):
    """Listing one page of names in lexical order, from an offset."""

    def list_page(self, bucket: str, prefix: str, start_offset: str | None, limit: int) -> list[str]: ...


class GcsPagedLister:
    """:class:`PagedLister` over ``google.cloud.storage``: one request per page."""

    def __init__(self, client: storage.Client) -> None:
        self._client = client

    def list_page(self, bucket: str, prefix: str, start_offset: str | None, limit: int) -> list[str]:
        try:
            blobs = self._client.list_blobs(bucket, prefix=prefix, start_offset=start_offset,
                                            max_results=limit, page_size=limit)
            return [b.name for b in blobs]
        except (gexc.ServerError, gexc.TooManyRequests) as err:
            raise TransientError(f"listing gs://{bucket}/{prefix}: {err}") from err


class StoreLister:
    """:class:`PagedLister` over any :class:`BlobStore`: lists the whole prefix (for fakes and small stores)."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store

    def list_page(self, bucket: str, prefix: str, start_offset: str | None, limit: int) -> list[str]:
        names = sorted(self._store.list(bucket, prefix))
        return [n for n in names if start_offset is None or n >= start_offset][:limit]


class RequestStore:
    """Creates, reads, updates and lists :class:`ApiRequest` records.

    Args:
        store: the state bucket's store.
        bucket: ``settings.state_bucket``.
        lister: how :meth:`recent` lists the index; lists the whole prefix through ``store`` when None.
        sleep: how a lost race waits (tests pass a no-op).
        rng: the jitter of that wait.
    """

    def __init__(self, store: BlobStore, bucket: str, lister: PagedLister | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self._store = store
        self._bucket = bucket
        self._lister = lister or StoreLister(store)
        self._sleep = sleep
        self._rng = rng or random.Random()

    def create(self, request: ApiRequest) -> bool:
        """Write a new record and its index marker. False when the id was already taken."""
        gen = self._store.write(self._bucket, record_name(request.request_id), request.to_bytes(),
                                if_generation_match=0)
        if gen is None:
            return False
        # The record first: a marker never points at nothing, and a record whose marker was lost is only unlisted.
        self._store.write(self._bucket, INDEX_PREFIX + index_key(request.request_id, request.created_at), b"",
                          content_type="text/plain", if_generation_match=0)
        return True

    def get(self, request_id: str) -> ApiRequest | None:
        if not is_request_id(request_id):
            return None
        blob = self._store.read(self._bucket, record_name(request_id))
        return parse(ApiRequest, blob.data) if blob else None

    def update(self, request_id: str, change: Callable[[ApiRequest], ApiRequest | None], *,
               seed: ApiRequest | None = None) -> ApiRequest | None:
        """Read-modify-write a record under a generation precondition.

        ``change`` gets a copy of the current record (of ``seed`` when there is none) and
        returns the new one, or None to leave it. A change that would undo what the record
        settled (see the module's docstring) is not written.

        Args:
            request_id: the record's id.
            change: the new record from the current one.
            seed: the record to create when there is none (it is written only through ``change``);
                with None a missing record stays missing.

        Returns:
            The record as stored, or None when there is none.

        Raises:
            TransientError: the record kept changing under us, or GCS failed.
        """
        name = record_name(request_id)
        for attempt in range(_CAS_ATTEMPTS):
            blob = self._store.read(self._bucket, name)
            if blob is None and seed is None:
                return None
            current = parse(ApiRequest, blob.data) if blob else seed
            assert current is not None
            new = change(current.model_copy(deep=True))
            if new is None or (blob is not None and _takes_back(current, new)):
                return current if blob else None
            new.updated_at = utcnow()
            generation = blob.generation if blob else 0
            if self._store.write(self._bucket, name, new.to_bytes(), if_generation_match=generation) is not None:
                return new
            self._sleep(self._rng.uniform(0.0, min(_CAS_BACKOFF_CAP_S, _CAS_BACKOFF_S * 2**attempt)))
        raise TransientError(f"request {request_id} kept changing under us ({_CAS_ATTEMPTS} attempts)")

    def set_fields(self, seed: ApiRequest, **fields: object) -> ApiRequest:
        """Set ``fields`` on the record, creating it from ``seed`` when it is missing.

        A final record is left alone unless ``fields`` makes it final too.

        Raises:
            TransientError: the record kept changing, or GCS failed.
            pydantic.ValidationError: ``fields`` do not fit an :class:`ApiRequest`.
        """
        def change(current: ApiRequest) -> ApiRequest | None:
            if current.state in FINAL_STATES and fields.get("state") not in FINAL_STATES:
                return None
            return ApiRequest.model_validate({**current.model_dump(), **fields})

        stored = self.update(seed.request_id, change, seed=seed)
        return stored if stored is not None else seed

    def fail(self, request_id: str, reason: str, *, seed: ApiRequest | None = None,
             unless_final: bool = False) -> ApiRequest | None:
        """Mark the record ``failed`` with ``reason`` (created from ``seed`` when missing and one is given).

        Args:
            request_id: the record's id.
            reason: what a person reads: what went wrong and what to do.
            seed: the record to create when there is none.
            unless_final: leave a final record alone (a ``failed`` one keeps its first reason); otherwise
                only a recorded job (see the module's docstring) stops it.

        Returns:
            The record as stored, or None when there is none.
        """
        def failed(current: ApiRequest) -> ApiRequest | None:
            if unless_final and current.state in FINAL_STATES:
                return None
            return current.model_copy(update={"state": "failed", "reason": reason})

        return self.update(request_id, failed, seed=seed)

    def cancel(self, request_id: str) -> ApiRequest | None:
        """Mark the request cancelled: ``failed`` with :data:`CANCELLED_REASON` while no upload exists yet.

        A record that already names its job keeps its state (the job's status is the truth): the mark
        alone tells the router to fail that job. A ``failed`` record keeps its first reason.

        Returns:
            The record as stored, or None when there is none.
        """
        def cancelled(current: ApiRequest) -> ApiRequest | None:
            if current.cancelled_at is not None:
                return None
            update: dict[str, object] = {"cancelled_at": utcnow()}
            if current.state not in FINAL_STATES:
                update |= {"state": "failed", "reason": CANCELLED_REASON}
            return current.model_copy(update=update)

        return self.update(request_id, cancelled)

    def recent(self, limit: int = 20, cursor: str | None = None) -> tuple[list[ApiRequest], str | None]:
        """A page of records, newest first, and the cursor of the next page (None on the last).

        Raises:
            ValueError: ``cursor`` is not one this store handed out.
        """
        if cursor is not None and not is_cursor(cursor):
            raise ValueError("cursor is not one this API handed out; pass next_cursor from the previous page")
        start = INDEX_PREFIX + cursor if cursor else None
        names = [n for n in self._lister.list_page(self._bucket, INDEX_PREFIX, start, limit + 2)
                 if start is None or n > start]
        page, more = names[:limit], len(names) > limit
        out: list[ApiRequest] = []
        for name in page:
            record = self.get(name.rsplit("-", 1)[1])
            if record is not None:
                out.append(record)
        next_cursor = page[-1][len(INDEX_PREFIX):] if more and page else None
        return out, next_cursor

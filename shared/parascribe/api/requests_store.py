"""API request records in the state bucket, and the index that lists them newest first.

- ``requests/<request_id>.json``: one :class:`ApiRequest`, created once (``if_generation_match=0``)
  and then changed only by compare-and-swap on its generation, like a job's status.
- ``requests-recent/<16-digit inverted microseconds>-<request_id>``: an empty marker per request.
  GCS lists names in lexical order, and the inverted creation time makes that newest first,
  so a page of recent requests is one list call with ``max_results`` and ``start_offset``,
  however many requests there have been. The cursor is the last marker's key.
"""

from __future__ import annotations

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
from parascribe.contracts_api import ApiRequest, is_request_id
from parascribe.errors import TransientError
from parascribe.gcp.storage import BlobStore

RECORD_PREFIX = "requests/"
INDEX_PREFIX = "requests-recent/"
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
    """Creates, reads, updates and lists :class:`ApiRequest` records."""

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

    def update(self, request_id: str, change: Callable[[ApiRequest], ApiRequest | None]) -> ApiRequest | None:
        """Read-modify-write a record under a generation precondition.

        ``change`` gets a copy of the current record and returns the new one, or None to
        leave it. A ``failed`` record or one with a job id keeps them: a late writer cannot
        undo either. Returns the record as stored, or None when there is none.

        Raises:
            TransientError: the record kept changing under us.
        """
        name = record_name(request_id)
        for attempt in range(_CAS_ATTEMPTS):
            blob = self._store.read(self._bucket, name)
            if blob is None:
                return None
            current = parse(ApiRequest, blob.data)
            new = change(current.model_copy(deep=True))
            if new is None:
                return current
            if current.job_id and new.job_id != current.job_id:
                new.job_id, new.state = current.job_id, current.state
            if current.state == "failed" and new.state != "failed":
                return current
            new.updated_at = utcnow()
            if self._store.write(self._bucket, name, new.to_bytes(), if_generation_match=blob.generation) is not None:
                return new
            self._sleep(self._rng.uniform(0.0, min(_CAS_BACKOFF_CAP_S, _CAS_BACKOFF_S * 2**attempt)))
        raise TransientError(f"request {request_id} kept changing under us ({_CAS_ATTEMPTS} attempts)")

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

"""``requests/<request_id>.json`` in the state bucket, updated by compare-and-swap, and the upload itself.

The API writes the record when it accepts a URL; the ingest worker moves it to
``ingesting``, then ``submitted`` (with the pipeline's job id) or ``failed``. Both write
under a generation precondition and retry a lost race, so neither overwrites the other.
A final state (``submitted``, ``failed``) is never replaced by ``ingesting``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from parascribe.contracts import utcnow
from parascribe.contracts_api import ApiRequest, IngestRequest, is_request_id
from parascribe.errors import ConfigError, PermanentError, TransientError
from parascribe.gcp.storage import BlobStore, ObjectInfo

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 12
_CAS_BACKOFF_S = 0.05
_CAS_BACKOFF_CAP_S = 2.0
_FINAL = ("submitted", "failed")
UPLOAD_CHUNK_BYTES = 8 << 20
"""Each PUT of the resumable upload: what the upload holds in memory at once (a multiple of 256 KiB)."""


def record_path(request_id: str) -> str:
    return f"requests/{request_id}.json"


def request_id_of(data: bytes) -> str | None:
    """The request id of a message that may not parse as an IngestRequest, when one can be read."""
    try:
        body = json.loads(data)
    except (ValueError, TypeError):
        return None
    value = body.get("request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and is_request_id(value) else None


class RequestRecords:
    """The API's request records, as the ingest worker updates them.

    Args:
        store: the state bucket's store.
        bucket: ``settings.state_bucket``.
        sleep: how a lost race waits (tests pass a no-op).
    """

    def __init__(self, store: BlobStore, bucket: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self._store = store
        self._bucket = bucket
        self._sleep = sleep

    def get(self, request_id: str) -> ApiRequest | None:
        blob = self._store.read(self._bucket, record_path(request_id))
        return ApiRequest.model_validate_json(blob.data) if blob else None

    def update(self, seed: ApiRequest, **fields: object) -> ApiRequest:
        """Set ``fields`` on the record (created from ``seed`` when the API has not written it yet).

        A final record is left alone unless ``fields`` makes it final too (a redelivery
        that finds it ``submitted`` does not take it back to ``ingesting``).

        Raises:
            TransientError: the record kept changing, or GCS failed.
        """
        path = record_path(seed.request_id)
        for attempt in range(_CAS_ATTEMPTS):
            blob = self._store.read(self._bucket, path)
            current = ApiRequest.model_validate_json(blob.data) if blob else seed
            if current.state in _FINAL and fields.get("state") not in _FINAL:
                return current
            new = current.model_copy(update={**fields, "updated_at": utcnow()})
            new = ApiRequest.model_validate(new.model_dump())
            gen = self._store.write(self._bucket, path, new.to_bytes(), if_generation_match=blob.generation if blob else 0)
            if gen is not None:
                return new
            self._sleep(random.uniform(0.0, min(_CAS_BACKOFF_CAP_S, _CAS_BACKOFF_S * 2**attempt)))
        raise TransientError(f"request {seed.request_id} kept changing under us ({_CAS_ATTEMPTS} attempts)")

    def fail(self, seed: ApiRequest, reason: str) -> ApiRequest:
        return self.update(seed, state="failed", reason=reason)


def seed_of(request: IngestRequest) -> ApiRequest:
    """The record to create when the worker finds none (the API's write has not landed yet)."""
    return ApiRequest(request_id=request.request_id, state="accepted", url=request.url, method=request.method,
                      deadline_minutes=request.deadline_minutes, callback_url=request.callback_url,
                      created_at=request.submitted_at)


class Uploader(Protocol):
    """Where ingested audio goes: a resumable upload from a local file, created once."""

    def upload_file(self, bucket: str, name: str, path: Path, content_type: str,
                    metadata: dict[str, str]) -> ObjectInfo:
        """Upload ``path`` unless ``name`` exists; return the object (the existing one after a lost race)."""
        ...


@dataclass
class GcsUploader:
    """:class:`Uploader` over ``google.cloud.storage``: chunked resumable uploads with ``if_generation_match=0``."""

    client: storage.Client
    chunk_bytes: int = UPLOAD_CHUNK_BYTES

    def upload_file(self, bucket: str, name: str, path: Path, content_type: str,
                    metadata: dict[str, str]) -> ObjectInfo:
        blob = self.client.bucket(bucket).blob(name, chunk_size=self.chunk_bytes)
        blob.metadata = metadata
        try:
            blob.upload_from_filename(str(path), content_type=content_type, if_generation_match=0)
        except gexc.PreconditionFailed:
            existing = self.client.bucket(bucket).get_blob(name)
            if existing is None:
                raise TransientError(f"gs://{bucket}/{name} exists and vanished; retrying") from None
            blob = existing
        except gexc.NotFound:
            raise ConfigError(f"bucket {bucket} does not exist: check GCP_PROJECT and BUCKET_PREFIX") from None
        except (gexc.TooManyRequests, gexc.ServerError) as err:
            raise TransientError(f"uploading gs://{bucket}/{name}: {err}") from err
        except gexc.ClientError as err:
            if err.code in (401, 403, 408):
                raise TransientError(f"uploading gs://{bucket}/{name}: {err}") from err
            raise PermanentError(f"GCS refused gs://{bucket}/{name}: {err.code} {err.message}") from err
        return ObjectInfo(name=name, size=int(blob.size or 0), generation=int(blob.generation or 0),
                          content_type=blob.content_type, metadata=dict(blob.metadata or {}))

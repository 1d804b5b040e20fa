"""Putting objects into the uploads bucket on a request's behalf: a server-side copy or a resumable session.

Every object lands at ``api/<request_id>/<basename>`` with the ``parascribe-*`` metadata,
and the bucket's notification then starts the job, exactly as for a user's own drop.
:class:`Uploads` is the narrow interface; :class:`GcsUploads` wraps the GCS client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from parascribe import names
from parascribe.api.errors import ApiError
from parascribe.contracts_api import upload_metadata
from parascribe.errors import TransientError
from parascribe.gcp.storage import ObjectInfo

log = logging.getLogger(__name__)

UPLOAD_PREFIX = names.API_UPLOAD_PREFIX
MAX_FILENAME_BYTES = 512


def upload_prefix(request_id: str) -> str:
    """Where a request's upload lands: ``api/<request_id>/``."""
    return f"{UPLOAD_PREFIX}{request_id}/"


def request_id_of(name: str) -> str | None:
    """The request id an uploaded object was made for, from its name; None for a user's own drop."""
    prefix = next((p for p in (UPLOAD_PREFIX, names.INGEST_UPLOAD_PREFIX) if name.startswith(p)), None)
    if prefix is None:
        return None
    rid = name[len(prefix):].split("/", 1)[0]
    return rid if len(rid) == 21 and rid.startswith("r") else None


def safe_filename(name: str, what: str = "filename") -> str:
    """The last path component of ``name``, checked to be a usable object name.

    Raises:
        ApiError: 422 when nothing usable is left.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", ".."):
        raise ApiError(422, f"{what} has no file name (got {name!r})")
    if any(ord(c) < 0x20 or c == "\x7f" for c in base):
        raise ApiError(422, f"{what} contains control characters")
    if len(base.encode()) > MAX_FILENAME_BYTES:
        raise ApiError(422, f"{what} is longer than {MAX_FILENAME_BYTES} bytes")
    return base


@dataclass(frozen=True)
class UploadOptions:
    """What the pipeline reads from an uploaded object's metadata."""

    request_id: str
    method: str | None = None
    deadline_minutes: float | None = None
    callback_url: str | None = None
    source_url: str | None = None
    title: str | None = None
    language: str | None = None

    def metadata(self) -> dict[str, str]:
        return upload_metadata(self.request_id, method=self.method, deadline_minutes=self.deadline_minutes,
                               language=self.language, callback_url=self.callback_url,
                               source_url=self.source_url, title=self.title)


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    """``(bucket, name)`` of ``gs://bucket/name``.

    Raises:
        ApiError: 422 for anything else.
    """
    if not uri.startswith("gs://"):
        raise ApiError(422, f"gcs_uri must look like gs://bucket/object (got {uri[:80]!r})")
    bucket, _, name = uri[5:].partition("/")
    if not bucket or not name:
        raise ApiError(422, "gcs_uri must name a bucket and an object: gs://bucket/object")
    return bucket, name


class Uploads(Protocol):
    """The uploads bucket as the API uses it."""

    @property
    def bucket(self) -> str: ...

    def source(self, bucket: str, name: str) -> ObjectInfo | None:
        """The object to copy in, or None when it does not exist."""
        ...

    def copy_in(self, bucket: str, name: str, generation: int, dest: str, content_type: str | None,
                options: UploadOptions) -> int:
        """Copy ``gs://bucket/name#generation`` to ``dest`` in the uploads bucket; return the copy's generation."""
        ...

    def session(self, dest: str, content_type: str | None, size: int | None, options: UploadOptions,
                origin: str | None = None) -> str:
        """A resumable upload session URL that creates ``dest`` (and nothing else) with the metadata."""
        ...

    def find(self, prefix: str) -> ObjectInfo | None:
        """The first object under ``prefix``, or None."""
        ...


class GcsUploads:
    """:class:`Uploads` over ``google.cloud.storage``; the same code against fake-gcs-server."""

    def __init__(self, client: storage.Client, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    @property
    def bucket(self) -> str:
        return self._bucket

    def source(self, bucket: str, name: str) -> ObjectInfo | None:
        try:
            blob = self._client.bucket(bucket).get_blob(name)
        except gexc.Forbidden:
            raise ApiError(422, f"the API's service account may not read gs://{bucket}/{name}: grant it "
                                "roles/storage.objectViewer on that bucket") from None
        except (gexc.ServerError, gexc.TooManyRequests) as err:
            raise TransientError(f"reading gs://{bucket}/{name}: {err}") from err
        except gexc.NotFound:
            return None
        if blob is None:
            return None
        return _info(blob)

    def copy_in(self, bucket: str, name: str, generation: int, dest: str, content_type: str | None,
                options: UploadOptions) -> int:
        target = self._client.bucket(self._bucket).blob(dest)
        target.metadata = options.metadata()
        if content_type:
            target.content_type = content_type
        source = self._client.bucket(bucket).blob(name, generation=generation or None)
        token: str | None = None
        try:
            # Same location and class: one call, no bytes moved. Otherwise GCS copies in steps, each resumed by token.
            while True:
                token, _, _ = target.rewrite(source, token=token, if_generation_match=0)
                if token is None:
                    break
        except gexc.PreconditionFailed:
            existing = self._client.bucket(self._bucket).get_blob(dest)
            if existing is None:
                raise TransientError(f"gs://{self._bucket}/{dest} exists and vanished while copying") from None
            return int(existing.generation or 0)
        except gexc.NotFound:
            raise ApiError(404, f"gs://{bucket}/{name} no longer exists (or the uploads bucket "
                                f"{self._bucket} is missing)") from None
        except gexc.Forbidden:
            raise ApiError(422, f"the API's service account may not copy gs://{bucket}/{name}: grant it "
                                "roles/storage.objectViewer on that bucket") from None
        except (gexc.ServerError, gexc.TooManyRequests) as err:
            raise TransientError(f"copying gs://{bucket}/{name}: {err}") from err
        return int(target.generation or 0)

    def session(self, dest: str, content_type: str | None, size: int | None, options: UploadOptions,
                origin: str | None = None) -> str:
        blob = self._client.bucket(self._bucket).blob(dest)
        blob.metadata = options.metadata()
        try:
            # ifGenerationMatch=0: the session can only create this object, never replace one.
            return str(blob.create_resumable_upload_session(
                content_type=content_type or "application/octet-stream", size=size, origin=origin,
                if_generation_match=0,
            ))
        except (gexc.ServerError, gexc.TooManyRequests) as err:
            raise TransientError(f"opening an upload session on gs://{self._bucket}: {err}") from err

    def find(self, prefix: str) -> ObjectInfo | None:
        try:
            for blob in self._client.list_blobs(self._bucket, prefix=prefix, max_results=1):
                return _info(blob)
        except (gexc.ServerError, gexc.TooManyRequests) as err:
            raise TransientError(f"listing gs://{self._bucket}/{prefix}: {err}") from err
        return None


def _info(blob: storage.Blob) -> ObjectInfo:
    return ObjectInfo(name=blob.name, size=int(blob.size or 0), generation=int(blob.generation or 0),
                      content_type=blob.content_type, metadata=dict(blob.metadata or {}))

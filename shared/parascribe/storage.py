"""Object storage behind a narrow interface, and its GCS adapter.

The same adapter talks to real GCS and to fake-gcs-server: the official client
switches endpoints itself when ``STORAGE_EMULATOR_HOST`` is set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from parascribe.errors import BadAudioError, TransientError

log = logging.getLogger(__name__)

_TRANSIENT = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
)


@dataclass(frozen=True)
class Blob:
    data: bytes
    generation: int


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    generation: int
    content_type: str | None
    metadata: dict[str, str]


class BlobStore(Protocol):
    """The storage operations the pipeline uses, and nothing more."""

    def read(self, bucket: str, name: str) -> Blob | None: ...

    def read_range(self, bucket: str, name: str, start: int, end: int, generation: str | None = None) -> bytes: ...

    def info(self, bucket: str, name: str) -> ObjectInfo | None: ...

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str = "application/json",
        if_generation_match: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int | None:
        """Write; return the new generation, or None when the precondition failed."""
        ...

    def list(self, bucket: str, prefix: str) -> list[str]: ...

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None: ...

    def signed_url(self, bucket: str, name: str, expires: timedelta) -> str: ...


class GcsStore:
    """:class:`BlobStore` over ``google.cloud.storage``."""

    def __init__(self, client: storage.Client) -> None:
        self._client = client

    @classmethod
    def create(cls, project: str) -> GcsStore:
        return cls(storage.Client(project=project))

    @property
    def client(self) -> storage.Client:
        return self._client

    def _blob(self, bucket: str, name: str, generation: str | int | None = None) -> storage.Blob:
        gen = int(generation) if generation not in (None, "") else None
        return self._client.bucket(bucket).blob(name, generation=gen)

    def read(self, bucket: str, name: str) -> Blob | None:
        blob = self._client.bucket(bucket).blob(name)
        try:
            data = blob.download_as_bytes()
        except gexc.NotFound:
            return None
        except _TRANSIENT as err:
            raise TransientError(f"reading gs://{bucket}/{name}: {err}") from err
        return Blob(data=data, generation=int(blob.generation or 0))

    def read_range(self, bucket: str, name: str, start: int, end: int, generation: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of an object (shorter at the end of the object)."""
        if end <= start:
            return b""
        try:
            return self._blob(bucket, name, generation).download_as_bytes(start=start, end=end - 1)
        except gexc.NotFound:
            raise BadAudioError(f"gs://{bucket}/{name} no longer exists (deleted or overwritten)") from None
        except gexc.RequestRangeNotSatisfiable:
            return b""
        except _TRANSIENT as err:
            raise TransientError(f"reading gs://{bucket}/{name}: {err}") from err

    def info(self, bucket: str, name: str) -> ObjectInfo | None:
        try:
            blob = self._client.bucket(bucket).get_blob(name)
        except _TRANSIENT as err:
            raise TransientError(f"stat gs://{bucket}/{name}: {err}") from err
        if blob is None:
            return None
        return ObjectInfo(
            name=name,
            size=int(blob.size or 0),
            generation=int(blob.generation or 0),
            content_type=blob.content_type,
            metadata=dict(blob.metadata or {}),
        )

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str = "application/json",
        if_generation_match: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int | None:
        blob = self._client.bucket(bucket).blob(name)
        if metadata:
            blob.metadata = metadata
        try:
            blob.upload_from_string(data, content_type=content_type, if_generation_match=if_generation_match)
        except gexc.PreconditionFailed:
            return None
        except _TRANSIENT as err:
            raise TransientError(f"writing gs://{bucket}/{name}: {err}") from err
        return int(blob.generation or 0)

    def list(self, bucket: str, prefix: str) -> list[str]:
        try:
            return [b.name for b in self._client.list_blobs(bucket, prefix=prefix)]
        except _TRANSIENT as err:
            raise TransientError(f"listing gs://{bucket}/{prefix}: {err}") from err

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None:
        try:
            self._blob(bucket, name, generation).download_to_filename(str(dest))
        except gexc.NotFound:
            raise BadAudioError(f"gs://{bucket}/{name} no longer exists (deleted or overwritten)") from None
        except _TRANSIENT as err:
            raise TransientError(f"downloading gs://{bucket}/{name}: {err}") from err

    def signed_url(self, bucket: str, name: str, expires: timedelta) -> str:
        blob = self._client.bucket(bucket).blob(name)
        return str(blob.generate_signed_url(version="v4", expiration=expires, method="GET"))

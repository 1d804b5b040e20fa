"""Object storage behind a narrow interface, and its GCS adapter.

The same adapter talks to real GCS and to fake-gcs-server: the official client
switches endpoints itself when ``STORAGE_EMULATOR_HOST`` is set.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import google.auth
import google.auth.transport.requests
import google.cloud.storage as storage
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials, Signing

from parascribe.errors import BadAudioError, ConfigError, PermanentError, TransientError

log = logging.getLogger(__name__)

_TRANSIENT = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
)
# Client errors a write can meet that retrying may still cure: a missing bucket, a missing permission or
# an expired token (settings someone fixes), a timeout, a failed precondition (handled apart), throttling.
_RETRYABLE_WRITE_STATUSES = frozenset({401, 403, 404, 408, 412, 429})


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

    def delete(self, bucket: str, name: str) -> None:
        """Delete the object; deleting one that does not exist is not an error."""
        ...

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None: ...

    def signed_url(self, bucket: str, name: str, expires: timedelta, generation: str | None = None) -> str:
        """A V4 signed GET URL for the object (pinned to ``generation`` when given)."""
        ...


class GcsStore:
    """:class:`BlobStore` over ``google.cloud.storage``."""

    def __init__(self, client: storage.Client, emulator_host: str | None = None) -> None:
        self._client = client
        self._emulator = _endpoint(emulator_host) if emulator_host else None
        self._sign_lock = threading.Lock()
        self._credentials: google.auth.credentials.Credentials | None = None

    @classmethod
    def create(cls, project: str, emulator_host: str | None = None) -> GcsStore:
        """A store for ``project``; with ``emulator_host`` (fake-gcs-server), anonymous and local."""
        if emulator_host:
            client = storage.Client(project=project, credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": _endpoint(emulator_host)})
            return cls(client, emulator_host)
        return cls(storage.Client(project=project))

    @property
    def client(self) -> storage.Client:
        return self._client

    def _blob(self, bucket: str, name: str, generation: str | int | None = None) -> storage.Blob:
        try:
            gen = int(generation) if generation not in (None, "") else None
        except ValueError:
            raise PermanentError(f"gs://{bucket}/{name}: generation {generation!r} is not a number") from None
        return self._client.bucket(bucket).blob(name, generation=gen)

    def _missing(self, bucket: str, name: str) -> Exception:
        """The error for an object that is not there: gone (permanent), or its whole bucket missing (a setting)."""
        try:
            exists = self._client.lookup_bucket(bucket) is not None
        except _TRANSIENT as err:
            return TransientError(f"checking bucket {bucket}: {err}")
        if not exists:
            return _no_bucket(bucket)
        return BadAudioError(f"gs://{bucket}/{name} no longer exists (deleted or overwritten)")

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
            raise self._missing(bucket, name) from None
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
        except gexc.NotFound:
            raise _no_bucket(bucket) from None
        except _TRANSIENT as err:
            raise TransientError(f"writing gs://{bucket}/{name}: {err}") from err
        except gexc.ClientError as err:
            if err.code in _RETRYABLE_WRITE_STATUSES:
                raise
            # The request itself is wrong (a name past 1,024 bytes, say): retrying sends it again unchanged.
            raise PermanentError(f"GCS refused to write gs://{bucket}/{name}: {err.code} {err.message}") from err
        return int(blob.generation or 0)

    def list(self, bucket: str, prefix: str) -> list[str]:
        try:
            return [b.name for b in self._client.list_blobs(bucket, prefix=prefix)]
        except gexc.NotFound:
            raise _no_bucket(bucket) from None
        except _TRANSIENT as err:
            raise TransientError(f"listing gs://{bucket}/{prefix}: {err}") from err

    def delete(self, bucket: str, name: str) -> None:
        try:
            self._client.bucket(bucket).blob(name).delete()
        except gexc.NotFound:
            return
        except _TRANSIENT as err:
            raise TransientError(f"deleting gs://{bucket}/{name}: {err}") from err

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None:
        try:
            self._blob(bucket, name, generation).download_to_filename(str(dest))
        except gexc.NotFound:
            raise self._missing(bucket, name) from None
        except _TRANSIENT as err:
            raise TransientError(f"downloading gs://{bucket}/{name}: {err}") from err

    def signed_url(self, bucket: str, name: str, expires: timedelta, generation: str | None = None) -> str:
        """A V4 signed GET URL, the one signer of the package.

        - On the emulator: a throwaway key signs (fake-gcs-server accepts any V4
          signature) and the URL points at the emulator.
        - With a key (a service-account file): the key signs.
        - On Cloud Run the metadata server's credentials hold no key, so the IAM
          ``signBlob`` API signs with the account's own access token (the account
          needs ``roles/iam.serviceAccountTokenCreator`` on itself).
        """
        blob = self._client.bucket(bucket).blob(name)
        gen = int(generation) if generation else None
        if self._emulator is not None:
            return str(blob.generate_signed_url(
                version="v4", expiration=expires, method="GET", credentials=_local_signing_credentials(),
                api_access_endpoint=self._emulator, generation=gen,
            ))
        with self._sign_lock:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
            credentials = self._credentials
            if isinstance(credentials, Signing):
                return str(blob.generate_signed_url(
                    version="v4", expiration=expires, method="GET", credentials=credentials, generation=gen
                ))
            if not credentials.valid:
                credentials.refresh(google.auth.transport.requests.Request())
            token = credentials.token
        return str(blob.generate_signed_url(
            version="v4", expiration=expires, method="GET", generation=gen,
            service_account_email=getattr(credentials, "service_account_email", None), access_token=token,
        ))


def _no_bucket(bucket: str) -> ConfigError:
    return ConfigError(f"bucket {bucket} does not exist: check GCP_PROJECT and BUCKET_PREFIX "
                       "(and that the infrastructure is deployed)")


def _endpoint(emulator_host: str) -> str:
    return (emulator_host if "://" in emulator_host else f"http://{emulator_host}").rstrip("/")


@lru_cache(maxsize=1)
def _local_signing_credentials() -> Signing:
    """A throwaway service-account key for the emulator, made once per process."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "client_email": "parascribe-local@parascribe-local.iam.gserviceaccount.com",
        "private_key": pem,
        "private_key_id": "local",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    creds: Signing = service_account.Credentials.from_service_account_info(info)
    return creds

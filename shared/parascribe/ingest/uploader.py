"""Where ingested audio goes: a chunked resumable upload into the uploads bucket, created once.

The request records the worker keeps are :mod:`parascribe.requests_store`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from parascribe.errors import ConfigError, PermanentError, TransientError
from parascribe.gcp.storage import ObjectInfo

UPLOAD_CHUNK_BYTES = 8 << 20
"""Each PUT of the resumable upload: what the upload holds in memory at once (a multiple of 256 KiB)."""


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

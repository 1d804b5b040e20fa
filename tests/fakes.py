"""In-memory fakes that keep the real adapters' semantics (generations, preconditions)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

from parascribe.contracts import Contract
from parascribe.errors import BadAudioError
from parascribe.gcp.storage import Blob, ObjectInfo


class MemoryStore:
    """A :class:`parascribe.gcp.storage.BlobStore` in memory, with GCS generation preconditions.

    It behaves as :class:`parascribe.gcp.storage.GcsStore` does on an unversioned
    bucket, which ``tests/integration/test_blob_store_contract.py`` checks against
    fake-gcs-server: only the live generation of an object can be read, and a
    missing object (or a generation pin that no longer matches) is a
    :class:`parascribe.errors.BadAudioError` for ranged reads and downloads.
    """

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], tuple[bytes, int, str, dict[str, str]]] = {}
        self._gen = 0
        self._lock = threading.Lock()

    def read(self, bucket: str, name: str) -> Blob | None:
        obj = self._objects.get((bucket, name))
        return Blob(obj[0], obj[1]) if obj else None

    def _live(self, bucket: str, name: str, generation: str | int | None) -> bytes:
        """The object's bytes, as long as it exists (at ``generation``, when pinned)."""
        obj = self._objects.get((bucket, name))
        pin = int(generation) if generation not in (None, "") else None
        if obj is None or (pin is not None and obj[1] != pin):
            raise BadAudioError(f"gs://{bucket}/{name} no longer exists (deleted or overwritten)")
        return obj[0]

    def read_range(self, bucket: str, name: str, start: int, end: int, generation: str | None = None) -> bytes:
        if end <= start:
            return b""
        return self._live(bucket, name, generation)[start:end]

    def info(self, bucket: str, name: str) -> ObjectInfo | None:
        obj = self._objects.get((bucket, name))
        if obj is None:
            return None
        return ObjectInfo(name=name, size=len(obj[0]), generation=obj[1], content_type=obj[2], metadata=dict(obj[3]))

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str = "application/json",
        if_generation_match: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int | None:
        with self._lock:
            current = self._objects.get((bucket, name))
            if if_generation_match is not None:
                current_gen = current[1] if current else 0
                if current_gen != if_generation_match:
                    return None
            self._gen += 1
            self._objects[(bucket, name)] = (bytes(data), self._gen, content_type, dict(metadata or {}))
            return self._gen

    def list(self, bucket: str, prefix: str) -> list[str]:
        return sorted(n for (b, n) in self._objects if b == bucket and n.startswith(prefix))

    def delete(self, bucket: str, name: str) -> None:
        with self._lock:
            self._objects.pop((bucket, name), None)

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None:
        dest.write_bytes(self._live(bucket, name, generation))

    def signed_url(self, bucket: str, name: str, expires: timedelta, generation: str | None = None) -> str:
        """A URL shaped like a V4 signed URL (not fetchable: nothing serves ``fake-gcs.invalid``)."""
        query = {"X-Goog-Algorithm": "GOOG4-RSA-SHA256", "X-Goog-Expires": str(int(expires.total_seconds()))}
        if generation:
            query["generation"] = str(int(generation))
        query["X-Goog-Signature"] = "0" * 512
        return f"http://fake-gcs.invalid/{bucket}/{quote(name)}?{urlencode(query)}"


class RecordingPublisher:
    """A :class:`parascribe.gcp.pubsub.Publisher` that records what was published."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Contract, dict[str, str]]] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, message: Contract, attributes: dict[str, str] | None = None) -> str:
        with self._lock:
            self.messages.append((topic, message, dict(attributes or {})))
            return str(len(self.messages))

    def publish_many(self, outgoing: Sequence[tuple[str, Contract, dict[str, str] | None]]) -> list[str]:
        return [self.publish(topic, message, attributes) for topic, message, attributes in outgoing]

    def on(self, topic: str) -> list[Contract]:
        return [m for t, m, _ in self.messages if t == topic]


class RecordingExporter:
    """A :class:`parascribe.metrics.MetricsExporter` that keeps every record."""

    def __init__(self) -> None:
        self.records: list[tuple[str, float, dict[str, str]]] = []
        self._lock = threading.Lock()

    def record(self, metric: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self.records.append((metric, value, dict(labels or {})))

    def total(self, metric: str, **labels: str) -> float:
        return sum(v for m, v, lab in self.records if m == metric and all(lab.get(k) == x for k, x in labels.items()))

    def flush(self) -> None: ...

    def close(self) -> None: ...


class NoUploads:
    """The API's :class:`~parascribe.api.uploads.Uploads` where no upload has landed: ``find`` never finds one."""

    bucket = "uploads"

    def find(self, prefix: str) -> None:
        return None

"""A job's durable state in GCS, under ``jobs/<job_id>/`` in the state bucket.

- ``manifest.json``: written once by the router (``if_generation_match=0``).
- ``chunks/<index>.json``: one :class:`ChunkResult` each, written once.
- ``status.json``: :class:`JobStatus`, updated by compare-and-swap on generation.
- ``final.json``: the finalisation marker; whoever creates it owns the webhook.

Every write that must happen once uses a generation precondition, so duplicate
deliveries and racing processes are harmless.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from parascribe.contracts import ChunkResult, FinalOutcome, JobManifest, JobStatus, parse, utcnow
from parascribe.errors import TransientError
from parascribe.gcp.storage import BlobStore

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 20
_CAS_BACKOFF_S = 0.05
"""First backoff after a lost compare-and-swap; it doubles per attempt, with full jitter."""
_CAS_BACKOFF_CAP_S = 2.0
_MANIFESTS_CACHED = 512
"""Manifests kept in memory: written once, so a copy never goes stale; the merger reads one per chunk result."""


REDELIVERY_NOTE = "redelivery requested"
"""Starts a delivery's ``last_error`` when someone asked to send it again; the sweeper sends it on its next pass."""

OPEN_PREFIX = "open/"
"""``open/<job_id>`` marks a job in progress, so the sweeper lists only those, not every job ever run."""


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


class JobStore:
    """Reads and writes job state with GCS preconditions."""

    def __init__(self, store: BlobStore, bucket: str, *, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self._store = store
        self._bucket = bucket
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._manifests: OrderedDict[str, JobManifest] = OrderedDict()
        self._manifests_lock = threading.Lock()

    @property
    def bucket(self) -> str:
        return self._bucket

    def _path(self, job_id: str, leaf: str) -> str:
        return f"{job_prefix(job_id)}{leaf}"

    # --- manifest ---
    def create_manifest(self, manifest: JobManifest) -> bool:
        """Write the manifest once. False when it already existed (a redelivery)."""
        gen = self._store.write(
            self._bucket, self._path(manifest.job_id, "manifest.json"), manifest.to_bytes(), if_generation_match=0
        )
        return gen is not None

    def manifest(self, job_id: str) -> JobManifest | None:
        with self._manifests_lock:
            if job_id in self._manifests:
                self._manifests.move_to_end(job_id)
                return self._manifests[job_id].model_copy(deep=True)
        blob = self._store.read(self._bucket, self._path(job_id, "manifest.json"))
        if blob is None:
            return None
        manifest = parse(JobManifest, blob.data)
        with self._manifests_lock:
            self._manifests[job_id] = manifest.model_copy(deep=True)
            while len(self._manifests) > _MANIFESTS_CACHED:
                self._manifests.popitem(last=False)
        return manifest

    # --- chunk results ---
    def chunk_path(self, job_id: str, index: int) -> str:
        return self._path(job_id, f"chunks/{index:06d}.json")

    def put_chunk_result(self, result: ChunkResult) -> bool:
        """Store a chunk result once. False when that chunk was already stored."""
        gen = self._store.write(
            self._bucket, self.chunk_path(result.job_id, result.chunk_index), result.to_bytes(), if_generation_match=0
        )
        return gen is not None

    def chunk_result(self, job_id: str, index: int) -> ChunkResult | None:
        """The stored result of one chunk, or None while it has none."""
        blob = self._store.read(self._bucket, self.chunk_path(job_id, index))
        return parse(ChunkResult, blob.data) if blob else None

    def has_chunk_result(self, job_id: str, index: int) -> bool:
        return self._store.info(self._bucket, self.chunk_path(job_id, index)) is not None

    def chunk_indices(self, job_id: str) -> set[int]:
        names = self._store.list(self._bucket, self._path(job_id, "chunks/"))
        return {int(n.rsplit("/", 1)[1].split(".")[0]) for n in names if n.endswith(".json")}

    def chunk_results(self, job_id: str) -> list[ChunkResult]:
        out = []
        for name in sorted(self._store.list(self._bucket, self._path(job_id, "chunks/"))):
            blob = self._store.read(self._bucket, name)
            if blob is not None:
                out.append(parse(ChunkResult, blob.data))
        return sorted(out, key=lambda r: r.chunk_index)

    # --- status ---
    def status(self, job_id: str) -> JobStatus | None:
        blob = self._store.read(self._bucket, self._path(job_id, "status.json"))
        return parse(JobStatus, blob.data) if blob else None

    def update_status(
        self, job_id: str, change: Callable[[JobStatus | None], JobStatus | None]
    ) -> JobStatus | None:
        """Read-modify-write ``status.json`` under a generation precondition.

        ``change`` gets the current status (None if absent) and returns the new
        one, or None to leave it alone. A final status (done/failed) is never
        replaced by a non-final one, so late progress updates cannot undo it.

        A lost race backs off with full jitter (50 ms doubling to at most 2 s), so
        writers racing on one object spread out instead of retrying in lock step
        against GCS's limit of one write per second per object.
        """
        path = self._path(job_id, "status.json")
        for attempt in range(_CAS_ATTEMPTS):
            blob = self._store.read(self._bucket, path)
            current = parse(JobStatus, blob.data) if blob else None
            new = change(current.model_copy(deep=True) if current else None)
            if new is None:
                return current
            if current is not None and current.final and not new.final:
                return current
            new.updated_at = utcnow()
            gen = self._store.write(self._bucket, path, new.to_bytes(), if_generation_match=blob.generation if blob else 0)
            if gen is not None:
                return new
            self._sleep(self._rng.uniform(0.0, min(_CAS_BACKOFF_CAP_S, _CAS_BACKOFF_S * 2**attempt)))
        raise TransientError(f"status of {job_id} kept changing under us ({_CAS_ATTEMPTS} attempts)")

    # --- finalisation ---
    def claim_final(self, outcome: FinalOutcome) -> bool:
        """Create the final marker. True for exactly one caller per job."""
        path = self._path(outcome.job_id, "final.json")
        return self._store.write(self._bucket, path, outcome.to_bytes(), if_generation_match=0) is not None

    def final_outcome(self, job_id: str) -> FinalOutcome | None:
        """The claim on finishing the job, or None while nobody has claimed it."""
        blob = self._store.read(self._bucket, self._path(job_id, "final.json"))
        return parse(FinalOutcome, blob.data) if blob else None

    def is_final(self, job_id: str) -> bool:
        return self._store.info(self._bucket, self._path(job_id, "final.json")) is not None

    # --- the open-job index the sweeper walks ---
    def mark_open(self, job_id: str) -> None:
        """Record that the job is in progress (idempotent); the sweeper watches it until :meth:`close`."""
        self._store.write(self._bucket, f"{OPEN_PREFIX}{job_id}", utcnow().isoformat().encode(),
                          content_type="text/plain", if_generation_match=0)

    def close(self, job_id: str) -> None:
        """The job is finished: the sweeper stops watching it."""
        self._store.delete(self._bucket, f"{OPEN_PREFIX}{job_id}")

    def open_jobs(self) -> list[str]:
        """Ids of jobs started and not yet closed, oldest marker first by name order."""
        return [n[len(OPEN_PREFIX):] for n in self._store.list(self._bucket, OPEN_PREFIX)]

    def recent(self, limit: int = 20) -> list[JobStatus]:
        """Statuses of recent jobs, newest first."""
        names = [n for n in self._store.list(self._bucket, "jobs/") if n.endswith("/status.json")]
        statuses = []
        for name in names:
            blob = self._store.read(self._bucket, name)
            if blob is not None:
                statuses.append(parse(JobStatus, blob.data))
        statuses.sort(key=lambda s: s.created_at or datetime.min, reverse=True)
        return statuses[:limit]


class EndedJobs:
    """Whether a job has ended (done or failed), remembered once seen, for workers to skip its chunks cheaply.

    A worker asks before it decodes or pays for a chunk: a failed job's remaining chunks
    are acked without being transcribed. Only ended jobs are remembered (a state that
    cannot change back); an unreadable status counts as not ended, so a storage hiccup
    never drops work.
    """

    def __init__(self, jobs: JobStore, capacity: int = 10_000) -> None:
        self._jobs = jobs
        self._capacity = capacity
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def state(self, job_id: str) -> str | None:
        """``done`` or ``failed`` once the job has ended, else None."""
        with self._lock:
            if job_id in self._ended:
                self._ended.move_to_end(job_id)
                return self._ended[job_id]
        try:
            status = self._jobs.status(job_id)
        except Exception as err:  # the chunk is worth more than the saving: transcribe it
            log.warning("cannot read the status of %s, transcribing anyway: %s", job_id, err)
            return None
        if status is None or not status.final:
            return None
        with self._lock:
            self._ended[job_id] = status.state
            while len(self._ended) > self._capacity:
                self._ended.popitem(last=False)
        return status.state

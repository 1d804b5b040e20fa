"""JobStore's compare-and-swap on ``status.json``: lost races back off with jitter, and give up clearly."""

from __future__ import annotations

import random

import pytest

from parascribe.contracts import AudioInfo, JobManifest, JobStatus, PlannedChunk, SourceRef
from parascribe.errors import TransientError
from parascribe.gcp.storage import Blob
from parascribe.jobs import JobStore
from tests.fakes import MemoryStore


class RacingStore(MemoryStore):
    """Another writer changes ``status.json`` between our read and our write, ``losses`` times."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses = losses

    def write(self, bucket: str, name: str, data: bytes, content_type: str = "application/json",
              if_generation_match: int | None = None, metadata: dict[str, str] | None = None) -> int | None:
        if name.endswith("status.json") and if_generation_match is not None and self.losses > 0:
            self.losses -= 1
            super().write(bucket, name, data, content_type, None, metadata)  # the other writer wins
            return None
        return super().write(bucket, name, data, content_type, if_generation_match, metadata)


def test_lost_races_back_off_with_full_jitter_then_succeed() -> None:
    sleeps: list[float] = []
    jobs = JobStore(RacingStore(losses=6), "state", sleep=sleeps.append, rng=random.Random(3))
    status = jobs.update_status("j1", lambda cur: JobStatus(job_id="j1", state="transcribing", chunks_done=1))
    assert status is not None and status.chunks_done == 1
    assert len(sleeps) == 6
    caps = [min(2.0, 0.05 * 2**i) for i in range(6)]
    assert all(0.0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) == 6, "jittered, not a fixed schedule"


def test_a_status_that_never_settles_is_a_transient_error_after_bounded_waiting() -> None:
    sleeps: list[float] = []
    jobs = JobStore(RacingStore(losses=10**6), "state", sleep=sleeps.append, rng=random.Random(0))
    with pytest.raises(TransientError, match="kept changing under us"):
        jobs.update_status("j2", lambda cur: JobStatus(job_id="j2", state="transcribing"))
    assert len(sleeps) == 20 and sum(sleeps) <= sum(min(2.0, 0.05 * 2**i) for i in range(20))


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def read(self, bucket: str, name: str) -> Blob | None:
        self.reads.append(name)
        return super().read(bucket, name)


def _manifest(job_id: str) -> JobManifest:
    source = SourceRef(bucket="uploads", name="a.wav", generation="1", size=10)
    audio = AudioInfo(duration_s=30.0, sample_rate=16000, channels=1, codec="pcm_s16le", container="wav")
    chunk = PlannedChunk(index=0, start_s=0, end_s=30, core_start_s=0, core_end_s=30, path="gpu")
    return JobManifest(job_id=job_id, source=source, audio=audio, method="gpu", deadline_minutes=60, chunks=[chunk])


def test_a_manifest_is_read_from_the_bucket_once_then_served_from_memory_as_a_copy() -> None:
    store = CountingStore()
    jobs = JobStore(store, "state")
    assert jobs.manifest("j" + "0" * 20) is None
    assert jobs.create_manifest(_manifest("j" + "1" * 20))
    first = jobs.manifest("j" + "1" * 20)
    assert first is not None
    first.chunks.clear()  # a caller's change never reaches the cached copy
    second = jobs.manifest("j" + "1" * 20)
    assert second is not None and second.n_chunks == 1
    assert jobs.manifest("j" + "0" * 20) is None  # an absent manifest is not cached: it may be written next
    assert [n.rsplit("/", 2)[-2] for n in store.reads] == ["j" + "0" * 20, "j" + "1" * 20, "j" + "0" * 20]

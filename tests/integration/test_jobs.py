"""JobStore against fake-gcs-server: the preconditions that make every handler idempotent."""

from __future__ import annotations

import threading

import pytest

from parascribe.contracts import ChunkResult, FinalOutcome, JobStatus, Word, utcnow
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import JobStore
from parascribe.local.emulators import Emulators

pytestmark = pytest.mark.integration


@pytest.fixture
def jobs(emulators: Emulators, store: GcsStore) -> JobStore:
    return JobStore(store, emulators.isolated_settings().state_bucket)


def _result(index: int) -> ChunkResult:
    return ChunkResult(
        job_id="jtest", chunk_index=index, n_chunks=3, engine="offline", path="gpu",
        words=[Word(text="hi", start=index * 1.0, end=index * 1.0 + 0.5)], audio_seconds=1.0, processing_seconds=0.1,
    )


def test_chunk_results_are_stored_once(jobs: JobStore) -> None:
    assert jobs.put_chunk_result(_result(0)) is True
    assert jobs.put_chunk_result(_result(0)) is False
    assert jobs.put_chunk_result(_result(2)) is True
    assert jobs.chunk_indices("jtest") == {0, 2}
    assert [r.chunk_index for r in jobs.chunk_results("jtest")] == [0, 2]


def test_exactly_one_racer_claims_final(jobs: JobStore) -> None:
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def racer() -> None:
        barrier.wait()
        wins.append(jobs.claim_final(FinalOutcome(job_id="jrace", state="done", finished_at=utcnow(),
                                                  claimed_at=utcnow())))

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert jobs.is_final("jrace")


def test_status_updates_are_compare_and_swap(jobs: JobStore) -> None:
    jobs.update_status("jcas", lambda cur: JobStatus(job_id="jcas", state="transcribing", chunks_total=16))
    barrier = threading.Barrier(4)

    def bump() -> None:
        barrier.wait()
        for _ in range(4):
            def inc(cur: JobStatus | None) -> JobStatus:
                assert cur is not None
                cur.chunks_done += 1
                return cur

            jobs.update_status("jcas", inc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = jobs.status("jcas")
    assert status is not None and status.chunks_done == 16


def test_final_status_is_never_undone(jobs: JobStore) -> None:
    jobs.update_status("jfin", lambda cur: JobStatus(job_id="jfin", state="failed", reason="empty object"))
    after = jobs.update_status("jfin", lambda cur: JobStatus(job_id="jfin", state="transcribing", chunks_done=1))
    assert after is not None and after.state == "failed"
    stored = jobs.status("jfin")
    assert stored is not None and stored.state == "failed" and stored.reason == "empty object"

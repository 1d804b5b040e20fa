"""The budget ledger on fake-gcs-server: generation preconditions keep every concurrent update."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest

from parascribe.budget import Ledger, SpendEntry
from parascribe.gcp.storage import GcsStore

pytestmark = pytest.mark.integration


def test_concurrent_mergers_on_one_shard_all_count(store: GcsStore) -> None:
    bucket = f"budget-{uuid.uuid4().hex[:12]}"
    store.client.create_bucket(bucket)
    ledger = Ledger(store, bucket, shards=1)
    when = datetime(2026, 12, 5, tzinfo=UTC)

    def finish(worker: int) -> None:
        for i in range(5):
            ledger.record(SpendEntry(job_id=f"j{worker}-{i}", state="done", finished_at=when, cost_usd=0.5,
                                     cost_by_method={"gpu": 0.5}))

    threads = [threading.Thread(target=finish, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.record(SpendEntry(job_id="j0-0", state="done", finished_at=when, cost_usd=0.5)) is False
    total = ledger.month_total("2026-12")
    assert total.jobs == 20 and total.spent_usd == 10.0 and total.by_method == {"gpu": 10.0}
    assert [e.job_id for e in ledger.entries("2026-12")].count("j3-4") == 1

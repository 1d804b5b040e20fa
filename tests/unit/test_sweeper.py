"""The sweeper ends or resumes every job that nothing else would move on."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from parascribe import metric_names as mn
from parascribe.contracts import FinalOutcome, JobFailed, SourceRef, utcnow
from parascribe.merger.sweeper import WEBHOOK_GIVE_UP_S, WEBHOOK_RETRY_EVERY_S, Sweeper
from parascribe.merger.webhook import WebhookNotifier
from tests.unit.test_merger import Job, Rig
from tests.unit.test_webhook import Receiver, webhook_rig

GRACE_S = 600.0


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def rig_with_sweeper() -> tuple[Rig, Sweeper, Clock]:
    clock = Clock()
    rig = Rig(clock=clock)
    return rig, Sweeper(rig.merger, rig.jobs, grace_s=GRACE_S, clock=clock), clock


def test_a_job_past_its_deadline_and_grace_fails_naming_the_missing_chunks() -> None:
    rig, sweeper, clock = rig_with_sweeper()
    job = Job(rig.jobs, n_chunks=3)  # deadline 60 min, created 42 s ago
    rig.jobs.mark_open(job.job_id)
    rig.push(job.results[1])
    assert sweeper.sweep().failed == 0, "inside its deadline: left alone"
    clock.now += timedelta(minutes=60) + timedelta(seconds=GRACE_S)
    report = sweeper.sweep()
    assert (report.checked, report.failed) == (1, 1)
    status = rig.status(job.job_id)
    assert status.state == "failed" and status.reason is not None
    assert status.reason.startswith("the job did not finish within 70 min")
    assert "1 of 3 chunks were transcribed; chunk(s) 1, 3 never came back" in status.reason
    assert rig.exporter.total(mn.JOBS, status="failed") == 1
    assert rig.jobs.open_jobs() == [], "a finished job leaves the index"
    assert sweeper.sweep().checked == 0


def test_a_stale_claim_is_completed_without_any_further_message() -> None:
    rig, sweeper, clock = rig_with_sweeper()
    job = Job(rig.jobs, n_chunks=1)
    rig.jobs.mark_open(job.job_id)
    rig.jobs.put_chunk_result(job.results[0])
    claimed = FinalOutcome(job_id=job.job_id, state="done", outputs={"json": "gs://transcripts/x.json"},
                           engines=["parakeet"], source=job.source, finished_at=clock.now, claimed_at=clock.now)
    assert rig.jobs.claim_final(claimed)  # ... and then its merger was killed
    assert sweeper.sweep().resumed == 0, "a fresh claim's owner may still be at work"
    clock.now += timedelta(minutes=5)
    assert sweeper.sweep().resumed == 1
    status = rig.status(job.job_id)
    assert status.state == "done" and status.outputs == {"json": "gs://transcripts/x.json"}
    assert rig.exporter.total(mn.JOBS, status="done") == 1 and rig.jobs.open_jobs() == []


def test_every_chunk_stored_but_never_finalised_is_finalised() -> None:
    rig, sweeper, _ = rig_with_sweeper()
    job = Job(rig.jobs, n_chunks=2)
    rig.jobs.mark_open(job.job_id)
    for r in job.results:
        assert rig.jobs.put_chunk_result(r)  # stored by mergers that died before finalising
    assert sweeper.sweep().finalised == 1
    assert rig.status(job.job_id).state == "done" and rig.exporter.total(mn.JOBS, status="done") == 1


def test_sweeping_refreshes_throttled_progress_and_repeats_harmlessly() -> None:
    rig, sweeper, _ = rig_with_sweeper()
    job = Job(rig.jobs, n_chunks=4)
    rig.jobs.mark_open(job.job_id)
    for r in job.results[:3]:
        rig.jobs.put_chunk_result(r)
    sweeper.sweep()
    assert rig.status(job.job_id).progress == "transcribing 3/4"
    for _ in range(3):
        report = sweeper.sweep()
        assert (report.failed, report.finalised, report.resumed, report.errors) == (0, 0, 0, 0)
    rig.push(job.results[3])
    assert rig.status(job.job_id).state == "done" and rig.exporter.total(mn.JOBS) == 1
    assert rig.jobs.open_jobs() == []


def test_a_webhook_that_failed_is_sent_again_once_the_receiver_is_back() -> None:
    receiver = Receiver(script=[503, 503])
    try:
        rig = webhook_rig(receiver.url, attempts=2)
        clock = Clock()
        sweeper = Sweeper(rig.merger, rig.jobs, grace_s=GRACE_S, clock=clock)
        job = Job(rig.jobs, n_chunks=1)
        rig.jobs.mark_open(job.job_id)
        rig.push(job.results[0])
        assert rig.status(job.job_id).webhook.state == "webhook_failed"
        assert rig.jobs.open_jobs() == [job.job_id], "kept open so the webhook is sent again"
        assert sweeper.sweep().webhooks_resent == 0, "not before WEBHOOK_RETRY_EVERY_S"
        clock.now += timedelta(seconds=WEBHOOK_RETRY_EVERY_S + 1)
        assert sweeper.sweep().webhooks_resent == 1
    finally:
        receiver.close()
    status = rig.status(job.job_id)
    assert status.webhook.state == "delivered" and len(receiver.requests) == 3
    assert rig.jobs.open_jobs() == [] and rig.exporter.total(mn.JOBS) == 1


def test_a_webhook_is_given_up_a_day_after_the_job_ended() -> None:
    receiver = Receiver(script=[503] * 10)
    try:
        rig = webhook_rig(receiver.url, attempts=1)
        clock = Clock()
        sweeper = Sweeper(rig.merger, rig.jobs, grace_s=GRACE_S, clock=clock)
        job = Job(rig.jobs, n_chunks=1)
        rig.jobs.mark_open(job.job_id)
        rig.push(job.results[0])
        clock.now += timedelta(seconds=WEBHOOK_GIVE_UP_S + 1)
        report = sweeper.sweep()
    finally:
        receiver.close()
    assert (report.closed, report.webhooks_resent) == (1, 0) and rig.jobs.open_jobs() == []
    assert rig.status(job.job_id).webhook.state == "webhook_failed" and len(receiver.requests) == 1


def test_the_webhook_of_a_job_the_router_rejected_is_sent_again_too() -> None:
    receiver = Receiver(script=[503])
    try:
        rig = webhook_rig(receiver.url, attempts=1)
        clock = Clock()
        sweeper = Sweeper(rig.merger, rig.jobs, grace_s=GRACE_S, webhook_resend_s=60, clock=clock)
        source = SourceRef(bucket="uploads", name="empty.wav", generation="9", size=0)
        rig.push(JobFailed(job_id=source.job_id, reason="the uploaded object is empty", source=source))
        assert rig.jobs.open_jobs() == [source.job_id]
        clock.now += timedelta(seconds=61)
        assert sweeper.sweep().webhooks_resent == 1
    finally:
        receiver.close()
    assert rig.status(source.job_id).webhook.state == "delivered" and rig.jobs.open_jobs() == []


def test_a_rejected_job_whose_merger_died_while_notifying_is_finished_by_the_sweeper() -> None:
    clock = Clock()
    rig = Rig(clock=clock)
    sweeper = Sweeper(rig.merger, rig.jobs, grace_s=GRACE_S, clock=clock)
    source = SourceRef(bucket="uploads", name="photo.wav", generation="4", size=9)

    def die(status: object) -> None:
        raise SystemExit("killed while sending the webhook")

    rig.notifier.notify = die  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        rig.push(JobFailed(job_id=source.job_id, reason="the file has no audio stream", source=source))
    assert rig.jobs.open_jobs() == [source.job_id], "indexed before the claim, so it cannot be forgotten"
    rig.notifier.notify = WebhookNotifier.notify.__get__(rig.notifier)  # type: ignore[method-assign]
    clock.now += timedelta(minutes=5)
    assert sweeper.sweep().resumed == 1
    assert rig.status(source.job_id).webhook.state == "disabled" and rig.jobs.open_jobs() == []

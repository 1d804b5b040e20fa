"""Per-job callbacks: the upload's ``callback_url`` gets the Convex webhook's body, signed, with the same retries.

Receivers are real HTTP servers on loopback; signatures are checked with the
``standardwebhooks`` library, a client we did not write.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from standardwebhooks.webhooks import Webhook

from parascribe.contracts import JobManifest, JobStatus, Origin
from parascribe.merger.service import is_finished
from parascribe.merger.sweeper import Sweeper
from parascribe.merger.webhook import WebhookNotifier, WebhookOptions
from parascribe.router.events import _origin
from tests.unit.test_merger import SECRET, Job, Rig, make_settings
from tests.unit.test_webhook import Receiver

CALLBACK_SECRET = "whsec_" + base64.b64encode(b"callback-secret-for-one-customer-42").decode()


@pytest.fixture
def convex() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def callback() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def rig_for(convex_url: str | None, **settings: object) -> Rig:
    values: dict[str, object] = {"convex_webhook_url": convex_url, "convex_webhook_secret": SECRET if convex_url else None,
                                 "url_allow_loopback": True, "webhook_timeout_seconds": 2}
    rig = Rig(make_settings(**{**values, **settings}))
    rig.notifier = WebhookNotifier(WebhookOptions.from_settings(rig.settings), rig.jobs, rig.exporter,
                                   sleep=lambda s: None)
    rig.merger._notifier = rig.notifier
    return rig


def job_with_callback(rig: Rig, url: str, name: str = "talk.wav") -> Job:
    """A routed job whose upload asked for a callback (the manifest and queued status carry the origin)."""
    job = Job(rig.jobs, n_chunks=2, name=name)
    origin = Origin(request_id="r" + "ab" * 10, source_url="https://example.com/vod.mp4", title="VOD",
                    callback_url=url)
    manifest = job.manifest.model_copy(update={"origin": origin})
    rig.store.write(rig.settings.state_bucket, f"jobs/{job.job_id}/manifest.json", manifest.to_bytes())
    rig.jobs._manifests.clear()  # the fixture rewrote a manifest the store had cached (never happens in the product)
    rig.jobs.update_status(job.job_id, lambda s: s.model_copy(update={"origin": origin}) if s else None)
    job.manifest = JobManifest.model_validate(manifest.model_dump())
    return job


def test_a_job_with_a_callback_url_sends_the_webhook_body_to_it_signed_with_the_callback_secret(
        convex: Receiver, callback: Receiver) -> None:
    rig = rig_for(convex.url, callback_webhook_secret=CALLBACK_SECRET)
    job = job_with_callback(rig, callback.url)
    for r in job.results:
        rig.push(r)
    status = rig.status(job.job_id)
    assert status.state == "done" and status.webhook.state == "delivered"
    assert status.callback is not None and status.callback.state == "delivered" and status.callback.attempts == 1
    assert status.origin.request_id == "r" + "ab" * 10 and status.origin.title == "VOD"
    [(convex_headers, convex_body)] = convex.requests
    [(headers, body)] = callback.requests
    assert body == convex_body, "the callback is the Convex webhook's body"
    assert headers["webhook-id"] == convex_headers["webhook-id"] == job.job_id, "stable ids for deduplication"
    payload = Webhook(CALLBACK_SECRET).verify(body, headers)
    assert payload["job_id"] == job.job_id and payload["status"] == "done"
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(body, headers)  # signed with the callback secret, not Convex's
    assert is_finished(status) and job.job_id not in rig.jobs.open_jobs()


def test_without_a_callback_secret_the_convex_secret_signs_callbacks(callback: Receiver) -> None:
    rig = rig_for(None, convex_webhook_secret=SECRET)
    job = job_with_callback(rig, callback.url)
    for r in job.results:
        rig.push(r)
    status = rig.status(job.job_id)
    assert status.webhook.state == "disabled"
    assert status.callback is not None and status.callback.state == "delivered"
    [(headers, body)] = callback.requests
    assert Webhook(SECRET).verify(body, headers)["job_id"] == job.job_id


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.0.0.7/hook",
                                 "http://[::ffff:192.168.1.2]/hook", "http://metadata.google.internal/x"])
def test_a_callback_to_a_private_or_metadata_address_is_never_sent_and_the_job_still_ends(
        convex: Receiver, url: str) -> None:
    rig = rig_for(convex.url, callback_webhook_secret=CALLBACK_SECRET)
    job = job_with_callback(rig, url)
    for r in job.results:
        rig.push(r)
    status = rig.status(job.job_id)
    assert status.state == "done" and status.webhook.state == "delivered"
    assert status.callback is not None and status.callback.state == "disabled" and status.callback.attempts == 0
    assert status.callback.last_error and status.callback.last_error.startswith("not sent:")
    assert len(convex.requests) == 1
    assert job.job_id not in rig.jobs.open_jobs(), "a refused callback is not retried forever"


def test_a_failed_callback_is_sent_again_by_the_sweeper_without_repeating_the_delivered_webhook(
        convex: Receiver) -> None:
    down = Receiver(script=[503] * 10)
    try:
        rig = rig_for(convex.url, callback_webhook_secret=CALLBACK_SECRET, webhook_max_attempts=2)
        job = job_with_callback(rig, down.url)
        for r in job.results:
            rig.push(r)
        status = rig.status(job.job_id)
        assert status.webhook.state == "delivered"
        assert status.callback is not None and status.callback.state == "webhook_failed"
        assert status.callback.attempts == 2 and "503" in (status.callback.last_error or "")
        assert job.job_id in rig.jobs.open_jobs(), "the sweeper keeps watching a job whose callback failed"
        down.script.clear()  # the receiver is back
        later = status.updated_at + timedelta(minutes=10)
        Sweeper(rig.merger, rig.jobs, grace_s=60, webhook_resend_s=60, clock=lambda: later).sweep()
        status = rig.status(job.job_id)
        assert status.callback is not None and status.callback.state == "delivered"
        assert len(convex.requests) == 1, "the delivered Convex webhook is not sent again"
        assert len(down.requests) == 3
        assert job.job_id not in rig.jobs.open_jobs()
    finally:
        down.close()


def test_the_router_reads_the_origin_from_the_upload_metadata_and_refuses_a_bad_callback() -> None:
    problems: list[str] = []
    origin = _origin({"parascribe-request-id": "r" + "0f" * 10, "parascribe-title": "Stream 42",
                      "parascribe-source-url": "https://www.twitch.tv/videos/1",
                      "parascribe-callback-url": "https://hooks.example.com/p"}, problems)
    assert origin == Origin(request_id="r" + "0f" * 10, title="Stream 42", source_url="https://www.twitch.tv/videos/1",
                            callback_url="https://hooks.example.com/p")
    assert problems == []
    bad = _origin({"parascribe-callback-url": "file:///etc/passwd", "parascribe-request-id": "not-an-id"}, problems)
    assert bad.callback_url is None and bad.request_id is None
    assert problems == ["parascribe-callback-url 'file:///etc/passwd' is not an http(s) URL of at most 2048 characters"]


def test_a_status_with_a_callback_pending_is_not_finished() -> None:
    status = JobStatus(job_id="j" + "1" * 20, state="done", origin=Origin(callback_url="https://x.example/h"))
    status.webhook.state = "delivered"
    assert not is_finished(status)
    status.callback = status.webhook.model_copy()
    assert is_finished(status)
    assert json.loads(status.model_dump_json())["origin"]["callback_url"] == "https://x.example/h"


def test_a_redelivery_request_is_sent_on_the_next_sweep_without_waiting_for_the_resend_interval(
        convex: Receiver) -> None:
    from parascribe.api.job_detail import request_redelivery

    rig = rig_for(convex.url)
    job = Job(rig.jobs, n_chunks=1)
    for r in job.results:
        rig.push(r)
    assert rig.status(job.job_id).webhook.state == "delivered" and len(convex.requests) == 1
    request_redelivery(rig.jobs, job.job_id)
    assert job.job_id in rig.jobs.open_jobs()
    now = rig.status(job.job_id).updated_at + timedelta(seconds=1)
    Sweeper(rig.merger, rig.jobs, grace_s=60, webhook_resend_s=300, clock=lambda: now).sweep()
    status = rig.status(job.job_id)
    assert status.webhook.state == "delivered" and len(convex.requests) == 2
    assert convex.requests[1][0]["webhook-id"] == job.job_id
    assert job.job_id not in rig.jobs.open_jobs()

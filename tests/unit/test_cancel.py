"""Cancelling a job through the API: wherever the job is, it ends ``failed`` once, with the reason, and no
chunk goes out after the cancel; a job that has ended is left alone with a 409."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from parascribe import names
from parascribe.api.app import build
from parascribe.api.auth import hash_api_key
from parascribe.contracts import AudioInfo, ChunkTask, JobFailed, JobManifest, JobStatus, PlannedChunk, SourceRef
from parascribe.contracts_api import ApiRequest
from parascribe.jobs import JobStore
from parascribe.requests_store import CANCELLED_REASON, RequestStore
from tests.fakes import MemoryStore, NoUploads, RecordingPublisher
from tests.unit.test_router import Stack, pubsub_event, wav

KEY = "psk_cancel-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
RID = "r" + "1" * 20


class World:
    def __init__(self) -> None:
        from parascribe.config import load_settings

        self.settings = load_settings(api_key_hashes=hash_api_key(KEY))
        self.store = MemoryStore()
        self.publisher = RecordingPublisher()
        self.jobs = JobStore(self.store, self.settings.state_bucket)
        self.requests = RequestStore(self.store, self.settings.state_bucket)
        self.app = build(self.settings, store=self.store, publisher=self.publisher,
                         uploads=NoUploads())  # type: ignore[arg-type]

    def job(self, state: str, request_id: str | None = RID) -> str:
        source = SourceRef(bucket="uploads", name=f"api/{request_id}/talk.wav", generation="5", size=1000)
        audio = AudioInfo(duration_s=1200.0, sample_rate=16000, channels=1, codec="pcm_s16le", container="wav")
        chunks = [PlannedChunk(index=i, start_s=600.0 * i, end_s=600.0 * (i + 1), core_start_s=600.0 * i,
                               core_end_s=600.0 * (i + 1), path="gpu") for i in range(2)]
        self.jobs.create_manifest(JobManifest(job_id=source.job_id, source=source, audio=audio, method="auto",
                                              deadline_minutes=60, chunks=chunks))
        self.jobs.update_status(source.job_id, lambda _: JobStatus(job_id=source.job_id, state=state,  # type: ignore[arg-type]
                                                                   source=source, chunks_total=2,
                                                                   reason="boom" if state == "failed" else None))
        if request_id:
            self.requests.create(ApiRequest(request_id=request_id, state="submitted", job_id=source.job_id))
        return source.job_id

    def failures(self) -> list[JobFailed]:
        return [m for t, m, _ in self.publisher.messages if isinstance(m, JobFailed) and t == names.TOPIC_ASR_RESULTS]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(world.app) as c:
        yield c


@pytest.mark.parametrize("by", ["request id", "job id"])
def test_a_running_job_is_failed_through_the_merger_with_the_reason(world: World, client: TestClient, by: str) -> None:
    job_id = world.job("transcribing")
    resp = client.post(f"/v1/jobs/{RID if by == 'request id' else job_id}/cancel", headers=AUTH)
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    assert (body["job_id"], body["request_id"], body["cancelled"]) == (job_id, RID, True)
    [failed] = world.failures()
    assert (failed.job_id, failed.reason) == (job_id, CANCELLED_REASON) and failed.source is not None
    record = world.requests.get(RID)
    assert record is not None and record.cancelled_at is not None
    assert (record.state, record.job_id) == ("submitted", job_id), "a recorded job keeps its state: its status rules"


@pytest.mark.parametrize("state", ["done", "failed"])
def test_an_ended_job_is_left_alone_with_409(world: World, client: TestClient, state: str) -> None:
    job_id = world.job(state)
    resp = client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert resp.status_code == 409 and f"has already ended: {state}" in resp.json()["detail"]
    assert world.failures() == [] and world.requests.get(RID).cancelled_at is None  # type: ignore[union-attr]


def test_a_request_still_being_fetched_is_failed_at_once_and_publishes_nothing(world: World,
                                                                                client: TestClient) -> None:
    world.requests.create(ApiRequest(request_id=RID, state="ingesting", url="https://a.example/v.mp4"))
    resp = client.post(f"/v1/jobs/{RID}/cancel", headers=AUTH)
    assert resp.status_code == 202 and "if its upload still lands" in resp.json()["note"]
    record = world.requests.get(RID)
    assert record is not None and (record.state, record.reason) == ("failed", CANCELLED_REASON)
    assert world.failures() == []
    again = client.post(f"/v1/jobs/{RID}/cancel", headers=AUTH)
    assert again.status_code == 202, "cancelling twice is harmless"
    status = client.get(f"/v1/jobs/{RID}", headers=AUTH).json()
    assert (status["state"], status["reason"]) == ("failed", CANCELLED_REASON)


def test_a_request_that_failed_on_its_own_is_409_and_unknown_ids_404(world: World, client: TestClient) -> None:
    world.requests.create(ApiRequest(request_id=RID, state="failed", reason="the URL is not media"))
    assert client.post(f"/v1/jobs/{RID}/cancel", headers=AUTH).status_code == 409
    assert client.post(f"/v1/jobs/r{'2' * 20}/cancel", headers=AUTH).status_code == 404
    assert client.post(f"/v1/jobs/j{'2' * 20}/cancel", headers=AUTH).status_code == 404
    assert client.post(f"/v1/jobs/{RID}/cancel").status_code == 401


# --- the router sees a cancel that came before its upload, or while it routed ---

def _cancelled_request(stack: Stack, rid: str) -> None:
    requests = RequestStore(stack.store, stack.settings.state_bucket)
    requests.create(ApiRequest(request_id=rid, state="accepted"))
    requests.cancel(rid)


def test_an_upload_whose_request_was_cancelled_fails_without_a_task() -> None:
    stack = Stack(chunk_duration_minutes=0.25)
    _cancelled_request(stack, RID)
    stack.router.handle_event(pubsub_event(stack.upload("talk.wav", wav(40.0), {"parascribe-request-id": RID})))
    [(failed, _)] = stack.failures()
    assert failed.reason == CANCELLED_REASON and stack.tasks() == []
    status = stack.jobs.status(failed.job_id)
    assert status is not None and (status.state, status.reason) == ("failed", CANCELLED_REASON)


def test_a_cancel_while_the_router_plans_sends_no_task() -> None:
    """The API's cancel lands just after the router wrote the job's status: one of the two fails the job."""
    from parascribe.api.cancel import cancel_job
    from parascribe.api.views import JobsView

    stack = Stack(chunk_duration_minutes=0.25)
    requests = RequestStore(stack.store, stack.settings.state_bucket)
    requests.create(ApiRequest(request_id=RID, state="accepted"))
    api_publisher = RecordingPublisher()
    view = JobsView(requests, stack.jobs, NoUploads())  # type: ignore[arg-type]
    real = stack.jobs.update_status
    answers: list[dict[str, Any]] = []

    def update_then_cancel(job_id: str, change: Any) -> Any:
        out = real(job_id, change)
        if not answers:  # the router's first write: the job is queued; the user cancels now
            requests.update(RID, lambda r: r.model_copy(update={"job_id": job_id, "state": "submitted"}))
            answers.append(cancel_job(RID, view, requests, stack.jobs, api_publisher))
        return out

    stack.jobs.update_status = update_then_cancel  # type: ignore[method-assign]
    stack.router.handle_event(pubsub_event(stack.upload("talk.wav", wav(40.0), {"parascribe-request-id": RID})))
    assert stack.tasks() == [], "no chunk went out after the cancel"
    [(failed, _)] = stack.failures()
    assert failed.reason == CANCELLED_REASON
    api_failures = [m for _, m, _ in api_publisher.messages if isinstance(m, JobFailed)]
    assert [f.job_id for f in api_failures] == [failed.job_id], "the API saw the status and failed the job too"


def test_a_drop_without_a_cancel_routes_as_before() -> None:
    stack = Stack(chunk_duration_minutes=0.25)
    stack.router.handle_event(pubsub_event(stack.upload("talk.wav", wav(40.0))))
    assert stack.failures() == [] and all(isinstance(t, ChunkTask) for _, t, _ in stack.tasks())
    assert len(stack.tasks()) == 3

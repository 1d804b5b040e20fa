"""Ingest requests on the dead-letter topic fail their API request record, once, with a reason a person can act on."""

from __future__ import annotations

import pytest

from parascribe import names
from parascribe.contracts_api import ApiRequest, IngestRequest
from parascribe.merger.dead_letter import DLQ_COUNT_ATTR, DLQ_SUBSCRIPTION_ATTR
from parascribe.requests_store import new_request_id
from tests.unit.test_merger import Rig

FROM_INGEST = {DLQ_SUBSCRIPTION_ATTR: names.subscription_path("test", names.SUB_INGEST), DLQ_COUNT_ATTR: "5"}


def _request() -> IngestRequest:
    return IngestRequest(request_id=new_request_id(), url="https://example.com/talk.mp4", method="deepgram",
                         deadline_minutes=15)


def _record(rig: Rig, request: IngestRequest, **fields: object) -> None:
    assert rig.requests.create(ApiRequest(request_id=request.request_id, url=request.url,
                                          method=request.method).model_copy(update=fields))


def test_a_dead_lettered_ingest_request_fails_its_record_with_an_actionable_reason() -> None:
    rig = Rig()
    request = _request()
    _record(rig, request, state="ingesting")
    rig.dead(request.to_bytes(), **FROM_INGEST)
    record = rig.requests.get(request.request_id)
    assert record is not None and record.state == "failed"
    assert record.reason == ("the ingest worker gave up on this URL after 5 attempts; "
                             "check the ingest worker's logs, then submit it again")
    assert (record.url, record.method) == (request.url, "deepgram")
    assert rig.publisher.messages == [], "nothing is sent on: it is not a chunk task"


@pytest.mark.parametrize("final", [
    {"state": "submitted", "job_id": "j" + "0" * 20, "upload_uri": "gs://uploads/ingest/x/talk.m4a"},
    {"state": "failed", "reason": "the URL answered 404 Not Found"},
])
def test_a_final_record_is_left_as_it_is(final: dict[str, object]) -> None:
    rig = Rig()
    request = _request()
    _record(rig, request, **final)
    before = rig.requests.get(request.request_id)
    rig.dead(request.to_bytes(), **FROM_INGEST)
    assert rig.requests.get(request.request_id) == before


def test_recognised_by_its_body_without_the_subscription_attribute_and_recorded_when_missing() -> None:
    rig = Rig()
    request = _request()
    rig.dead(request.to_bytes(), request_id=request.request_id)  # the API's own attribute, kept by Pub/Sub
    record = rig.requests.get(request.request_id)
    assert record is not None and record.state == "failed" and record.url == request.url
    assert "after several attempts" in (record.reason or "")


def test_an_unreadable_body_that_names_its_request_still_fails_it() -> None:
    rig = Rig()
    rid = new_request_id()
    rig.dead(b'{"request_id": "%s", "url": 7}' % rid.encode(), **FROM_INGEST)
    record = rig.requests.get(rid)
    assert record is not None and record.state == "failed" and "gave up" in (record.reason or "")


def test_an_unreadable_body_without_a_request_id_is_dropped() -> None:
    rig = Rig()
    rig.dead(b"not json", **FROM_INGEST)
    assert rig.store.list(rig.settings.state_bucket, "requests/") == []

"""The one request-record store: what a late writer cannot undo, whichever service writes."""

from __future__ import annotations

from parascribe.contracts_api import ApiRequest
from parascribe.requests_store import RequestStore, new_request_id, record_name
from tests.fakes import MemoryStore

BUCKET = "state"
JOB = "j" + "1" * 20


def _store() -> tuple[RequestStore, str]:
    requests = RequestStore(MemoryStore(), BUCKET, sleep=lambda s: None)
    rid = new_request_id()
    assert requests.create(ApiRequest(request_id=rid, url="https://example.com/a.mp3"))
    return requests, rid


def test_set_fields_creates_the_record_from_the_seed_when_the_api_has_not_written_it() -> None:
    requests = RequestStore(MemoryStore(), BUCKET, sleep=lambda s: None)
    seed = ApiRequest(request_id=new_request_id(), url="https://example.com/a.mp3")
    stored = requests.set_fields(seed, state="ingesting")
    assert stored.state == "ingesting" and requests.get(seed.request_id) == stored
    assert requests.update(new_request_id(), lambda r: r) is None, "without a seed a missing record stays missing"


def test_a_final_state_is_never_taken_back() -> None:
    requests, rid = _store()
    requests.set_fields(ApiRequest(request_id=rid), state="submitted", job_id=JOB)
    again = requests.set_fields(ApiRequest(request_id=rid), state="ingesting", reason=None)
    assert (again.state, again.job_id) == ("submitted", JOB)
    assert requests.fail(rid, "late failure").state == "submitted"  # type: ignore[union-attr]
    assert requests.update(rid, lambda r: r.model_copy(update={"job_id": None})).job_id == JOB  # type: ignore[union-attr]


def test_failed_stays_failed_unless_the_upload_landed_after_all() -> None:
    requests, rid = _store()
    requests.fail(rid, "the ingest worker gave up")
    assert requests.set_fields(ApiRequest(request_id=rid), state="ingesting").state == "failed"
    assert requests.update(rid, lambda r: r.model_copy(update={"state": "accepted"})).state == "failed"  # type: ignore[union-attr]
    assert requests.fail(rid, "second", unless_final=True).reason == "the ingest worker gave up"  # type: ignore[union-attr]
    landed = requests.set_fields(ApiRequest(request_id=rid), state="submitted", reason=None, job_id=JOB)
    assert (landed.state, landed.job_id) == ("submitted", JOB)


def test_a_lost_race_is_retried_on_the_new_generation() -> None:
    store = MemoryStore()
    requests = RequestStore(store, BUCKET, sleep=lambda s: None)
    rid = new_request_id()
    requests.create(ApiRequest(request_id=rid))
    raced = []

    def change(current: ApiRequest) -> ApiRequest:
        if not raced:  # another writer lands between our read and our write
            raced.append(1)
            blob = store.read(BUCKET, record_name(rid))
            assert blob is not None
            store.write(BUCKET, record_name(rid), current.model_copy(update={"title": "theirs"}).to_bytes(),
                        if_generation_match=blob.generation)
        return current.model_copy(update={"state": "ingesting"})

    stored = requests.update(rid, change)
    assert stored is not None and (stored.state, stored.title) == ("ingesting", "theirs")

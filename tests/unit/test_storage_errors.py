"""GcsStore.write maps what GCS says: a rejected write is permanent, with a reason; throttling and outages are not."""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions as gexc

from parascribe.errors import PermanentError, TransientError, is_transient
from parascribe.gcp.storage import GcsStore


class FakeBlob:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.generation: int | None = None
        self.metadata: dict[str, str] | None = None

    def upload_from_string(self, data: bytes, content_type: str, if_generation_match: int | None) -> None:
        if self.error is not None:
            raise self.error
        self.generation = 7


class FakeClient:
    """Just enough of ``storage.Client`` for ``GcsStore.write``."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def bucket(self, name: str) -> Any:
        client = self

        class Bucket:
            def blob(self, blob_name: str, generation: int | None = None) -> FakeBlob:
                return FakeBlob(client.error)

        return Bucket()


def store(error: Exception | None) -> GcsStore:
    return GcsStore(FakeClient(error))  # type: ignore[arg-type]


NAME = "talk/j1/talk.json"


@pytest.mark.parametrize("error", [
    gexc.BadRequest("The specified object name is not valid: name too long"),
    gexc.RequestRangeNotSatisfiable("bad range"),
    gexc.Conflict("conflict"),
    gexc.LengthRequired("length required"),
])
def test_a_write_gcs_rejects_is_permanent_and_names_the_object(error: Exception) -> None:
    with pytest.raises(PermanentError) as err:
        store(error).write("transcripts", NAME, b"{}")
    assert not is_transient(err.value)
    assert f"gs://transcripts/{NAME}" in err.value.reason
    assert str(error.code) in err.value.reason and error.message in err.value.reason  # type: ignore[attr-defined]


@pytest.mark.parametrize("error", [
    gexc.TooManyRequests("slow down"),
    gexc.ServiceUnavailable("try later"),
    gexc.InternalServerError("oops"),
])
def test_throttling_and_outages_stay_transient(error: Exception) -> None:
    with pytest.raises(TransientError):
        store(error).write("transcripts", NAME, b"{}")


@pytest.mark.parametrize("error", [
    gexc.NotFound("no such bucket"),  # a missing bucket is a setting someone fixes
    gexc.Forbidden("no storage.objects.create"),  # so is a missing permission
    gexc.Unauthorized("token expired"),
    gexc.from_http_status(408, "timed out"),
])
def test_missing_buckets_permissions_and_timeouts_are_not_permanent(error: Exception) -> None:
    with pytest.raises(Exception) as err:
        store(error).write("transcripts", NAME, b"{}")
    assert is_transient(err.value)


def test_a_failed_precondition_is_none_and_a_write_its_generation() -> None:
    assert store(gexc.PreconditionFailed("exists")).write("transcripts", NAME, b"{}", if_generation_match=0) is None
    assert store(None).write("transcripts", NAME, b"{}") == 7

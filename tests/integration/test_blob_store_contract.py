"""One contract for :class:`parascribe.gcp.storage.BlobStore`, run against the in-memory fake and the real adapter.

Every test runs twice: on :class:`tests.fakes.MemoryStore` (fast, no marker) and on
:class:`parascribe.gcp.storage.GcsStore` over fake-gcs-server (marked ``integration``).
What the real adapter does is the contract; the fake must never drift from it, since
the unit tests of every service trust it.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from parascribe.errors import BadAudioError, ConfigError
from parascribe.gcp.storage import Blob, BlobStore, GcsStore, ObjectInfo
from tests.fakes import MemoryStore

GONE = "no longer exists"


@dataclass(frozen=True)
class Subject:
    """A store under test and an empty bucket of its own."""

    store: BlobStore
    bucket: str


@pytest.fixture(params=[
    pytest.param("memory", id="memory"),
    pytest.param("gcs", id="gcs", marks=pytest.mark.integration),
])
def subject(request: pytest.FixtureRequest) -> Subject:
    if request.param == "memory":
        return Subject(MemoryStore(), "contract")
    store: GcsStore = request.getfixturevalue("store")
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    store.client.create_bucket(bucket)
    return Subject(store, bucket)


def _gen(value: int | None) -> int:
    """A generation a successful write returned: a positive int."""
    assert isinstance(value, int) and not isinstance(value, bool), value
    assert value > 0
    return value


# --- write / read ---

def test_write_and_read_round_trip_with_a_new_generation_each_write(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    first = _gen(s.write(b, "doc.json", b'{"v": 1}'))
    assert s.read(b, "doc.json") == Blob(data=b'{"v": 1}', generation=first)
    second = _gen(s.write(b, "doc.json", b'{"v": 2}'))
    assert second > first
    assert s.read(b, "doc.json") == Blob(data=b'{"v": 2}', generation=second)


def test_empty_object_round_trips(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    gen = _gen(s.write(b, "empty", b""))
    assert s.read(b, "empty") == Blob(data=b"", generation=gen)
    assert s.info(b, "empty") == ObjectInfo(name="empty", size=0, generation=gen, content_type="application/json",
                                            metadata={})


def test_missing_object_reads_as_none(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    assert s.read(b, "nope.json") is None
    assert s.info(b, "nope.json") is None
    assert s.list(b, "nope") == []


# --- preconditions ---

def test_if_generation_match_zero_creates_once(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    gen = _gen(s.write(b, "claim", b"first", if_generation_match=0))
    assert s.write(b, "claim", b"second", if_generation_match=0) is None
    assert s.read(b, "claim") == Blob(data=b"first", generation=gen)


def test_compare_and_swap_on_a_stale_generation_fails(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    old = _gen(s.write(b, "status.json", b"v1"))
    current = _gen(s.write(b, "status.json", b"v2"))
    assert s.write(b, "status.json", b"lost update", if_generation_match=old) is None
    assert s.read(b, "status.json") == Blob(data=b"v2", generation=current)
    swapped = _gen(s.write(b, "status.json", b"v3", if_generation_match=current))
    assert swapped > current
    assert s.read(b, "status.json") == Blob(data=b"v3", generation=swapped)


def test_a_generation_precondition_on_a_missing_object_fails(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    assert s.write(b, "absent", b"x", if_generation_match=12345) is None
    assert s.read(b, "absent") is None


def test_exactly_one_of_many_racers_creates_the_object(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    barrier = threading.Barrier(8)
    results: list[int | None] = []
    lock = threading.Lock()

    def racer(i: int) -> None:
        barrier.wait()
        got = s.write(b, "final", f"racer {i}".encode(), if_generation_match=0)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [g for g in results if g is not None]
    assert len(results) == 8 and len(winners) == 1
    blob = s.read(b, "final")
    assert blob is not None and blob.generation == winners[0]
    assert re.fullmatch(rb"racer [0-7]", blob.data)


# --- info and list ---

def test_info_reports_size_generation_content_type_and_metadata(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    gen = _gen(s.write(b, "talks/a.wav", b"RIFF" + b"\x00" * 96, content_type="audio/wav",
                       metadata={"parascribe-method": "gpu", "parascribe-deadline-minutes": "15"}))
    assert s.info(b, "talks/a.wav") == ObjectInfo(
        name="talks/a.wav", size=100, generation=gen, content_type="audio/wav",
        metadata={"parascribe-method": "gpu", "parascribe-deadline-minutes": "15"},
    )


def test_default_content_type_is_json_and_an_overwrite_replaces_metadata(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    _gen(s.write(b, "m.json", b"{}", metadata={"k": "v"}))
    gen = _gen(s.write(b, "m.json", b"{ }"))
    assert s.info(b, "m.json") == ObjectInfo(name="m.json", size=3, generation=gen, content_type="application/json",
                                             metadata={})


def test_info_metadata_is_a_copy(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    _gen(s.write(b, "meta", b"x", metadata={"k": "v"}))
    first = s.info(b, "meta")
    assert first is not None
    first.metadata["k"] = "changed"
    again = s.info(b, "meta")
    assert again is not None and again.metadata == {"k": "v"}


def test_list_returns_the_names_under_a_prefix_in_order(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    for name in ("jobs/j2/status.json", "jobs/j1/status.json", "jobs/j1/manifest.json", "jobsx", "other/j1"):
        _gen(s.write(b, name, b"{}"))
    assert s.list(b, "jobs/j1/") == ["jobs/j1/manifest.json", "jobs/j1/status.json"]
    assert s.list(b, "jobs/") == ["jobs/j1/manifest.json", "jobs/j1/status.json", "jobs/j2/status.json"]
    assert s.list(b, "jobs") == ["jobs/j1/manifest.json", "jobs/j1/status.json", "jobs/j2/status.json", "jobsx"]
    assert s.list(b, "") == ["jobs/j1/manifest.json", "jobs/j1/status.json", "jobs/j2/status.json", "jobsx",
                             "other/j1"]
    assert s.list(b, "zzz") == []


# --- delete ---

def test_delete_removes_the_object_and_a_create_may_follow(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    old = _gen(s.write(b, "open/j1", b"x", content_type="text/plain"))
    _gen(s.write(b, "open/j2", b"y", content_type="text/plain"))
    s.delete(b, "open/j1")
    assert s.read(b, "open/j1") is None and s.info(b, "open/j1") is None
    assert s.list(b, "open/") == ["open/j2"]
    with pytest.raises(BadAudioError, match=f"gs://{b}/open/j1 {GONE}"):
        s.read_range(b, "open/j1", 0, 1, str(old))
    again = _gen(s.write(b, "open/j1", b"z", if_generation_match=0))
    assert s.read(b, "open/j1") == Blob(data=b"z", generation=again)


def test_deleting_a_missing_object_is_not_an_error(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    s.delete(b, "never-written")  # no exception
    _gen(s.write(b, "once", b"x"))
    s.delete(b, "once")
    s.delete(b, "once")  # twice is fine
    assert s.list(b, "") == []


# --- ranged reads ---

@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 4, b"0123"),
        (2, 5, b"234"),
        (0, 10, b"0123456789"),
        (8, 20, b"89"),  # shorter at the end of the object
        (10, 20, b""),  # starts at the end
        (15, 20, b""),  # starts past the end
        (5, 5, b""),  # empty
        (6, 3, b""),  # inverted
    ],
)
def test_read_range(subject: Subject, start: int, end: int, expected: bytes) -> None:
    s, b = subject.store, subject.bucket
    _gen(s.write(b, "digits", b"0123456789", content_type="application/octet-stream"))
    assert s.read_range(b, "digits", start, end) == expected


def test_read_range_pinned_to_the_live_generation(subject: Subject) -> None:
    s, b = subject.store, subject.bucket
    old = _gen(s.write(b, "audio", b"old audio"))
    live = _gen(s.write(b, "audio", b"new audio"))
    assert s.read_range(b, "audio", 0, 3, str(live)) == b"new"
    assert s.read_range(b, "audio", 0, 3, "") == b"new"  # an empty pin is no pin
    with pytest.raises(BadAudioError, match=f"gs://{b}/audio {GONE}"):
        s.read_range(b, "audio", 0, 3, str(old))


@pytest.mark.parametrize("generation", [None, "12345"])
def test_read_range_of_a_missing_object_is_bad_audio(subject: Subject, generation: str | None) -> None:
    s, b = subject.store, subject.bucket
    with pytest.raises(BadAudioError, match=f"gs://{b}/gone.wav {GONE}") as err:
        s.read_range(b, "gone.wav", 0, 4, generation)
    assert err.value.reason == f"gs://{b}/gone.wav no longer exists (deleted or overwritten)"


def test_an_empty_range_of_a_missing_object_is_empty(subject: Subject) -> None:
    """The adapter answers an empty range without asking storage, so a missing object is not noticed."""
    assert subject.store.read_range(subject.bucket, "gone.wav", 4, 4) == b""


# --- downloads ---

def test_download_to_unpinned_and_pinned(subject: Subject, tmp_path: Path) -> None:
    s, b = subject.store, subject.bucket
    _gen(s.write(b, "clip.wav", b"first take"))
    live = _gen(s.write(b, "clip.wav", b"second take", content_type="audio/wav"))
    s.download_to(b, "clip.wav", tmp_path / "unpinned")
    assert (tmp_path / "unpinned").read_bytes() == b"second take"
    s.download_to(b, "clip.wav", tmp_path / "pinned", str(live))
    assert (tmp_path / "pinned").read_bytes() == b"second take"


def test_download_to_an_overwritten_generation_is_bad_audio(subject: Subject, tmp_path: Path) -> None:
    s, b = subject.store, subject.bucket
    old = _gen(s.write(b, "clip.wav", b"first take"))
    _gen(s.write(b, "clip.wav", b"second take"))
    dest = tmp_path / "stale"
    with pytest.raises(BadAudioError, match=f"gs://{b}/clip.wav {GONE}"):
        s.download_to(b, "clip.wav", dest, str(old))
    assert not dest.exists()


@pytest.mark.parametrize("generation", [None, "12345"])
def test_download_to_of_a_missing_object_is_bad_audio(subject: Subject, tmp_path: Path,
                                                      generation: str | None) -> None:
    dest = tmp_path / "missing"
    with pytest.raises(BadAudioError, match=f"gs://{subject.bucket}/gone.wav {GONE}"):
        subject.store.download_to(subject.bucket, "gone.wav", dest, generation)
    assert not dest.exists()


# --- signed URLs ---

@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned", "pinned"])
def test_signed_url_is_a_v4_get_url_for_the_object(subject: Subject, pinned: bool) -> None:
    s, b = subject.store, subject.bucket
    gen = _gen(s.write(b, "a b/c.wav", b"RIFF", content_type="audio/wav"))
    url = s.signed_url(b, "a b/c.wav", timedelta(minutes=20), str(gen) if pinned else None)
    assert isinstance(url, str)
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    assert parsed.scheme in ("http", "https") and parsed.netloc
    assert parsed.path == f"/{b}/a%20b/c.wav"
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["1200"]
    assert re.fullmatch(r"[0-9a-f]{512}", query["X-Goog-Signature"][0])
    assert query.get("generation") == ([str(gen)] if pinned else None)


@pytest.mark.integration
def test_gcs_signed_urls_serve_the_object_and_pin_its_generation(store: GcsStore) -> None:
    """The part of the contract the fake cannot show: the emulator serves what the URL names."""
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    store.client.create_bucket(bucket)
    old = _gen(store.write(bucket, "a b/c.wav", b"first take", content_type="audio/wav"))
    live = _gen(store.write(bucket, "a b/c.wav", b"second take", content_type="audio/wav"))
    resp = httpx.get(store.signed_url(bucket, "a b/c.wav", timedelta(minutes=5)))
    assert (resp.status_code, resp.content) == (200, b"second take")
    resp = httpx.get(store.signed_url(bucket, "a b/c.wav", timedelta(minutes=5), str(live)))
    assert (resp.status_code, resp.content) == (200, b"second take")
    assert httpx.get(store.signed_url(bucket, "a b/c.wav", timedelta(minutes=5), str(old))).status_code == 404


@pytest.mark.integration
def test_a_missing_bucket_is_a_setting_to_fix_not_a_bad_upload(store: GcsStore) -> None:
    """A wrong BUCKET_PREFIX must be retried until someone fixes it, never fail users' jobs as bad audio."""
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    for call in (lambda: store.read_range(missing, "a.wav", 0, 10), lambda: store.list(missing, "jobs/"),
                 lambda: store.write(missing, "x.json", b"{}"), lambda: store.download_to(missing, "a.wav", Path("/tmp/x"))):
        with pytest.raises(ConfigError, match=f"bucket {missing} does not exist"):
            call()

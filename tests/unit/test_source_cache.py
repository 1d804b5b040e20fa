"""The source cache bounds what held sources occupy: a hold waits for room, then gives up with a TransientError."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from parascribe.contracts import SourceRef
from parascribe.errors import TransientError
from parascribe.gcp.source_cache import SourceCache
from tests.fakes import MemoryStore

pytestmark = pytest.mark.timeout(30)


class GatedStore(MemoryStore):
    """Counts downloads; a download of a name in ``gates`` waits for its event."""

    def __init__(self) -> None:
        super().__init__()
        self.downloads: list[str] = []
        self.gates: dict[str, threading.Event] = {}

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None:
        gate = self.gates.get(name)
        if gate is not None:
            gate.wait(10)
        self.downloads.append(name)
        super().download_to(bucket, name, dest, generation)


def put(store: MemoryStore, name: str, size: int) -> SourceRef:
    gen = store.write("uploads", name, b"x" * size)
    return SourceRef(bucket="uploads", name=name, generation=str(gen), size=size)


def test_the_ceiling_on_held_sources_defaults_to_twice_max_bytes(tmp_path: Path) -> None:
    cache = SourceCache(GatedStore(), tmp_path, max_bytes=100)
    assert cache.max_held_bytes == 200


def test_a_hold_past_the_ceiling_waits_until_a_held_source_is_released(tmp_path: Path) -> None:
    store = GatedStore()
    a, b, c = put(store, "a.wav", 100), put(store, "b.wav", 100), put(store, "c.wav", 100)
    cache = SourceCache(store, tmp_path, max_bytes=100, hold_wait_s=10.0)
    admitted = threading.Event()

    def third() -> None:
        with cache.hold(c):
            admitted.set()

    with cache.hold(a), cache.hold(b):  # 200 bytes held: the ceiling
        assert cache.total_bytes == 200
        waiting = threading.Thread(target=third)
        waiting.start()
        time.sleep(0.3)
        assert not admitted.is_set() and store.downloads == ["a.wav", "b.wav"]  # c waits, undownloaded
    waiting.join(5)
    assert admitted.is_set() and store.downloads == ["a.wav", "b.wav", "c.wav"]
    assert cache.total_bytes <= 100


def test_a_hold_that_never_finds_room_is_transient(tmp_path: Path) -> None:
    store = GatedStore()
    a, b, c = put(store, "a.wav", 100), put(store, "b.wav", 100), put(store, "c.wav", 1)
    cache = SourceCache(store, tmp_path, max_bytes=100, hold_wait_s=0.2)
    with cache.hold(a), cache.hold(b):
        started = time.monotonic()
        with pytest.raises(TransientError, match="source cache"), cache.hold(c):
            pass
        assert time.monotonic() - started >= 0.2
        with cache.hold(a) as again:  # a source already held takes no more room
            assert again.read_bytes() == b"x" * 100
    assert "c.wav" not in store.downloads
    with cache.hold(c) as path:  # released: room again
        assert path.stat().st_size == 1


def test_downloads_in_flight_count_against_the_ceiling(tmp_path: Path) -> None:
    store = GatedStore()
    a, b = put(store, "a.wav", 150), put(store, "b.wav", 150)
    store.gates["a.wav"] = threading.Event()
    cache = SourceCache(store, tmp_path, max_bytes=100, hold_wait_s=0.3)
    first = threading.Thread(target=lambda: cache.hold(a).__enter__())
    first.start()
    time.sleep(0.1)  # a's download is under way and not yet in the cache
    with pytest.raises(TransientError, match="source cache"), cache.hold(b):
        pass
    store.gates["a.wav"].set()
    first.join(5)
    assert store.downloads == ["a.wav"]


def test_one_source_larger_than_the_ceiling_is_still_admitted_alone(tmp_path: Path) -> None:
    store = GatedStore()
    big = put(store, "big.wav", 500)
    cache = SourceCache(store, tmp_path, max_bytes=100, hold_wait_s=0.1)
    with cache.hold(big) as path:
        assert path.stat().st_size == 500


def test_an_unheld_cached_source_is_evicted_to_make_room(tmp_path: Path) -> None:
    store = GatedStore()
    a, b, c = put(store, "a.wav", 100), put(store, "b.wav", 100), put(store, "c.wav", 100)
    cache = SourceCache(store, tmp_path, max_bytes=150, hold_wait_s=0.1)
    cache.path(a)
    with cache.hold(b), cache.hold(c):  # a is cached but not held: it does not count against the ceiling
        assert b in cache and c in cache and a not in cache

"""Local copies of uploaded sources, so that a file's chunks decode from one download."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from parascribe.contracts import SourceRef
from parascribe.errors import TransientError
from parascribe.gcp.storage import BlobStore

log = logging.getLogger(__name__)


class SourceCache:
    """Local copies of uploaded sources, one download per (bucket, name, generation).

    Many chunks of one file then decode from one local file. Entries are evicted
    least-recently-used once their total size passes ``max_bytes``; the entry just
    fetched and entries held with :meth:`hold` are never evicted, even when that
    leaves the cache over its limit. A path from :meth:`path` stays valid until
    roughly ``max_bytes`` of other sources have been fetched; use :meth:`hold` when
    other threads share the cache. Thread-safe: concurrent calls for one source
    download once.

    Held sources are bounded (on Cloud Run the cache lives in memory): a :meth:`hold`
    that would download a source while held sources and downloads in flight already
    take ``max_held_bytes`` (default ``2 × max_bytes``) waits up to ``hold_wait_s`` for
    a release, then raises :class:`TransientError` so the message is retried. A source
    is always admitted when nothing else is held, however large, so any one object
    can be transcribed; the cache then holds at most ``max(max_held_bytes, largest
    object)`` plus one unheld entry.

    Args:
        store: where sources are downloaded from.
        cache_dir: where local copies go.
        max_bytes: the size unheld entries are evicted down to.
        max_held_bytes: the ceiling on held sources and downloads in flight; ``2 × max_bytes`` if None.
        hold_wait_s: how long :meth:`hold` waits for room before giving up.
    """

    def __init__(self, store: BlobStore, cache_dir: Path, max_bytes: int, *, max_held_bytes: int | None = None,
                 hold_wait_s: float = 120.0) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_held_bytes = 2 * max_bytes if max_held_bytes is None else max_held_bytes
        if self.max_held_bytes < max_bytes:
            raise ValueError("max_held_bytes must be at least max_bytes")
        self._hold_wait_s = hold_wait_s
        self._store = store
        self._dir = cache_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Path, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._key_locks: dict[str, threading.Lock] = {}
        self._pins: Counter[str] = Counter()
        self._reserved: dict[str, int] = {}
        """Sources admitted by :meth:`hold` whose download is under way, with their sizes."""
        self.hits = 0
        self.misses = 0

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def __contains__(self, source: SourceRef) -> bool:
        with self._lock:
            return self._key(source) in self._entries

    @staticmethod
    def _key(source: SourceRef) -> str:
        raw = f"{source.bucket}\x00{source.name}\x00{source.generation}".encode()
        return hashlib.sha256(raw).hexdigest()[:32]

    def path(self, source: SourceRef) -> Path:
        """The local path of ``source``, downloading it on first use.

        Raises:
            BadAudioError: the object no longer exists.
            TransientError: the download failed in a way that may pass.
        """
        key = self._key(source)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:  # another thread fetched it while we waited
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry[0]
            dest = self._dir / (key + _suffix(source.name))
            if not dest.is_file():
                self._download(source, dest)
            size = dest.stat().st_size
            with self._lock:
                self.misses += 1
                self._entries[key] = (dest, size)
                self._total += size
                self._reserved.pop(key, None)
                self._evict(keep=key)
                self._key_locks.pop(key, None)
            return dest

    @contextmanager
    def hold(self, source: SourceRef) -> Iterator[Path]:
        """Like :meth:`path`, but the file is not evicted until the block exits.

        Raises:
            BadAudioError: the object no longer exists.
            TransientError: the download failed in a way that may pass, or held sources left no
                room for it within ``hold_wait_s``.
        """
        key = self._key(source)
        with self._lock:
            self._admit(key, source)
            self._pins[key] += 1
        try:
            yield self.path(source)
        finally:
            with self._lock:
                self._pins[key] -= 1
                if self._pins[key] <= 0:
                    del self._pins[key]
                    self._reserved.pop(key, None)  # its download failed
                if key in self._entries:
                    self._evict(keep=key)
                self._room.notify_all()

    def _admit(self, key: str, source: SourceRef) -> None:
        """Wait (holding ``_lock``) until downloading ``source`` keeps held bytes under the ceiling; reserve them."""
        deadline = time.monotonic() + self._hold_wait_s
        while key not in self._entries and key not in self._reserved:
            held = sum(size for k, (_, size) in self._entries.items() if self._pins.get(k))
            held += sum(self._reserved.values())
            if held == 0 or held + source.size <= self.max_held_bytes:
                self._reserved[key] = source.size
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransientError(
                    f"the source cache has no room for {source.uri} ({source.size} bytes): sources in use take "
                    f"{held} of its {self.max_held_bytes}-byte ceiling after {self._hold_wait_s:.0f} s; retry later"
                )
            self._room.wait(left)

    def _download(self, source: SourceRef, dest: Path) -> None:
        tmp = dest.with_name(f".{dest.name}.{threading.get_ident()}.part")
        log.info("fetching %s (generation %s, %d bytes)", source.uri, source.generation, source.size)
        try:
            self._store.download_to(source.bucket, source.name, tmp, generation=source.generation)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def _evict(self, keep: str) -> None:
        for key in list(self._entries):
            if self._total <= self._max_bytes:
                return
            if key == keep or self._pins.get(key):
                continue
            path, size = self._entries.pop(key)
            self._total -= size
            path.unlink(missing_ok=True)
            log.debug("evicted %s (%d bytes) from the source cache", path.name, size)


def _suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if suffix.isascii() and 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ""

"""Local copies of uploaded sources, so that a file's chunks decode from one download."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from parascribe.contracts import SourceRef
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
    """

    def __init__(self, store: BlobStore, cache_dir: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self._store = store
        self._dir = cache_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Path, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._pins: Counter[str] = Counter()
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
                self._evict(keep=key)
                self._key_locks.pop(key, None)
            return dest

    @contextmanager
    def hold(self, source: SourceRef) -> Iterator[Path]:
        """Like :meth:`path`, but the file is not evicted until the block exits.

        Raises:
            BadAudioError: the object no longer exists.
            TransientError: the download failed in a way that may pass.
        """
        key = self._key(source)
        with self._lock:
            self._pins[key] += 1
        try:
            yield self.path(source)
        finally:
            with self._lock:
                self._pins[key] -= 1
                if self._pins[key] <= 0:
                    del self._pins[key]
                if key in self._entries:
                    self._evict(keep=key)

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

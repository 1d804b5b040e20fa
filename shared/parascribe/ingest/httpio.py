"""Reading a remote body through the guard as a file PyAV can open, within the request's caps.

- :class:`Budget` counts every byte received against ``INGEST_MAX_MB`` (decoded bytes, so a
  compressed body cannot inflate past the cap) and checks the wall clock against
  ``INGEST_TIMEOUT_MINUTES`` on every read; SIGTERM cancels through it.
- :class:`HttpReader` is one URL as a seekable file when the server takes ``Range`` requests
  (an MP4 with its index at the end needs seeks), else a forward-only stream. Seeks are lazy:
  a seek only moves the position, and the next read starts a ranged GET there, checked by
  the guard again.
- :class:`SegmentReader` concatenates HLS segments, each fetched (and checked) in turn.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http import HTTPStatus

import httpx

from parascribe.errors import PermanentError, TransientError
from parascribe.netguard import Fetched, GuardedHttp

log = logging.getLogger(__name__)

_SKIP_BYTES = 256 << 10
"""A forward seek shorter than this reads and drops the bytes rather than start a new request."""
_RETRY_STATUSES = frozenset({408, 425, 429})


class OverCapError(PermanentError):
    """The request went over one of its caps (bytes, duration, wall time)."""


class CancelledError(TransientError):
    """The worker is stopping: the request is handed back to Pub/Sub for another worker."""


class Budget:
    """The caps of one ingest: bytes received, wall time, and the worker's stop signal.

    Args:
        max_bytes: bytes that may be received, over every request of the ingest.
        timeout_s: wall time the whole ingest may take.
        cancel: set when the worker stops.
    """

    def __init__(self, max_bytes: int, timeout_s: float, cancel: threading.Event | None = None) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.received = 0
        self._deadline = time.monotonic() + timeout_s
        self._cancel = cancel or threading.Event()

    def check(self) -> None:
        """Raise when the ingest ran out of time or the worker is stopping."""
        if self._cancel.is_set():
            raise CancelledError("the ingest worker is stopping; the request will be retried")
        if time.monotonic() > self._deadline:
            raise OverCapError(f"fetching took longer than {self.timeout_s / 60:g} minutes "
                               "(INGEST_TIMEOUT_MINUTES)")

    def add(self, n: int) -> None:
        self.received += n
        if self.received > self.max_bytes:
            raise self.too_big(f"more than {_mb(self.max_bytes)} were received")
        self.check()

    def too_big(self, what: str) -> OverCapError:
        return OverCapError(f"the media is too large: {what}; the limit is {_mb(self.max_bytes)} (INGEST_MAX_MB)")


def _mb(n: int) -> str:
    return f"{n / (1 << 20):g} MB"


def raise_for_status(fetched: Fetched, what: str = "the URL") -> None:
    """Map a response's status to the error a person (permanent) or Pub/Sub (transient) acts on."""
    status = fetched.response.status_code
    if status < 400:
        return
    fetched.response.close()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = fetched.response.reason_phrase or "error"
    text = f"{what} answered {status} {phrase}"
    if status >= 500 or status in _RETRY_STATUSES:
        raise TransientError(f"{text} ({fetched.url})")
    raise PermanentError(text if what == "the URL" else f"{text} ({fetched.url})")


def body_iter(fetched: Fetched, budget: Budget, chunk: int = 64 << 10) -> Iterator[bytes]:
    """The body's bytes as they arrive, counted against ``budget``."""
    try:
        for data in fetched.response.iter_bytes(chunk):
            budget.add(len(data))
            yield data
    except httpx.TransportError as err:
        raise TransientError(f"reading {fetched.url}: {type(err).__name__}: {err}") from err


def read_small(fetched: Fetched, budget: Budget, limit: int, what: str) -> bytes:
    """The whole body of a small document (a playlist), refused past ``limit`` bytes."""
    out = bytearray()
    try:
        for data in body_iter(fetched, budget):
            out += data
            if len(out) > limit:
                raise PermanentError(f"the {what} at {fetched.url} is larger than {limit >> 10} KiB")
    finally:
        fetched.response.close()
    return bytes(out)


def content_length(response: httpx.Response) -> int | None:
    if response.headers.get("content-encoding", "identity") != "identity":
        return None
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


class _ResponseStream(io.RawIOBase):
    """A read-only stream over one open response at a time: the readers below share how they hold it."""

    def __init__(self) -> None:
        super().__init__()
        self._fetched: Fetched | None = None
        self._chunks: Iterator[bytes] | None = None
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def _take(self, fetched: Fetched, budget: Budget) -> None:
        """Read from ``fetched`` next, counting its bytes against ``budget``."""
        self._fetched = fetched
        self._chunks = body_iter(fetched, budget)

    def _close_response(self) -> None:
        if self._fetched is not None:
            self._fetched.response.close()
            self._fetched = None
        self._chunks = None

    def close(self) -> None:
        self._close_response()
        super().close()


class HttpReader(_ResponseStream):
    """A remote body as a read-only file, seekable by ``Range`` when the server allows it.

    Args:
        http: the guarded client, for ranged requests after a seek.
        fetched: the open response to the first GET (status already checked).
        budget: counts the bytes and the time.
        headers: headers every request sends (yt-dlp's, for some sites).
    """

    def __init__(self, http: GuardedHttp, fetched: Fetched, budget: Budget,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._http = http
        self._url = fetched.url
        self._budget = budget
        self._headers = dict(headers or {})
        self._size = content_length(fetched.response)
        if self._size is not None and self._size > budget.max_bytes:
            fetched.response.close()
            raise budget.too_big(f"the server says it is {_mb(self._size)}")
        ranges = fetched.response.headers.get("accept-ranges", "").lower() == "bytes"
        self._seekable = ranges and self._size is not None
        self._take(fetched, budget)
        self._at = 0
        """Offset of the first byte of ``_buffer`` in the body."""
        self._pos = 0

    @property
    def size(self) -> int | None:
        return self._size

    def seekable(self) -> bool:
        return self._seekable

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("the server does not take Range requests")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size or 0}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        want = len(buffer)
        if want == 0 or (self._size is not None and self._pos >= self._size):
            return 0
        self._position_stream()
        while len(self._buffer) == 0:
            if self._chunks is None:
                return 0
            data = next(self._chunks, b"")
            if not data:
                self._chunks = None
                return 0
            self._buffer = data
        n = min(want, len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self._at += n
        self._pos += n
        return n

    def _position_stream(self) -> None:
        """Make the stream deliver the byte at ``_pos`` next: drop a few bytes, or start a ranged GET."""
        if self._pos == self._at and self._chunks is not None:
            return
        gap = self._pos - self._at
        if self._chunks is not None and 0 < gap <= _SKIP_BYTES:
            while gap > 0:
                if not self._buffer:
                    self._buffer = next(self._chunks, b"")
                    if not self._buffer:
                        break
                drop = min(gap, len(self._buffer))
                self._buffer, self._at, gap = self._buffer[drop:], self._at + drop, gap - drop
            if gap == 0:
                return
        self._reopen()

    def _reopen(self) -> None:
        self._close_response()
        self._budget.check()
        fetched = self._http.open(self._url, {**self._headers, "Range": f"bytes={self._pos}-"})
        raise_for_status(fetched)
        if fetched.response.status_code != 206:
            fetched.response.close()
            raise PermanentError(f"the server of {self._url} ignored a Range request it said it supports")
        self._take(fetched, self._budget)
        self._buffer = b""
        self._at = self._pos

class SegmentReader(_ResponseStream):
    """HLS segments (and the init section, if any) read one after another as a single stream.

    Args:
        http: the guarded client; each segment URL is checked before it is fetched.
        urls: the init section's URL first (when there is one), then the segments in order.
        budget: counts the bytes and the time.
        headers: headers every request sends.
    """

    def __init__(self, http: GuardedHttp, urls: Sequence[str], budget: Budget,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._http = http
        self._urls = list(urls)
        self._next = 0
        self._budget = budget
        self._headers = dict(headers or {})

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while not self._buffer:
            if self._chunks is None:
                if self._next >= len(self._urls):
                    return 0
                self._open_next()
            assert self._chunks is not None
            data = next(self._chunks, b"")
            if not data:
                self._close_response()
                continue
            self._buffer = data
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def _open_next(self) -> None:
        url = self._urls[self._next]
        self._next += 1
        self._budget.check()
        fetched = self._http.open(url, self._headers)
        raise_for_status(fetched, "an HLS segment")
        self._take(fetched, self._budget)

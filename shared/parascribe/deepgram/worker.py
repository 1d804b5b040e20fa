"""The Deepgram worker: a Pub/Sub push handler for ``asr-deepgram`` chunk tasks.

For each :class:`~parascribe.contracts.ChunkTask` it asks Deepgram for a
transcript and publishes a :class:`~parascribe.contracts.ChunkResult` to
``asr-results`` (attribute ``type=chunk_result``), then acks:

- ``whole_file`` tasks: Deepgram fetches the source itself through a V4 signed
  URL, so no audio passes through the worker;
- chunk spans: the span is cut, encoded as FLAC and sent as bytes. A PCM WAV's
  span is read by byte range (:mod:`parascribe.wav`), so the worker holds only
  that span; any other container is decoded from a local copy of the source
  (:class:`~parascribe.gcp.source_cache.SourceCache`), held while it is read.

No header is trusted. The last chunk decodes no further than
:attr:`~parascribe.contracts.ChunkTask.decode_limit_s`, and a ``whole_file`` task
whose object is too large for the duration its header claims
(:func:`~parascribe.audio.plausible_max_bytes`) is cut like a span instead of
sent by URL, since Deepgram would bill the real length.

Errors: a :class:`PermanentError` (audio Deepgram cannot read) publishes a
result carrying ``error`` (the merger fails the job) and acks;
:class:`DeepgramAuthError` and :class:`TransientError` nack, so Pub/Sub retries
with backoff and the dead-letter topic catches what never succeeds.

Concurrency. Deepgram allows at most 100 concurrent pre-recorded requests per
project. Each process holds at most ``DEEPGRAM_MAX_CONCURRENCY`` requests open
(a process-wide semaphore; one worker per process), so the bound is::

    Cloud Run max instances × DEEPGRAM_MAX_CONCURRENCY ≤ 100
    e.g. 6 instances × 16 = 96  (leave headroom for other clients of the key)

Set the Cloud Run container concurrency (and gunicorn ``--threads``) to
``DEEPGRAM_MAX_CONCURRENCY`` too, so an instance never queues more requests
than it can send; a request that waits too long for a slot is nacked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from parascribe import names
from parascribe.audio import Decoded, decode_span, encode_flac, plausible_max_bytes
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_CHUNK_RESULT,
    ChunkResult,
    ChunkTask,
    JobFailed,
    SourceRef,
    parse,
)
from parascribe.deepgram.client import DeepgramTranscript
from parascribe.errors import BadAudioError, DeepgramAuthError, MalformedMessageError, PermanentError, TransientError
from parascribe.gcp.pubsub import Message, Publisher
from parascribe.gcp.storage import BlobStore
from parascribe.jobs import EndedJobs
from parascribe.wav import read_pcm_layout

log = logging.getLogger(__name__)

_RANGE_BYTES = 8 << 20
"""A PCM span is read in ranged requests of about this many bytes, so the worker never holds more at once."""

Signer = Callable[[SourceRef, timedelta], str]
"""Returns a V4 signed GET URL for a source object, valid for the given time."""


class Transcriber(Protocol):
    def transcribe_bytes(self, data: bytes, offset_s: float = 0.0,
                         language: str | None = None) -> DeepgramTranscript: ...

    def transcribe_url(self, url: str, offset_s: float = 0.0, language: str | None = None) -> DeepgramTranscript: ...


class SourceFiles(Protocol):
    def hold(self, source: SourceRef) -> AbstractContextManager[Path]: ...


class DeepgramWorker:
    """Handles ``asr-deepgram`` push messages; one per process (it owns the request slots).

    Args:
        transcriber: sends audio or a URL to Deepgram.
        store: the blob store the sources live in (signs their URLs unless ``signer`` is given).
        publisher: where chunk results go.
        cache: local copies of sources, for chunk spans.
        signer: returns a signed GET URL for a source; ``store.signed_url`` if omitted.
        max_concurrency: ``DEEPGRAM_MAX_CONCURRENCY``, the requests this process holds open at once.
        timeout_seconds: ``DEEPGRAM_TIMEOUT_SECONDS``; a request waits this long for a free slot,
            and signed URLs live at least three times as long (and at least 15 minutes).
        ended: tells which jobs have ended, so their remaining chunks are not paid for; None checks nothing.
    """

    def __init__(
        self,
        transcriber: Transcriber,
        store: BlobStore,
        publisher: Publisher,
        cache: SourceFiles,
        signer: Signer | None = None,
        *,
        max_concurrency: int,
        timeout_seconds: float,
        ended: EndedJobs | None = None,
    ) -> None:
        self._ended = ended
        self._transcriber = transcriber
        self._store = store
        self._publisher = publisher
        self._cache = cache
        self._signer: Signer = signer or (
            lambda source, expires: store.signed_url(source.bucket, source.name, expires, source.generation)
        )
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._slot_wait_s = timeout_seconds
        self._url_ttl = timedelta(seconds=max(900.0, 3 * timeout_seconds))

    def signed_url(self, source: SourceRef) -> str:
        """A V4 signed GET URL for ``source``, valid long enough for Deepgram's retries."""
        return self._signer(source, self._url_ttl)

    def handle(self, msg: Message) -> None:
        """Transcribe one chunk task and publish its result.

        A task whose job has already ended (another chunk failed it) is acked unpaid.
        A task that cannot be read fails its job when its job id can be read.

        Raises:
            MalformedMessageError: the body is not a ChunkTask (acked by the push app).
            NewerSchemaError: a newer release wrote it (nacked for a newer worker).
            DeepgramAuthError: the key was rejected (nacked until someone fixes it).
            TransientError: Deepgram, storage or Pub/Sub may succeed later (nacked).
        """
        try:
            task = parse(ChunkTask, msg.data)
        except MalformedMessageError as err:
            self._fail_unreadable(msg.data, err.reason)
            raise
        ctx = {"job_id": task.job_id, "chunk_index": task.chunk.index, "engine": "deepgram",
               "path": "deepgram", "attempt": msg.delivery_attempt}
        ended = self._ended.state(task.job_id) if self._ended is not None else None
        if ended is not None:
            log.info("job already %s; chunk skipped, not sent to Deepgram", ended, extra=ctx)
            return
        if task.path != "deepgram":
            log.warning("task addressed to path %r reached the Deepgram worker; transcribing it anyway", task.path,
                        extra=ctx)
        started = time.monotonic()
        try:
            transcript, corrupt = self._transcribe(task)
        except DeepgramAuthError as err:
            log.error("Deepgram rejected our key; nacking so the chunk is retried: %s", err.reason, extra=ctx)
            raise
        except PermanentError as err:
            log.warning("chunk failed permanently: %s", err.reason, extra=ctx)
            self._publish(self._result(task, time.monotonic() - started, error=err.reason), ctx)
            return
        result = self._result(task, time.monotonic() - started, transcript=transcript, corrupt_packets=corrupt)
        self._publish(result, ctx)
        log.info("chunk transcribed: %d words, %.1fs audio, %.1fs billed, %.2fs", len(result.words),
                 result.audio_seconds, result.billed_seconds, result.processing_seconds, extra=ctx)

    def _fail_unreadable(self, data: bytes, why: str) -> None:
        failed = JobFailed.unreadable_task(data, why, "Deepgram worker")
        if failed is not None:
            self._publisher.publish(names.TOPIC_ASR_RESULTS, failed, failed.attributes())

    def _transcribe(self, task: ChunkTask) -> tuple[DeepgramTranscript, int]:
        """The transcript of the task's audio, and the packets skipped as corrupt in cutting it."""
        if task.whole_file and self._size_fits_header(task):
            url = self.signed_url(task.source)
            with self._slot():
                return self._transcriber.transcribe_url(url, offset_s=0.0, language=task.language), 0
        data, corrupt = self._cut(task)
        with self._slot():
            return self._transcriber.transcribe_bytes(data, offset_s=task.chunk.start_s, language=task.language), corrupt

    @staticmethod
    def _size_fits_header(task: ChunkTask) -> bool:
        a = task.audio
        most = plausible_max_bytes(a.duration_s, a.codec, a.sample_rate, a.channels)
        if task.source.size <= most:
            return True
        log.warning("%s is %d bytes, more than %.1f s of %s can fill (%.0f): its header may understate the "
                    "length, so the file is cut and capped rather than sent whole", task.source.uri, task.source.size,
                    a.duration_s, a.codec, most, extra={"job_id": task.job_id})
        return False

    def _cut(self, task: ChunkTask) -> tuple[bytes, int]:
        """The task's span as FLAC, decoded no further than its cap, and the corrupt packets skipped."""
        try:
            decoded = self._read_pcm_span(task)
            if decoded is None:
                with self._cache.hold(task.source) as path:
                    decoded = decode_span(path, task.chunk.start_s, task.decode_end_s, limit_s=task.decode_limit_s,
                                          header_s=task.audio.duration_s)
        except ValueError as err:
            raise PermanentError(f"chunk {task.chunk.index} has an invalid span: {err}") from None
        if decoded.samples.size == 0:
            raise BadAudioError(f"chunk {task.chunk.index} [{task.chunk.start_s:.2f}, {task.chunk.end_s:.2f}) "
                                "holds no audio")
        return encode_flac(decoded.samples), decoded.corrupt_packets

    def _read_pcm_span(self, task: ChunkTask) -> Decoded | None:
        """A PCM WAV's span from ranged reads of just its bytes; None for other files (decoded from a copy)."""
        if task.audio.container != "wav" or not task.audio.codec.startswith("pcm_"):
            return None
        src = task.source

        def read(start: int, end: int) -> bytes:
            return self._store.read_range(src.bucket, src.name, start, end, src.generation)

        layout = read_pcm_layout(read, src.size)
        if layout is None:
            return None
        lo, hi = layout.byte_range(task.chunk.start_s, task.decode_end_s, limit_s=task.decode_limit_s,
                                   header_s=task.audio.duration_s)
        step = max(1, _RANGE_BYTES // layout.block_align) * layout.block_align

        def blocks() -> Iterator[bytes]:
            for at in range(lo, hi, step):
                piece = read(at, min(hi, at + step))
                if not piece:
                    return
                yield piece

        return Decoded(layout.decode(blocks()))

    def _slot(self) -> _Slot:
        return _Slot(self._slots, self._slot_wait_s)

    def _result(
        self, task: ChunkTask, seconds: float, transcript: DeepgramTranscript | None = None, error: str | None = None,
        corrupt_packets: int = 0,
    ) -> ChunkResult:
        return ChunkResult.for_task(
            task, "deepgram",
            path="deepgram",
            words=transcript.words if transcript else [],
            audio_seconds=task.chunk.duration_s,
            processing_seconds=max(0.0, seconds),
            billed_seconds=transcript.billed_seconds if transcript else 0.0,
            corrupt_packets=corrupt_packets,
            error=error,
        )

    def _publish(self, result: ChunkResult, ctx: dict[str, object]) -> None:
        self._publisher.publish(
            names.TOPIC_ASR_RESULTS, result, {ATTR_TYPE: TYPE_CHUNK_RESULT, "job_id": result.job_id}
        )
        log.debug("published result of chunk %d", result.chunk_index, extra=ctx)


class _Slot:
    """One of the process's Deepgram request slots, or a TransientError when none frees up."""

    def __init__(self, slots: threading.BoundedSemaphore, wait_s: float) -> None:
        self._slots = slots
        self._wait_s = wait_s

    def __enter__(self) -> None:
        if not self._slots.acquire(timeout=self._wait_s):
            raise TransientError(f"no Deepgram request slot free after {self._wait_s:.0f}s "
                                 "(DEEPGRAM_MAX_CONCURRENCY requests in flight)")

    def __exit__(self, *exc: object) -> None:
        self._slots.release()

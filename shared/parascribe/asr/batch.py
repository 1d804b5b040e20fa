"""One batch of chunk tasks: decode, transcribe, recover, publish; no Pub/Sub.

:class:`BatchProcessor` holds all of the worker's batch logic, so tests drive it
directly: it publishes each task's :class:`ChunkResult` (or its fallback task)
and returns an :class:`Outcome` per message saying whether to ack or nack it.

With a :class:`~parascribe.asr.segments.Segmenter` (``VAD_ENABLED``), the decode threads
also find each chunk's speech, so the VAD runs on the CPU while the engine works on the
batch before. The segments of every chunk in the batch are then sorted by length and sent
to the engine together, up to ``SEGMENT_BATCH_SIZE`` at a time (``GPU_BATCH_SIZE`` counts
messages) and never padding one by more than a quarter of the longest; their words come back in file time (each segment is a piece of the chunk with its
own offset) and are gathered per chunk. An engine with a fixed window (Whisper) gets each
chunk's consecutive segments packed into windows instead, mapped back by a time map
(:mod:`parascribe.asr.units`). A chunk without speech yields an empty result. Without a
segmenter each chunk goes whole.

Recovery: an out-of-memory (or failing) batch is halved and retried, down to
single chunks (or segments). A chunk that still fails, or every chunk while the engine
cannot be used at all, goes to Deepgram (``ENABLE_FALLBACK``) or becomes an error result.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from parascribe import names
from parascribe.asr.segments import Segmenter, Span, speech_seconds
from parascribe.asr.units import EngineInput, length_batches, segment_inputs
from parascribe.audio import SAMPLE_RATE, decode_span
from parascribe.config import Settings
from parascribe.contracts import (
    ATTR_TYPE,
    TYPE_CHUNK_RESULT,
    ChunkResult,
    ChunkTask,
    Contract,
    EngineName,
    JobFailed,
    Word,
    in_span,
    parse,
)
from parascribe.engines.base import AsrEngine, AudioChunk, EngineOutput, window_seconds
from parascribe.errors import EngineError, EngineOOMError, EngineUnavailableError, is_transient
from parascribe.gcp.pubsub import Action, Message, Publisher
from parascribe.gcp.source_cache import SourceCache
from parascribe.jobs import EndedJobs

log = logging.getLogger(__name__)

Kind = Literal["result", "error", "fallback", "malformed", "retry", "skipped"]


@dataclass
class Outcome:
    """What happened to one message, and whether to ack or nack it."""

    message_id: str
    action: Action
    kind: Kind
    published: list[tuple[str, Contract]] = field(default_factory=list)
    reason: str | None = None


@dataclass
class Prepared:
    """A message parsed and, when there is an engine, its span decoding in the background."""

    inbound: Message
    task: ChunkTask | None
    audio: Future[AudioChunk] | None = None
    malformed: str | None = None
    retry: str | None = None
    """Why the message must be redelivered untouched (a newer schema, say)."""
    ended: str | None = None
    """The job's final state when it ended before this chunk: the chunk is skipped, not paid for."""

    def cancel(self) -> None:
        """Drop the decode if it has not started."""
        if self.audio is not None:
            self.audio.cancel()


@dataclass
class _Work:
    """A parsed task on its way through one batch."""

    pos: int
    task: ChunkTask
    chunk: AudioChunk | None = None
    output: EngineOutput | None = None
    failure: str | None = None
    failure_detail: str = ""


@dataclass
class _Unit:
    """What one engine input stands for: a whole chunk, one segment of it, or a window of its segments."""

    work: _Work
    input: EngineInput
    output: EngineOutput | None = None
    failure: str | None = None
    failure_detail: str = ""


class BatchProcessor:
    """Turns a batch of messages into published results and ack/nack decisions.

    Args:
        settings: ``ENABLE_FALLBACK`` matters here.
        engine: the loaded engine, or None when it failed to load (every task then goes to Deepgram).
        publisher: where results and fallback tasks go.
        cache: local copies of sources.
        engine_unavailable_reason: why ``engine`` is None.
        decode_workers: threads that decode a batch's spans in parallel.
        ended: tells which jobs have already ended, so their chunks are skipped; None checks nothing.
        segmenter: finds each chunk's speech segments (``VAD_ENABLED``); None sends chunks whole.

    Call :meth:`process_batch` and :meth:`run` from one thread (engines are not thread-safe);
    :meth:`prepare` from any.
    """

    def __init__(self, settings: Settings, engine: AsrEngine | None, publisher: Publisher, cache: SourceCache, *,
                 engine_unavailable_reason: str | None = None, decode_workers: int | None = None,
                 ended: EndedJobs | None = None, segmenter: Segmenter | None = None) -> None:
        self._settings = settings
        self._segmenter = segmenter
        self._engine = engine
        self._engine_name: EngineName = engine.name if engine is not None else "parakeet"
        self._unavailable = engine_unavailable_reason or "engine not loaded"
        self._publisher = publisher
        self._cache = cache
        self._ended = ended
        self._decoders = ThreadPoolExecutor(
            max_workers=decode_workers or max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="asr-decode"
        )
        self.fallbacks: Counter[str] = Counter()
        """Chunks sent to Deepgram, by reason."""
        self.batch_sizes: list[int] = []
        """Size of every batch handed to the engine (chunks or segments), including retried halves."""

    @property
    def engine(self) -> AsrEngine | None:
        return self._engine

    @property
    def unavailable_reason(self) -> str:
        return self._unavailable

    def close(self) -> None:
        """Stop the decode threads and close the engine."""
        self._decoders.shutdown(wait=True, cancel_futures=True)
        if self._engine is not None:
            self._engine.close()

    def prepare(self, msg: Message) -> Prepared:
        """Parse a message and start decoding its span in the background.

        Called as messages arrive, so decoding the next batch overlaps inference on this one.
        """
        try:
            task = parse(ChunkTask, msg.data)
        except Exception as err:
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            return Prepared(msg, None, retry=reason) if is_transient(err) else Prepared(msg, None, malformed=reason)
        ended = self._ended.state(task.job_id) if self._ended is not None else None
        if ended is not None:
            return Prepared(msg, task, ended=ended)
        audio = self._decoders.submit(self._decode_one, task) if self._engine is not None else None
        return Prepared(msg, task, audio)

    def process_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """Transcribe a batch and publish what it produced; say how to settle each message.

        Returns:
            One :class:`Outcome` per message, in order. Every publish has already
            happened when this returns; ``ack`` outcomes are safe to ack.
        """
        return self.run([self.prepare(m) for m in messages])

    def run(self, batch: Sequence[Prepared]) -> list[Outcome]:
        """:meth:`process_batch` for messages already passed through :meth:`prepare`."""
        started = time.monotonic()
        outcomes: list[Outcome | None] = [None] * len(batch)
        work: list[_Work] = []
        for pos, item in enumerate(batch):
            if item.retry is not None:
                log.warning("message %s cannot be read by this release, will retry: %s", item.inbound.message_id,
                            item.retry)
                outcomes[pos] = Outcome(item.inbound.message_id, "nack", "retry", reason=item.retry)
                continue
            if item.task is None:
                outcomes[pos] = self._malformed(item.inbound, item.malformed or "malformed")
                continue
            if item.ended is not None:
                log.info("job already %s; chunk skipped", item.ended, extra=_ctx(item.task))
                outcomes[pos] = Outcome(item.inbound.message_id, "ack", "skipped", reason=f"job {item.ended}")
                continue
            w = _Work(pos, item.task)
            work.append(w)
            if self._engine is None:
                w.failure, w.failure_detail = "engine_unavailable", self._unavailable
            elif item.audio is not None:
                outcomes[pos] = self._await_audio(item, w)
        ready = [w for w in work if outcomes[w.pos] is None and w.chunk is not None]
        if ready:
            self._transcribe_all(ready)
        wall = time.monotonic() - started
        transcribed = [w for w in work if outcomes[w.pos] is None and w.output is not None]
        total_audio = sum(_sent_s(w) for w in transcribed)
        for w in work:
            if outcomes[w.pos] is not None:
                continue
            # The batch's time, shared by the audio each chunk sent to the engine.
            share = wall * _sent_s(w) / total_audio if total_audio > 0 else wall / max(1, len(transcribed))
            outcomes[w.pos] = self._settle(batch[w.pos].inbound, w, share)
        return [o for o in outcomes if o is not None]

    def _await_audio(self, item: Prepared, w: _Work) -> Outcome | None:
        """Wait for the span's samples; an Outcome when the task ends here instead."""
        assert item.audio is not None
        msg, task = item.inbound, w.task
        try:
            w.chunk = item.audio.result()
        except Exception as err:
            if is_transient(err):  # storage, disk, a cancelled decode: retrying may help
                log.warning("cannot fetch or decode %s, will retry: %s", task.source.uri, err, extra=_ctx(task))
                return Outcome(msg.message_id, "nack", "retry", reason=str(err) or type(err).__name__)
            reason = f"chunk {task.chunk.index} ({task.chunk.start_s:.1f}-{task.chunk.end_s:.1f} s) " \
                     f"of {task.source.uri}: {getattr(err, 'reason', err)}"
            log.error("bad audio: %s", reason, extra=_ctx(task))
            return self._publish_error(msg, task, reason)
        return None

    def _decode_one(self, task: ChunkTask) -> AudioChunk:
        with self._cache.hold(task.source) as path:
            decoded = decode_span(path, task.chunk.start_s, task.decode_end_s, limit_s=task.decode_limit_s,
                                  header_s=task.audio.duration_s)
        chunk = _DecodedChunk(key=f"{task.job_id}/{task.chunk.index}", samples=decoded.samples,
                              offset_s=task.chunk.start_s, corrupt_packets=decoded.corrupt_packets)
        if self._segmenter is not None:
            try:
                chunk.segments = self._segmenter.plan(chunk.samples)
            except Exception:  # the VAD failing is no reason to lose the chunk: send it whole
                log.exception("VAD failed; transcribing the chunk whole", extra=_ctx(task))
        return chunk

    def _transcribe_all(self, items: list[_Work]) -> None:
        """Transcribe whole chunks as one batch, or every chunk's segments sorted by length."""
        window = window_seconds(self._engine)
        units: list[_Unit] = []  # each chunk's in file order
        for w in items:
            assert w.chunk is not None
            spans = getattr(w.chunk, "segments", None)
            if spans is None:
                units.append(_Unit(w, EngineInput(w.chunk)))
            else:
                packed = None if window is None else int(window * SAMPLE_RATE)
                units += [_Unit(w, unit) for unit in segment_inputs(w.chunk, spans, packed)]
        if any(getattr(w.chunk, "segments", None) is not None for w in items):
            for call in length_batches(units, lambda u: len(u.input.audio.samples), self._settings.segment_batch_size):
                self._transcribe(call)
        elif units:
            self._transcribe(units)
        for w in items:
            mine = [u for u in units if u.work is w]
            failed = next((u for u in mine if u.failure is not None), None)
            if failed is not None:
                w.failure, w.failure_detail = failed.failure, failed.failure_detail
                continue
            outs = [u.input.in_file_time(u.output) for u in mine if u.output is not None]
            if len(mine) == 1 and outs:
                w.output = outs[0]
            else:
                w.output = EngineOutput(words=[word for o in outs for word in o.words],
                                        text=" ".join(o.text for o in outs if o.text))

    def _transcribe(self, items: list[_Unit]) -> None:
        """Run the engine; on failure split the batch until single chunks (or segments) fail alone."""
        assert self._engine is not None
        self.batch_sizes.append(len(items))
        try:
            outputs = self._engine.transcribe([u.input.audio for u in items])
            if len(outputs) != len(items):
                raise EngineError(f"engine returned {len(outputs)} outputs for {len(items)} inputs")
        except EngineUnavailableError as err:
            log.error("engine unusable on a batch of %d: %s", len(items), err.reason)
            for w in items:
                w.failure, w.failure_detail = "engine_unavailable", err.reason
            return
        except Exception as err:
            oom = isinstance(err, EngineOOMError)
            detail = err.reason if isinstance(err, EngineError) else f"{type(err).__name__}: {err}"
            if len(items) > 1:
                log.warning("engine %s on a batch of %d, retrying halves: %s",
                            "out of memory" if oom else "failed", len(items), detail)
                half = len(items) // 2
                self._transcribe(items[:half])
                self._transcribe(items[half:])
                return
            if not isinstance(err, EngineError):
                log.exception("unexpected engine failure on %s", items[0].input.audio.key)
            items[0].failure = "oom" if oom else "engine_error"
            items[0].failure_detail = detail
            return
        for u, out in zip(items, outputs, strict=True):
            u.output = out

    def _settle(self, msg: Message, w: _Work, processing_s: float) -> Outcome:
        task = w.task
        if w.output is not None:
            result = ChunkResult.for_task(
                task, self._engine_name,
                words=_within_span(w.output.words, task.chunk.start_s, task.decode_end_s or math.inf),
                audio_seconds=_duration(w),
                processing_seconds=processing_s,
                corrupt_packets=getattr(w.chunk, "corrupt_packets", 0),
                speech_s=round(_sent_s(w), 3),
                skipped_s=round(max(0.0, _duration(w) - _sent_s(w)), 3),
            )
            return self._publish(msg, task, names.TOPIC_ASR_RESULTS, result, {ATTR_TYPE: TYPE_CHUNK_RESULT}, "result")
        reason = w.failure or "engine_error"
        if not self._settings.enable_fallback:
            return self._publish_error(msg, task, f"chunk {task.chunk.index} failed on the GPU engine "
                                                  f"({reason}: {w.failure_detail}) and ENABLE_FALLBACK=false")
        forwarded = task.to_deepgram(reason)
        outcome = self._publish(msg, task, names.TOPIC_ASR_DEEPGRAM, forwarded, None, "fallback", reason=reason)
        if outcome.action == "ack":
            self.fallbacks[reason] += 1
            log.warning("chunk sent to Deepgram (%s: %s); fallbacks so far: %s", reason, w.failure_detail,
                        dict(self.fallbacks), extra=_ctx(task))
        return outcome

    def _malformed(self, msg: Message, reason: str) -> Outcome:
        """Ack a task that cannot be read; when its job id can, that job fails with the reason."""
        failed = JobFailed.unreadable_task(msg.data, reason, "ASR worker")
        log.error("dropping malformed message %s: %s", msg.message_id, reason,
                  extra={"job_id": failed.job_id if failed else None})
        if failed is None:
            return Outcome(msg.message_id, "ack", "malformed", reason=reason)
        try:
            self._publisher.publish(names.TOPIC_ASR_RESULTS, failed, failed.attributes())
        except Exception as err:
            log.warning("publishing the failure of %s failed, will retry: %s", failed.job_id, err)
            return Outcome(msg.message_id, "nack", "retry", reason=f"publish to {names.TOPIC_ASR_RESULTS} failed: {err}")
        return Outcome(msg.message_id, "ack", "malformed", [(names.TOPIC_ASR_RESULTS, failed)], reason)

    def _publish_error(self, msg: Message, task: ChunkTask, reason: str) -> Outcome:
        result = ChunkResult.for_task(task, self._engine_name, error=reason)
        return self._publish(msg, task, names.TOPIC_ASR_RESULTS, result, {ATTR_TYPE: TYPE_CHUNK_RESULT}, "error",
                             reason=reason)

    def _publish(self, msg: Message, task: ChunkTask, topic: str, body: Contract, attrs: dict[str, str] | None,
                 kind: Kind, reason: str | None = None) -> Outcome:
        try:
            self._publisher.publish(topic, body, attrs)
        except Exception as err:  # TransientError from the adapter, or anything else: retry the message
            log.warning("publishing to %s failed, will retry: %s", topic, err, extra=_ctx(task))
            return Outcome(msg.message_id, "nack", "retry", reason=f"publish to {topic} failed: {err}")
        return Outcome(msg.message_id, "ack", kind, [(topic, body)], reason)


@dataclass
class _DecodedChunk(AudioChunk):
    """A chunk's samples, with the packets skipped as corrupt in decoding them."""

    corrupt_packets: int = 0
    segments: list[Span] | None = None
    """The spans of it to transcribe (samples from its start), once the VAD ran; None for all of it."""


def _duration(w: _Work) -> float:
    return w.chunk.duration_s if w.chunk is not None else 0.0


def _sent_s(w: _Work) -> float:
    """Seconds of the chunk sent to the engine: its segments, or all of it."""
    spans = getattr(w.chunk, "segments", None)
    return _duration(w) if spans is None else speech_seconds(spans)


def _within_span(words: list[Word], start_s: float, end_s: float) -> list[Word]:
    """Words spoken in ``[start_s, end_s)`` (by :func:`~parascribe.contracts.in_span`), clamped to the span."""
    kept = []
    for word in words:
        if in_span(word.mid, start_s, end_s):
            s = min(max(word.start, start_s), end_s)
            e = min(max(word.end, s), end_s)
            kept.append(word if (s, e) == (word.start, word.end) else word.model_copy(update={"start": s, "end": e}))
    return kept


def _ctx(task: ChunkTask) -> dict[str, object]:
    return {"job_id": task.job_id, "chunk_index": task.chunk.index}

"""Typed, versioned contracts between services.

Every message carries ``schema_version``. Readers ignore fields they do not know, so a field can
be added without breaking an older reader; a change that breaks readers bumps the version. Messages
carry references (gs:// URIs, offsets), never audio bytes. Times are seconds in *file time*.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parascribe.errors import MalformedMessageError, NewerSchemaError
from parascribe.plan_contract import PlanExplanation

SCHEMA_VERSION = 1
_JOB_ID = re.compile(r"j[0-9a-f]{20}")

DECODE_MARGIN_MIN_S = 30.0
"""The last chunk decodes at least this far past its planned end before audio there fails it (see ChunkTask)."""
DECODE_MARGIN_FRACTION = 0.10
"""...or this share of the file's planned duration past it, when that is more."""

Route = Literal["gpu", "deepgram"]
"""Where a chunk is transcribed: the GPU worker or Deepgram."""
EngineName = Literal["parakeet", "offline", "deepgram"]
JobState = Literal["queued", "transcribing", "done", "failed"]
Method = Literal["auto", "gpu", "deepgram", "hybrid"]

# Pub/Sub attribute that tells a results-topic reader which model the body holds.
ATTR_TYPE = "type"
TYPE_CHUNK_RESULT = "chunk_result"
TYPE_JOB_FAILED = "job_failed"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Value(BaseModel):
    """A value inside a contract (a word, a summary): no version of its own, tolerant of unknown fields."""

    model_config = ConfigDict(extra="ignore")


class Contract(Value):
    """Base of every message and stored record: versioned, tolerant of unknown fields."""

    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


C = TypeVar("C", bound=Contract)


def parse(cls: type[C], data: bytes | str) -> C:
    """Parse a message body or a stored record into ``cls``.

    Raises:
        MalformedMessageError: the body is not JSON or does not match ``cls``.
    """
    try:
        obj = cls.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise MalformedMessageError(f"malformed {cls.__name__}: {where}: {first['msg']}") from None
    if obj.schema_version > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"{cls.__name__} schema_version {obj.schema_version} is newer than this reader ({SCHEMA_VERSION})"
        )
    return obj


def job_id_of(data: bytes | str) -> str | None:
    """The job id of a message that may not parse as its contract, when one can be read from it.

    A malformed message for a known job fails that job with a reason, rather than
    vanish; garbage yields None.
    """
    try:
        body = json.loads(data)
    except (ValueError, TypeError):
        return None
    job_id = body.get("job_id") if isinstance(body, dict) else None
    return job_id if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) else None


def make_job_id(bucket: str, name: str, generation: str | int) -> str:
    """Deterministic job id: one upload (bucket, object, generation) is one job."""
    digest = hashlib.sha256(f"{bucket}\x00{name}\x00{generation}".encode()).hexdigest()
    return f"j{digest[:20]}"


class SourceRef(Contract):
    """The uploaded object a job transcribes."""

    bucket: str
    name: str
    generation: str
    size: int = Field(ge=0)
    content_type: str | None = None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    @property
    def job_id(self) -> str:
        return make_job_id(self.bucket, self.name, self.generation)


class Origin(Value):
    """Where an upload made on a user's behalf came from, and whom to tell: its ``parascribe-*`` metadata."""

    request_id: str | None = None
    source_url: str | None = None
    title: str | None = None
    callback_url: str | None = None


class UploadEvent(Contract):
    """An OBJECT_FINALIZE in the upload bucket, from either trigger shape.

    ``method``, ``deadline_minutes`` and ``language`` come from the object's custom metadata
    (``parascribe-*``, :mod:`parascribe.names`): how a client asks for other than the defaults.
    """

    source: SourceRef
    event_time: datetime | None = None
    method: Method | None = None
    deadline_minutes: float | None = Field(default=None, gt=0)
    language: str | None = None
    metadata_error: str | None = None
    """Why the ``parascribe-*`` metadata was rejected; the router fails the job with this reason."""
    origin: Origin = Field(default_factory=Origin)


class AudioInfo(Contract):
    """What the probe learnt from the container header."""

    duration_s: float = Field(ge=0)
    sample_rate: int = Field(ge=0)
    channels: int = Field(ge=0)
    codec: str
    container: str


class ChunkSpec(Contract):
    """One chunk: the span it decodes and the core span it owns.

    ``[start_s, end_s)`` includes the overlap; ``[core_start_s, core_end_s)``
    does not. A word belongs to the chunk whose core span holds its midpoint.
    """

    index: int = Field(ge=0)
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    core_start_s: float = Field(ge=0)
    core_end_s: float = Field(gt=0)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class PlannedChunk(ChunkSpec):
    path: Route


class JobManifest(Contract):
    """Written once by the router under ``jobs/<job_id>/manifest.json``."""

    job_id: str
    source: SourceRef
    audio: AudioInfo
    method: Method
    deadline_minutes: float
    language: str | None = None
    """The spoken language the upload named (:mod:`parascribe.languages`); None: the deployment's default."""
    chunks: list[PlannedChunk]
    estimated_cost_usd: float = 0.0
    estimated_deepgram_only_usd: float = 0.0
    estimated_finish_s: float = 0.0
    """The planner's estimate of how long the job takes; the sweeper allows the later of this and the deadline."""
    origin: Origin = Field(default_factory=Origin)
    plan: PlanExplanation | None = None
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)


class ChunkTask(Contract):
    """One chunk to transcribe, published to ``asr-gpu`` or ``asr-deepgram``."""

    job_id: str
    source: SourceRef
    audio: AudioInfo
    chunk: ChunkSpec
    n_chunks: int = Field(ge=1)
    path: Route
    whole_file: bool = False
    """True when the chunk is the whole file: Deepgram then fetches it by signed URL."""
    language: str | None = None
    fallback_reason: str | None = None
    fallback_from: Route | None = None
    submitted_at: datetime = Field(default_factory=utcnow)

    @property
    def decode_end_s(self) -> float | None:
        """Where decoding stops; None (the end of the stream) for the last chunk.

        A header's duration can be an estimate (a VBR mp3 without a Xing header),
        so the last chunk reads to the real end rather than cut off the tail, up to
        :attr:`decode_limit_s`.
        """
        return None if self.chunk.index == self.n_chunks - 1 else self.chunk.end_s

    @property
    def decode_limit_s(self) -> float:
        """The furthest decoding may read: the chunk's end, or for the last one its end plus a margin.

        The margin is ``max(DECODE_MARGIN_MIN_S, DECODE_MARGIN_FRACTION × duration)``. A header can understate
        the length by any amount (an mp3 whose Xing header says 0.6 s may hold hours), so audio past this
        fails the chunk with a reason instead of being decoded, and billed, without bound.
        """
        if self.decode_end_s is not None:
            return self.decode_end_s
        return self.chunk.end_s + max(DECODE_MARGIN_MIN_S, DECODE_MARGIN_FRACTION * self.audio.duration_s)

    def to_deepgram(self, reason: str) -> ChunkTask:
        """This GPU task, sent to Deepgram instead because of ``reason``."""
        return self.model_copy(update={
            "path": "deepgram", "fallback_from": "gpu", "fallback_reason": reason, "submitted_at": utcnow(),
        })


def midpoint(start: float, end: float) -> float:
    """The instant a word is judged by."""
    return (start + end) / 2


def in_span(mid: float, lo: float, hi: float) -> bool:
    """The one ownership rule: a word belongs to the span ``[lo, hi)`` that holds its midpoint.

    Chunks own words by their core spans, split halves by the seam, and a chunk's
    result keeps only words spoken in its decoded span, all by this rule, so no word
    is lost or doubled where two spans meet.
    """
    return lo <= mid < hi


class Word(Value):
    """One word in file time. ``text`` is the punctuated display form."""

    text: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    confidence: float = Field(default=1.0, ge=0, le=1)
    speaker: int | None = None

    @property
    def mid(self) -> float:
        return midpoint(self.start, self.end)


class Segment(Value):
    text: str
    start: float
    end: float
    speaker: int | None = None


class ChunkResult(Contract):
    """A transcribed (or permanently failed) chunk, published to ``asr-results``."""

    job_id: str
    chunk_index: int = Field(ge=0)
    n_chunks: int = Field(ge=1)
    engine: EngineName
    path: Route
    words: list[Word] = Field(default_factory=list)
    audio_seconds: float = Field(ge=0)
    processing_seconds: float = Field(ge=0)
    billed_seconds: float = Field(default=0.0, ge=0)
    fallback_reason: str | None = None
    corrupt_packets: int = Field(default=0, ge=0)
    """Packets of the chunk's span that would not decode and were skipped (as silence)."""
    speech_s: float | None = Field(default=None, ge=0)  # seconds sent to the engine; None: all (not measured)
    skipped_s: float = Field(default=0.0, ge=0)  # seconds left out as non-speech
    error: str | None = None
    """Set when the chunk failed permanently; the job then fails with this reason."""
    created_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def for_task(cls, task: ChunkTask, engine: EngineName, **fields: object) -> ChunkResult:
        """The result of ``task``: its job, chunk and fallback reason, plus ``fields``."""
        base: dict[str, object] = {
            "job_id": task.job_id,
            "chunk_index": task.chunk.index,
            "n_chunks": task.n_chunks,
            "engine": engine,
            "path": task.path,
            "fallback_reason": task.fallback_reason,
            "audio_seconds": 0.0,
            "processing_seconds": 0.0,
        }
        return cls.model_validate(base | fields)


class JobFailed(Contract):
    """Published to ``asr-results`` when a job fails before any chunk exists."""

    job_id: str
    reason: str
    source: SourceRef | None = None
    origin: Origin = Field(default_factory=Origin)

    @classmethod
    def unreadable_task(cls, data: bytes, why: str, worker: str) -> JobFailed | None:
        """The failure of the job a chunk task that ``worker`` cannot read belongs to; None without a job id."""
        job_id = job_id_of(data)
        if job_id is None:
            return None
        return cls(job_id=job_id, reason=f"a chunk task for this job could not be read ({why}); "
                                         f"the router and the {worker} may run different releases")

    def attributes(self) -> dict[str, str]:
        """The Pub/Sub attributes it is published with on ``asr-results``."""
        return {ATTR_TYPE: TYPE_JOB_FAILED, "job_id": self.job_id}


class WebhookState(Value):
    state: Literal["none", "pending", "delivered", "webhook_failed", "disabled"] = "none"
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None


class JobSummary(Value):
    """What a finished job amounted to: written on the status, sent in the webhook."""

    duration_s: float = 0.0
    word_count: int = 0
    segment_count: int = 0
    chunks: int = 0
    engines: list[str] = Field(default_factory=list)
    processing_seconds: float = 0.0
    cost_usd: float = 0.0
    cost_by_method: dict[str, float] = Field(default_factory=dict)
    deepgram_only_usd: float = 0.0
    savings_usd: float = 0.0
    fallbacks: int = 0
    corrupt_packets: int = 0
    """Packets skipped as corrupt, summed over the chunks (one in an overlap counts once per chunk)."""
    speech_s: float = 0.0
    skipped_s: float = 0.0
    language: str | None = None


class JobStatus(Contract):
    """``jobs/<job_id>/status.json``: what a person or the CLI reads."""

    job_id: str
    state: JobState
    chunks_done: int = 0
    chunks_total: int = 0
    reason: str | None = None
    source: SourceRef | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    engines: list[str] = Field(default_factory=list)
    webhook: WebhookState = Field(default_factory=WebhookState)
    callback: WebhookState | None = None  # the delivery to origin.callback_url, when the upload asked for one
    origin: Origin = Field(default_factory=Origin)
    summary: JobSummary | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def progress(self) -> str:
        if self.state == "transcribing":
            return f"transcribing {self.chunks_done}/{self.chunks_total}"
        return self.state


class FinalOutcome(Contract):
    """``jobs/<id>/final.json``: the claim on finishing a job, holding everything needed to complete it.

    Whoever creates it sets the final status, sends the webhook and records the
    metrics. If that process dies half-way, anyone may complete the job from here.
    """

    job_id: str
    state: JobState
    reason: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    engines: list[str] = Field(default_factory=list)
    summary: JobSummary | None = None
    source: SourceRef | None = None
    origin: Origin = Field(default_factory=Origin)
    chunks_done: int = 0
    chunks_total: int = 0
    created_at: datetime | None = None
    finished_at: datetime
    claimed_at: datetime


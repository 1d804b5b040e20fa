"""Contracts: versioned, tolerant of unknown fields, strict about what they need."""

from __future__ import annotations

import pytest

from parascribe.contracts import (
    SCHEMA_VERSION,
    AudioInfo,
    ChunkResult,
    ChunkSpec,
    ChunkTask,
    JobStatus,
    SourceRef,
    Word,
    job_id_of,
    make_job_id,
    parse,
)
from parascribe.errors import MalformedMessageError, NewerSchemaError, is_transient

SOURCE = SourceRef(bucket="uploads", name="talks/keynote.mp3", generation="1700000000000001", size=1234)


def test_job_id_is_deterministic_and_depends_on_generation() -> None:
    assert make_job_id("uploads", "a.wav", "1") == make_job_id("uploads", "a.wav", 1)
    assert make_job_id("uploads", "a.wav", "1") != make_job_id("uploads", "a.wav", "2")
    assert make_job_id("uploads", "a.wav", "1") != make_job_id("other", "a.wav", "1")
    assert SOURCE.job_id == make_job_id("uploads", "talks/keynote.mp3", "1700000000000001")
    assert SOURCE.uri == "gs://uploads/talks/keynote.mp3"


def test_chunk_task_round_trips_and_carries_its_version() -> None:
    task = ChunkTask(
        job_id=SOURCE.job_id, source=SOURCE,
        audio=AudioInfo(duration_s=60, sample_rate=44100, channels=2, codec="mp3", container="mp3"),
        chunk=ChunkSpec(index=1, start_s=13, end_s=32, core_start_s=15, core_end_s=30), n_chunks=4, path="gpu",
    )
    raw = task.to_bytes()
    assert b'"schema_version":%d' % SCHEMA_VERSION in raw
    back = parse(ChunkTask, raw)
    assert back == task
    assert back.chunk.duration_s == 19
    assert back.decode_end_s == 32
    last = task.model_copy(update={"chunk": task.chunk.model_copy(update={"index": 3})})
    assert last.decode_end_s is None, "the last chunk decodes to the end of the stream"


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    raw = (
        b'{"schema_version":1,"job_id":"j1","chunk_index":0,"n_chunks":1,"engine":"deepgram","path":"deepgram",'
        b'"audio_seconds":1,"processing_seconds":0.5,"added_in_a_later_release":true}'
    )
    assert parse(ChunkResult, raw).engine == "deepgram"


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        (b"not json", "malformed ChunkResult"),
        (b'{"job_id":"j1"}', "chunk_index"),
        (b'{"job_id":"j1","chunk_index":-1,"n_chunks":1,"engine":"offline","path":"gpu","audio_seconds":1,'
         b'"processing_seconds":1}', "chunk_index"),
        (b'{"job_id":"j1","chunk_index":0,"n_chunks":1,"engine":"whisper","path":"gpu","audio_seconds":1,'
         b'"processing_seconds":1}', "engine"),
    ],
)
def test_malformed_messages_raise_a_permanent_error(raw: bytes, phrase: str) -> None:
    with pytest.raises(MalformedMessageError, match=phrase):
        parse(ChunkResult, raw)


def test_newer_schema_version_is_retried_not_dropped() -> None:
    raw = b'{"schema_version":99,"job_id":"j1","reason":"x"}'
    from parascribe.contracts import JobFailed

    with pytest.raises(NewerSchemaError, match="schema_version 99 is newer than this reader") as info:
        parse(JobFailed, raw)
    assert is_transient(info.value), "a rolling deploy must nack it for a newer reader, not ack and lose it"


@pytest.mark.parametrize(
    ("raw", "job_id"),
    [
        (b'{"job_id":"j0123456789abcdef0123","chunk_index":"x"}', "j0123456789abcdef0123"),
        (b'{"job_id":"../../etc","chunk_index":0}', None),
        (b'{"job_id":7}', None),
        (b"[1, 2]", None),
        (b"\xff not json", None),
    ],
)
def test_the_job_id_of_a_malformed_message_is_read_only_when_it_is_a_job_id(raw: bytes, job_id: str | None) -> None:
    assert job_id_of(raw) == job_id


def test_word_midpoint_and_status_progress() -> None:
    assert Word(text="hi", start=1.0, end=2.0).mid == 1.5
    status = JobStatus(job_id="j", state="transcribing", chunks_done=3, chunks_total=8)
    assert status.progress == "transcribing 3/8" and not status.final
    assert JobStatus(job_id="j", state="failed", reason="empty").final

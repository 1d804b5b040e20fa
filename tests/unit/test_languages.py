"""A job's spoken language: checked where it enters, routed to the path that can transcribe it, carried to the
Deepgram request and into the transcript."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from parascribe import names
from parascribe.api.models import JobBody, TranscribeBody, UploadBody
from parascribe.contracts import JobManifest
from parascribe.errors import PermanentError
from parascribe.languages import gpu_transcribes, parse_language
from parascribe.router.events import parse_event
from parascribe.router.policy import BudgetExhaustedError, BudgetInput, plan_job
from tests.unit.test_budget import HOUR, IDLE, options
from tests.unit.test_router import Stack, pubsub_event, resource, wav


@pytest.mark.parametrize("tag", ["en", "es", "pt-BR", "zh-TW", "es-419", "multi", "yue"])
def test_language_tags_are_kept_as_written(tag: str) -> None:
    assert parse_language(f"  {tag} ") == tag


@pytest.mark.parametrize("text", ["", "e", "Spanish", "es_ES", "es;rm -rf", "en-", "../etc", "en-US-" + "x" * 40])
def test_what_is_not_a_language_tag_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="is not a language tag such as en, es, pt-BR or multi"):
        parse_language(text)


def test_only_english_or_the_default_is_for_the_gpu() -> None:
    assert all(gpu_transcribes(t) for t in (None, "en", "EN", "en-US", "en-gb"))
    assert not any(gpu_transcribes(t) for t in ("es", "multi", "eng", "fr-CA", "english"))


def test_the_router_reads_the_language_from_the_object_metadata() -> None:
    body = resource("uploads", "a.wav", 7, 100, {"parascribe-language": " pt-BR "})
    upload = parse_event(pubsub_event(body))
    assert upload is not None and (upload.language, upload.metadata_error) == ("pt-BR", None)
    blank = parse_event(pubsub_event(resource("uploads", "b.wav", 7, 100, {"parascribe-language": ""})))
    assert blank is not None and blank.language is None and blank.metadata_error is None
    bad = parse_event(pubsub_event(resource("uploads", "c.wav", 7, 100, {"parascribe-language": "Klingon please"})))
    assert bad is not None and bad.language is None
    assert bad.metadata_error == "parascribe-language: language 'Klingon please' is not a language tag such as en, " \
                                 "es, pt-BR or multi"


# --- the plan ---

def test_another_language_sends_every_chunk_to_deepgram_and_says_why() -> None:
    english, _ = plan_job(HOUR, options(), "auto", HOUR, IDLE, language="en-US")
    assert {c.path for c in english.chunks} == {"gpu"}, "English stays on the cheap path"
    plan, why = plan_job(HOUR, options(), "auto", HOUR, IDLE, language="es")
    assert plan.method == "deepgram" and {c.path for c in plan.chunks} == {"deepgram"}
    assert (why.language, why.spill_reason, why.gpu_chunks, why.requested_method) == ("es", "language", 0, "auto")
    assert "language es: the GPU transcribes English only" in why.summary
    hybrid, _ = plan_job(2 * HOUR, options(), "hybrid", HOUR, IDLE, language="multi")
    assert {c.path for c in hybrid.chunks} == {"deepgram"}


def test_asking_the_gpu_for_another_language_fails_with_a_reason() -> None:
    with pytest.raises(PermanentError) as err:
        plan_job(HOUR, options(), "gpu", HOUR, IDLE, language="fr")
    assert "language is 'fr'" in err.value.reason and "English only" in err.value.reason
    assert "re-upload with method auto or deepgram" in err.value.reason


def test_a_spent_budget_under_gpu_only_refuses_a_job_that_only_deepgram_can_do() -> None:
    spent = BudgetInput(10.0, 10.0, "gpu_only", "2026-12")
    with pytest.raises(BudgetExhaustedError) as err:
        plan_job(HOUR, options(), "auto", HOUR, IDLE, spent, language="de")
    assert "in language 'de' it can only go to Deepgram" in err.value.reason
    assert "re-upload with method deepgram to spend anyway" in err.value.reason
    # Asking for Deepgram by name wins over gpu_only, as it does for English.
    plan, why = plan_job(HOUR, options(), "deepgram", HOUR, IDLE, spent, language="de")
    assert {c.path for c in plan.chunks} == {"deepgram"} and "budget exhausted" in why.summary


# --- through the router ---

def test_the_router_plans_tasks_for_deepgram_with_the_language_and_keeps_it_in_the_manifest() -> None:
    stack = Stack(chunk_duration_minutes=0.25, chunk_overlap_seconds=0)
    body = stack.upload("charla.wav", wav(40.0), {"parascribe-language": "es"})
    stack.router.handle_event(pubsub_event(body))
    tasks = stack.tasks()
    assert tasks and {t for t, _, _ in tasks} == {names.TOPIC_ASR_DEEPGRAM}
    assert {task.language for _, task, _ in tasks} == {"es"}
    job_id = tasks[0][1].job_id
    manifest = stack.jobs.manifest(job_id)
    assert isinstance(manifest, JobManifest) and manifest.language == "es"
    assert manifest.plan is not None and manifest.plan.spill_reason == "language"


def test_the_router_fails_a_gpu_only_job_in_another_language_with_the_reason() -> None:
    stack = Stack()
    body = stack.upload("rede.wav", wav(5.0), {"parascribe-language": "de", "parascribe-method": "gpu"})
    stack.router.handle_event(pubsub_event(body))
    [(failed, _)] = stack.failures()
    assert "the GPU path transcribes English only" in failed.reason and stack.tasks() == []


def test_english_uploads_plan_as_before() -> None:
    stack = Stack(chunk_duration_minutes=0.25, chunk_overlap_seconds=0)
    stack.router.handle_event(pubsub_event(stack.upload("talk.wav", wav(40.0), {"parascribe-language": "en"})))
    assert {t for t, _, _ in stack.tasks()} == {names.TOPIC_ASR_GPU}
    assert {task.language for _, task, _ in stack.tasks()} == {"en"}


# --- the API's bodies and the transcript ---

@pytest.mark.parametrize("model, fields", [
    (TranscribeBody, {"video_url": "https://a.example/v"}),
    (JobBody, {"url": "https://a.example/v"}),
    (UploadBody, {"filename": "a.wav"}),
])
def test_every_api_body_takes_a_checked_language(model: type, fields: dict[str, str]) -> None:
    assert model(**fields, language=" es-419 ").language == "es-419"
    assert model(**fields, language="").language is None
    assert model(**fields).language is None
    with pytest.raises(ValidationError, match="not a language tag"):
        model(**fields, language="es-ES; DROP")


def test_the_transcript_json_names_the_language() -> None:
    from parascribe.contracts import AudioInfo, SourceRef
    from parascribe.costs import Prices
    from parascribe.merger.formats import to_json
    from parascribe.merger.stitch import Transcript
    from parascribe.merger.summary import summarise

    source = SourceRef(bucket="uploads", name="a.wav", generation="1", size=10)
    audio = AudioInfo(duration_s=4.0, sample_rate=16_000, channels=1, codec="pcm_s16le", container="wav")
    manifest = JobManifest(job_id="j1", source=source, audio=audio, method="deepgram", deadline_minutes=60,
                           language="es", chunks=[])
    summary = summarise(manifest, [], Prices(deepgram_per_second=0.0001, gpu_instance_per_second=0.0002))
    doc = json.loads(to_json(Transcript(words=[], segments=[], duration_s=4.0), "j1", source, summary))
    assert summary.language == "es" and doc["metadata"]["language"] == "es"

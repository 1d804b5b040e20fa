"""Request and response bodies of the HTTP API, as OpenAPI shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parascribe import names
from parascribe.contracts import Method
from parascribe.languages import MAX_LENGTH, optional_language

TRANSCRIPT_FORMATS = names.OUTPUT_FORMATS


class JobOptions(BaseModel):
    """How to transcribe; each defaults to the deployment's settings."""

    model_config = ConfigDict(extra="forbid")

    method: Method | None = Field(None, description="auto | gpu | deepgram | hybrid")
    deadline_minutes: float | None = Field(None, gt=0, description="finish within this many minutes")
    language: str | None = Field(None, max_length=MAX_LENGTH, examples=["en", "es", "pt-BR", "multi"],
                                 description="the spoken language (default en); the GPU path transcribes English "
                                             "only, so any other language goes to Deepgram")
    callback_url: str | None = Field(None, max_length=2048,
                                     description="POSTed a signed webhook when the job ends (Standard Webhooks)")

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return optional_language(value)


class TranscribeBody(JobOptions):
    """``POST /transcribe``: the original single-URL call."""

    model_config = ConfigDict(extra="ignore")

    video_url: str = Field(max_length=2048, description="http(s) URL of a video or audio page or file")


class JobBody(JobOptions):
    """``POST /v1/jobs``: exactly one of ``url`` or ``gcs_uri``."""

    url: str | None = Field(None, max_length=2048, description="http(s) URL to fetch (yt-dlp, HLS, plain files)")
    gcs_uri: str | None = Field(None, max_length=2048, description="gs://bucket/object the API may read")

    @model_validator(mode="after")
    def _one_source(self) -> JobBody:
        if (self.url is None) == (self.gcs_uri is None):
            raise ValueError("give exactly one of url or gcs_uri")
        return self


class UploadBody(JobOptions):
    """``POST /v1/uploads``: a file the client will upload itself."""

    filename: str = Field(min_length=1, max_length=1024)
    content_type: str | None = Field(None, max_length=255)
    size: int | None = Field(None, ge=1, description="bytes; binds the session to exactly this size")
    origin: str | None = Field(None, max_length=2048,
                               description="browser origin that will upload (CORS on the session)")


class Accepted(BaseModel):
    job_id: str = Field(description="the request id; GET status_url until the job ends")
    status_url: str
    status: Literal["accepted", "submitted"] = "accepted"


class UploadSession(BaseModel):
    job_id: str = Field(description="the request id")
    upload_url: str = Field(description="PUT the file's bytes here (a GCS resumable session, valid for a week)")
    upload_uri: str = Field(description="gs:// URI the upload creates")
    status_url: str


class JobList(BaseModel):
    jobs: list[dict[str, Any]]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class Problem(BaseModel):
    detail: str

"""Topic, subscription and bucket names, defined once.

Code, the local stack and Terraform (via ``parascribe names --tfvars``) all read
them from here. A deployment may prefix bucket names (``BUCKET_PREFIX``) because
bucket names are global in GCP; topic names are per project and never change.
"""

from __future__ import annotations

from dataclasses import dataclass

TOPIC_AUDIO_UPLOADED = "audio-uploaded"
TOPIC_ASR_GPU = "asr-gpu"
TOPIC_ASR_DEEPGRAM = "asr-deepgram"
TOPIC_ASR_RESULTS = "asr-results"
TOPIC_DEAD_LETTER = "dead-letter"
TOPIC_INGEST_REQUESTS = "ingest-requests"

SUB_ROUTER = "router-push"
SUB_ASR_GPU = "asr-gpu-pull"
SUB_ASR_DEEPGRAM = "asr-deepgram-push"
SUB_MERGER = "merger-push"
SUB_DEAD_LETTER = "dead-letter-push"
SUB_INGEST = "ingest-pull"

# Custom metadata on an uploaded object: how a client asks for something other than the defaults, and where
# an upload made on a user's behalf came from. The router reads them into the job's manifest.
META_METHOD = "parascribe-method"
META_DEADLINE = "parascribe-deadline-minutes"
META_LANGUAGE = "parascribe-language"
META_CALLBACK_URL = "parascribe-callback-url"
META_REQUEST_ID = "parascribe-request-id"
META_SOURCE_URL = "parascribe-source-url"
META_TITLE = "parascribe-title"

# Where uploads made on a user's behalf land in the uploads bucket, under their request id.
API_UPLOAD_PREFIX = "api/"
"""``api/<request_id>/<file>``: resumable uploads and gs:// copies made by the API."""
INGEST_UPLOAD_PREFIX = "ingest/"
"""``ingest/<request_id>/<title>``: audio the ingest worker fetched from a URL."""

OUTPUT_FORMATS: tuple[str, ...] = ("json", "txt", "srt", "vtt", "words.csv", "segments.csv")
"""The merger's outputs, by the names a status's ``outputs`` and ``?format=`` use; each object ends ``.<format>``."""

BUCKET_UPLOADS = "uploads"
BUCKET_TRANSCRIPTS = "transcripts"
BUCKET_STATE = "state"
BUCKET_MODELS = "models"
"""Model weights (.nemo) that the ASR worker mounts read-only in the cloud."""


@dataclass(frozen=True)
class Subscription:
    """A subscription and where it delivers."""

    name: str
    topic: str
    push_path: str | None
    """HTTP path on the owning service for push delivery; None for streaming pull."""
    service: str
    ack_deadline_s: int = 60
    max_delivery_attempts: int = 5
    dead_letter: bool = True


SUBSCRIPTIONS: tuple[Subscription, ...] = (
    Subscription(SUB_ROUTER, TOPIC_AUDIO_UPLOADED, "/", "router"),
    # Streaming pull extends each lease itself, so a short deadline costs nothing while the worker lives and
    # brings a dead worker's chunks back within a minute (the client asks the same of its stream).
    Subscription(SUB_ASR_GPU, TOPIC_ASR_GPU, None, "asr_worker", ack_deadline_s=60),
    # Deepgram auth errors are nacked until someone fixes the key: 100 attempts at up to 600 s apart keep a
    # chunk about 16 hours before it is dead-lettered; the sweeper ends its job at the deadline plus grace.
    Subscription(SUB_ASR_DEEPGRAM, TOPIC_ASR_DEEPGRAM, "/pubsub", "deepgram_worker", ack_deadline_s=600,
                 max_delivery_attempts=100),
    Subscription(SUB_MERGER, TOPIC_ASR_RESULTS, "/pubsub", "merger"),
    # The dead-letter topic itself has no dead-letter policy: its handler always acks.
    Subscription(SUB_DEAD_LETTER, TOPIC_DEAD_LETTER, "/dead-letter", "merger", dead_letter=False,
                 max_delivery_attempts=0),
    # A download of a six-hour VOD outlasts any push request, so the ingest worker pulls and extends its own
    # leases, as the ASR worker does; a dead worker's request comes back within a minute.
    Subscription(SUB_INGEST, TOPIC_INGEST_REQUESTS, None, "ingest_worker", ack_deadline_s=60),
)

TOPICS: tuple[str, ...] = (
    TOPIC_AUDIO_UPLOADED,
    TOPIC_ASR_GPU,
    TOPIC_ASR_DEEPGRAM,
    TOPIC_ASR_RESULTS,
    TOPIC_DEAD_LETTER,
    TOPIC_INGEST_REQUESTS,
)

BUCKETS: tuple[str, ...] = (BUCKET_UPLOADS, BUCKET_TRANSCRIPTS, BUCKET_STATE, BUCKET_MODELS)


def topic_path(project: str, topic: str) -> str:
    """The full resource name of a topic."""
    return f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    """The full resource name of a subscription."""
    return f"projects/{project}/subscriptions/{subscription}"


def bucket_name(base: str, prefix: str = "") -> str:
    """The real bucket name for ``base`` under an optional deployment prefix."""
    return f"{prefix}-{base}" if prefix else base

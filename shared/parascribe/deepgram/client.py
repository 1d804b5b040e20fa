"""Deepgram pre-recorded transcription behind one small adapter.

:class:`DeepgramTranscriber` wraps ``deepgram-sdk`` 7: it builds the client once,
points it at ``DEEPGRAM_BASE_URL`` when set (the local Deepgram-compatible
server), and turns every answer into file-time :class:`~parascribe.contracts.Word`
objects and every failure into an exception that says whether to retry:

- 400 and other client errors (unsupported or corrupt audio, a URL Deepgram
  cannot fetch) → :class:`~parascribe.errors.PermanentError` with Deepgram's message;
- 401/403 (and 402, no credits) → :class:`~parascribe.errors.DeepgramAuthError`,
  logged loudly without the key and counted in the ``deepgram_auth_errors`` metric;
- 408/409/429/5xx, timeouts and connection failures →
  :class:`~parascribe.errors.TransientError`, raised only after the SDK's own
  retries (exponential backoff with jitter, honouring ``Retry-After`` up to 60 s).

The adapter reads only :class:`DeepgramOptions`, built once from the settings
with :meth:`DeepgramOptions.from_settings`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from deepgram import DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from pydantic import SecretStr

from parascribe import metric_names
from parascribe.config import Settings
from parascribe.contracts import Word
from parascribe.errors import ConfigError, DeepgramAuthError, PermanentError, TransientError
from parascribe.metrics import MetricsExporter, NullExporter

log = logging.getLogger(__name__)

LOCAL_PLACEHOLDER_KEY = "local-deepgram-key"
"""Sent to a local server when no ``DEEPGRAM_API_KEY`` is set; never used against the real API."""

DEFAULT_MAX_RETRIES = 3
_AUTH_STATUSES = (401, 402, 403)


@dataclass(frozen=True)
class DeepgramOptions:
    """What the Deepgram adapter reads from the settings: endpoint, key, request options and timeout.

    The key stays a :class:`~pydantic.SecretStr`, so printing or logging the options never shows it.
    """

    api_key: SecretStr | None = field(repr=False)
    """``DEEPGRAM_API_KEY``; None or empty only against a local server (``base_url``)."""
    base_url: str | None
    """``DEEPGRAM_BASE_URL``: a Deepgram-compatible server; None for the real API."""
    model: str
    language: str
    smart_format: bool
    utterances: bool
    paragraphs: bool
    diarize: bool
    timeout_seconds: float
    """``DEEPGRAM_TIMEOUT_SECONDS``: the SDK's timeout for one request."""

    @classmethod
    def from_settings(cls, s: Settings) -> DeepgramOptions:
        """The adapter's options from the process settings."""
        return cls(
            api_key=s.deepgram_api_key,
            base_url=s.deepgram_base_url,
            model=s.deepgram_model,
            language=s.deepgram_language,
            smart_format=s.deepgram_smart_format,
            utterances=s.deepgram_utterances,
            paragraphs=s.deepgram_paragraphs,
            diarize=s.deepgram_diarize,
            timeout_seconds=s.deepgram_timeout_seconds,
        )


@dataclass
class DeepgramTranscript:
    """One Deepgram answer, normalised into file time."""

    words: list[Word] = field(default_factory=list)
    text: str = ""
    billed_seconds: float = 0.0
    """``metadata.duration``: the audio seconds Deepgram bills for."""
    request_id: str = ""
    model: str = ""


def _error_message(body: object, status: int | None) -> str:
    """Deepgram's own words from an error body (``err_msg`` or ``message``/``details``)."""
    if isinstance(body, Mapping):
        for key in ("err_msg", "message", "details", "reason"):
            value = body.get(key)
            if isinstance(value, str) and value:
                code = body.get("err_code") or body.get("category")
                return f"{code}: {value}" if isinstance(code, str) and code and code not in value else value
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return f"HTTP {status}"


def _request_id(err: ApiError) -> str:
    body = err.body
    if isinstance(body, Mapping) and isinstance(body.get("request_id"), str):
        return str(body["request_id"])
    return str((err.headers or {}).get("dg-request-id", ""))


def classify(err: ApiError, what: str) -> Exception:
    """Map an SDK :class:`ApiError` (already retried by the SDK) to our exception tree."""
    status = err.status_code
    message = _error_message(err.body, status)
    request_id = _request_id(err)
    if status in _AUTH_STATUSES:
        return DeepgramAuthError(f"Deepgram rejected the API key for {what} (HTTP {status}: {message})")
    if status is not None and (status >= 500 or status in (408, 409, 429)):
        return TransientError(f"Deepgram {what} failed with HTTP {status} after retries: {message}")
    if status is None:
        return TransientError(f"Deepgram {what} failed without a status: {message}")
    suffix = f" (request {request_id})" if request_id else ""
    return PermanentError(f"Deepgram could not transcribe {what}: {message}{suffix}")


def _extra(obj: Any, name: str) -> Any:
    """An attribute the SDK may keep only as a pydantic extra field."""
    value = getattr(obj, name, None)
    if value is None:
        extra = getattr(obj, "model_extra", None) or {}
        value = extra.get(name)
    return value


def normalise(response: Any, offset_s: float, diarized: bool) -> DeepgramTranscript:
    """Turn a ``ListenV1Response`` into file-time words.

    Args:
        response: the SDK's response model (``metadata`` and ``results``).
        offset_s: file time of the first sample Deepgram heard.
        diarized: keep Deepgram's ``speaker`` labels.
    """
    metadata = getattr(response, "metadata", None)
    results = getattr(response, "results", None)
    if metadata is None or results is None:
        raise TransientError("Deepgram answered without results (asynchronous callback response?)")
    channels = list(getattr(results, "channels", None) or [])
    alternatives = list(getattr(channels[0], "alternatives", None) or []) if channels else []
    best = alternatives[0] if alternatives else None
    words: list[Word] = []
    for w in list(getattr(best, "words", None) or []):
        text = _extra(w, "punctuated_word") or getattr(w, "word", None) or ""
        start = max(0.0, float(getattr(w, "start", 0.0) or 0.0)) + offset_s
        end = max(start, float(getattr(w, "end", 0.0) or 0.0) + offset_s)
        raw_confidence = getattr(w, "confidence", None)
        confidence = min(1.0, max(0.0, float(raw_confidence if raw_confidence is not None else 1.0)))
        speaker = _extra(w, "speaker") if diarized else None
        if not text.strip():
            continue
        words.append(
            Word(text=text.strip(), start=start, end=end, confidence=confidence,
                 speaker=int(speaker) if speaker is not None else None)
        )
    models = list(getattr(metadata, "models", None) or [])
    model_info = getattr(metadata, "model_info", None) or {}
    model_name = ""
    if models and isinstance(model_info, Mapping):
        info = model_info.get(models[0])
        model_name = str(info.get("name", "")) if isinstance(info, Mapping) else ""
    return DeepgramTranscript(
        words=words,
        text=str(getattr(best, "transcript", "") or "") if best is not None else "",
        billed_seconds=float(getattr(metadata, "duration", 0.0) or 0.0),
        request_id=str(getattr(metadata, "request_id", "") or ""),
        model=model_name,
    )


def build_client(options: DeepgramOptions, max_retries: int = DEFAULT_MAX_RETRIES) -> DeepgramClient:
    """A ``DeepgramClient`` for the configured endpoint, key and timeout.

    Args:
        options: endpoint, key and timeout (:meth:`DeepgramOptions.from_settings`).
        max_retries: the SDK's retries of one request.

    Raises:
        ConfigError: no ``DEEPGRAM_API_KEY`` while talking to the real Deepgram API.
    """
    key = options.api_key.get_secret_value() if options.api_key else ""
    base = (options.base_url or "").rstrip("/")
    if not key:
        if not base:
            raise ConfigError("DEEPGRAM_API_KEY is empty: set it, or point DEEPGRAM_BASE_URL at a local server")
        key = LOCAL_PLACEHOLDER_KEY
    environment = DeepgramClientEnvironment.PRODUCTION
    if base:
        ws = "ws" + base[len("http"):] if base.startswith("http") else base
        environment = DeepgramClientEnvironment(base=base, production=ws, agent=ws, agent_rest=base)
    return DeepgramClient(
        environment=environment,
        api_key=key,
        timeout=options.timeout_seconds,
        max_retries=max_retries,
    )


class DeepgramTranscriber:
    """Transcribes audio bytes or URLs with Deepgram; thread-safe, build once per process.

    Args:
        options: endpoint, key, request options and timeout (:meth:`DeepgramOptions.from_settings`).
        exporter: counts ``deepgram_auth_errors``; optional.
        client: a ``DeepgramClient``; built from ``options`` if omitted.
        max_retries: the SDK's retries of one request, when the client is built here.
    """

    def __init__(
        self,
        options: DeepgramOptions,
        exporter: MetricsExporter | None = None,
        client: DeepgramClient | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self._options = options
        self._exporter = exporter or NullExporter()
        self._client = client or build_client(options, max_retries=max_retries)
        self._endpoint = options.base_url or "api.deepgram.com"

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def options(self, language: str | None = None) -> dict[str, Any]:
        """The request options sent with every call, from :class:`DeepgramOptions`; ``language`` is the job's own."""
        o = self._options
        return {
            "model": o.model,
            "language": language or o.language,
            "smart_format": o.smart_format,
            "punctuate": True,
            "utterances": o.utterances,
            "paragraphs": o.paragraphs,
            "diarize": o.diarize,
        }

    def transcribe_bytes(self, data: bytes, offset_s: float = 0.0, language: str | None = None) -> DeepgramTranscript:
        """Transcribe an encoded audio file (any container Deepgram reads).

        Args:
            data: the encoded audio (FLAC, WAV, MP3, ...).
            offset_s: file time of the audio's first sample; added to every word.
            language: the job's language tag; None sends ``DEEPGRAM_LANGUAGE``.

        Raises:
            PermanentError: Deepgram cannot transcribe this audio.
            DeepgramAuthError: the key was rejected.
            TransientError: rate limit, server error or timeout, after retries.
        """
        if not data:
            raise PermanentError("no audio to send to Deepgram (0 bytes)")
        media = self._client.listen.v1.media
        return self._call(
            lambda: media.transcribe_file(request=data, **self.options(language)), f"{len(data)} bytes", offset_s
        )

    def transcribe_url(self, url: str, offset_s: float = 0.0, language: str | None = None) -> DeepgramTranscript:
        """Have Deepgram fetch and transcribe ``url`` (a signed URL: no audio passes through us).

        Raises:
            PermanentError: Deepgram cannot fetch or transcribe the URL.
            DeepgramAuthError: the key was rejected.
            TransientError: rate limit, server error or timeout, after retries.
        """
        media = self._client.listen.v1.media
        what = "url " + url.split("?", 1)[0]
        return self._call(lambda: media.transcribe_url(url=url, **self.options(language)), what, offset_s)

    def _call(self, send: Callable[[], Any], what: str, offset_s: float) -> DeepgramTranscript:
        started = time.monotonic()
        try:
            response = send()
        except ApiError as err:
            mapped = classify(err, what)
            if isinstance(mapped, DeepgramAuthError):
                self._exporter.record(metric_names.DEEPGRAM_AUTH_ERRORS, 1.0)
                log.error(
                    "DEEPGRAM AUTHENTICATION FAILED at %s (HTTP %s): check DEEPGRAM_API_KEY; "
                    "chunks are nacked until it is fixed",
                    self._endpoint, err.status_code,
                )
            raise mapped from None
        except httpx.TimeoutException as err:
            raise TransientError(
                f"Deepgram {what} timed out after {time.monotonic() - started:.0f}s "
                f"(DEEPGRAM_TIMEOUT_SECONDS={self._options.timeout_seconds:g}): {type(err).__name__}"
            ) from None
        except httpx.HTTPError as err:
            raise TransientError(f"Deepgram {what} failed: {type(err).__name__}: {err}") from None
        transcript = normalise(response, offset_s, diarized=self._options.diarize)
        log.debug(
            "deepgram %s: %d words, %.1fs billed in %.2fs",
            what, len(transcript.words), transcript.billed_seconds, time.monotonic() - started,
        )
        return transcript

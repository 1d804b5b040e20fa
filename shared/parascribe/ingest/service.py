"""One ingest request, from message to upload: what the worker runs for each message it pulls.

:meth:`Ingestor.handle` returns when the message should be acked (the request is
``submitted``, or ``failed`` with a reason a person can act on) and raises a transient
error when it should be retried. It is idempotent: a redelivered request whose record is
final is acked at once, and one whose audio was uploaded before the worker died is
finished from that upload, so one request never makes two jobs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from parascribe import names
from parascribe.config import Settings
from parascribe.contracts import (
    make_job_id,
    parse,
)
from parascribe.contracts_api import ApiRequest, IngestRequest, upload_metadata
from parascribe.errors import MalformedMessageError, is_transient
from parascribe.gcp.pubsub import Message
from parascribe.gcp.storage import BlobStore, ObjectInfo
from parascribe.ingest.httpio import Budget, HttpReader, SegmentReader
from parascribe.ingest.remux import Extracted, extract_audio, too_long
from parascribe.ingest.resolve import Resolved, Resolver
from parascribe.ingest.uploader import Uploader
from parascribe.netguard import GuardedHttp
from parascribe.requests_store import FINAL_STATES, RequestStore, request_id_of, seed_of

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()\[\]-]+")
_MAX_ATTEMPTS = next(s.max_delivery_attempts for s in names.SUBSCRIPTIONS if s.name == names.SUB_INGEST)


def safe_name(title: str | None, limit: int = 80) -> str:
    """A title as an object name's last part: ASCII letters, digits and a little punctuation."""
    text = unicodedata.normalize("NFKD", title or "").encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("_", text).strip(" ._-")[:limit].strip(" ._-")
    return text or "audio"


def upload_prefix(request_id: str) -> str:
    return f"{names.INGEST_UPLOAD_PREFIX}{request_id}/"


@dataclass(frozen=True)
class Outcome:
    """What became of a request: its record, and the upload when there is one."""

    record: ApiRequest
    upload: ObjectInfo | None = None
    extracted: Extracted | None = None


class Ingestor:
    """Fetches requests' URLs into the uploads bucket and keeps their records.

    Args:
        settings: buckets, ``INGEST_MAX_MB``, ``INGEST_TIMEOUT_MINUTES``, ``MAX_AUDIO_MINUTES``.
        store: GCS (the state bucket's records, and listing and reading uploads).
        uploader: writes the audio into the uploads bucket.
        http: the guarded client the media is read with.
        resolver: finds the media behind a URL.
        spool_dir: where audio tracks are spooled before upload.
    """

    def __init__(self, settings: Settings, store: BlobStore, uploader: Uploader, http: GuardedHttp,
                 resolver: Resolver, spool_dir: Path) -> None:
        self._settings = settings
        self._store = store
        self._uploader = uploader
        self._http = http
        self._resolver = resolver
        self._spool = spool_dir
        self.records = RequestStore(store, settings.state_bucket)

    def handle(self, message: Message, cancel: threading.Event | None = None) -> Outcome | None:
        """Ingest one message's request; None when the message carries no request to record.

        Raises:
            TransientError: retry the message (a dependency failed, or the worker is stopping).
        """
        try:
            request = parse(IngestRequest, message.data)
        except MalformedMessageError as err:
            request_id = request_id_of(message.data)
            log.error("malformed ingest request %s: %s", request_id or message.message_id, err.reason)
            if request_id is None:
                return None
            seed = ApiRequest(request_id=request_id)
            reason = (f"the ingest request could not be read ({err.reason}); "
                      "the API and the ingest worker may run different releases")
            return Outcome(self.records.set_fields(seed, state="failed", reason=reason))
        seed = seed_of(request)
        current = self.records.get(request.request_id)
        if current is not None and current.state in FINAL_STATES:
            log.info("request %s is already %s", request.request_id, current.state)
            return Outcome(current)
        existing = self._existing_upload(request.request_id)
        if existing is not None:
            return Outcome(self._submitted(seed, existing), existing)
        self.records.set_fields(seed, state="ingesting", reason=None)
        try:
            return self._ingest(request, seed, cancel)
        except Exception as err:
            if is_transient(err) and (message.delivery_attempt or 0) < _MAX_ATTEMPTS:
                raise
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            if is_transient(err):
                reason = f"gave up after {_MAX_ATTEMPTS} attempts: {reason}"
            log.warning("request %s failed: %s", request.request_id, reason)
            return Outcome(self.records.set_fields(seed, state="failed", reason=reason))

    def _ingest(self, request: IngestRequest, seed: ApiRequest, cancel: threading.Event | None) -> Outcome:
        settings = self._settings
        max_s = settings.max_audio_minutes * 60.0
        budget = Budget(int(settings.ingest_max_mb * (1 << 20)), settings.ingest_timeout_minutes * 60.0, cancel)
        started = time.monotonic()
        resolved = self._resolver.resolve(request.url, budget)
        try:
            if resolved.duration_s is not None and resolved.duration_s > max_s:
                raise too_long(resolved.duration_s, max_s, "the source says it is")
            extracted = self._extract(resolved, budget, max_s)
        finally:
            resolved.close()
        try:
            current = self.records.get(request.request_id)
            if current is not None and current.cancelled_at is not None:
                log.info("request %s was cancelled while its audio was fetched; nothing uploaded", request.request_id)
                return Outcome(current)
            title = (resolved.title or "audio")[:MAX_TITLE_CHARS]
            name = f"{upload_prefix(request.request_id)}{safe_name(title)}{extracted.target.ext}"
            metadata = self._metadata(request, title)
            upload = self._uploader.upload_file(settings.uploads_bucket, name, extracted.path,
                                                extracted.target.content_type, metadata)
        finally:
            extracted.path.unlink(missing_ok=True)
        log.info("request %s: %s → gs://%s/%s (%.0f s of %s audio, %d bytes received, %.1f s)", request.request_id,
                 request.url, settings.uploads_bucket, upload.name, extracted.duration_s, extracted.codec,
                 budget.received, time.monotonic() - started)
        return Outcome(self._submitted(seed, upload, title), upload, extracted)

    def _extract(self, resolved: Resolved, budget: Budget, max_s: float) -> Extracted:
        if resolved.kind == "hls":
            assert resolved.playlist is not None
            reader: HttpReader | SegmentReader = SegmentReader(self._http, resolved.playlist.urls, budget,
                                                               resolved.headers)
        else:
            assert resolved.fetched is not None
            reader = HttpReader(self._http, resolved.fetched, budget, resolved.headers)
            resolved.fetched = None  # the reader owns the response now
        with reader:
            return extract_audio(reader, self._spool, max_s=max_s, budget=budget)

    @staticmethod
    def _metadata(request: IngestRequest, title: str) -> dict[str, str]:
        return upload_metadata(request.request_id, method=request.method, deadline_minutes=request.deadline_minutes,
                               language=request.language, callback_url=request.callback_url,
                               source_url=request.url[:2048], title=title)

    def _existing_upload(self, request_id: str) -> ObjectInfo | None:
        """The audio an earlier delivery of this request uploaded, if any."""
        bucket = self._settings.uploads_bucket
        for name in self._store.list(bucket, upload_prefix(request_id)):
            info = self._store.info(bucket, name)
            if info is not None:
                log.info("request %s was uploaded before (gs://%s/%s)", request_id, bucket, name)
                return info
        return None

    def _submitted(self, seed: ApiRequest, upload: ObjectInfo, title: str | None = None) -> ApiRequest:
        bucket = self._settings.uploads_bucket
        return self.records.set_fields(
            seed, state="submitted", reason=None, job_id=make_job_id(bucket, upload.name, upload.generation),
            upload_uri=f"gs://{bucket}/{upload.name}", title=title or upload.metadata.get(names.META_TITLE),
        )


"""Wiring of the Deepgram worker service: the SDK adapter, a bounded source cache, the push route."""

from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Flask

from parascribe.config import Settings
from parascribe.deepgram.client import DeepgramOptions, DeepgramTranscriber
from parascribe.deepgram.worker import DeepgramWorker
from parascribe.gcp.monitoring import exporter_from_settings
from parascribe.gcp.pubsub import PubSubPublisher, PushService, create_push_app
from parascribe.gcp.source_cache import SourceCache
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import EndedJobs, JobStore
from parascribe.metrics import MetricsExporter

SERVICE = "deepgram_worker"


def build_worker(settings: Settings, exporter: MetricsExporter | None = None,
                 cache_dir: Path | None = None) -> DeepgramWorker:
    """The worker with real adapters: Deepgram SDK, GCS, Pub/Sub (emulators when configured).

    Sources for chunk spans are cached under ``cache_dir`` up to ``SOURCE_CACHE_MB``;
    on Cloud Run that disk is memory, so size the instance for it.
    """
    store = GcsStore.create(settings.gcp_project, settings.storage_emulator_host)
    cache = SourceCache(store, cache_dir or Path(tempfile.gettempdir()) / "parascribe-deepgram-sources",
                        int(settings.source_cache_mb * 1024 * 1024))
    return DeepgramWorker(
        transcriber=DeepgramTranscriber(DeepgramOptions.from_settings(settings), exporter=exporter),
        store=store,
        publisher=PubSubPublisher(settings.gcp_project),
        cache=cache,
        max_concurrency=settings.deepgram_max_concurrency,
        timeout_seconds=settings.deepgram_timeout_seconds,
        ended=EndedJobs(JobStore(store, settings.state_bucket)),
    )


def create_app(worker: DeepgramWorker) -> Flask:
    """The push app: ``POST /pubsub`` for ``asr-deepgram-push``, ``GET /healthz``."""
    return create_push_app(SERVICE, {"/pubsub": worker.handle})


def build(settings: Settings, exporter: MetricsExporter | None = None, cache_dir: Path | None = None) -> PushService:
    """The Deepgram worker service; 401/403 from Deepgram become the ``deepgram_auth_errors`` metric."""
    owned = exporter is None
    exporter = exporter or exporter_from_settings(settings, service=SERVICE)
    app = create_app(build_worker(settings, exporter, cache_dir))
    return PushService(SERVICE, app, [exporter.close] if owned else [])

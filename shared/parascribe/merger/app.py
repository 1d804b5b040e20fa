"""Wiring of the merger service: real adapters, both push routes, the sweeper, the metrics exporter."""

from __future__ import annotations

from flask import Response, jsonify

from parascribe.config import Settings
from parascribe.gcp.monitoring import exporter_from_settings
from parascribe.gcp.pubsub import PubSubPublisher, PushService, create_push_app
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import JobStore
from parascribe.merger.dead_letter import DeadLetters
from parascribe.merger.service import Merger
from parascribe.merger.sweeper import Sweeper
from parascribe.merger.webhook import WebhookNotifier, WebhookOptions
from parascribe.metrics import MetricsExporter
from parascribe.requests_store import RequestStore

SERVICE = "merger"


def build(settings: Settings, exporter: MetricsExporter | None = None) -> PushService:
    """The merger: ``POST /pubsub`` (``merger-push``), ``POST /dead-letter`` (``dead-letter-push``),
    ``POST /sweep`` (Cloud Scheduler), ``GET /healthz``. With ``SWEEP_INTERVAL_SECONDS`` it also sweeps on a timer.

    Args:
        settings: the process settings.
        exporter: where metrics go; the one ``METRICS_EXPORTER`` names when None (closed with the service).
    """
    store = GcsStore.create(settings.gcp_project, settings.storage_emulator_host)
    jobs = JobStore(store, settings.state_bucket)
    owned = exporter is None
    exporter = exporter or exporter_from_settings(settings, service=SERVICE)
    publisher = PubSubPublisher(settings.gcp_project)
    merger = Merger(settings, store, jobs, publisher, exporter,
                    WebhookNotifier(WebhookOptions.from_settings(settings), jobs, exporter))
    dead_letters = DeadLetters(merger, jobs, publisher, requests=RequestStore(store, settings.state_bucket),
                               uploads_bucket=settings.uploads_bucket, enable_fallback=settings.enable_fallback)
    app = create_push_app(SERVICE, {"/pubsub": merger.handle_results, "/dead-letter": dead_letters.handle})
    sweeper = Sweeper(merger, jobs, grace_s=settings.sweep_grace_minutes * 60.0,
                      webhook_resend_s=settings.webhook_resend_seconds)

    @app.post("/sweep")
    def sweep() -> Response:
        return jsonify(sweeper.sweep().as_dict())

    closers = [exporter.close] if owned else []
    if settings.sweep_interval_seconds > 0:
        sweeper.start_timer(settings.sweep_interval_seconds)
        closers.append(sweeper.stop_timer)
    return PushService(SERVICE, app, closers)

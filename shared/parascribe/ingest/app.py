"""Wiring of the URL ingest worker: GCS, the SSRF guard, yt-dlp and the pull loop."""

from __future__ import annotations

import tempfile
from pathlib import Path

from parascribe.config import Settings
from parascribe.gcp.storage import GcsStore
from parascribe.ingest.resolve import Resolver
from parascribe.ingest.service import Ingestor
from parascribe.ingest.uploader import GcsUploader
from parascribe.ingest.worker import IngestWorker
from parascribe.ingest.ytdlp import YtDlpResolver, site_extractor_claims
from parascribe.netguard import GuardedHttp

SERVICE = "ingest_worker"


def build_ingestor(settings: Settings, spool_dir: Path | None = None) -> Ingestor:
    """The request handler alone (what the worker runs per message), wired to GCS and the network."""
    store = GcsStore.create(settings.gcp_project, settings.storage_emulator_host)
    http = GuardedHttp(allow_loopback=settings.url_allow_loopback)
    page = YtDlpResolver(http.check, settings.ytdlp_cookies_file)
    resolver = Resolver(http, page.resolve, site_extractor_claims)
    spool = spool_dir or Path(tempfile.mkdtemp(prefix="parascribe-ingest-"))
    return Ingestor(settings, store, GcsUploader(store.client), http, resolver, spool)


def build(settings: Settings, spool_dir: Path | None = None, health_port: int | None = None) -> IngestWorker:
    """The production wiring.

    Args:
        settings: the process settings.
        spool_dir: where audio tracks are spooled before upload; a fresh temporary folder when None.
        health_port: the ``/healthz`` port; ``PORT`` when None.
    """
    return IngestWorker(settings, build_ingestor(settings, spool_dir),
                        health_port=settings.port if health_port is None else health_port)

"""Wiring of the GPU ASR worker: GCS, Pub/Sub, a source cache and the engine ``ASR_ENGINE`` picks."""

from __future__ import annotations

import tempfile
from pathlib import Path

from parascribe.asr.segments import Segmenter
from parascribe.asr.worker import AsrWorker
from parascribe.config import Settings
from parascribe.engines.base import AsrEngine
from parascribe.engines.select import load_engine
from parascribe.errors import EngineUnavailableError
from parascribe.gcp.pubsub import PubSubPublisher
from parascribe.gcp.source_cache import SourceCache
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import EndedJobs, JobStore

SERVICE = "asr_worker"


def build(settings: Settings, cache_dir: Path | None = None, health_port: int | None = None) -> AsrWorker:
    """The production wiring: GCS, Pub/Sub, a source cache and the engine ``ASR_ENGINE`` picks.

    An engine that cannot load leaves a worker that forwards every task to
    Deepgram, when ``ENABLE_FALLBACK`` allows it.

    Args:
        settings: the process settings.
        cache_dir: where sources are copied; a fresh temporary folder when None.
        health_port: the ``/healthz`` port; ``PORT`` when None.

    With ``VAD_ENABLED`` the worker also loads Silero VAD, so each chunk is cut into speech
    segments and what is not speech is skipped.

    Raises:
        EngineUnavailableError: the engine cannot load and ``ENABLE_FALLBACK`` is false.
        ConfigError: ``VAD_ENABLED`` is set and the VAD cannot load.
    """
    store = GcsStore.create(settings.gcp_project, settings.storage_emulator_host)
    publisher = PubSubPublisher(settings.gcp_project)
    cache = SourceCache(store, cache_dir or Path(tempfile.mkdtemp(prefix="parascribe-sources-")),
                        max_bytes=int(settings.source_cache_mb * 1024 * 1024))
    engine: AsrEngine | None = None
    reason: str | None = None
    try:
        engine = load_engine(settings)
    except EngineUnavailableError as err:
        if not settings.enable_fallback:
            raise
        reason = err.reason
    return AsrWorker(settings, engine, store, publisher, cache, engine_unavailable_reason=reason,
                     health_port=settings.port if health_port is None else health_port,
                     ended=EndedJobs(JobStore(store, settings.state_bucket)), segmenter=load_segmenter(settings))


def load_segmenter(settings: Settings) -> Segmenter | None:
    """Silero VAD and the segment planner as the settings ask; None with ``VAD_ENABLED=false``.

    Raises:
        ConfigError: the VAD's weights or onnxruntime are missing.
    """
    if not settings.vad_enabled:
        return None
    from parascribe.asr.vad import SileroVad

    return Segmenter.from_settings(settings, SileroVad.from_settings(settings).detect)

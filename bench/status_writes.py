"""Writes to one job's ``status.json`` while 1,440 chunk results arrive (a 6-hour file in 15-second chunks).

GCS allows about one write per second to one object. This pushes every chunk result of such a job
through the real :class:`~parascribe.merger.service.Merger` from several threads (as several merger
instances would), on an in-memory store that takes ``--write-ms`` per write like GCS does, and
reports the status writes per second, against a baseline in the same run: the same job with
progress written on every result (the behaviour before progress writes were throttled).

    .venv/bin/python bench/status_writes.py [--chunks 1440] [--threads 8] [--write-ms 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _repo  # noqa: F401  (puts the repository root on sys.path)

from parascribe.config import load_settings
from parascribe.contracts import AudioInfo, ChunkResult, JobManifest, JobStatus, PlannedChunk, SourceRef, Word
from parascribe.errors import TransientError
from parascribe.gcp.pubsub import Message
from parascribe.jobs import JobStore
from parascribe.merger.service import PROGRESS_INTERVAL_S, Merger
from parascribe.merger.webhook import WebhookNotifier, WebhookOptions
from tests.fakes import MemoryStore, RecordingExporter, RecordingPublisher


class TimedStore(MemoryStore):
    """A store whose writes take ``write_s`` and which records when each write to ``status.json`` landed."""

    def __init__(self, write_s: float) -> None:
        super().__init__()
        self.write_s = write_s
        self.status_writes: list[float] = []
        self.lost_races = 0
        self._times_lock = threading.Lock()

    def write(self, bucket: str, name: str, data: bytes, content_type: str = "application/json",
              if_generation_match: int | None = None, metadata: dict[str, str] | None = None) -> int | None:
        time.sleep(self.write_s)
        gen = super().write(bucket, name, data, content_type, if_generation_match, metadata)
        if name.endswith("/status.json"):
            with self._times_lock:
                if gen is None:
                    self.lost_races += 1
                else:
                    self.status_writes.append(time.monotonic())
        return gen


def run(chunks: int, threads: int, write_s: float, progress_interval_s: float) -> dict[str, Any]:
    settings = load_settings(metrics_exporter="none", convex_webhook_url=None, convex_webhook_secret=None)
    store = TimedStore(write_s=write_s)
    jobs = JobStore(store, settings.state_bucket)
    exporter = RecordingExporter()
    merger = Merger(settings, store, jobs, RecordingPublisher(), exporter,
                    WebhookNotifier(WebhookOptions.from_settings(settings), jobs, exporter),
                    progress_interval_s=progress_interval_s)
    source = SourceRef(bucket=settings.uploads_bucket, name="six-hours.wav", generation="1", size=10**9)
    span = 15.0
    planned = [PlannedChunk(index=i, start_s=i * span, end_s=(i + 1) * span, core_start_s=i * span,
                            core_end_s=(i + 1) * span, path="gpu") for i in range(chunks)]
    manifest = JobManifest(job_id=source.job_id, source=source, method="gpu", deadline_minutes=600, chunks=planned,
                           audio=AudioInfo(duration_s=chunks * span, sample_rate=16_000, channels=1,
                                           codec="pcm_s16le", container="wav"))
    jobs.create_manifest(manifest)
    jobs.update_status(source.job_id, lambda _: JobStatus(job_id=source.job_id, state="queued", chunks_total=chunks))
    results = [ChunkResult(job_id=source.job_id, chunk_index=c.index, n_chunks=chunks, engine="parakeet", path="gpu",
                           words=[Word(text="word", start=c.start_s + 1, end=c.start_s + 1.4)],
                           audio_seconds=span, processing_seconds=0.1) for c in planned]
    retries: Counter[str] = Counter()

    def push(result: ChunkResult) -> None:
        message = Message(data=result.to_bytes(), attributes={"type": "chunk_result"})
        while True:  # Pub/Sub redelivers what a handler fails
            try:
                merger.handle_results(message)
                return
            except TransientError as err:
                retries[err.reason.split(":")[0][:60]] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(push, results))
    wall = time.monotonic() - started
    status = jobs.status(source.job_id)
    writes = sorted(store.status_writes)
    per_second = Counter(int(t - writes[0]) for t in writes) if writes else Counter()
    return {
        "progress_interval_s": progress_interval_s,
        "final_state": status.state if status else None,
        "wall_s": round(wall, 2),
        "status_writes": len(writes),
        "status_writes_per_s_max": max(per_second.values(), default=0),
        "status_writes_per_s_mean": round(len(writes) / max(wall, 1e-9), 2),
        "lost_compare_and_swap_races": store.lost_races,
        "redelivered_messages": sum(retries.values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chunks", type=int, default=1440)
    p.add_argument("--threads", type=int, default=8, help="concurrent merger handlers")
    p.add_argument("--write-ms", type=float, default=30.0, help="simulated GCS write latency")
    args = p.parse_args(argv)
    baseline = run(args.chunks, args.threads, args.write_ms / 1000, 0.0)
    throttled = run(args.chunks, args.threads, args.write_ms / 1000, PROGRESS_INTERVAL_S)
    print(json.dumps({
        "bench": "status_writes", "chunks": args.chunks, "threads": args.threads, "write_ms": args.write_ms,
        "cpu": f"{os.cpu_count()} cores, {platform.machine()}",
        "baseline_every_result": baseline, "throttled": throttled,
        "status_writes_ratio": round(throttled["status_writes"] / max(1, baseline["status_writes"]), 4),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

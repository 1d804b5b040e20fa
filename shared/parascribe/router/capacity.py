"""What each path already has to do, and how fast it can do it: planner inputs.

Where the backlog comes from
    The primary source is the state bucket, everywhere (:class:`StateBucketLoad`): the
    open-job index (``open/<job_id>``) lists the jobs in progress, their manifests say
    which chunks were planned on the GPU, and the stored chunk results say which are
    done. What is left is the audio queued or in flight on each path: on the GPU as
    audio seconds, on Deepgram as one entry per request (a chunk, or a whole file). It needs no
    API beyond the bucket the router already writes, so it works unchanged on the
    local stack (fake-gcs-server has no Monitoring API) and in GCP, and it counts
    audio seconds exactly rather than messages.

    In GCP, Cloud Monitoring refines it (:class:`MonitoringLoad`): the GPU
    subscription's ``num_undelivered_messages`` (× the chunk length, for messages the
    bucket cannot see, such as fallbacks rerouted to the GPU) and the worker's
    ``run.googleapis.com/container/instance_count``, so instances already running
    start no cold; and the Deepgram subscription's ``num_undelivered_messages``
    (delivered but not yet acknowledged included), × the chunk length. The larger
    backlog of the two wins on each path: planning for too much work spills a chunk
    to the other path, planning for too little misses a deadline.

    Why not the ASR worker's health endpoint: in GCP the router cannot reach a worker
    pool's instances, and one instance knows only its own queue, not Pub/Sub's.

    Each read is cached for ``BACKLOG_CACHE_SECONDS``, per router process. When every
    source fails, :meth:`GpuCapacity.capacity` degrades to the planner's old
    assumption (one GPU, cold, nothing queued) and the plan says so.

Capacity
    :meth:`Capacity.finish_s` treats the GPU path as a fluid queue: the backlog plus
    the job's GPU audio, times ``EXPECTED_SPEECH_RATIO`` (the worker transcribes only
    the speech its VAD finds) over ``GPU_EXPECTED_RTFX``, shared by up to
    ``GPU_MAX_INSTANCES`` instances; the ones not running start after
    ``GPU_STARTUP_SECONDS``. A job is never done before one of its chunks could be.
    The Deepgram path is a pool of requests in flight; the planner schedules its
    queue and then the job's chunks on it (``parascribe.router.planner``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from parascribe import names
from parascribe.config import Settings
from parascribe.jobs import JobStore

log = logging.getLogger(__name__)

ASSUMED = "assumed"
"""The source name of the old assumption: one GPU, not running, nothing queued."""
_OPEN_JOBS_READ = 2000
"""Open jobs read per backlog estimate at most; past this the estimate is a lower bound."""


@dataclass(frozen=True)
class PathLoad:
    """What a source saw: audio queued or in flight on each path, and GPU instances running."""

    backlog_audio_s: float
    """On the GPU path, in audio seconds."""
    running_instances: int | None
    """GPU instances; None when the source cannot tell."""
    source: str
    deepgram_queue: tuple[float, ...] = ()
    """On the Deepgram path: the audio seconds of each request queued or in flight."""


@dataclass(frozen=True)
class Capacity:
    """Both paths as the planner sees them for one job: the GPU's backlog and speed, Deepgram's queue."""

    backlog_audio_s: float
    running_instances: int
    max_instances: int
    rtfx: float
    startup_s: float
    speech_ratio: float = 1.0
    source: str = ASSUMED
    degraded: str | None = None
    """Why the real backlog is unknown (the plan then uses the old assumption)."""
    deepgram_queue: tuple[float, ...] = ()
    """Audio seconds of each request queued or in flight on the Deepgram path, oldest first."""

    @classmethod
    def assumed(cls, rtfx: float, startup_s: float, speech_ratio: float = 1.0,
                degraded: str | None = None) -> Capacity:
        """The planner's old assumption: one GPU, not yet running, with nothing queued."""
        return cls(0.0, 0, 1, rtfx, startup_s, speech_ratio, ASSUMED, degraded)

    def processing_s(self, audio_s: float) -> float:
        """GPU instance seconds to transcribe ``audio_s`` of audio (only its speech is decoded)."""
        return audio_s * self.speech_ratio / self.rtfx

    def finish_s(self, gpu_chunks: Sequence[float]) -> float:
        """Seconds until the GPU path has done the backlog and then these chunks (audio seconds each)."""
        if not gpu_chunks:
            return 0.0
        work = self.processing_s(self.backlog_audio_s + sum(gpu_chunks))
        m = max(1, self.max_instances)
        r = min(max(0, self.running_instances), m)
        if r == 0:
            fluid = self.startup_s + work / m
        elif work / r <= self.startup_s:
            fluid = work / r
        else:  # the running ones work from 0 s, the others from startup_s
            fluid = (work + (m - r) * self.startup_s) / m
        one_chunk = self.processing_s(max(gpu_chunks)) + (0.0 if r else self.startup_s)
        return max(fluid, one_chunk)

    def with_backlog(self, backlog_audio_s: float) -> Capacity:
        """The same capacity with another GPU backlog (the idle comparison behind ``spill_reason``)."""
        return replace(self, backlog_audio_s=max(0.0, backlog_audio_s), source="given", degraded=None)

    @property
    def deepgram_queued_audio_s(self) -> float:
        return sum(self.deepgram_queue)


class LoadSource(Protocol):
    """One way to see the paths' load. ``load`` raises when it cannot."""

    name: str

    def load(self) -> PathLoad: ...


class StateBucketLoad:
    """The chunks of open jobs that have no stored result yet, by path (see the module docstring)."""

    name = "state-bucket"

    def __init__(self, jobs: JobStore, max_jobs: int = _OPEN_JOBS_READ) -> None:
        self._jobs = jobs
        self._max_jobs = max_jobs

    def load(self) -> PathLoad:
        gpu = 0.0
        deepgram: list[float] = []
        for job_id in self._jobs.open_jobs()[: self._max_jobs]:
            manifest = self._jobs.manifest(job_id)
            if manifest is None:
                continue
            done = self._jobs.chunk_indices(job_id)
            left = [c for c in manifest.chunks if c.index not in done]
            if left and not self._jobs.is_final(job_id):  # a failed job's chunks are skipped, not transcribed
                gpu += sum(c.duration_s for c in left if c.path == "gpu")
                deepgram += [c.duration_s for c in left if c.path == "deepgram"]
        # A worker with work is warm; the bucket cannot see idle instances.
        return PathLoad(gpu, 1 if gpu > 0 else None, self.name, tuple(deepgram))


class TimeSeriesReader(Protocol):
    """The one Cloud Monitoring read the planner needs."""

    def latest(self, filter_: str, within_s: float) -> float | None:
        """The newest value of the series matching ``filter_`` (summed across series), or None if none."""
        ...


class MonitoringReader:
    """:class:`TimeSeriesReader` over ``monitoring_v3.MetricServiceClient.list_time_series``."""

    def __init__(self, project: str, client: object | None = None, timeout_s: float = 5.0) -> None:
        self._client = client
        self._name = f"projects/{project}"
        self._timeout_s = timeout_s

    def latest(self, filter_: str, within_s: float) -> float | None:
        from google.cloud import monitoring_v3

        if self._client is None:  # built on first use: a router that never reads it needs no credentials
            self._client = monitoring_v3.MetricServiceClient()

        now = time.time()
        interval = monitoring_v3.TimeInterval({"end_time": {"seconds": int(now)},
                                               "start_time": {"seconds": int(now - within_s)}})
        series = self._client.list_time_series(  # type: ignore[attr-defined]
            request={"name": self._name, "filter": filter_, "interval": interval,
                     "view": monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL},
            timeout=self._timeout_s,
        )
        values = [float(s.points[0].value.int64_value or s.points[0].value.double_value) for s in series if s.points]
        return sum(values) if values else None


def asr_service_name() -> str:
    """The Cloud Run name of the GPU worker (Terraform: the subscription's service, ``_`` → ``-``)."""
    return next(s.service for s in names.SUBSCRIPTIONS if s.name == names.SUB_ASR_GPU).replace("_", "-")


class MonitoringLoad:
    """Both subscriptions' backlogs and the GPU worker's instance count, from Cloud Monitoring."""

    name = "cloud-monitoring"

    def __init__(self, reader: TimeSeriesReader, chunk_seconds: float, window_s: float = 300.0) -> None:
        self._reader = reader
        self._chunk_s = chunk_seconds
        self._window_s = window_s

    def load(self) -> PathLoad:
        messages = self._undelivered(names.SUB_ASR_GPU)
        instances = self._reader.latest(
            f'metric.type="run.googleapis.com/container/instance_count" AND '
            f'resource.label.service_name="{asr_service_name()}"', self._window_s,
        )
        if messages is None:
            raise LookupError(f"no num_undelivered_messages for {names.SUB_ASR_GPU} in the last {self._window_s:.0f} s")
        deepgram = self._undelivered(names.SUB_ASR_DEEPGRAM) or 0.0  # no series: nothing has queued there lately
        return PathLoad(messages * self._chunk_s, None if instances is None else int(instances), self.name,
                        (self._chunk_s,) * int(deepgram))

    def _undelivered(self, subscription: str) -> float | None:
        return self._reader.latest(
            'metric.type="pubsub.googleapis.com/subscription/num_undelivered_messages" AND '
            f'resource.type="pubsub_subscription" AND resource.label.subscription_id="{subscription}"',
            self._window_s,
        )


class GpuCapacity:
    """Reads the load from its sources (cached), and turns it into a :class:`Capacity`.

    Args:
        sources: the primary source first; later ones refine it (larger backlog, known instances).
        max_instances, rtfx, startup_s, speech_ratio: from the settings.
        cache_s: how long one read serves (``BACKLOG_CACHE_SECONDS``).
    """

    def __init__(self, sources: Sequence[LoadSource], max_instances: int, rtfx: float, startup_s: float,
                 speech_ratio: float, cache_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._sources = list(sources)
        self._max = max_instances
        self._rtfx = rtfx
        self._startup_s = startup_s
        self._ratio = speech_ratio
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, Capacity] | None = None

    def capacity(self) -> Capacity:
        """The current capacity; the old assumption, saying why, when no source answers."""
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self._cache_s:
                return self._cached[1]
            result = self._read()
            self._cached = (now, result)
            return result

    def _read(self) -> Capacity:
        loads: list[PathLoad] = []
        failures: list[str] = []
        for source in self._sources:
            try:
                loads.append(source.load())
            except Exception as err:  # a source that fails must never fail the job: the plan degrades
                failures.append(f"{source.name}: {err}")
        if not loads:
            why = "; ".join(failures) or "no backlog source configured"
            log.warning("GPU backlog unknown (%s); assuming one idle GPU and an empty queue", why)
            return Capacity.assumed(self._rtfx, self._startup_s, self._ratio, degraded=why)
        backlog = max(x.backlog_audio_s for x in loads)
        running = [x.running_instances for x in loads if x.running_instances is not None]
        return Capacity(
            backlog_audio_s=backlog,
            running_instances=min(self._max, running[-1]) if running else 0,
            max_instances=self._max,
            rtfx=self._rtfx,
            startup_s=self._startup_s,
            speech_ratio=self._ratio,
            source="+".join(x.source for x in loads),
            degraded=None,
            deepgram_queue=max((x.deepgram_queue for x in loads), key=sum),
        )


def capacity_from_settings(settings: Settings, jobs: JobStore, monitoring: bool | None = None) -> GpuCapacity:
    """The router's capacity: the state bucket, refined by Cloud Monitoring off the emulators.

    Args:
        monitoring: add the Cloud Monitoring source; by default when no emulator is configured.
    """
    if monitoring is None:
        monitoring = not (settings.pubsub_emulator_host or settings.storage_emulator_host)
    sources: list[LoadSource] = [StateBucketLoad(jobs)]
    if monitoring:
        sources.append(MonitoringLoad(MonitoringReader(settings.gcp_project), settings.chunk_seconds))
    return GpuCapacity(sources, settings.gpu_max_instances, settings.gpu_expected_rtfx, settings.gpu_startup_seconds,
                       settings.expected_speech_ratio, settings.backlog_cache_seconds)

"""Cut a job into chunks and choose, for each chunk, the path that transcribes it.

Chunks
    :func:`plan_chunks` tiles ``[0, duration)`` with *core* spans of
    ``CHUNK_DURATION_MINUTES``; the last core ends exactly at the duration. A
    tail shorter than a quarter of a chunk joins the previous chunk, so no chunk
    is a sliver. Each chunk decodes ``CHUNK_OVERLAP_SECONDS`` more on both sides
    (clipped to the file) so the merger can stitch words at the seams.

Estimates
    - GPU: :meth:`parascribe.router.capacity.Capacity.finish_s`: the audio already
      queued on the GPU path plus the job's, times ``EXPECTED_SPEECH_RATIO``, over
      ``GPU_EXPECTED_RTFX``, shared by up to ``GPU_MAX_INSTANCES`` instances, those not
      running after ``GPU_STARTUP_SECONDS``. Without a capacity the planner assumes one
      GPU, not running, with nothing queued: ``GPU_STARTUP_SECONDS`` + speech / RTFx.
    - Deepgram: :class:`parascribe.router.deepgram_slots.DeepgramSlots`: a pool of
      ``DEEPGRAM_MAX_INSTANCES`` × ``DEEPGRAM_MAX_CONCURRENCY`` requests in flight,
      shared by every job; the requests already queued go first.
    - A job is done when both paths are done. Costs come from
      :class:`parascribe.costs.Prices`. Deepgram bills the audio it is sent,
      overlap included. The GPU costs instance time for speech / RTFx; startup
      is not billed to the job.

Candidate plans
    The GPU takes the first *k* chunks and Deepgram takes the rest, for every
    *k* from 0 to n. One more candidate sends the whole file to Deepgram as a
    single request (``whole_file``): no overlap is billed, there are no seams,
    and speaker labels stay consistent. It is offered when the object is at
    most 2 GB, Deepgram's limit, and when its size fits the duration its header
    claims (:func:`header_may_lie`): Deepgram bills the audio it finds, so a
    header that understates the length would be billed for all of it. Chunks
    instead decode no further than the planned duration plus a margin.

Methods (``TRANSCRIPTION_METHOD``, or ``parascribe-method`` object metadata)
    - ``gpu``: every chunk goes to the GPU.
    - ``deepgram``: every chunk goes to Deepgram. The planner uses a single
      whole-file request when that meets the deadline. Otherwise it sends the
      chunks in parallel.
    - ``auto`` with ``COST_OPTIMIZATION=true``: the cheapest candidate that meets
      the deadline (at equal cost, the whole-file request). With the usual prices this puts as many chunks on the GPU as
      it can finish in time and spills the rest to Deepgram: the fewest chunks
      that let the job meet its deadline, given the GPU's backlog. If no candidate
      meets the deadline, it takes the fastest one and logs a warning. Only plans
      that cost no more than the whole file on Deepgram are candidates (all-GPU
      always is, at any sane prices), so a plan never costs more than all-Deepgram.
    - ``auto`` with ``COST_OPTIMIZATION=false`` behaves as ``hybrid``.
    - ``hybrid``: both paths work in parallel. The GPU takes the first *k*
      chunks and Deepgram the rest, with 1 ≤ k < n, and *k* is chosen so that
      the two finish at about the same time, for the lowest latency. Ties go
      to the cheaper plan, the one with more GPU chunks. The GPU always gets
      at least one chunk, even when its startup makes it slower than Deepgram
      alone. A single-chunk job goes to whichever path is faster.
    - With ``ENABLE_GPU_TRANSCRIPTION=false``, auto and hybrid behave as
      ``deepgram``. An upload that asks for ``gpu`` goes to Deepgram when
      ``ENABLE_FALLBACK=true``. Otherwise it fails with a reason.

Options
    The planner reads only :class:`PlannerOptions`, built once from the
    settings with :meth:`PlannerOptions.from_settings`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from parascribe.audio import plausible_max_bytes
from parascribe.config import Settings
from parascribe.contracts import AudioInfo, ChunkSpec, Method, PlannedChunk, Route
from parascribe.costs import Prices
from parascribe.errors import PermanentError
from parascribe.router.capacity import Capacity
from parascribe.router.deepgram_slots import DeepgramSlots

log = logging.getLogger(__name__)

TAIL_MERGE_FRACTION = 0.25
DEEPGRAM_MAX_BYTES = 2 * 1024**3
_EPS = 1e-9
# Without the codec, the most any audio could take: 64-bit PCM, at the widest rate and channels assumed.
_ANY_CODEC = "pcm_f64le"


@dataclass(frozen=True)
class PlannerOptions:
    """What the planner reads from the settings: chunking, switches, rates and prices."""

    chunk_seconds: float
    """``CHUNK_DURATION_MINUTES`` in seconds: the target core length."""
    chunk_overlap_seconds: float
    enable_gpu_transcription: bool
    enable_fallback: bool
    cost_optimization: bool
    gpu_expected_rtfx: float
    gpu_startup_seconds: float
    expected_speech_ratio: float
    """The share of a file that is speech: the GPU worker decodes only that (VAD)."""
    gpu_max_instances: int
    deepgram_expected_rtfx: float
    deepgram_request_overhead_seconds: float
    deepgram_max_concurrency: int
    deepgram_max_instances: int
    prices: Prices

    @classmethod
    def from_settings(cls, s: Settings) -> PlannerOptions:
        """The planner's options from the process settings."""
        return cls(
            chunk_seconds=s.chunk_seconds,
            chunk_overlap_seconds=s.chunk_overlap_seconds,
            enable_gpu_transcription=s.enable_gpu_transcription,
            enable_fallback=s.enable_fallback,
            cost_optimization=s.cost_optimization,
            gpu_expected_rtfx=s.gpu_expected_rtfx,
            gpu_startup_seconds=s.gpu_startup_seconds,
            expected_speech_ratio=s.expected_speech_ratio,
            gpu_max_instances=s.gpu_max_instances,
            deepgram_expected_rtfx=s.deepgram_expected_rtfx,
            deepgram_request_overhead_seconds=s.deepgram_request_overhead_seconds,
            deepgram_max_concurrency=s.deepgram_max_concurrency,
            deepgram_max_instances=s.deepgram_max_instances,
            prices=Prices.from_settings(s),
        )

    @property
    def deepgram_slots(self) -> int:
        """Requests the Deepgram path holds in flight at once, across its instances."""
        return self.deepgram_max_instances * self.deepgram_max_concurrency


@dataclass(frozen=True)
class Plan:
    """The chosen chunks and paths, with the estimates that chose them."""

    method: Method
    """The method after settings are applied (e.g. auto → deepgram when the GPU is off)."""
    chunks: list[PlannedChunk]
    estimated_cost_usd: float
    estimated_deepgram_only_usd: float
    estimated_finish_s: float
    meets_deadline: bool
    header_may_lie: bool = False
    """The object is larger than its header's duration allows, so it is never sent as one whole-file request."""

    @property
    def whole_file(self) -> bool:
        return is_whole_file(self.chunks) and not self.header_may_lie


def resolve_method(requested: Method, options: PlannerOptions) -> Method:
    """Apply ``ENABLE_GPU_TRANSCRIPTION`` and ``COST_OPTIMIZATION`` to a requested method.

    Raises:
        PermanentError: ``gpu`` was requested, the GPU is disabled and fallback is off.
    """
    if not options.enable_gpu_transcription:
        if requested == "gpu":
            if not options.enable_fallback:
                raise PermanentError(
                    "the upload asks for method gpu but ENABLE_GPU_TRANSCRIPTION=false and ENABLE_FALLBACK=false; "
                    "re-upload with parascribe-method auto, deepgram or hybrid"
                )
            log.warning("method gpu requested but the GPU is disabled; falling back to deepgram")
        return "deepgram"
    if requested == "auto" and not options.cost_optimization:
        return "hybrid"
    return requested


def plan_chunks(duration_s: float, chunk_s: float, overlap_s: float) -> list[ChunkSpec]:
    """Tile ``[0, duration_s)`` with contiguous cores and add the overlap to each decode span.

    Args:
        duration_s: the audio's duration (> 0).
        chunk_s: the target core length (> 0).
        overlap_s: extra audio decoded on each side of a core (≥ 0).

    Returns:
        Chunks in order; ``core_end_s`` of one equals ``core_start_s`` of the next
        and the last ``core_end_s`` equals ``duration_s``.

    Raises:
        ValueError: a non-positive duration or chunk length, or a negative overlap.
    """
    if not duration_s > 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration must be positive and finite, got {duration_s}")
    if not chunk_s > 0:
        raise ValueError(f"chunk length must be positive, got {chunk_s}")
    if overlap_s < 0:
        raise ValueError(f"overlap must be non-negative, got {overlap_s}")
    n = max(1, math.ceil(duration_s / chunk_s))
    if n > 1 and duration_s - (n - 1) * chunk_s < TAIL_MERGE_FRACTION * chunk_s:
        n -= 1
    bounds = [i * chunk_s for i in range(n)] + [duration_s]
    return [
        ChunkSpec(
            index=i,
            start_s=max(0.0, bounds[i] - overlap_s),
            end_s=min(duration_s, bounds[i + 1] + overlap_s),
            core_start_s=bounds[i],
            core_end_s=bounds[i + 1],
        )
        for i in range(n)
    ]


def plan_paths(
    chunks: Sequence[ChunkSpec],
    options: PlannerOptions,
    method: Method,
    deadline_s: float,
    size_bytes: int | None = None,
    audio: AudioInfo | None = None,
    capacity: Capacity | None = None,
) -> list[PlannedChunk]:
    """Choose a path for every chunk (see the module docstring for each method).

    Args:
        chunks: from :func:`plan_chunks`.
        options: rates, prices and switches.
        method: the requested method, before settings are applied.
        deadline_s: seconds from now by which the job should be done.
        size_bytes: the object's size; above 2 GB, or above what the header's duration
            allows (:func:`header_may_lie`), no whole-file request is planned.
        audio: what the probe read from the header; None checks the size against any codec.

    Returns:
        The plan. A single Deepgram chunk that spans the whole file is a
        whole-file request (:func:`is_whole_file`).

    Raises:
        ValueError: ``chunks`` is empty.
        PermanentError: the method cannot be honoured with these settings.
    """
    duration = chunks[-1].core_end_s if chunks else 0.0
    return _choose(chunks, options, method, deadline_s, _whole_allowed(duration, size_bytes, audio), capacity)[0]


def make_plan(
    duration_s: float,
    options: PlannerOptions,
    method: Method,
    deadline_s: float,
    size_bytes: int | None = None,
    audio: AudioInfo | None = None,
    capacity: Capacity | None = None,
) -> Plan:
    """Chunk the audio, choose the paths and estimate cost and finish time.

    Args:
        duration_s: the audio's duration (> 0).
        options: chunking, rates, prices and switches (:meth:`PlannerOptions.from_settings`).
        method: the requested method, before the switches are applied.
        deadline_s: seconds from now by which the job should be done.
        size_bytes: the object's size; above 2 GB, or above what the header's duration
            allows (:func:`header_may_lie`), no whole-file request is planned.
        audio: what the probe read from the header; None checks the size against any codec.
        capacity: the GPU path's backlog and instances (:mod:`parascribe.router.capacity`);
            None assumes one GPU, not running, with nothing queued.

    Raises:
        PermanentError: the method cannot be honoured with these settings.
    """
    chunks = plan_chunks(duration_s, options.chunk_seconds, options.chunk_overlap_seconds)
    suspect = size_bytes is not None and _header_may_lie(duration_s, size_bytes, audio)
    if suspect:
        log.warning("the object is %d bytes, more than %.1f s of %s can take: its header may understate the length, "
                    "so it is planned in capped chunks rather than sent whole", size_bytes, duration_s,
                    audio.codec if audio else "audio")
    planned, effective = _choose(chunks, options, method, deadline_s, _whole_allowed(duration_s, size_bytes, audio),
                                 capacity)
    finish = estimate_finish_s(planned, options, capacity)
    return Plan(
        method=effective,
        chunks=planned,
        estimated_cost_usd=estimate_cost(planned, options),
        estimated_deepgram_only_usd=estimate_deepgram_only(duration_s, options),
        estimated_finish_s=finish,
        meets_deadline=finish <= deadline_s + _EPS,
        header_may_lie=suspect,
    )


def is_whole_file(plan: Sequence[PlannedChunk], audio: AudioInfo | None = None, size_bytes: int | None = None) -> bool:
    """Whether the plan is one Deepgram request for the entire file, sent by signed URL.

    A single Deepgram chunk of a file whose size its header cannot account for
    (``audio`` and ``size_bytes`` given, :func:`header_may_lie`) is not: it is cut and capped.
    """
    whole = len(plan) == 1 and plan[0].path == "deepgram" and plan[0].start_s == 0.0
    return whole and not (audio is not None and size_bytes is not None and header_may_lie(audio, size_bytes))


def header_may_lie(audio: AudioInfo, size_bytes: int) -> bool:
    """Whether the object is larger than its header's duration of this codec can fill.

    Then the header may understate the length (an mp3 whose Xing header says 0.6 s
    may hold hours), and a whole-file request would be billed for all of it.
    """
    return _header_may_lie(audio.duration_s, size_bytes, audio)


def _header_may_lie(duration_s: float, size_bytes: int, audio: AudioInfo | None) -> bool:
    if audio is None:
        return size_bytes > plausible_max_bytes(duration_s, _ANY_CODEC, 0, 0)
    return size_bytes > plausible_max_bytes(duration_s, audio.codec, audio.sample_rate, audio.channels)


def _whole_allowed(duration_s: float, size_bytes: int | None, audio: AudioInfo | None) -> bool:
    if size_bytes is None:
        return True
    return size_bytes <= DEEPGRAM_MAX_BYTES and not _header_may_lie(duration_s, size_bytes, audio)


def estimate_finish_s(plan: Sequence[PlannedChunk], options: PlannerOptions, capacity: Capacity | None = None) -> float:
    """Seconds until both paths are done, by the estimates in the module docstring."""
    gpu = [c.duration_s for c in plan if c.path == "gpu"]
    deepgram = [c.duration_s for c in plan if c.path == "deepgram"]
    paths = _capacity(options, capacity)
    return max(paths.finish_s(gpu), _deepgram_slots(paths, options).finish_s(deepgram))


def estimate_cost(plan: Sequence[PlannedChunk], options: PlannerOptions) -> float:
    """Estimated USD for the plan: Deepgram billed audio plus GPU instance time."""
    prices = options.prices
    return sum(
        _gpu_cost(c.duration_s, options) if c.path == "gpu" else prices.deepgram(c.duration_s) for c in plan
    )


def estimate_deepgram_only(duration_s: float, options: PlannerOptions) -> float:
    """What the audio would cost sent to Deepgram whole: the baseline for savings."""
    return options.prices.deepgram(duration_s)


def default_capacity(options: PlannerOptions) -> Capacity:
    """The planner's assumption without a backlog source: one GPU, not running, nothing queued."""
    return Capacity.assumed(options.gpu_expected_rtfx, options.gpu_startup_seconds, options.expected_speech_ratio)


def _capacity(options: PlannerOptions, capacity: Capacity | None) -> Capacity:
    return capacity if capacity is not None else default_capacity(options)


def _gpu_cost(audio_s: float, options: PlannerOptions) -> float:
    return options.prices.gpu_estimate(audio_s * options.expected_speech_ratio, options.gpu_expected_rtfx)


def _deepgram_slots(capacity: Capacity, options: PlannerOptions) -> DeepgramSlots:
    return DeepgramSlots(options.deepgram_slots, options.deepgram_request_overhead_seconds,
                         options.deepgram_expected_rtfx, capacity.deepgram_queue)


def _assign(chunks: Sequence[ChunkSpec], paths: Sequence[Route]) -> list[PlannedChunk]:
    return [PlannedChunk(**c.model_dump(exclude={"schema_version"}), path=p) for c, p in zip(chunks, paths, strict=True)]


def _whole(chunks: Sequence[ChunkSpec]) -> list[PlannedChunk]:
    end = chunks[-1].core_end_s
    return [PlannedChunk(index=0, start_s=0.0, end_s=end, core_start_s=0.0, core_end_s=end, path="deepgram")]


def _choose(
    chunks: Sequence[ChunkSpec], options: PlannerOptions, method: Method, deadline_s: float, whole_allowed: bool,
    capacity: Capacity | None = None,
) -> tuple[list[PlannedChunk], Method]:
    if not chunks:
        raise ValueError("no chunks to plan")
    effective = resolve_method(method, options)
    n = len(chunks)
    if effective == "gpu":
        return _assign(chunks, ["gpu"] * n), effective
    prices = options.prices
    now = _capacity(options, capacity)
    deepgram_path = _deepgram_slots(now, options)
    durations = [c.duration_s for c in chunks]
    # A candidate is k (the GPU takes the first k chunks) or None (one whole-file Deepgram request).
    candidates: list[int | None]
    if effective == "deepgram":
        candidates = [0]
    elif effective == "hybrid" and n > 1:
        candidates = list(range(1, n))
    else:
        candidates = list(range(n + 1))
    if n > 1 and effective != "hybrid" and whole_allowed:
        candidates.append(None)
    scored: list[tuple[float, float, int | None]] = []
    for k in candidates:
        gpu, deepgram = (durations[:k], durations[k:]) if k is not None else ([], [chunks[-1].core_end_s])
        finish = max(now.finish_s(gpu), deepgram_path.finish_s(deepgram))
        cost = sum(_gpu_cost(d, options) for d in gpu) + sum(map(prices.deepgram, deepgram))
        scored.append((finish, cost, k))
    if effective == "auto":  # never more than the whole file on Deepgram, when any plan can keep to that
        ceiling = prices.deepgram(chunks[-1].core_end_s) + 1e-9
        scored = [s for s in scored if s[1] <= ceiling] or scored
    fastest = min(scored, key=lambda s: (round(s[0], 6), s[1]))
    if effective == "hybrid":
        best = fastest
    else:
        in_time = [s for s in scored if s[0] <= deadline_s + _EPS]
        # Equal cost (zero overlap): the whole-file request wins, having no seams and one request.
        best = min(in_time, key=lambda s: (round(s[1], 9), s[2] is not None, s[0])) if in_time else fastest
        if not in_time:
            log.warning(
                "no plan meets the %.0f s deadline (method %s); taking the fastest, estimated %.0f s",
                deadline_s, effective, best[0],
            )
    k = best[2]
    if k is None:
        return _whole(chunks), effective
    on_gpu: list[Route] = ["gpu"]
    on_deepgram: list[Route] = ["deepgram"]
    paths = on_gpu * k + on_deepgram * (n - k)
    return _assign(chunks, paths), effective

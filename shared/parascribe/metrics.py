"""Pipeline metrics: one small interface, aggregated in process, exported to Cloud Monitoring or a file.

Callers :meth:`MetricsExporter.record` a value for a metric type from
:mod:`parascribe.metric_names` with its labels. :class:`Aggregator` sums values
per series (metric type + labels) and writes one GAUGE point per series per
flush window (``METRICS_FLUSH_SECONDS``), so a dashboard sums points over time
to get totals. RTFx is derived at flush time as audio seconds over processing
seconds, per engine. Job latency is a DISTRIBUTION: each window's latencies go out
as one histogram (exponential buckets from 1 s, :data:`LATENCY_BUCKETS`), so a
dashboard merges windows and instances and reads p50/p95/p99 from them.

Cloud Monitoring accepts one point per series every 10 s at most. A timer flush
that finds a series written less than 10 s ago keeps it for the next flush; the
final flush at shutdown stamps such a point 10 s after the previous one instead
(the API accepts end times up to five minutes ahead), so nothing is lost and
shutdown never waits.

:class:`LocalExporter` appends every record as a JSON line (``METRICS_LOCAL_PATH``)
and :func:`summarise_local` totals that file for ``parascribe metrics``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from parascribe import metric_names as mn

log = logging.getLogger(__name__)

MIN_POINT_SPACING_S = 10.0
INT_METRICS = frozenset({mn.JOBS, mn.FALLBACKS, mn.WEBHOOK_FAILURES, mn.DEEPGRAM_AUTH_ERRORS})
MEAN_METRICS = frozenset({mn.BUDGET_SPENT_USD, mn.BUDGET_USED_FRACTION})
DISTRIBUTION_METRICS = frozenset({mn.JOB_LATENCY_SECONDS})

Labels = tuple[tuple[str, str], ...]


class MetricsExporter(Protocol):
    """Where the pipeline reports numbers. Implementations are thread-safe."""

    def record(self, metric: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Add ``value`` to the series ``metric`` + ``labels`` (for latency: one observation)."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None:
        """Flush what is pending and stop; safe to call twice."""
        ...


@dataclass(frozen=True)
class Buckets:
    """Cloud Monitoring's exponential bucket options: finite bucket ``i`` (1..count) holds
    ``[scale * growth**(i-1), scale * growth**i)``; bucket 0 is the underflow, ``count + 1`` the overflow."""

    count: int
    growth: float
    scale: float

    def index(self, value: float) -> int:
        if value < self.scale:
            return 0
        i = int(math.floor(math.log(value / self.scale, self.growth))) + 1
        # Guard the float edge: a value exactly on a bound belongs to the bucket it opens.
        while i > 1 and value < self.scale * self.growth ** (i - 1):
            i -= 1
        while i <= self.count and value >= self.scale * self.growth ** i:
            i += 1
        return min(i, self.count + 1)

    def bounds(self, i: int) -> tuple[float, float]:
        """The ``[low, high)`` of bucket ``i``; the underflow starts at 0, the overflow ends at infinity."""
        low = 0.0 if i == 0 else self.scale * self.growth ** (i - 1)
        return low, (math.inf if i > self.count else self.scale * self.growth ** i)


LATENCY_BUCKETS = Buckets(count=40, growth=1.4, scale=1.0)
"""1 s to 1.4**40 s (about 8 days), each bucket 40 % wider than the last: p95 is read to within that."""


@dataclass(frozen=True)
class Distribution:
    """A histogram of one window's values, as Cloud Monitoring's ``Distribution`` holds it."""

    count: int
    mean: float
    sum_of_squared_deviation: float
    bucket_counts: tuple[int, ...]
    buckets: Buckets

    @classmethod
    def of(cls, values: list[float], buckets: Buckets) -> Distribution:
        count = len(values)
        mean = sum(values) / count
        counts = [0] * (buckets.count + 2)
        for v in values:
            counts[buckets.index(v)] += 1
        return cls(count, mean, sum((v - mean) ** 2 for v in values), tuple(counts), buckets)


@dataclass(frozen=True)
class Point:
    """One GAUGE point of one series: a number, or for a distribution metric a histogram (``value`` its mean)."""

    metric: str
    labels: Labels
    value: float
    end_time: float
    """Unix seconds."""
    distribution: Distribution | None = None

    @property
    def is_int(self) -> bool:
        return self.metric in INT_METRICS


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(math.floor(rank))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def label_value(text: str, limit: int = 100) -> str:
    """A label value of bounded cardinality: lower case, digits folded to ``N``, at most ``limit`` characters.

    Fallback reasons carry attempt counts and error details; folding digits keeps
    "dead-lettered on gpu after 5 attempts" and "... 6 attempts" one series.
    """
    return re.sub(r"\d+", "N", " ".join(text.lower().split()))[:limit]


def _key(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in (labels or {}).items()))


class Aggregator:
    """Sums records per series and hands points to ``write`` on each flush.

    Args:
        write: receives the points of one flush; it should not raise (errors are logged).
        flush_seconds: the timer's period once :meth:`start` has been called.
        min_spacing_s: the least time between two points of one series.
        clock: unix seconds; tests pass a fake one.
    """

    def __init__(
        self,
        write: Callable[[list[Point]], None],
        flush_seconds: float = 60.0,
        min_spacing_s: float = MIN_POINT_SPACING_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._write = write
        self._flush_seconds = max(flush_seconds, min_spacing_s)
        self._spacing = min_spacing_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, Labels], float] = {}
        self._counts: dict[tuple[str, Labels], int] = {}
        self._values: dict[tuple[str, Labels], list[float]] = {}
        self._last: dict[tuple[str, Labels], float] = {}
        self._pending_rtfx: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def record(self, metric: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        if not math.isfinite(value):
            log.warning("ignoring non-finite value %r for %s", value, metric)
            return
        key = (metric, _key(labels))
        with self._lock:
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1
            if metric in DISTRIBUTION_METRICS:
                self._values.setdefault(key, []).append(value)

    def start(self) -> Aggregator:
        """Flush every ``flush_seconds`` on a daemon thread until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._flush_seconds):
            self.flush()

    def collect(self, final: bool = False) -> list[Point]:
        """Take the points that are due, leaving series written too recently for later (unless ``final``)."""
        now = self._clock()
        points: list[Point] = []
        with self._lock:
            for key in list(self._sums):
                end = self._due(key, now, final)
                if end is None:
                    continue
                metric, labels = key
                total, count = self._sums.pop(key), self._counts.pop(key)
                values = self._values.pop(key, None)
                if values is not None:
                    hist = Distribution.of(values, LATENCY_BUCKETS)
                    points.append(Point(metric, labels, hist.mean, end, hist))
                else:
                    points.append(Point(metric, labels, total / count if metric in MEAN_METRICS else total, end))
                self._last[key] = end
                if metric in (mn.AUDIO_SECONDS, mn.PROCESSING_SECONDS):
                    engine = dict(labels).get("engine", "unknown")
                    audio, proc = self._pending_rtfx.get(engine, (0.0, 0.0))
                    self._pending_rtfx[engine] = (
                        (audio + total, proc) if metric == mn.AUDIO_SECONDS else (audio, proc + total)
                    )
            for engine in list(self._pending_rtfx):
                audio, proc = self._pending_rtfx[engine]
                key = (mn.RTFX, (("engine", engine),))
                if proc <= 0:
                    if audio <= 0:
                        del self._pending_rtfx[engine]
                    continue
                end = self._due(key, now, final)
                if end is None:
                    continue
                del self._pending_rtfx[engine]
                points.append(Point(mn.RTFX, key[1], audio / proc, end))
                self._last[key] = end
        return points

    def _due(self, key: tuple[str, Labels], now: float, final: bool) -> float | None:
        last = self._last.get(key)
        if last is None or now - last >= self._spacing:
            return now
        return last + self._spacing if final else None

    def flush(self, final: bool = False) -> None:
        points = self.collect(final)
        if not points:
            return
        try:
            self._write(points)
        except Exception:
            log.exception("dropping %d metric points: the exporter failed", len(points))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush(final=True)


class NullExporter:
    """``METRICS_EXPORTER=none``: records nothing."""

    def record(self, metric: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class LocalExporter:
    """Appends every record to a JSON-lines file, for the local stack and ``parascribe metrics``.

    Each record is one ``write`` in append mode, so processes sharing the file
    (merger, deepgram worker) do not interleave lines.
    """

    def __init__(self, path: str | Path, service: str = "") -> None:
        self._path = Path(path)
        self._service = service
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def record(self, metric: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        if not math.isfinite(value):
            return
        line = json.dumps({
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "service": self._service,
            "metric": metric,
            "labels": dict(_key(labels)),
            "value": value,
        }) + "\n"
        with self._lock:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            except OSError as err:
                log.warning("could not append metrics to %s: %s", self._path, err)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def _short(metric: str) -> str:
    return metric.removeprefix(mn.PREFIX + "/")


def summarise_local(path: str | Path) -> str:
    """Totals from a local metrics file, as a table for ``parascribe metrics``."""
    p = Path(path)
    if not p.exists():
        return f"no metrics yet ({p} does not exist; run a job with METRICS_EXPORTER=local)"
    sums: dict[tuple[str, Labels], float] = {}
    counts: dict[tuple[str, Labels], int] = {}
    spread: dict[tuple[str, Labels], list[float]] = {}
    skipped = 0
    first = last = None
    with p.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                key = (str(rec["metric"]), _key(rec.get("labels")))
                value = float(rec["value"])
            except (ValueError, KeyError, TypeError):
                skipped += 1
                continue
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
            if key[0] in DISTRIBUTION_METRICS:
                spread.setdefault(key, []).append(value)
            first = first or rec.get("time")
            last = rec.get("time") or last
    if not sums:
        return f"no metrics yet in {p}"
    rows: list[tuple[str, str, str]] = []
    for (metric, labels), total in sorted(sums.items()):
        value = total / counts[(metric, labels)] if metric in MEAN_METRICS else total
        shown = f"{value:.0f}" if metric in INT_METRICS else f"{value:.6f}" if "usd" in metric else f"{value:.2f}"
        if metric in MEAN_METRICS:
            shown += f" (mean of {counts[(metric, labels)]})"
        if (metric, labels) in spread:
            vals = spread[(metric, labels)]
            shown = (f"p50 {percentile(vals, 50):.2f}  p95 {percentile(vals, 95):.2f}  "
                     f"p99 {percentile(vals, 99):.2f}  max {max(vals):.2f} (of {len(vals)})")
        rows.append((_short(metric), " ".join(f"{k}={v}" for k, v in labels), shown))
    audio: dict[str, float] = {}
    proc: dict[str, float] = {}
    for (metric, labels), total in sums.items():
        engine = dict(labels).get("engine", "unknown")
        if metric == mn.AUDIO_SECONDS:
            audio[engine] = audio.get(engine, 0.0) + total
        elif metric == mn.PROCESSING_SECONDS:
            proc[engine] = proc.get(engine, 0.0) + total
    for engine in sorted(audio):
        if proc.get(engine, 0.0) > 0:
            rows.append((_short(mn.RTFX), f"engine={engine}", f"{audio[engine] / proc[engine]:.1f}"))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"metrics from {p} ({sum(counts.values())} records, {first} .. {last})"]
    lines += [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]
    if skipped:
        lines.append(f"({skipped} unreadable lines skipped)")
    return "\n".join(lines)

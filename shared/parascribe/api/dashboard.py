"""The console's charts: the Cloud Monitoring dashboard's tiles, drawn from the local metrics file or from Monitoring.

The chart list (titles, metric types, filters, aligners, reducers, group-by labels, periods)
is read from the dashboard definition Terraform deploys, ``infra/dashboards/parascribe.json``.
The package carries a byte-identical copy (``parascribe/api/dashboard.json``; a unit test
fails when the two differ), so ``pip install`` and the API image stay self-contained and the
console and the dashboard cannot drift apart.

- :class:`LocalSeries` answers from the local stack's metrics file (``METRICS_LOCAL_PATH``),
  which holds every raw record: each dataset's aligner is applied per time bucket and group, and a
  percentile reducer (job latency's p50/p95/p99) is taken exactly over the raw values.
  RTFx is not recorded there (the cloud exporter derives it per flush), so it is derived the
  same way: audio seconds over processing seconds, per engine and bucket.
- :class:`MonitoringSeries` asks Cloud Monitoring (``timeSeries.list``) with the dashboard's own
  aggregation.

Both answer :class:`Chart` values, serialised by :func:`charts_json`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from parascribe import metric_names as mn
from parascribe.metrics import percentile

log = logging.getLogger(__name__)

DASHBOARD_RESOURCE = "dashboard.json"
_FILTER_TYPE = re.compile(r'metric\.type="([^"]+)"')
_FILTER_LABEL = re.compile(r'metric\.label\.(\w+)="([^"]*)"')
_PLACEHOLDER = re.compile(r"\$\{metric\.(\w+)\}")


def metric_types() -> dict[str, str]:
    """Short name → metric type, as ``infra/scripts/gen_names.py`` hands them to Terraform's ``var.metric_types``."""
    return {attr.lower(): value for attr, value in vars(mn).items()
            if attr.isupper() and isinstance(value, str) and value in mn.ALL}


@dataclass(frozen=True)
class Dataset:
    """One query of a tile: a filter and the aggregation Cloud Monitoring applies."""

    filter: str
    metric: str
    period_s: int
    aligner: str
    reducer: str
    group_by: tuple[str, ...] = ()
    plot: str = "LINE"

    @property
    def label_filter(self) -> dict[str, str]:
        """The ``metric.label.K="V"`` conditions of the filter."""
        return dict(_FILTER_LABEL.findall(self.filter))

    @property
    def custom(self) -> bool:
        return self.metric.startswith(mn.PREFIX + "/")


@dataclass(frozen=True)
class ChartSpec:
    title: str
    kind: str  # "scorecard" | "xy"
    datasets: tuple[Dataset, ...]
    unit: str = ""


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Chart:
    """A chart as the console draws it: series of (unix seconds, value), or one value for a scorecard."""

    title: str
    kind: str
    unit: str
    plot: str
    period_s: int
    series: list[Series] = field(default_factory=list)
    value: float | None = None
    note: str | None = None


def _seconds(text: str | None, default: int) -> int:
    return int(float(text.rstrip("s"))) if text else default


def _dataset(query: dict[str, Any], plot: str, types: dict[str, str]) -> Dataset:
    f = query["timeSeriesQuery"]["timeSeriesFilter"]
    text = _PLACEHOLDER.sub(lambda m: types.get(m.group(1), m.group(0)), f["filter"])
    agg = f.get("aggregation", {})
    found = _FILTER_TYPE.search(text)
    return Dataset(filter=text, metric=found.group(1) if found else "", period_s=_seconds(agg.get("alignmentPeriod"), 60),
                   aligner=agg.get("perSeriesAligner", "ALIGN_MEAN"), reducer=agg.get("crossSeriesReducer", "REDUCE_NONE"),
                   group_by=tuple(agg.get("groupByFields", ())), plot=plot)


def parse_dashboard(doc: dict[str, Any], types: dict[str, str] | None = None) -> list[ChartSpec]:
    """The charts of a dashboard's mosaic layout, in reading order, with ``${metric.X}`` filled in."""
    types = types if types is not None else metric_types()
    tiles = sorted(doc.get("mosaicLayout", {}).get("tiles", []), key=lambda t: (t.get("yPos", 0), t.get("xPos", 0)))
    specs = []
    for tile in tiles:
        widget = tile.get("widget", {})
        title = str(widget.get("title", ""))
        if "scorecard" in widget:
            specs.append(ChartSpec(title, "scorecard", (_dataset(widget["scorecard"], "SCORECARD", types),)))
        elif "xyChart" in widget:
            xy = widget["xyChart"]
            datasets = tuple(_dataset(d, d.get("plotType", "LINE"), types) for d in xy.get("dataSets", []))
            specs.append(ChartSpec(title, "xy", datasets, str(xy.get("yAxis", {}).get("label", ""))))
    return specs


@lru_cache(maxsize=1)
def packaged_specs() -> tuple[ChartSpec, ...]:
    """The charts of the dashboard copy this package carries."""
    text = resources.files("parascribe.api").joinpath(DASHBOARD_RESOURCE).read_text(encoding="utf-8")
    return tuple(parse_dashboard(json.loads(text)))


def _percentile_of(ds: Dataset) -> float | None:
    """The percentile a ``REDUCE_PERCENTILE_NN`` dataset asks for; None for any other reducer."""
    return float(ds.reducer.rsplit("_", 1)[1]) if ds.reducer.startswith("REDUCE_PERCENTILE_") else None


def _series_name(spec: ChartSpec, ds: Dataset, group: str) -> str:
    name = group or "total"
    if len(spec.datasets) > 1:
        q = _percentile_of(ds)
        name += f" p{q:02.0f}" if q is not None else " " + ds.aligner.removeprefix("ALIGN_").lower()
    return name


def _aggregate(values: list[float], ds: Dataset) -> float:
    """``values`` as the dataset aggregates them: a percentile reducer exactly, else the aligner."""
    q = _percentile_of(ds)
    if q is not None:
        return percentile(values, q)
    aligner = ds.aligner
    if aligner == "ALIGN_MAX":
        return max(values)
    if aligner == "ALIGN_MIN":
        return min(values)
    if aligner in ("ALIGN_MEAN", "ALIGN_PERCENT_CHANGE"):
        return sum(values) / len(values)
    if aligner == "ALIGN_COUNT":
        return float(len(values))
    return sum(values)


@dataclass(frozen=True)
class Record:
    time: float
    metric: str
    labels: dict[str, str]
    value: float


def read_records(path: Path, since: float) -> list[Record]:
    """The records of a local metrics file from ``since`` (unix seconds) on; unreadable lines are skipped."""
    from datetime import datetime

    out: list[Record] = []
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                t = datetime.fromisoformat(rec["time"]).timestamp()
                record = Record(t, str(rec["metric"]), {str(k): str(v) for k, v in (rec.get("labels") or {}).items()},
                                float(rec["value"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if t >= since:
                out.append(record)
    return out


class ChartSource(Protocol):
    """Where the console's charts come from."""

    name: str

    def charts(self, specs: Iterable[ChartSpec], window_s: int) -> list[Chart]: ...


class LocalSeries:
    """Charts from the local metrics file (``METRICS_LOCAL_PATH``)."""

    name = "local"

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self._path = path
        self._clock = clock

    def charts(self, specs: Iterable[ChartSpec], window_s: int) -> list[Chart]:
        now = self._clock()
        records = read_records(self._path, now - window_s)
        out = []
        for spec in specs:
            first = spec.datasets[0]
            chart = Chart(spec.title, spec.kind, spec.unit, first.plot, first.period_s)
            if not all(ds.custom for ds in spec.datasets):
                chart.note = "recorded by Cloud Monitoring only (Pub/Sub metrics); not on the local stack"
            elif spec.kind == "scorecard":
                chart.value = self._total(first, records)
            else:
                for ds in spec.datasets:
                    chart.series += self._series(spec, ds, records)
            out.append(chart)
        return out

    @staticmethod
    def _matching(ds: Dataset, records: list[Record], metric: str | None = None) -> list[Record]:
        want = ds.label_filter
        return [r for r in records if r.metric == (metric or ds.metric)
                and all(r.labels.get(k) == v for k, v in want.items())]

    def _total(self, ds: Dataset, records: list[Record]) -> float:
        values = [r.value for r in self._matching(ds, records)]
        return _aggregate(values, ds) if values else 0.0

    def _series(self, spec: ChartSpec, ds: Dataset, records: list[Record]) -> list[Series]:
        labels = [g.removeprefix("metric.label.") for g in ds.group_by]
        if ds.metric == mn.RTFX:
            return self._rtfx(spec, ds, records, labels)
        buckets: dict[str, dict[float, list[float]]] = {}
        for r in self._matching(ds, records):
            group = " ".join(r.labels.get(k, "unknown") for k in labels)
            start = r.time - r.time % ds.period_s
            buckets.setdefault(group, {}).setdefault(start, []).append(r.value)
        return [Series(_series_name(spec, ds, g), [(t, _aggregate(v, ds)) for t, v in sorted(b.items())])
                for g, b in sorted(buckets.items())]

    def _rtfx(self, spec: ChartSpec, ds: Dataset, records: list[Record], labels: list[str]) -> list[Series]:
        sums: dict[str, dict[float, list[float]]] = {}
        for r in records:
            if r.metric not in (mn.AUDIO_SECONDS, mn.PROCESSING_SECONDS):
                continue
            group = " ".join(r.labels.get(k, "unknown") for k in labels)
            pair = sums.setdefault(group, {}).setdefault(r.time - r.time % ds.period_s, [0.0, 0.0])
            pair[0 if r.metric == mn.AUDIO_SECONDS else 1] += r.value
        return [Series(_series_name(spec, ds, g), [(t, a / p) for t, (a, p) in sorted(b.items()) if p > 0])
                for g, b in sorted(sums.items())]


class MonitoringSeries:
    """Charts from Cloud Monitoring, queried with each dataset's own aggregation.

    Args:
        client: a ``monitoring_v3.MetricServiceClient`` (built once per process).
        project: the project whose metrics to read.
    """

    name = "cloud"

    def __init__(self, client: Any, project: str, clock: Any = time.time, timeout_s: float = 20.0) -> None:
        self._client = client
        self._project = project
        self._clock = clock
        self._timeout_s = timeout_s

    def charts(self, specs: Iterable[ChartSpec], window_s: int) -> list[Chart]:
        from google.api_core import exceptions as gexc

        now = self._clock()
        out = []
        for spec in specs:
            first = spec.datasets[0]
            chart = Chart(spec.title, spec.kind, spec.unit, first.plot, first.period_s)
            try:
                if spec.kind == "scorecard":
                    series = self._query(spec, first, now, window_s, window_s)
                    chart.value = sum(v for s in series for _, v in s.points)
                else:
                    for ds in spec.datasets:
                        chart.series += self._query(spec, ds, now, window_s, ds.period_s)
            except gexc.GoogleAPICallError as err:
                log.warning("Cloud Monitoring query for %r failed: %s", spec.title, err)
                chart.note = f"Cloud Monitoring did not answer ({type(err).__name__}); " \
                             "the API's account needs roles/monitoring.viewer"
            out.append(chart)
        return out

    def _query(self, spec: ChartSpec, ds: Dataset, now: float, window_s: int, period_s: int) -> list[Series]:
        from google.cloud import monitoring_v3

        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{self._project}",
            filter=ds.filter,
            interval=monitoring_v3.TimeInterval(end_time={"seconds": int(now)},
                                                start_time={"seconds": int(now - window_s)}),
            aggregation=monitoring_v3.Aggregation(
                alignment_period={"seconds": max(60, period_s)},
                per_series_aligner=ds.aligner, cross_series_reducer=ds.reducer,
                group_by_fields=list(ds.group_by)),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        out = []
        for ts in self._client.list_time_series(request=request, timeout=self._timeout_s):
            labels = {**{f"resource.label.{k}": v for k, v in ts.resource.labels.items()},
                      **{f"metric.label.{k}": v for k, v in ts.metric.labels.items()}}
            group = " ".join(labels.get(g, "unknown") for g in ds.group_by)
            points = []
            for p in ts.points:
                kind = p.value._pb.WhichOneof("value")
                value = float(getattr(p.value, kind)) if kind in ("double_value", "int64_value") else 0.0
                points.append((p.interval.end_time.timestamp(), value))
            out.append(Series(_series_name(spec, ds, group), sorted(points)))
        return out


class NoSeries:
    """``METRICS_EXPORTER=none``: nothing is recorded, so there is nothing to draw."""

    name = "none"

    def charts(self, specs: Iterable[ChartSpec], window_s: int) -> list[Chart]:
        return [Chart(s.title, s.kind, s.unit, s.datasets[0].plot, s.datasets[0].period_s,
                      note="metrics are off (METRICS_EXPORTER=none)") for s in specs]


def charts_json(source: ChartSource, window_s: int, specs: Iterable[ChartSpec] | None = None) -> dict[str, Any]:
    """``GET /v1/metrics``: every chart of the dashboard over the last ``window_s`` seconds."""
    charts = source.charts(packaged_specs() if specs is None else specs, window_s)
    return {"source": source.name, "window_s": window_s, "charts": [asdict(c) for c in charts]}

"""Cloud Monitoring export: aggregated GAUGE points (numbers, or histograms for distribution metrics) through
``MetricServiceClient.create_time_series``."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping

from google.api import metric_pb2
from google.api_core import exceptions as gexc
from google.cloud import monitoring_v3

from parascribe.config import Settings
from parascribe.metrics import MIN_POINT_SPACING_S, Aggregator, LocalExporter, MetricsExporter, NullExporter, Point

log = logging.getLogger(__name__)

MAX_SERIES_PER_CALL = 200
NAMESPACE = "parascribe"


def generic_task(project: str, location: str, job: str, task_id: str) -> dict[str, object]:
    """The ``generic_task`` monitored resource for one process of one service."""
    return {
        "type": "generic_task",
        "labels": {"project_id": project, "location": location, "namespace": NAMESPACE, "job": job, "task_id": task_id},
    }


def to_time_series(point: Point, resource: Mapping[str, object]) -> monitoring_v3.TimeSeries:
    seconds = int(point.end_time)
    nanos = int(round((point.end_time - seconds) * 1e9))
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    kinds = metric_pb2.MetricDescriptor.ValueType
    value: dict[str, object]
    if point.distribution is not None:
        d, b = point.distribution, point.distribution.buckets
        value = {"distribution_value": {
            "count": d.count, "mean": d.mean, "sum_of_squared_deviation": d.sum_of_squared_deviation,
            "bucket_options": {"exponential_buckets": {"num_finite_buckets": b.count, "growth_factor": b.growth,
                                                       "scale": b.scale}},
            "bucket_counts": list(d.bucket_counts)}}
        value_type = kinds.DISTRIBUTION
    elif point.is_int:
        value, value_type = {"int64_value": int(round(point.value))}, kinds.INT64
    else:
        value, value_type = {"double_value": float(point.value)}, kinds.DOUBLE
    return monitoring_v3.TimeSeries({
        "metric": {"type": point.metric, "labels": dict(point.labels)},
        "resource": resource,
        "metric_kind": metric_pb2.MetricDescriptor.MetricKind.GAUGE,
        "value_type": value_type,
        "points": [{"interval": {"end_time": {"seconds": seconds, "nanos": nanos}}, "value": value}],
    })


class CloudMonitoringExporter(Aggregator):
    """An :class:`Aggregator` whose flushes go to Cloud Monitoring, at most 200 series a call.

    A failed call is logged and its points dropped: metrics must never fail a job,
    and a retry would break the one-point-per-10-s rule for the series it did write.
    """

    def __init__(
        self,
        client: monitoring_v3.MetricServiceClient,
        project: str,
        resource: Mapping[str, object],
        flush_seconds: float = 60.0,
        min_spacing_s: float = MIN_POINT_SPACING_S,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__(self._export, flush_seconds=flush_seconds, min_spacing_s=min_spacing_s, clock=clock)
        self._client = client
        self._name = f"projects/{project}"
        self._resource = dict(resource)
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(
        cls, settings: Settings, service: str, client: monitoring_v3.MetricServiceClient | None = None
    ) -> CloudMonitoringExporter:
        task_id = uuid.uuid4().hex[:16]
        return cls(
            client or monitoring_v3.MetricServiceClient(),
            settings.gcp_project,
            generic_task(settings.gcp_project, settings.metrics_location, service, task_id),
            flush_seconds=settings.metrics_flush_seconds,
        )

    def _export(self, points: list[Point]) -> None:
        series = [to_time_series(p, self._resource) for p in points]
        for i in range(0, len(series), MAX_SERIES_PER_CALL):
            batch = series[i : i + MAX_SERIES_PER_CALL]
            try:
                self._client.create_time_series(name=self._name, time_series=batch, timeout=self._timeout_s)
            except gexc.GoogleAPICallError as err:
                log.warning("Cloud Monitoring rejected %d series: %s", len(batch), err)


def exporter_from_settings(settings: Settings, service: str = "merger") -> MetricsExporter:
    """The exporter ``METRICS_EXPORTER`` asks for (cloud exporters start their flush timer)."""
    if settings.metrics_exporter == "none":
        return NullExporter()
    if settings.metrics_exporter == "local":
        return LocalExporter(settings.metrics_local_path, service=service)
    return CloudMonitoringExporter.from_settings(settings, service=service).start()

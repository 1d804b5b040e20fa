"""A local gRPC ``google.monitoring.v3.MetricService`` that records real CreateTimeSeries and ListTimeSeries requests.

The real ``MetricServiceClient`` talks to it over an insecure loopback channel;
the server decodes each request with the library's own message types and
enforces the API's documented write limits (200 series a call, one point per
series per call, end times in order per series), answering INVALID_ARGUMENT
like the real service when a request breaks them.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport
from google.protobuf import empty_pb2

SERVICE = "google.monitoring.v3.MetricService"
MAX_SERIES = 200


@dataclass
class Written:
    """One decoded series from one call."""

    call: int
    metric: str
    metric_labels: dict[str, str]
    resource_type: str
    resource_labels: dict[str, str]
    end_time: float
    value: float
    value_kind: str  # "int64_value" | "double_value" | "distribution_value" (value: its mean)
    distribution: monitoring_v3.TypedValue | None = None


@dataclass
class FakeMetricService:
    requests: list[monitoring_v3.CreateTimeSeriesRequest] = field(default_factory=list)
    list_requests: list[monitoring_v3.ListTimeSeriesRequest] = field(default_factory=list)
    listed: dict[str, list[monitoring_v3.TimeSeries]] = field(default_factory=dict)
    """What ListTimeSeries answers, by the metric type in the request's filter (the test sets it)."""
    series: list[Written] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _last_end: dict[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]], float] = field(
        default_factory=dict
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create_time_series(
        self, request: monitoring_v3.CreateTimeSeriesRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        with self._lock:
            self.requests.append(request)
            call = len(self.requests)
            problem = self._check(request, call)
            if problem:
                self.errors.append(problem)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return empty_pb2.Empty()

    def list_time_series(
        self, request: monitoring_v3.ListTimeSeriesRequest, context: grpc.ServicerContext
    ) -> monitoring_v3.ListTimeSeriesResponse:
        with self._lock:
            self.list_requests.append(request)
        if not request.name.startswith("projects/") or "metric.type=" not in request.filter:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request {request.name!r} {request.filter!r}")
        metric = request.filter.split('metric.type="', 1)[1].split('"', 1)[0]
        return monitoring_v3.ListTimeSeriesResponse(time_series=self.listed.get(metric, []))

    def _check(self, request: monitoring_v3.CreateTimeSeriesRequest, call: int) -> str | None:
        if not request.name.startswith("projects/"):
            return f"bad name {request.name!r}"
        if len(request.time_series) > MAX_SERIES:
            return f"{len(request.time_series)} series in one request; the limit is {MAX_SERIES}"
        for ts in request.time_series:
            if len(ts.points) != 1:
                return "each TimeSeries must have exactly one point"
            p = ts.points[0]
            end = p.interval.end_time.timestamp()  # proto-plus gives a DatetimeWithNanoseconds
            key = (ts.metric.type, tuple(sorted(ts.metric.labels.items())), tuple(sorted(ts.resource.labels.items())))
            last = self._last_end.get(key)
            if last is not None and end <= last:
                return f"point for {ts.metric.type} is not newer than the series' last point"
            self._last_end[key] = end
            kind = next(k for k in ("int64_value", "double_value", "distribution_value") if k in p.value)
            if kind == "distribution_value":
                d = p.value.distribution_value
                if sum(d.bucket_counts) != d.count or len(d.bucket_counts) > \
                        d.bucket_options.exponential_buckets.num_finite_buckets + 2:
                    return f"distribution for {ts.metric.type}: bucket counts do not add up to its count"
            self.series.append(Written(
                call=call,
                metric=ts.metric.type,
                metric_labels=dict(ts.metric.labels),
                resource_type=ts.resource.type,
                resource_labels=dict(ts.resource.labels),
                end_time=end,
                value=float(p.value.distribution_value.mean if kind == "distribution_value" else getattr(p.value, kind)),
                value_kind=kind,
                distribution=p.value if kind == "distribution_value" else None,
            ))
        return None


class MetricServiceServer:
    """Serves :class:`FakeMetricService` on a free loopback port."""

    def __init__(self) -> None:
        self.fake = FakeMetricService()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "CreateTimeSeries": grpc.unary_unary_rpc_method_handler(
                self.fake.create_time_series,
                request_deserializer=monitoring_v3.CreateTimeSeriesRequest.deserialize,
                response_serializer=empty_pb2.Empty.SerializeToString,
            ),
            "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                self.fake.list_time_series,
                request_deserializer=monitoring_v3.ListTimeSeriesRequest.deserialize,
                response_serializer=monitoring_v3.ListTimeSeriesResponse.serialize,
            ),
        })
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> MetricServiceServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def client(self) -> monitoring_v3.MetricServiceClient:
        """The real client, pointed at this server over an insecure channel."""
        channel = grpc.insecure_channel(self.address)
        return monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))

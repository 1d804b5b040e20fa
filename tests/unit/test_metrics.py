"""Metrics: aggregation, the 10-s rule, Cloud Monitoring requests decoded by a real gRPC server, local files."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from parascribe import metric_names as mn
from parascribe.config import load_settings
from parascribe.gcp.monitoring import CloudMonitoringExporter, exporter_from_settings, generic_task
from parascribe.metrics import (
    LATENCY_BUCKETS,
    Aggregator,
    Buckets,
    LocalExporter,
    NullExporter,
    Point,
    label_value,
    percentile,
    summarise_local,
)
from tests.metric_service_fake import MetricServiceServer


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def by_metric(points: list[Point]) -> dict[tuple[str, tuple[tuple[str, str], ...]], Point]:
    return {(p.metric, p.labels): p for p in points}


def test_aggregator_sums_per_series_derives_rtfx_and_makes_a_latency_histogram() -> None:
    clock = Clock()
    written: list[list[Point]] = []
    agg = Aggregator(written.append, clock=clock)
    agg.record(mn.AUDIO_SECONDS, 600, {"engine": "parakeet", "path": "gpu"})
    agg.record(mn.AUDIO_SECONDS, 300, {"path": "gpu", "engine": "parakeet"})  # label order does not matter
    agg.record(mn.PROCESSING_SECONDS, 6, {"engine": "parakeet", "path": "gpu"})
    agg.record(mn.JOB_LATENCY_SECONDS, 10, {"status": "done"})
    agg.record(mn.JOB_LATENCY_SECONDS, 30, {"status": "done"})
    agg.record(mn.JOBS, 1, {"status": "done"})
    agg.record(mn.JOBS, 1, {"status": "done"})
    agg.record(mn.COST_USD, float("nan"), {"method": "gpu"})  # ignored
    agg.flush()
    pts = by_metric(written[0])
    assert pts[(mn.AUDIO_SECONDS, (("engine", "parakeet"), ("path", "gpu")))].value == 900
    assert pts[(mn.RTFX, (("engine", "parakeet"),))].value == pytest.approx(150.0)
    latency = pts[(mn.JOB_LATENCY_SECONDS, (("status", "done"),))]
    assert latency.value == 20 and latency.distribution is not None
    hist = latency.distribution
    assert (hist.count, hist.mean, hist.sum_of_squared_deviation) == (2, 20, 200)
    assert sum(hist.bucket_counts) == 2 and len(hist.bucket_counts) == LATENCY_BUCKETS.count + 2
    for v in (10, 30):
        low, high = LATENCY_BUCKETS.bounds(LATENCY_BUCKETS.index(v))
        assert low <= v < high and hist.bucket_counts[LATENCY_BUCKETS.index(v)] >= 1
    jobs = pts[(mn.JOBS, (("status", "done"),))]
    assert jobs.value == 2 and jobs.is_int
    assert all(p.end_time == clock.t for p in written[0])
    assert not any(p.metric == mn.COST_USD for p in written[0])
    agg.flush()
    assert len(written) == 1, "nothing new, nothing written"


def test_a_series_gets_at_most_one_point_per_ten_seconds() -> None:
    clock = Clock()
    written: list[list[Point]] = []
    agg = Aggregator(written.append, clock=clock)
    agg.record(mn.JOBS, 1, {"status": "done"})
    agg.flush()
    clock.t += 4
    agg.record(mn.JOBS, 1, {"status": "done"})
    agg.record(mn.JOBS, 1, {"status": "failed"})  # a new series may be written at once
    agg.flush()
    assert [(p.labels, p.value) for p in written[1]] == [((("status", "failed"),), 1)]
    clock.t += 6
    agg.record(mn.JOBS, 1, {"status": "done"})
    agg.flush()
    assert [(p.labels, p.value) for p in written[2]] == [((("status", "done"),), 2)]
    # At shutdown a too-recent series is stamped 10 s after its previous point, not dropped.
    clock.t += 3
    agg.record(mn.JOBS, 5, {"status": "done"})
    agg.close()
    (last,) = written[3]
    assert last.value == 5 and last.end_time == written[2][0].end_time + 10
    agg.close()  # twice is fine
    assert len(written) == 4


def test_timer_flushes_without_being_asked() -> None:
    got = threading.Event()
    agg = Aggregator(lambda pts: got.set(), flush_seconds=0.05, min_spacing_s=0.05).start()
    agg.record(mn.WEBHOOK_FAILURES, 1)
    try:
        assert got.wait(5), "the timer never flushed"
    finally:
        agg.close()


def test_a_failing_writer_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    attempts: list[list[Point]] = []

    def boom(points: list[Point]) -> None:
        attempts.append(points)
        raise RuntimeError("monitoring is down")

    agg = Aggregator(boom, clock=clock)
    agg.record(mn.JOBS, 1, {"status": "done"})
    with caplog.at_level(logging.ERROR, logger="parascribe.metrics"):
        agg.flush()
        agg.close()
    assert attempts == [[Point(mn.JOBS, (("status", "done"),), 1.0, clock.t)]]  # dropped, not retried at close
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "dropping 1 metric points: the exporter failed")
    ]


def test_label_values_have_bounded_cardinality() -> None:
    assert label_value("Dead-lettered on GPU after 5 attempts") == "dead-lettered on gpu after N attempts"
    assert label_value("x" * 500) == "x" * 100


@pytest.fixture
def monitoring() -> Iterator[MetricServiceServer]:
    server = MetricServiceServer().start()
    yield server
    server.stop()


def test_cloud_exporter_sends_real_requests_in_batches_of_200(monitoring: MetricServiceServer) -> None:
    clock = Clock()
    resource = generic_task("proj-1", "europe-west1", "merger", "task-a")
    exp = CloudMonitoringExporter(monitoring.client(), "proj-1", resource, clock=clock)
    for i in range(450):
        exp.record(mn.FALLBACKS, 1, {"reason": f"r{i}", "from_path": "gpu", "to_path": "deepgram"})
    exp.record(mn.COST_USD, 0.25, {"method": "deepgram"})
    exp.record(mn.COST_USD, 0.5, {"method": "deepgram"})
    exp.flush()
    fake = monitoring.fake
    assert not fake.errors
    assert [len(r.time_series) for r in fake.requests] == [200, 200, 51]
    assert all(r.name == "projects/proj-1" for r in fake.requests)
    assert len(fake.series) == 451
    cost = [s for s in fake.series if s.metric == mn.COST_USD]
    assert len(cost) == 1
    assert cost[0].value == pytest.approx(0.75) and cost[0].value_kind == "double_value"
    assert cost[0].metric_labels == {"method": "deepgram"}
    assert cost[0].resource_type == "generic_task"
    assert cost[0].resource_labels == {"project_id": "proj-1", "location": "europe-west1", "namespace": "parascribe",
                                       "job": "merger", "task_id": "task-a"}
    fb = [s for s in fake.series if s.metric == mn.FALLBACKS]
    assert {s.value_kind for s in fb} == {"int64_value"} and {s.value for s in fb} == {1.0}
    assert {s.metric_labels["reason"] for s in fb} == {f"r{i}" for i in range(450)}
    assert all(s.end_time == pytest.approx(clock.t, abs=1e-3) for s in fake.series)


def test_cloud_exporter_keeps_ten_seconds_between_points(monitoring: MetricServiceServer) -> None:
    clock = Clock()
    exp = CloudMonitoringExporter(monitoring.client(), "p", generic_task("p", "global", "merger", "t"), clock=clock)
    for step in (0, 3, 4, 5, 2, 9, 1):
        clock.t += step
        exp.record(mn.AUDIO_SECONDS, 60, {"engine": "deepgram", "path": "deepgram"})
        exp.record(mn.PROCESSING_SECONDS, 2, {"engine": "deepgram", "path": "deepgram"})
        exp.flush()
    exp.close()
    fake = monitoring.fake
    assert not fake.errors
    for metric in (mn.AUDIO_SECONDS, mn.PROCESSING_SECONDS, mn.RTFX):
        ends = [s.end_time for s in fake.series if s.metric == metric]
        assert len(ends) >= 2
        assert all(b - a >= 10 - 1e-3 for a, b in zip(ends, ends[1:], strict=False)), (metric, ends)
    assert sum(s.value for s in fake.series if s.metric == mn.AUDIO_SECONDS) == 7 * 60
    assert {s.value for s in fake.series if s.metric == mn.RTFX} == {30.0}


def test_cloud_exporter_survives_a_rejected_request(monitoring: MetricServiceServer) -> None:
    clock = Clock()
    exp = CloudMonitoringExporter(monitoring.client(), "p", generic_task("p", "global", "m", "t"), clock=clock)
    exp.record(mn.JOBS, 1, {"status": "done"})
    exp.flush()
    # A point not newer than the last one is rejected by the server (INVALID_ARGUMENT): logged, not raised.
    exp._last.clear()
    exp.record(mn.JOBS, 1, {"status": "done"})
    exp.flush()
    assert monitoring.fake.errors == [f"point for {mn.JOBS} is not newer than the series' last point"]
    assert len(monitoring.fake.requests) == 2
    assert [(s.metric, s.value, s.end_time) for s in monitoring.fake.series] == [(mn.JOBS, 1.0, clock.t)]


def test_local_exporter_appends_lines_and_summarises(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.jsonl"
    assert "no metrics yet" in summarise_local(path)
    exp = LocalExporter(path, service="merger")
    exp.record(mn.AUDIO_SECONDS, 900, {"engine": "parakeet", "path": "gpu"})
    exp.record(mn.PROCESSING_SECONDS, 6, {"engine": "parakeet", "path": "gpu"})
    exp.record(mn.JOBS, 1, {"status": "done"})
    exp.record(mn.JOBS, 1, {"status": "done"})
    exp.record(mn.JOB_LATENCY_SECONDS, 10, {"status": "done"})
    exp.record(mn.JOB_LATENCY_SECONDS, 20, {"status": "done"})
    exp.record(mn.SAVINGS_USD, 0.125)
    with path.open("a") as f:
        f.write("not json\n")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["labels"] == {"engine": "parakeet", "path": "gpu"}
    assert json.loads(lines[0])["service"] == "merger"
    text = summarise_local(path)
    rows = {tuple(line.split()[:2]): line for line in text.splitlines()[1:]}
    assert rows[("jobs", "status=done")].split()[-1] == "2"
    assert "p50 15.00  p95 19.50  p99 19.90  max 20.00 (of 2)" in rows[("job_latency_seconds", "status=done")]
    assert rows[("rtfx", "engine=parakeet")].split()[-1] == "150.0"
    assert "0.125000" in text
    assert "1 unreadable lines skipped" in text


def test_exporter_from_settings(tmp_path: Path) -> None:
    assert isinstance(exporter_from_settings(load_settings(metrics_exporter="none")), NullExporter)
    local = exporter_from_settings(load_settings(metrics_exporter="local", metrics_local_path=str(tmp_path / "m.jsonl")))
    assert isinstance(local, LocalExporter) and local.path == tmp_path / "m.jsonl"


def test_cloud_exporter_from_settings_uses_generic_task(monitoring: MetricServiceServer) -> None:
    settings = load_settings(gcp_project="proj-9", metrics_location="us-central1", metrics_flush_seconds=10)
    exp = CloudMonitoringExporter.from_settings(settings, "merger", client=monitoring.client())
    exp.record(mn.WEBHOOK_FAILURES, 1)
    t0 = time.time()
    exp.close()
    (s,) = monitoring.fake.series
    assert s.resource_labels["project_id"] == "proj-9" and s.resource_labels["location"] == "us-central1"
    assert s.resource_labels["job"] == "merger" and len(s.resource_labels["task_id"]) == 16
    assert s.end_time == pytest.approx(t0, abs=5)




def test_exponential_buckets_match_cloud_monitorings_bounds() -> None:
    b = Buckets(count=4, growth=2.0, scale=1.0)  # underflow, [1,2), [2,4), [4,8), [8,16), overflow
    assert [b.index(v) for v in (0.0, 0.99, 1.0, 1.99, 2.0, 7.99, 8.0, 15.99, 16.0, 1e9)] == [0, 0, 1, 1, 2, 3, 4, 4, 5, 5]
    assert b.bounds(0) == (0.0, 1.0) and b.bounds(3) == (4.0, 8.0) and b.bounds(5) == (16.0, math.inf)
    # 1.4**k lands a hair off the bound in floating point; every value still falls inside its bucket.
    for k in range(LATENCY_BUCKETS.count + 1):
        for v in (1.4**k, 1.4**k * (1 - 1e-12), 1.4**k * (1 + 1e-12)):
            low, high = LATENCY_BUCKETS.bounds(LATENCY_BUCKETS.index(v))
            assert low <= v < high or (v >= low and high == math.inf), (k, v)


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    values = [3.0, 1.0, 40.0, 7.5, 12.0, 2.0, 90.0]
    for q in (0, 5, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_cloud_exporter_writes_latency_as_a_distribution(monitoring: MetricServiceServer) -> None:
    clock = Clock()
    exp = CloudMonitoringExporter(monitoring.client(), "p", generic_task("p", "global", "merger", "t"), clock=clock)
    latencies = [4.0, 9.5, 60.0, 61.0, 600.0]
    for v in latencies:
        exp.record(mn.JOB_LATENCY_SECONDS, v, {"status": "done"})
    exp.flush()
    fake = monitoring.fake
    assert not fake.errors, fake.errors
    [series] = fake.series
    assert series.value_kind == "distribution_value" and series.value == pytest.approx(sum(latencies) / 5)
    assert series.distribution is not None
    d = series.distribution.distribution_value
    assert d.count == 5 and sum(d.bucket_counts) == 5
    assert d.sum_of_squared_deviation == pytest.approx(float(np.var(latencies) * 5))
    opts = d.bucket_options.exponential_buckets
    assert (opts.num_finite_buckets, opts.growth_factor, opts.scale) == (LATENCY_BUCKETS.count, 1.4, 1.0)
    assert [i for i, n in enumerate(d.bucket_counts) for _ in range(n)] == [LATENCY_BUCKETS.index(v) for v in latencies]

"""What the console ships: the dashboard it charts (the one Terraform deploys), the pinned chart library
(the exact file npm installs), and the Cloud Monitoring queries it makes (the dashboard's own)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import monitoring_v3

from parascribe import metric_names as mn
from parascribe.api.dashboard import MonitoringSeries, metric_types, packaged_specs, parse_dashboard
from tests.metric_service_fake import MetricServiceServer

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_API = ROOT / "shared" / "parascribe" / "api"
VENDOR = PACKAGE_API / "static" / "vendor"
CONSOLE = ROOT / "console"
VENDORED = {"uPlot.iife.min.js": "dist/uPlot.iife.min.js", "uPlot.min.css": "dist/uPlot.min.css"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_package_carries_the_deployed_dashboard_byte_for_byte() -> None:
    deployed = ROOT / "infra" / "dashboards" / "parascribe.json"
    assert (PACKAGE_API / "dashboard.json").read_bytes() == deployed.read_bytes(), (
        "the console charts shared/parascribe/api/dashboard.json; after changing the dashboard run "
        "`cp infra/dashboards/parascribe.json shared/parascribe/api/dashboard.json`")


def test_the_image_and_wheel_carry_the_console_files() -> None:
    manifest = (ROOT / "shared" / "MANIFEST.in").read_text()
    assert "include parascribe/api/dashboard.json" in manifest
    assert "recursive-include parascribe/api/static *" in manifest


def test_every_placeholder_of_the_dashboard_is_a_known_metric() -> None:
    specs = packaged_specs()
    custom = [ds.metric for s in specs for ds in s.datasets if ds.custom]
    assert custom and set(custom) <= set(mn.ALL)
    assert not any("${" in ds.filter for s in specs for ds in s.datasets)
    titles = [s.title for s in specs]
    for wanted in ("Cost by method", "Savings", "RTFx by engine", "Job latency", "Jobs by status",
                   "Fallbacks by reason", "Pub/Sub backlog"):
        assert any(t.startswith(wanted) for t in titles), wanted


def test_metric_short_names_match_what_terraform_gets() -> None:
    tfvars = json.loads((ROOT / "infra" / "names.auto.tfvars.json").read_text())
    assert metric_types() == tfvars["metric_types"]


def test_the_pinned_version_is_the_one_installed_and_vendored() -> None:
    pinned = json.loads((CONSOLE / "package.json").read_text())["dependencies"]["uplot"]
    lock = json.loads((CONSOLE / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/uplot"]["version"] == pinned, "package.json and the lock disagree"
    module = CONSOLE / "node_modules" / "uplot"
    if not module.exists():
        pytest.skip("console/node_modules is absent (run `cd console && npm ci`): the vendored uPlot cannot be "
                    "compared with the pinned package; its recorded sha256 is still checked")
    assert json.loads((module / "package.json").read_text())["version"] == pinned
    for vendored, built in VENDORED.items():
        assert _sha256(VENDOR / vendored) == _sha256(module / built), (
            f"{vendored} differs from uplot {pinned}'s {built}: copy it from console/node_modules")


def test_the_vendored_files_match_their_recorded_digests() -> None:
    sums = dict(reversed(line.split()) for line in (VENDOR / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert set(sums) == set(VENDORED)
    for name, digest in sums.items():
        assert _sha256(VENDOR / name) == digest, name


@pytest.fixture
def monitoring() -> Iterator[MetricServiceServer]:
    server = MetricServiceServer().start()
    try:
        yield server
    finally:
        server.stop()


def _series(engine: str, points: list[tuple[int, float]]) -> monitoring_v3.TimeSeries:
    return monitoring_v3.TimeSeries({
        "metric": {"type": mn.RTFX, "labels": {"engine": engine}},
        "resource": {"type": "generic_task", "labels": {"project_id": "p"}},
        "points": [{"interval": {"end_time": {"seconds": t}}, "value": {"double_value": v}} for t, v in points],
    })


def test_cloud_monitoring_is_asked_with_the_dashboards_aggregation(monitoring: MetricServiceServer) -> None:
    monitoring.fake.listed[mn.RTFX] = [_series("parakeet", [(1_000_000, 950.0), (1_000_300, 1010.0)])]
    monitoring.fake.listed[mn.COST_USD] = [monitoring_v3.TimeSeries({
        "metric": {"type": mn.COST_USD, "labels": {}}, "resource": {"type": "generic_task", "labels": {}},
        "points": [{"interval": {"end_time": {"seconds": 1_000_000}}, "value": {"double_value": 1.25}}]})]
    specs = [s for s in packaged_specs() if s.title.startswith(("RTFx", "Cost, last 24 h"))]
    source = MonitoringSeries(monitoring.client(), "my-project", clock=lambda: 1_000_400.0)
    charts = {c.title: c for c in source.charts(specs, 86_400)}
    rtfx = charts["RTFx by engine (audio s per processing s)"]
    assert [(s.name, s.points) for s in rtfx.series] == [("parakeet", [(1_000_000.0, 950.0), (1_000_300.0, 1010.0)])]
    assert charts["Cost, last 24 h (USD)"].value == pytest.approx(1.25)
    asked = {r.filter: r for r in monitoring.fake.list_requests}
    rtfx_request = asked[f'metric.type="{mn.RTFX}"']
    assert rtfx_request.name == "projects/my-project"
    assert rtfx_request.aggregation.alignment_period.total_seconds() == 300
    assert rtfx_request.aggregation.per_series_aligner == monitoring_v3.Aggregation.Aligner.ALIGN_MEAN
    assert list(rtfx_request.aggregation.group_by_fields) == ["metric.label.engine"]
    cost_request = asked[f'metric.type="{mn.COST_USD}"']
    assert cost_request.aggregation.alignment_period.total_seconds() == 86_400
    assert (cost_request.interval.end_time.timestamp() - cost_request.interval.start_time.timestamp()) == 86_400


def test_a_monitoring_outage_becomes_a_note_not_an_error() -> None:
    from google.api_core import exceptions as gexc

    class Refusing:
        def list_time_series(self, **_: object) -> list[object]:
            raise gexc.PermissionDenied("no monitoring.timeSeries.list")

    charts = MonitoringSeries(Refusing(), "p").charts(packaged_specs()[:2], 3600)
    assert all(c.note and "monitoring.viewer" in c.note for c in charts)


def test_parse_dashboard_reads_scorecards_and_multi_dataset_charts() -> None:
    doc = {"mosaicLayout": {"tiles": [
        {"yPos": 1, "widget": {"title": "B", "xyChart": {"yAxis": {"label": "s"}, "dataSets": [
            {"plotType": "LINE", "timeSeriesQuery": {"timeSeriesFilter": {"filter": 'metric.type="${metric.jobs}"',
             "aggregation": {"alignmentPeriod": "60s", "perSeriesAligner": "ALIGN_MAX"}}}},
            {"plotType": "LINE", "timeSeriesQuery": {"timeSeriesFilter": {"filter": 'metric.type="x"'}}}]}}},
        {"yPos": 0, "widget": {"title": "A", "scorecard": {"timeSeriesQuery": {"timeSeriesFilter": {
            "filter": 'metric.type="${metric.cost_usd}" AND metric.label.method="gpu"'}}}}},
        {"yPos": 2, "widget": {"title": "text", "text": {"content": "hi"}}}]}}
    a, b = parse_dashboard(doc, {"jobs": "J", "cost_usd": "C"})
    assert (a.title, a.kind, a.datasets[0].metric, a.datasets[0].label_filter) == ("A", "scorecard", "C",
                                                                                    {"method": "gpu"})
    assert (b.title, b.unit, [d.metric for d in b.datasets], b.datasets[0].period_s) == ("B", "s", ["J", "x"], 60)

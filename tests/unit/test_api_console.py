"""The console's page and JSON endpoints over an in-memory store: no data without the key, a CSP on every
page, signed links to the source and outputs, the plan, the words, and a redelivery the sweeper carries out."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from parascribe.api import job_detail
from parascribe.api.app import build
from parascribe.api.auth import hash_api_key
from parascribe.api.dashboard import LocalSeries
from parascribe.config import Settings, load_settings
from parascribe.contracts import (
    AudioInfo,
    ChunkResult,
    JobManifest,
    JobStatus,
    JobSummary,
    PlannedChunk,
    SourceRef,
    WebhookState,
    Word,
    utcnow,
)
from parascribe.jobs import OPEN_PREFIX, REDELIVERY_NOTE, JobStore
from parascribe.plan_contract import PlanExplanation
from tests.fakes import MemoryStore, NoUploads, RecordingPublisher

KEY = "psk_console-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
FORMATS = ("json", "txt", "srt", "vtt", "words.csv", "segments.csv")
XSS = "<img src=x onerror=alert(1)>.wav"
STATIC = Path(__file__).resolve().parents[2] / "shared" / "parascribe" / "api" / "static"


class World:
    """A finished two-chunk job (one chunk fell back to Deepgram) and the app over the same store."""

    def __init__(self, metrics_path: Path) -> None:
        self.settings: Settings = load_settings(api_key_hashes=hash_api_key(KEY), metrics_exporter="local",
                                                metrics_local_path=str(metrics_path), gcp_project="test")
        self.store = MemoryStore()
        self.jobs = JobStore(self.store, self.settings.state_bucket)
        self.source = SourceRef(bucket="uploads", name=f"talks/{XSS}", generation="7", size=1000)
        self.job_id = self.source.job_id
        audio = AudioInfo(duration_s=20.0, sample_rate=16000, channels=1, codec="pcm_s16le", container="wav")
        chunks = [PlannedChunk(index=0, start_s=0, end_s=11, core_start_s=0, core_end_s=10, path="gpu"),
                  PlannedChunk(index=1, start_s=9, end_s=20, core_start_s=10, core_end_s=20, path="gpu")]
        plan = PlanExplanation(summary="all on the GPU: it meets the 60-minute deadline", requested_method="auto",
                               method="gpu", duration_s=20, deadline_s=3600, chunk_count=2, gpu_chunks=2)
        self.jobs.create_manifest(JobManifest(job_id=self.job_id, source=self.source, audio=audio, method="auto",
                                              deadline_minutes=60, chunks=chunks, plan=plan))
        self.jobs.put_chunk_result(ChunkResult(job_id=self.job_id, chunk_index=0, n_chunks=2, engine="offline",
                                               path="gpu", audio_seconds=10, processing_seconds=2))
        self.jobs.put_chunk_result(ChunkResult(job_id=self.job_id, chunk_index=1, n_chunks=2, engine="deepgram",
                                               path="deepgram", audio_seconds=10, processing_seconds=1,
                                               fallback_reason="dead-lettered on gpu after 5 attempts"))
        outputs = {}
        for fmt in FORMATS:
            name = f"{self.job_id}/transcript.{fmt}"
            words = [Word(text="<b>hello</b>", start=0.5, end=0.9, confidence=0.3).model_dump(),
                     Word(text="world", start=1.0, end=1.4).model_dump()]
            data = json.dumps({"words": words, "segments": [], "duration_s": 20.0}).encode() if fmt == "json" \
                else b"1\n00:00:00,500 --> 00:00:01,400\n<b>hello</b> world\n"
            self.store.write(self.settings.transcripts_bucket, name, data)
            outputs[fmt] = f"gs://{self.settings.transcripts_bucket}/{name}"
        self.jobs.update_status(self.job_id, lambda _: JobStatus(
            job_id=self.job_id, state="done", chunks_done=2, chunks_total=2, source=self.source, outputs=outputs,
            webhook=WebhookState(state="delivered", attempts=1, delivered_at=utcnow()),
            summary=JobSummary(duration_s=20, engines=["deepgram", "offline"], cost_usd=0.01, savings_usd=0.02),
            finished_at=utcnow()))
        self.app = build(self.settings, store=self.store, publisher=RecordingPublisher(),
                         uploads=NoUploads())  # type: ignore[arg-type]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "metrics.jsonl")


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(world.app) as c:
        yield c


def test_the_page_loads_without_the_key_with_a_csp_and_no_data(client: TestClient, world: World) -> None:
    assert client.get("/console", follow_redirects=False).headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and page.headers["x-content-type-options"] == "nosniff"
    assert world.job_id not in page.text and "<script>" not in page.text.replace("<script src=", "")
    for name in ("console.js", "job.js", "metrics.js", "console.css", "vendor/uPlot.iife.min.js"):
        r = client.get(f"/console/static/{name}")
        assert r.status_code == 200 and "content-security-policy" in r.headers, name


@pytest.mark.parametrize("path", ["/console/static/../app.py", "/console/static/%2e%2e/app.py",
                                  "/console/static/vendor/nope.js", "/console/static/../dashboard.json"])
def test_nothing_outside_the_static_folder_is_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("method,path", [("GET", "/v1/jobs/{id}/audio"), ("GET", "/v1/jobs/{id}/links"),
                                         ("GET", "/v1/jobs/{id}/words"), ("GET", "/v1/jobs/{id}/plan"),
                                         ("POST", "/v1/jobs/{id}/webhook/redeliver"), ("GET", "/v1/metrics")])
def test_every_data_endpoint_needs_the_key(client: TestClient, world: World, method: str, path: str) -> None:
    r = client.request(method, path.format(id=world.job_id), follow_redirects=False)
    assert r.status_code == 401 and world.job_id not in r.text
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_audio_redirects_to_a_signed_url_of_the_source_at_its_generation(client: TestClient, world: World) -> None:
    r = client.get(f"/v1/jobs/{world.job_id}/audio", headers=AUTH, follow_redirects=False)
    assert r.status_code == 307
    url = urlsplit(r.headers["location"])
    assert url.path.startswith("/uploads/talks/") and parse_qs(url.query)["generation"] == ["7"]
    assert parse_qs(url.query)["X-Goog-Expires"] == ["900"]


def test_links_sign_the_source_and_every_output(client: TestClient, world: World) -> None:
    links = client.get(f"/v1/jobs/{world.job_id}/links", headers=AUTH).json()
    assert set(links["outputs"]) == set(FORMATS) and links["expires_in_s"] == 900
    assert "/uploads/talks/" in links["audio"]
    assert all(f"/{world.settings.transcripts_bucket}/" in u for u in links["outputs"].values())


def test_words_come_from_the_json_output_verbatim(client: TestClient, world: World) -> None:
    body = client.get(f"/v1/jobs/{world.job_id}/words", headers=AUTH).json()
    assert [w["text"] for w in body["words"]] == ["<b>hello</b>", "world"]
    assert body["words"][0]["confidence"] == pytest.approx(0.3) and body["duration_s"] == 20.0


def test_the_plan_shows_where_each_chunk_went_and_why(client: TestClient, world: World) -> None:
    plan = client.get(f"/v1/jobs/{world.job_id}/plan", headers=AUTH).json()
    assert plan["plan"]["summary"].startswith("all on the GPU") and plan["method"] == "auto"
    assert [(c["planned"], c["path"], c["engine"]) for c in plan["chunks"]] == [
        ("gpu", "gpu", "offline"), ("gpu", "deepgram", "deepgram")]
    assert plan["fallbacks"] == 1 and "dead-lettered" in plan["chunks"][1]["fallback_reason"]
    assert plan["webhook"]["state"] == "delivered" and plan["callback"] is None


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in ("/v1/jobs/j0123456789abcdef0123/plan", "/v1/jobs/nonsense/links"):
        assert client.get(path, headers=AUTH).status_code == 404


def test_redeliver_marks_the_webhook_for_the_sweeper_and_reopens_the_job(client: TestClient, world: World) -> None:
    world.jobs.close(world.job_id)
    r = client.post(f"/v1/jobs/{world.job_id}/webhook/redeliver", headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json()["targets"] == ["webhook"]
    status = world.jobs.status(world.job_id)
    assert status is not None and status.state == "done"
    assert status.webhook.state == "webhook_failed" and REDELIVERY_NOTE in (status.webhook.last_error or "")
    assert world.store.info(world.settings.state_bucket, f"{OPEN_PREFIX}{world.job_id}") is not None


def test_the_sweeper_resends_what_the_console_marked(world: World) -> None:
    from parascribe.merger.webhook import undelivered

    job_detail.request_redelivery(world.jobs, world.job_id)
    status = world.jobs.status(world.job_id)
    assert status is not None and undelivered(status), "the sweeper's own test for 'send this again'"
    assert world.job_id in world.jobs.open_jobs()


def test_the_give_up_horizon_is_the_sweepers() -> None:
    from parascribe.merger.sweeper import WEBHOOK_GIVE_UP_S

    assert job_detail.SWEEPER_GIVE_UP_S == WEBHOOK_GIVE_UP_S


@pytest.mark.parametrize("change,status_code,phrase", [
    ({"state": "transcribing", "finished_at": None}, 409, "transcribing"),
    ({"webhook": WebhookState(state="disabled")}, 409, "nothing to redeliver"),
    ({"webhook": WebhookState(state="pending")}, 409, "in flight"),
    ({"finished_at": utcnow() - timedelta(days=2)}, 409, "parascribe webhook redeliver"),
])
def test_redeliver_refuses_what_the_sweeper_would_not_send(client: TestClient, world: World, change: dict[str, object],
                                                           status_code: int, phrase: str) -> None:
    def edit(current: JobStatus | None) -> JobStatus:
        assert current is not None
        new = current.model_copy(update=change)
        new.state = change.get("state", current.state)  # type: ignore[assignment]
        return new

    path = f"{world.settings.state_bucket}/jobs/{world.job_id}/status.json"
    bucket, name = path.split("/", 1)
    current = world.jobs.status(world.job_id)
    assert current is not None
    world.store.write(bucket, name, edit(current).to_bytes())
    r = client.post(f"/v1/jobs/{world.job_id}/webhook/redeliver", headers=AUTH)
    assert r.status_code == status_code and phrase in r.json()["detail"], r.text


def test_metrics_are_the_dashboards_charts_from_the_local_file(client: TestClient, world: World) -> None:
    now = utcnow().isoformat(timespec="milliseconds")
    lines = [("cost_usd", {"method": "gpu"}, 0.01), ("cost_usd", {"method": "deepgram"}, 0.02),
             ("audio_seconds", {"engine": "offline", "path": "gpu"}, 30.0),
             ("processing_seconds", {"engine": "offline", "path": "gpu"}, 3.0),
             ("jobs", {"status": "done"}, 1), ("jobs", {"status": "failed"}, 1)]
    lines += [("job_latency_seconds", {"status": "done"}, float(v)) for v in range(1, 101)]  # 1..100 s
    Path(world.settings.metrics_local_path).write_text("".join(json.dumps({
        "time": now, "service": "merger", "metric": f"custom.googleapis.com/parascribe/{m}", "labels": labels,
        "value": v}) + "\n" for m, labels, v in lines) + "not json\n")
    body = client.get("/v1/metrics", params={"hours": 1}, headers=AUTH).json()
    assert body["source"] == "local" and body["window_s"] == 3600
    charts = {c["title"]: c for c in body["charts"]}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "infra/dashboards/parascribe.json").read_text())
    assert list(charts) == [t["widget"]["title"] for t in sorted(
        dashboard["mosaicLayout"]["tiles"], key=lambda t: (t.get("yPos", 0), t.get("xPos", 0)))]
    cost = charts["Cost by method (USD per hour)"]
    assert {s["name"]: s["points"][0][1] for s in cost["series"]} == pytest.approx({"deepgram": 0.02, "gpu": 0.01})
    assert charts["Cost, last 24 h (USD)"]["value"] == pytest.approx(0.03)
    assert charts["Jobs failed, last 24 h"]["value"] == 1
    rtfx = charts["RTFx by engine (audio s per processing s)"]
    assert [(s["name"], s["points"][0][1]) for s in rtfx["series"]] == [("offline", pytest.approx(10.0))]
    assert "Cloud Monitoring only" in charts["Pub/Sub backlog (undelivered messages)"]["note"]
    # Latency percentiles are taken over the raw values, as numpy would (1..100 s: 50.5, 95.05, 99.01).
    latency = charts["Job latency by status: p50, p95, p99 (s)"]
    assert {s["name"]: s["points"][0][1] for s in latency["series"]} == pytest.approx(
        {"done p50": 50.5, "done p95": 95.05, "done p99": 99.01})


def test_local_series_ignore_records_outside_the_window(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"time": "2020-01-01T00:00:00+00:00", "metric": "custom.googleapis.com/parascribe/jobs",
                                "labels": {"status": "done"}, "value": 1}) + "\n")
    from parascribe.api.dashboard import packaged_specs

    charts = LocalSeries(path).charts(packaged_specs(), 3600)
    assert all(not c.series and not c.value for c in charts)


def test_the_pages_never_parse_data_as_html() -> None:
    for js in STATIC.glob("*.js"):
        text = js.read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", text), js

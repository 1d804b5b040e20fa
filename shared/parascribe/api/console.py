"""The web console: a static page under ``/console/`` and the JSON endpoints it reads.

The page (``static/``: HTML, CSS, vanilla JS and the vendored uPlot) loads without a key, and holds
no data: every call it makes goes to a ``/v1/...`` endpoint behind the API's bearer auth, with the
key the user typed (kept in ``sessionStorage``) or the one in the URL's fragment (``#key=...``, which
browsers never send to a server). The page builds its DOM with ``textContent`` only, and every
console response carries a Content-Security-Policy that allows scripts and styles from this origin
alone, so a file name or a transcript can never run as code.

Endpoints added here, all behind the bearer key:

- ``GET /v1/jobs/{id}/audio``: 307 to a short-lived signed URL of the source;
- ``GET /v1/jobs/{id}/links``: signed URLs of the source and every output, as JSON;
- ``GET /v1/jobs/{id}/words``: the words and segments of a done job;
- ``GET /v1/jobs/{id}/plan``: the plan, per-chunk paths and fallbacks, the deliveries;
- ``POST /v1/jobs/{id}/webhook/redeliver``: mark the webhook for the sweeper to send again;
- ``GET /v1/metrics?hours=24``: the dashboard's charts (local metrics file, or Cloud Monitoring).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Response
from fastapi.params import Depends
from fastapi.responses import FileResponse, RedirectResponse

from parascribe.api.dashboard import ChartSource, LocalSeries, MonitoringSeries, NoSeries, charts_json
from parascribe.api.errors import ApiError
from parascribe.api.job_detail import links_view, plan_view, request_redelivery, words_view
from parascribe.api.views import JobsView
from parascribe.config import Settings
from parascribe.gcp.storage import BlobStore
from parascribe.jobs import JobStore

STATIC = Path(__file__).resolve().parent / "static"
GCS_ORIGIN = "https://storage.googleapis.com"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def media_origin(settings: Settings) -> str:
    """Where signed URLs point: the storage emulator locally, Cloud Storage in GCP."""
    host = settings.storage_emulator_host
    if not host:
        return GCS_ORIGIN
    return (host if "://" in host else f"http://{host}").rstrip("/")


def security_headers(settings: Settings) -> dict[str, str]:
    """The console's CSP and companions: this origin's scripts and styles only, media from the bucket."""
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
           f"connect-src 'self'; media-src {media_origin(settings)}; form-action 'self'; base-uri 'none'; "
           "frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}


def chart_source(settings: Settings) -> ChartSource:
    """The charts' source ``METRICS_EXPORTER`` implies: the local file, Cloud Monitoring, or nothing."""
    if settings.metrics_exporter == "local":
        return LocalSeries(Path(settings.metrics_local_path))
    if settings.metrics_exporter == "cloud":
        return _LazyMonitoring(settings.gcp_project)
    return NoSeries()


class _LazyMonitoring:
    """:class:`MonitoringSeries` whose client is built on the first chart request, not at start-up."""

    name = "cloud"

    def __init__(self, project: str) -> None:
        self._project = project
        self._inner: MonitoringSeries | None = None

    def charts(self, specs: Any, window_s: int) -> Any:
        if self._inner is None:
            from google.cloud import monitoring_v3

            self._inner = MonitoringSeries(monitoring_v3.MetricServiceClient(), self._project)
        return self._inner.charts(specs, window_s)


def mount(app: FastAPI, *, settings: Settings, store: BlobStore, jobs: JobStore, view: JobsView,
          auth: Sequence[Depends], signed_ttl: timedelta, charts: ChartSource | None = None) -> None:
    """Add the console's page and endpoints to the API app."""
    headers = security_headers(settings)
    source = charts or chart_source(settings)
    deps = list(auth)

    def static_file(relative: str) -> Response:
        path = (STATIC / relative).resolve()
        if not path.is_relative_to(STATIC) or not path.is_file() or path.suffix not in _TYPES:
            raise ApiError(404, "no such console file")
        return FileResponse(path, media_type=_TYPES[path.suffix],
                            headers={**headers, "Cache-Control": "no-cache"})

    @app.get("/console", include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    @app.get("/console/", include_in_schema=False)
    def console_index() -> Response:
        return static_file("index.html")

    @app.get("/console/static/{relative:path}", include_in_schema=False)
    def console_static(relative: str) -> Response:
        return static_file(relative)

    def job(any_id: str) -> Any:
        return view.resolve(any_id)

    @app.get("/v1/jobs/{job_id}/audio", status_code=307, dependencies=deps, tags=["console"],
             response_class=RedirectResponse, responses={307: {"description": "to a signed URL of the source"}})
    def audio(job_id: str) -> RedirectResponse:
        """Redirect to a short-lived signed URL of the job's uploaded source (for a player)."""
        status, _ = job(job_id)
        if status is None or status.source is None:
            raise ApiError(409, f"job {job_id} has no uploaded source yet")
        s = status.source
        return RedirectResponse(store.signed_url(s.bucket, s.name, signed_ttl, generation=s.generation),
                                status_code=307)

    @app.get("/v1/jobs/{job_id}/links", dependencies=deps, tags=["console"])
    def links(job_id: str) -> dict[str, Any]:
        """Signed URLs of the source and of every output format (they expire after ``expires_in_s``)."""
        status, _ = job(job_id)
        return links_view(store, status, signed_ttl)

    @app.get("/v1/jobs/{job_id}/words", dependencies=deps, tags=["console"])
    def words(job_id: str) -> dict[str, Any]:
        """The words (text, start, end, confidence) and segments of a done job."""
        status, _ = job(job_id)
        return words_view(store, status, job_id)

    @app.get("/v1/jobs/{job_id}/plan", dependencies=deps, tags=["console"])
    def plan(job_id: str) -> dict[str, Any]:
        """Which chunks went where and why, the fallbacks, and the webhook's and callback's deliveries."""
        status, request = job(job_id)
        return plan_view(jobs, status, status.job_id if status else (request.job_id if request else None))

    @app.post("/v1/jobs/{job_id}/webhook/redeliver", status_code=202, dependencies=deps, tags=["console"])
    def redeliver(job_id: str) -> dict[str, Any]:
        """Ask for the webhook (and callback) of a finished job to be sent again, by the sweeper."""
        status, _ = job(job_id)
        if status is None:
            raise ApiError(409, f"job {job_id} has not started; nothing was sent yet")
        return request_redelivery(jobs, status.job_id)

    @app.get("/v1/metrics", dependencies=deps, tags=["console"])
    def metrics(hours: Annotated[float, Query(gt=0, le=24 * 42)] = 24.0) -> dict[str, Any]:
        """The Cloud Monitoring dashboard's charts over the last ``hours``, from where this deployment records."""
        return charts_json(source, int(hours * 3600))


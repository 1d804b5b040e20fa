"""The API service: ``build(settings)`` returns the FastAPI app.

Routes are plain functions, so FastAPI runs their blocking GCS and Pub/Sub calls in its
thread pool. Every route but ``/healthz`` needs a bearer key (:mod:`parascribe.api.auth`).
Errors are ``{"detail": "..."}``: 4xx for what the caller can fix, 503 for what a retry may cure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from parascribe import names
from parascribe.api.auth import ApiKeys
from parascribe.api.cancel import cancel_job
from parascribe.api.console import mount as mount_console
from parascribe.api.dashboard import ChartSource
from parascribe.api.errors import ApiError
from parascribe.api.models import (
    TRANSCRIPT_FORMATS,
    Accepted,
    JobBody,
    JobList,
    JobOptions,
    Problem,
    TranscribeBody,
    UploadBody,
    UploadSession,
)
from parascribe.api.uploads import GcsUploads, UploadOptions, Uploads, parse_gcs_uri, safe_filename, upload_prefix
from parascribe.api.urls import UrlRejected, check_url
from parascribe.api.views import JobsView, ListFilter, describe
from parascribe.config import Settings
from parascribe.contracts import make_job_id
from parascribe.contracts_api import ApiRequest, IngestRequest
from parascribe.errors import TransientError
from parascribe.gcp.pubsub import Publisher, PubSubPublisher
from parascribe.gcp.storage import BlobStore, GcsStore
from parascribe.jobs import JobStore
from parascribe.netguard import Resolver
from parascribe.requests_store import GcsPagedLister, RequestStore, new_request_id

log = logging.getLogger(__name__)

SERVICE = "api"
SIGNED_URL_TTL = timedelta(minutes=15)
_BEARER = HTTPBearer(auto_error=False, description="an API key whose SHA-256 digest is in API_KEY_HASHES")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (401, 404, 409, 413, 422, 503)
}


@dataclass
class Deps:
    """What the routes use, built once per process."""

    settings: Settings
    keys: ApiKeys
    store: BlobStore
    publisher: Publisher
    uploads: Uploads
    requests: RequestStore
    jobs: JobStore
    view: JobsView
    resolve: Resolver | None = None
    charts: ChartSource | None = None


def build(settings: Settings, *, store: BlobStore | None = None, publisher: Publisher | None = None,
          uploads: Uploads | None = None, requests: RequestStore | None = None,
          resolve: Resolver | None = None, charts: ChartSource | None = None) -> FastAPI:
    """The API app over real GCS and Pub/Sub, or over what the caller passes in.

    ``resolve`` is how submitted URLs' hosts are resolved for the SSRF check (the system's DNS when None);
    ``charts`` is where the console's charts come from (what ``METRICS_EXPORTER`` implies when None).

    Raises:
        ConfigError: API_KEY_HASHES is empty or malformed.
    """
    keys = ApiKeys.from_setting(settings.api_key_hashes)
    if store is None:
        store = GcsStore.create(settings.gcp_project, settings.storage_emulator_host)
    client = store.client if isinstance(store, GcsStore) else None
    if uploads is None:
        client = client or GcsStore.create(settings.gcp_project, settings.storage_emulator_host).client
        uploads = GcsUploads(client, settings.uploads_bucket)
    lister = GcsPagedLister(store.client) if isinstance(store, GcsStore) else None
    requests = requests or RequestStore(store, settings.state_bucket, lister)
    jobs = JobStore(store, settings.state_bucket)
    deps = Deps(settings=settings, keys=keys, store=store, publisher=publisher or PubSubPublisher(settings.gcp_project),
                uploads=uploads, requests=requests, jobs=jobs, view=JobsView(requests, jobs, uploads), resolve=resolve,
                charts=charts)
    return _app(deps)


def _app(deps: Deps) -> FastAPI:
    app = FastAPI(title="parascribe", version="1", summary="Transcribe a URL, a gs:// object or an upload.",
                  responses=_ERRORS)

    # Annotations are strings here (PEP 563): FastAPI resolves them in the module's globals, so _BEARER is global.
    def authorized(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        deps.keys.check(f"{creds.scheme} {creds.credentials}" if creds else None)

    auth = [Depends(authorized)]
    _install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/transcribe", status_code=202, response_model=Accepted, dependencies=auth, tags=["compat"])
    def transcribe(body: TranscribeBody, request: Request) -> Accepted:
        """Fetch a URL and transcribe it (the original API; ``POST /v1/jobs`` is the same with ``url``)."""
        return _ingest(deps, request, body.video_url, body)

    @app.post("/v1/jobs", status_code=202, response_model=Accepted, dependencies=auth, tags=["jobs"])
    def create_job(body: JobBody, request: Request) -> Accepted:
        """Transcribe an http(s) URL (fetched by the ingest worker) or a gs:// object (copied server-side)."""
        if body.url is not None:
            return _ingest(deps, request, body.url, body)
        assert body.gcs_uri is not None
        return _copy(deps, request, body.gcs_uri, body)

    @app.post("/v1/uploads", status_code=201, response_model=UploadSession, dependencies=auth, tags=["jobs"])
    def create_upload(body: UploadBody, request: Request) -> UploadSession:
        """A resumable upload session: PUT the file to ``upload_url``; the job starts when it lands."""
        return _upload(deps, request, body)

    @app.get("/v1/jobs", response_model=JobList, dependencies=auth, tags=["jobs"])
    def list_jobs(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
                  state: ListFilter | None = None) -> JobList:
        """Jobs newest first: requests made through this API and files dropped into the bucket (the router lists
        those). ``state`` keeps the ``done``, the ``failed`` or the ``active`` (not yet ended) ones; such a page
        looks at 500 jobs at most, so it may hold fewer than ``limit`` and still have a ``next_cursor``."""
        try:
            jobs, next_cursor = deps.view.page(limit, cursor, state)
        except ValueError as err:
            raise ApiError(422, str(err)) from None
        return JobList(jobs=jobs, next_cursor=next_cursor)

    @app.get("/v1/jobs/{job_id}", dependencies=auth, tags=["jobs"])
    def get_job(job_id: str) -> dict[str, Any]:
        """A job's status by request id or pipeline job id (the fields of ``parascribe status --json``)."""
        status, api_request = deps.view.resolve(job_id)
        return describe(status, api_request)

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202, dependencies=auth, tags=["jobs"])
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a job (by request id or job id) that has not ended: it ends ``failed``, its webhook says
        ``cancelled``, and chunks not yet transcribed are skipped. 409 once it has ended."""
        return cancel_job(job_id, deps.view, deps.requests, deps.jobs, deps.publisher)

    @app.get("/v1/jobs/{job_id}/transcript", status_code=307, dependencies=auth, tags=["jobs"],
             response_class=RedirectResponse, responses={307: {"description": "to a signed URL of the output"}})
    def transcript(job_id: str, format: str = "json") -> RedirectResponse:  # noqa: A002 (the query name)
        """Redirect to a short-lived signed URL of one output format of a done job."""
        if format not in TRANSCRIPT_FORMATS:
            raise ApiError(404, f"no format {format!r}; choose one of {', '.join(TRANSCRIPT_FORMATS)}")
        status, api_request = deps.view.resolve(job_id)
        if status is None or status.state != "done":
            state = status.state if status else (api_request.state if api_request else "unknown")
            why = f": {status.reason if status else api_request.reason if api_request else ''}" \
                if state == "failed" else "; try again once it is done"
            raise ApiError(409, f"job {job_id} is {state}{why}".rstrip(": "))
        uri = status.outputs.get(format)
        if not uri or not uri.startswith("gs://"):
            raise ApiError(404, f"job {job_id} has no {format} output")
        bucket, _, name = uri[5:].partition("/")
        return RedirectResponse(deps.store.signed_url(bucket, name, SIGNED_URL_TTL), status_code=307)

    mount_console(app, settings=deps.settings, store=deps.store, jobs=deps.jobs, view=deps.view, auth=auth,
                  signed_ttl=SIGNED_URL_TTL, charts=deps.charts)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"detail": err.reason}, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        reasons = []
        for e in err.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            reasons.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(reasons)}, status_code=422)

    @app.exception_handler(TransientError)
    def transient(_: Request, err: TransientError) -> JSONResponse:
        log.warning("transient failure: %s", err.reason)
        return JSONResponse({"detail": f"{err.reason}; try again shortly"}, status_code=503,
                            headers={"Retry-After": "5"})


def _status_url(deps: Deps, request: Request, request_id: str) -> str:
    base = deps.settings.api_public_url or str(request.base_url)
    return f"{base.rstrip('/')}/v1/jobs/{request_id}"


def _checked(url: str, deps: Deps, what: str) -> str:
    try:
        return check_url(url, allow_loopback=deps.settings.url_allow_loopback, what=what, resolve=deps.resolve)
    except UrlRejected as err:
        raise ApiError(422, err.reason) from None


def _record(deps: Deps, body: JobOptions, **fields: Any) -> ApiRequest:
    callback = _checked(body.callback_url, deps, "callback_url") if body.callback_url else None
    record = ApiRequest(request_id=new_request_id(), method=body.method, deadline_minutes=body.deadline_minutes,
                        language=body.language, callback_url=callback, **fields)
    if not deps.requests.create(record):
        raise TransientError(f"request id {record.request_id} was taken")
    return record


def _fail(deps: Deps, request_id: str, reason: str) -> None:
    try:
        deps.requests.fail(request_id, reason)
    except Exception:  # the caller already answers with the first error; this is bookkeeping
        log.exception("could not mark request %s failed", request_id)


def _ingest(deps: Deps, request: Request, url: str, body: JobOptions) -> Accepted:
    url = _checked(url, deps, "url")
    record = _record(deps, body, url=url)
    message = IngestRequest(request_id=record.request_id, url=url, method=body.method,
                            deadline_minutes=body.deadline_minutes, language=body.language,
                            callback_url=record.callback_url)
    try:
        deps.publisher.publish(names.TOPIC_INGEST_REQUESTS, message, {"request_id": record.request_id})
    except Exception as err:
        _fail(deps, record.request_id, "the request could not be queued; submit it again")
        reason = getattr(err, "reason", None) or type(err).__name__
        raise TransientError(f"could not queue the request ({reason})") from err
    log.info("request %s queued for ingest from %s", record.request_id, _host(url))
    return Accepted(job_id=record.request_id, status_url=_status_url(deps, request, record.request_id))


def _copy(deps: Deps, request: Request, gcs_uri: str, body: JobOptions) -> Accepted:
    bucket, name = parse_gcs_uri(gcs_uri)
    filename = safe_filename(name, "gcs_uri")
    source = deps.uploads.source(bucket, name)
    if source is None:
        raise ApiError(404, f"{gcs_uri} does not exist (check the bucket and object name)")
    _check_size(deps, source.size, "the object")
    record = _record(deps, body, gcs_uri=gcs_uri)
    dest = upload_prefix(record.request_id) + filename
    options = UploadOptions(record.request_id, body.method, body.deadline_minutes, record.callback_url,
                            source_url=gcs_uri, language=body.language)
    try:
        generation = deps.uploads.copy_in(bucket, name, source.generation, dest, source.content_type, options)
    except ApiError as err:
        _fail(deps, record.request_id, err.reason)
        raise
    job_id = make_job_id(deps.uploads.bucket, dest, generation)
    uri = f"gs://{deps.uploads.bucket}/{dest}"

    def submitted(current: ApiRequest) -> ApiRequest:
        return current.model_copy(update={"state": "submitted", "job_id": job_id, "upload_uri": uri})

    deps.requests.update(record.request_id, submitted)
    log.info("request %s copied %s in as job %s", record.request_id, gcs_uri, job_id, extra={"job_id": job_id})
    return Accepted(job_id=record.request_id, status_url=_status_url(deps, request, record.request_id),
                    status="submitted")


def _upload(deps: Deps, request: Request, body: UploadBody) -> UploadSession:
    filename = safe_filename(body.filename)
    if body.size is not None:
        _check_size(deps, body.size, "the file")
    record = _record(deps, body)
    dest = upload_prefix(record.request_id) + filename
    uri = f"gs://{deps.uploads.bucket}/{dest}"
    options = UploadOptions(record.request_id, body.method, body.deadline_minutes, record.callback_url,
                            language=body.language)
    url = deps.uploads.session(dest, body.content_type, body.size, options, origin=body.origin)

    def pending(current: ApiRequest) -> ApiRequest:
        return current.model_copy(update={"upload_uri": uri})

    deps.requests.update(record.request_id, pending)
    return UploadSession(job_id=record.request_id, upload_url=url, upload_uri=uri,
                         status_url=_status_url(deps, request, record.request_id))


def _check_size(deps: Deps, size: int, what: str) -> None:
    limit_mb = deps.settings.max_upload_mb
    if size > limit_mb * 1024 * 1024:
        raise ApiError(413, f"{what} is {size / 1048576:.0f} MB; the limit is {limit_mb:g} MB (MAX_UPLOAD_MB)")


def _host(url: str) -> str:
    """Only the host of a URL goes to the logs: paths and queries may carry tokens."""
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or "?"

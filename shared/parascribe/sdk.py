"""The Python API: ``parascribe.transcribe()`` and ``parascribe.submit()``, over the HTTP API.

    import parascribe
    t = parascribe.transcribe("https://example.com/talk.mp4")      # waits; returns a Transcript
    print(t.text, t.cost_usd, t.to_srt())
    job = parascribe.submit("meeting.m4a", method="gpu", wait=False) # a Job handle
    job.wait(timeout=600)
    failed = list(parascribe.list_jobs(state="failed", limit=20))   # newest first

``source`` is a local path (uploaded through a signed resumable session, so the
audio never passes through the API), a ``gs://`` URI, or an http(s) URL (fetched by
the ingest worker: media files, HLS playlists, pages yt-dlp understands).

Where it connects, first found: the ``api_url``/``api_key`` arguments;
``PARASCRIBE_API_URL`` and ``PARASCRIBE_API_KEY``; the local stack running in
``$PARASCRIBE_HOME`` (its ``stack.json`` records the API's port and a local key).
Without any of them it raises :class:`ApiUnavailableError` saying what to set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

import httpx
from tqdm import tqdm

from parascribe.contracts import Segment, Word
from parascribe.errors import ParascribeError, PermanentError

FINAL_STATES = ("done", "failed")
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
"""Resumable upload chunk: a multiple of 256 KiB, as GCS requires for every chunk but the last."""
_RETRIES = 5


class ApiUnavailableError(ParascribeError):
    """No API to talk to: nothing configured and no local stack running."""


class ApiError(ParascribeError):
    """The API refused the request; ``status_code`` and the API's own ``detail`` say why."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class JobFailedError(PermanentError):
    """The job ended ``failed``; the message is the pipeline's reason."""


@dataclass
class Transcript:
    """A finished job's transcript: words and segments in file time, plus what the job cost."""

    job_id: str
    text: str
    words: list[Word]
    segments: list[Segment]
    outputs: dict[str, str]
    engines: list[str]
    duration_s: float
    cost_usd: float
    deepgram_only_usd: float
    savings_usd: float
    metadata: dict[str, Any] = field(default_factory=dict)
    _job: Job | None = field(default=None, repr=False, compare=False)

    def to_srt(self) -> str:
        """The SRT the pipeline wrote for this job (the same bytes as in the transcripts bucket)."""
        return self._output("srt")

    def to_vtt(self) -> str:
        """The WebVTT the pipeline wrote for this job."""
        return self._output("vtt")

    def _output(self, fmt: str) -> str:
        if self._job is None:
            raise ApiUnavailableError("this transcript was built without its job; fetch it with Job.transcript()")
        return self._job.output(fmt).decode()


class Client:
    """A small client of the parascribe HTTP API (bearer key, JSON, redirects to signed URLs)."""

    def __init__(self, api_url: str, api_key: str, timeout_s: float = 60.0,
                 http: httpx.Client | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self._http = http or httpx.Client(timeout=timeout_s, headers={"authorization": f"Bearer {api_key}"})

    def __repr__(self) -> str:  # never the key
        return f"Client({self.api_url!r})"

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        url = path if path.startswith("http") else f"{self.api_url}{path}"
        for attempt in range(1, _RETRIES + 1):
            try:
                response = self._http.request(method, url, **kw)
            except httpx.TransportError as err:
                if attempt == _RETRIES:
                    raise ApiUnavailableError(f"cannot reach the API at {self.api_url}: {err}") from err
                time.sleep(0.5 * attempt)
                continue
            if response.status_code >= 500 and attempt < _RETRIES and method == "GET":
                time.sleep(0.5 * attempt)
                continue
            if response.status_code >= 400:
                raise ApiError(response.status_code, _detail(response))
            return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail if detail is not None else body)[:500]


def connect(api_url: str | None = None, api_key: str | None = None) -> Client:
    """A client of the API named by the arguments, the environment or the local stack.

    Raises:
        ApiUnavailableError: none of them names an API (the message says what to set).
    """
    api_url = api_url or os.environ.get("PARASCRIBE_API_URL")
    api_key = api_key or os.environ.get("PARASCRIBE_API_KEY")
    if api_url and api_key:
        return Client(api_url, api_key)
    if api_url and not api_key:
        raise ApiUnavailableError(f"PARASCRIBE_API_URL is {api_url} but PARASCRIBE_API_KEY is not set")
    from parascribe.local.stack import running_state  # the CLI side of the local stack; imported only here

    state = running_state()
    if state is not None and "api" in state.ports and state.api_key:
        return Client(state.url("api"), state.api_key)
    raise ApiUnavailableError(
        "no parascribe API to talk to: start the local stack (`parascribe up --detach`), or set "
        "PARASCRIBE_API_URL and PARASCRIBE_API_KEY (in GCP: `terraform -chdir=infra output api_url`)"
    )


class Job:
    """A submitted job: its id (the API's request id) and how to follow it."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` answers: state, progress, reason, outputs, summary, webhook."""
        return dict(self.client.request("GET", f"/v1/jobs/{self.id}").json())

    def cancel(self) -> dict[str, Any]:
        """Cancel the job if it has not ended: it ends ``failed`` (cancelled); untranscribed chunks are skipped.

        Raises:
            ApiError: 409 when it has already ended.
        """
        return dict(self.client.request("POST", f"/v1/jobs/{self.id}/cancel").json())

    def wait(self, timeout: float | None = None, poll_s: float = 1.0,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job is ``done`` or ``failed``; return its last status.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the job carries on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if on_progress is not None:
                on_progress(status)
            if status.get("state") in FINAL_STATES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} is still {status.get('progress') or status.get('state')} "
                                   f"after {timeout:g} s; it carries on: Job({self.id!r}).wait() again")
            time.sleep(poll_s)

    def output(self, fmt: str) -> bytes:
        """One output file (json, txt, srt, vtt, words.csv, segments.csv), through its short-lived signed URL."""
        redirect = self.client.request("GET", f"/v1/jobs/{self.id}/transcript", params={"format": fmt},
                                       follow_redirects=False)
        location = redirect.headers.get("location")
        if not location:
            raise ApiError(redirect.status_code, "the API answered without a signed URL")
        response = httpx.get(location, timeout=120.0)  # the signed URL carries its own authorisation
        if response.status_code != 200:
            raise ApiError(response.status_code, f"fetching the {fmt} output: {response.text[:200]}")
        return response.content

    def transcript(self) -> Transcript:
        """The finished job's transcript.

        Raises:
            JobFailedError: the job failed (with the pipeline's reason).
        """
        status = self.status()
        if status.get("state") == "failed":
            raise JobFailedError(f"job {self.id} failed: {status.get('reason')}")
        doc = json.loads(self.output("json"))
        summary = status.get("summary") or {}
        return Transcript(
            job_id=status.get("job_id") or self.id,
            text=str(doc.get("text", "")),
            words=[Word.model_validate(w) for w in doc.get("words", [])],
            segments=[Segment.model_validate(s) for s in doc.get("segments", [])],
            outputs=dict(status.get("outputs") or {}),
            engines=list(status.get("engines") or []),
            duration_s=float(summary.get("duration_s") or 0.0),
            cost_usd=float(summary.get("cost_usd") or 0.0),
            deepgram_only_usd=float(summary.get("deepgram_only_usd") or 0.0),
            savings_usd=float(summary.get("savings_usd") or 0.0),
            metadata=dict(doc.get("metadata") or {}),
            _job=self,
        )


def list_jobs(state: Literal["done", "failed", "active"] | None = None, *, limit: int | None = None,
              client: Client | None = None) -> Iterator[dict[str, Any]]:
    """Jobs newest first, each as :meth:`Job.status` gives it, following the API's cursor page by page.

    Args:
        state: only the ``done``, the ``failed`` or the ``active`` (not yet ended) ones.
        limit: stop after this many; None goes to the oldest.
    """
    client = client or connect()
    cursor: str | None = None
    given = 0
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"state": state} if state else {}) | (
            {"cursor": cursor} if cursor else {})
        page = client.request("GET", "/v1/jobs", params=params).json()
        for job in page["jobs"]:
            if limit is not None and given >= limit:
                return
            given += 1
            yield dict(job)
        cursor = page.get("next_cursor")
        if not cursor:
            return


def _options(method: str | None, deadline_minutes: float | None, callback_url: str | None,
             language: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"method": method, "deadline_minutes": deadline_minutes, "callback_url": callback_url,
                           "language": language}
    return {k: v for k, v in out.items() if v is not None}


def upload_file(upload_url: str, path: Path, progress: bool = True) -> None:
    """PUT a file to a GCS resumable session in chunks, resuming from what the server has after a failure."""
    size = path.stat().st_size
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=not progress, leave=False)
    with httpx.Client(timeout=300.0) as http, path.open("rb") as f:
        offset, failures = 0, 0
        while offset < size or size == 0:
            end = min(offset + UPLOAD_CHUNK_BYTES, size)
            headers = {"content-range": f"bytes {offset}-{end - 1}/{size}" if size else "bytes */0"}
            try:
                response = http.put(upload_url, content=_read(f, offset, end - offset), headers=headers)
            except httpx.TransportError as err:
                failures += 1
                if failures > _RETRIES:
                    raise ApiUnavailableError(f"uploading {path}: {err}") from err
                offset = _committed(http, upload_url, size)
                continue
            if response.status_code in (200, 201):
                bar.update(size - bar.n)
                break
            if response.status_code == 308:  # more please: the server says how much it has
                committed = _range_end(response.headers.get("range"))
                bar.update(committed - bar.n)
                offset = committed
                continue
            raise ApiError(response.status_code, f"uploading {path}: {response.text[:300]}")
    bar.close()


def _read(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _range_end(header: str | None) -> int:
    """The next byte to send after a ``Range: bytes=0-N`` answer (none: nothing stored yet)."""
    if not header or "-" not in header:
        return 0
    return int(header.rsplit("-", 1)[1]) + 1


def _committed(http: httpx.Client, upload_url: str, size: int) -> int:
    response = http.put(upload_url, headers={"content-range": f"bytes */{size}"})
    return size if response.status_code in (200, 201) else _range_end(response.headers.get("range"))


def submit(source: str | os.PathLike[str], *, method: str | None = None, deadline_minutes: float | None = None,
           callback_url: str | None = None, language: str | None = None, client: Client | None = None,
           progress: bool = True) -> Job:
    """Start a job for a local file, a ``gs://`` URI or an http(s) URL; return its handle at once.

    Raises:
        ApiUnavailableError: no API configured and no local stack.
        ApiError: the API refused it (a bad URL, a private address, a file over the size cap...).
        FileNotFoundError: a local path that does not exist.
    """
    client = client or connect()
    text = os.fspath(source)
    options = _options(method, deadline_minutes, callback_url, language)
    if text.startswith(("http://", "https://")):
        accepted = client.request("POST", "/v1/jobs", json={"url": text, **options}).json()
        return Job(client, accepted["job_id"])
    if text.startswith("gs://"):
        accepted = client.request("POST", "/v1/jobs", json={"gcs_uri": text, **options}).json()
        return Job(client, accepted["job_id"])
    if "://" in text:
        raise ApiError(422, f"{text[:80]!r}: give a local file, a gs:// URI or an http(s) URL")
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    session = client.request("POST", "/v1/uploads", json={"filename": path.name, "size": path.stat().st_size,
                                                           **options}).json()
    upload_file(session["upload_url"], path, progress=progress)
    return Job(client, session["job_id"])


@overload
def transcribe(source: str | os.PathLike[str], *, method: str | None = ..., deadline_minutes: float | None = ...,
               wait: Literal[True] = ..., timeout: float | None = ..., callback_url: str | None = ...,
               language: str | None = ..., client: Client | None = ...) -> Transcript: ...


@overload
def transcribe(source: str | os.PathLike[str], *, method: str | None = ..., deadline_minutes: float | None = ...,
               wait: Literal[False], timeout: float | None = ..., callback_url: str | None = ...,
               language: str | None = ..., client: Client | None = ...) -> Job: ...


def transcribe(source: str | os.PathLike[str], *, method: str | None = None, deadline_minutes: float | None = None,
               wait: bool = True, timeout: float | None = None, callback_url: str | None = None,
               language: str | None = None, client: Client | None = None) -> Transcript | Job:
    """Transcribe a local file, a ``gs://`` URI or an http(s) URL.

    Args:
        method: auto (default: the planner chooses per chunk), gpu, deepgram or hybrid.
        deadline_minutes: the job should finish within this; the planner routes to meet it.
        language: the spoken language (``en`` by default; ``es``, ``pt-BR``, ``multi``...). The GPU path
            transcribes English only, so another language goes to Deepgram.
        wait: False returns the :class:`Job` at once instead of its transcript.
        timeout: seconds to wait; None waits as long as the job takes.

    Raises:
        JobFailedError: the job failed (the reason says why: a bad file, a URL that is not media...).
        TimeoutError: ``timeout`` passed first; the job carries on.
    """
    job = submit(source, method=method, deadline_minutes=deadline_minutes, callback_url=callback_url,
                 language=language, client=client)
    if not wait:
        return job
    status = job.wait(timeout=timeout)
    if status.get("state") == "failed":
        raise JobFailedError(f"job {job.id} failed: {status.get('reason')}")
    return job.transcript()

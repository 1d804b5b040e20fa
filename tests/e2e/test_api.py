"""The HTTP API and the Python API on the whole local stack, with real media served over HTTP.

Speech from espeak-ng is encoded by PyAV into an MP4 (AAC) and into an HLS playlist of
MPEG-TS segments, served by a local HTTP server; the API is called with httpx and with
``parascribe.transcribe``. The local stack allows loopback URLs (``URL_ALLOW_LOOPBACK``),
so only loopback is reachable: private and metadata addresses stay refused.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jiwer
import pytest
import soundfile as sf
from standardwebhooks.webhooks import Webhook

import parascribe
from parascribe import sdk
from tests.e2e.conftest import Stack, words
from tests.media import MediaServer, write_hls, write_mp4
from tests.speech import speak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPEECH = ("The river carried small boats past the old mill every morning. Children waved from the bridge, "
          "and the baker sold warm bread to everyone at the market.")
WER_LIMIT = 0.35
WAIT_S = 420.0


def wer(text: str) -> float:
    return float(jiwer.wer(" ".join(words(SPEECH)), " ".join(words(text))))


@pytest.fixture(scope="module")
def api(stack: Stack) -> tuple[str, str]:
    state = stack.state()
    assert state.get("api_key") and state["ports"].get("api"), "parascribe up records the API's port and key"
    return f"http://127.0.0.1:{state['ports']['api']}", str(state["api_key"])


@pytest.fixture(scope="module")
def http(api: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api[0], headers={"authorization": f"Bearer {api[1]}"}, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("media")
    wav = speak(SPEECH, root / "river.wav", rate=150)
    samples, rate = sf.read(str(wav), dtype="float32")
    write_mp4(root / "river.mp4", samples, int(rate), video=True)
    write_hls(root, root / "river.mp4")  # root/master.m3u8 -> hls/audio.m3u8 -> hls/seg*.ts
    (root / "page.html").write_text("<html><body><p>no media here</p></body></html>")
    server = MediaServer(root)
    try:
        yield server.url
    finally:
        server.close()


def wait_final(http: httpx.Client, job_id: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        status = dict(r.json())
        if status["state"] in ("done", "failed"):
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status['progress']} after {timeout_s:.0f} s"
        time.sleep(1.0)


def transcript_text(http: httpx.Client, job_id: str) -> str:
    r = http.get(f"/v1/jobs/{job_id}/transcript", params={"format": "txt"}, follow_redirects=False)
    assert r.status_code == 307, r.text
    signed = httpx.get(r.headers["location"], timeout=30)
    assert signed.status_code == 200
    return signed.text


def webhooks_for(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    return [d for d in stack.webhooks() if d["job_id"] == job_id]


def assert_transcribed(stack: Stack, http: httpx.Client, request_id: str) -> dict[str, Any]:
    status = wait_final(http, request_id)
    assert status["state"] == "done", status
    assert status["request_id"] == request_id and re.fullmatch(r"j[0-9a-f]{20}", status["job_id"])
    text = transcript_text(http, request_id)
    assert wer(text) <= WER_LIMIT, text
    deadline = time.monotonic() + 30
    while not webhooks_for(stack, status["job_id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    deliveries = webhooks_for(stack, status["job_id"])
    assert len(deliveries) == 1 and deliveries[0]["verified"] is True, deliveries
    return status


def test_post_transcribe_with_the_url_of_an_mp4(stack: Stack, http: httpx.Client, media: str) -> None:
    r = http.post("/transcribe", json={"video_url": f"{media}/river.mp4"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert re.fullmatch(r"r[0-9a-f]{20}", body["job_id"]) and body["status_url"].endswith(f"/v1/jobs/{body['job_id']}")
    status = assert_transcribed(stack, http, body["job_id"])
    assert status["url"] == f"{media}/river.mp4"


def test_post_v1_jobs_with_an_hls_playlist(stack: Stack, http: httpx.Client, media: str) -> None:
    r = http.post("/v1/jobs", json={"url": f"{media}/master.m3u8", "method": "gpu"})
    assert r.status_code == 202, r.text
    assert_transcribed(stack, http, r.json()["job_id"])


def test_python_transcribe_a_url_and_a_local_file(stack: Stack, media: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARASCRIBE_HOME", str(stack.home))
    monkeypatch.delenv("PARASCRIBE_API_URL", raising=False)
    transcript = parascribe.transcribe(f"{media}/river.mp4", timeout=WAIT_S)
    assert isinstance(transcript, sdk.Transcript)
    assert wer(transcript.text) <= WER_LIMIT and transcript.words and transcript.segments
    assert transcript.engines and transcript.duration_s == pytest.approx(transcript.metadata["audio_seconds"], abs=0.5)
    assert "-->" in transcript.to_srt() and transcript.to_vtt().startswith("WEBVTT")
    # A local file goes through POST /v1/uploads and a resumable upload, never through the API itself.
    wav = speak(SPEECH, tmp_path / "local river.wav", rate=150)
    job = parascribe.submit(wav, method="gpu", progress=False)
    status = job.wait(timeout=WAIT_S)
    assert status["state"] == "done", status
    assert status["source"]["name"].startswith(f"api/{job.id}/") and status["source"]["name"].endswith(".wav")
    assert wer(job.transcript().text) <= WER_LIMIT


def test_the_cli_submits_a_url_and_fetches_its_outputs(stack: Stack, media: str, tmp_path: Path) -> None:
    proc = stack.cli("submit", "--wait", "--json", "--timeout", str(WAIT_S), f"{media}/river.mp4", timeout=WAIT_S + 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record] = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert record["status"] == "done" and wer(record["text"]) <= WER_LIMIT
    # The outputs, later, by request id or job id: to standard output, or to a file.
    txt = stack.cli("transcript", record["request_id"], timeout=60)
    assert txt.returncode == 0 and txt.stdout == record["text"], txt.stderr[-2000:]
    stored = stack.read_gs(record["outputs"]["srt"])
    saved = tmp_path / "river.srt"
    srt = stack.cli("transcript", record["job_id"], "--format", "srt", "-o", str(saved), timeout=60)
    assert srt.returncode == 0 and saved.read_bytes() == stored and srt.stdout == ""
    assert f"srt written to {saved}" in srt.stderr


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong-key"}, {"authorization": "Basic abc"}])
def test_requests_without_the_key_are_refused(api: tuple[str, str], headers: dict[str, str]) -> None:
    r = httpx.post(f"{api[0]}/transcribe", json={"video_url": "https://example.com/a.mp4"}, headers=headers)
    assert r.status_code == 401 and r.headers.get("www-authenticate", "").startswith("Bearer")
    assert httpx.get(f"{api[0]}/v1/jobs", headers=headers).status_code == 401


@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://169.254.169.254/computeMetadata/v1/",
                                 "http://10.1.2.3/video.mp4", "http://metadata.google.internal/",
                                 "ftp://example.com/a.mp4"])
def test_unsafe_urls_are_refused_at_once_with_a_reason(http: httpx.Client, url: str) -> None:
    r = http.post("/transcribe", json={"video_url": url})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize(("path", "phrase"), [("missing.mp4", "404"), ("page.html", "media"),
                                              ("redirect-private", "private")])
def test_urls_that_fail_end_the_job_failed_with_a_reason(http: httpx.Client, media: str, path: str,
                                                         phrase: str) -> None:
    r = http.post("/v1/jobs", json={"url": f"{media}/{path}"})
    assert r.status_code == 202, r.text
    status = wait_final(http, r.json()["job_id"], timeout_s=120)
    assert status["state"] == "failed" and phrase in (status["reason"] or "").lower(), status


def test_a_callback_url_receives_the_signed_webhook(stack: Stack, http: httpx.Client, media: str) -> None:
    from tests.unit.test_webhook import Receiver

    receiver = Receiver()
    try:
        r = http.post("/v1/jobs", json={"url": f"{media}/river.mp4", "callback_url": receiver.url})
        assert r.status_code == 202, r.text
        status = wait_final(http, r.json()["job_id"])
        assert status["state"] == "done" and status["callback"]["state"] == "delivered", status
        [(headers, body)] = receiver.requests
        secret = stack.state()["webhook_secret"]
        payload = Webhook(secret if secret.startswith("whsec_") else "whsec_" + _b64(secret)).verify(body, headers)
        assert payload["job_id"] == status["job_id"] and payload["status"] == "done"
    finally:
        receiver.close()


def _b64(secret: str) -> str:
    import base64

    return base64.b64encode(secret.encode()).decode()


def test_jobs_are_listed_newest_first_and_the_schema_describes_every_endpoint(http: httpx.Client) -> None:
    first = http.get("/v1/jobs", params={"limit": 2}).json()
    assert len(first["jobs"]) == 2 and first["next_cursor"]
    second = http.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert {j["request_id"] for j in first["jobs"]}.isdisjoint({j["request_id"] for j in second["jobs"]})
    assert first["jobs"][0]["created_at"] >= first["jobs"][1]["created_at"] >= second["jobs"][0]["created_at"]
    paths = set(http.get("/openapi.json").json()["paths"])
    assert {"/transcribe", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/transcript", "/v1/uploads",
            "/v1/jobs/{job_id}/cancel"} <= paths


def test_a_job_cancelled_while_it_runs_ends_failed_once_with_the_reason(stack: Stack, http: httpx.Client,
                                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    monkeypatch.setenv("PARASCRIBE_HOME", str(stack.home))
    monkeypatch.delenv("PARASCRIBE_API_URL", raising=False)
    wav = speak(SPEECH, tmp_path / "cancelled river.wav", rate=150)
    with stack.paused("asr_worker"):  # frozen, so the job is still running whatever this machine's speed
        job = parascribe.submit(wav, method="gpu", progress=False)
        answer = job.cancel()
        assert answer["cancelled"] is True and answer["request_id"] == job.id
        status = wait_final(http, job.id, timeout_s=120)
    assert status["state"] == "failed" and "cancelled at the user's request" in status["reason"], status
    deadline = time.monotonic() + 30
    while not webhooks_for(stack, status["job_id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    [delivery] = webhooks_for(stack, status["job_id"])
    assert delivery["verified"] is True and delivery["status"] == "failed"
    # Once ended, a cancel changes nothing: 409 from the API, a one-line error from the CLI.
    assert http.post(f"/v1/jobs/{job.id}/cancel").status_code == 409
    proc = stack.cli("cancel", job.id, timeout=60)
    assert proc.returncode == 1 and "has already ended: failed" in proc.stderr and "Traceback" not in proc.stderr
    proc = stack.cli("transcript", job.id, timeout=60)
    assert proc.returncode == 1 and "cancelled at the user's request" in proc.stderr and proc.stdout == ""

"""The signed webhook against a real HTTP receiver on loopback: signing, retries, races, redelivery."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from parascribe import metric_names as mn
from parascribe.contracts import ChunkResult, JobStatus, SourceRef, utcnow
from parascribe.errors import ConfigError, PermanentError, TransientError
from parascribe.merger.webhook import (
    WebhookNotifier,
    WebhookOptions,
    build_payload,
    redeliver,
    secret_bytes,
    sign,
    verify,
)
from tests.unit.test_merger import SECRET, CountingStore, Job, Rig, make_settings


class Receiver:
    """A threaded HTTP server that records each request and answers from a script of status codes."""

    def __init__(self, script: list[int] | None = None, delay_s: float = 0.0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script = list(script or [])
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(receiver.delay_s)
                code = receiver.script.pop(0) if receiver.script else 204
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/parascribe/webhook"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def webhook_rig(url: str, attempts: int = 5, **kw: object) -> Rig:
    rig = Rig(make_settings(convex_webhook_url=url, convex_webhook_secret=SECRET, webhook_max_attempts=attempts,
                            webhook_timeout_seconds=2))
    options = WebhookOptions.from_settings(rig.settings)
    rig.notifier = WebhookNotifier(options, rig.jobs, rig.exporter, sleep=lambda s: None, **kw)  # type: ignore[arg-type]
    rig.merger._notifier = rig.notifier
    return rig


def finish(rig: Rig, job: Job) -> JobStatus:
    for r in job.results:
        rig.push(r)
    return rig.status(job.job_id)


def test_standard_webhooks_test_vector() -> None:
    key = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers, body, now=1614265330 + 299)
    with pytest.raises(PermanentError, match="old"):
        verify(key, headers, body, now=1614265330 + 301)
    with pytest.raises(PermanentError, match="ahead"):
        verify(key, headers, body, now=1614265330 - 301)
    with pytest.raises(PermanentError, match="no webhook-signature matches"):
        verify(key, headers, body + b" ", now=1614265330)
    with pytest.raises(PermanentError, match="missing"):
        verify(key, {"webhook-id": "x"}, body)


def test_secret_forms() -> None:
    assert secret_bytes("whsec_" + base64.b64encode(b"\x00\x01key").decode()) == b"\x00\x01key"
    assert secret_bytes("plain secret") == b"plain secret"
    with pytest.raises(ConfigError, match="not base64"):
        secret_bytes("whsec_***")


def test_done_job_posts_a_signed_summary_once(receiver: Receiver) -> None:
    rig = webhook_rig(receiver.url)
    job = Job(rig.jobs, n_chunks=2)
    before = utcnow()
    status = finish(rig, job)
    assert status.webhook.state == "delivered" and status.webhook.attempts == 1
    assert status.webhook.delivered_at is not None and before <= status.webhook.delivered_at <= utcnow()
    ((headers, body),) = receiver.requests
    verify(SECRET, headers, body)
    assert headers["webhook-id"] == job.job_id and headers["content-type"] == "application/json"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    payload = json.loads(body)
    assert payload["job_id"] == job.job_id and payload["status"] == "done" and payload["reason"] is None
    assert payload["outputs"] == status.outputs and set(payload["outputs"]) >= {"json", "srt", "vtt", "txt"}
    assert payload["summary"]["word_count"] == len(job.words)
    assert payload["summary"]["engines"] == ["deepgram", "parakeet"]
    assert payload["source"] == {"bucket": "uploads", "name": job.source.name, "generation": "1",
                                 "uri": job.source.uri}
    assert job.words[3].text not in body.decode().split('"'), "pointers only, never the transcript"
    assert "words" not in payload and "segments" not in payload and len(body) < 2000


def test_failed_job_posts_status_failed_with_reason(receiver: Receiver) -> None:
    rig = webhook_rig(receiver.url)
    job = Job(rig.jobs, n_chunks=2)
    rig.push(job.result(job.manifest.chunks[0], error="bad audio"))
    ((headers, body),) = receiver.requests
    payload = json.loads(body)
    assert payload["status"] == "failed" and payload["reason"] == "chunk 1 of 2 failed on parakeet: bad audio"
    assert payload["outputs"] == {}


def test_receiver_error_is_retried_until_it_succeeds() -> None:
    receiver = Receiver(script=[500, 503])
    sleeps: list[float] = []
    try:
        rig = webhook_rig(receiver.url)
        rig.notifier._sleep = sleeps.append
        status = finish(rig, Job(rig.jobs, n_chunks=1))
    finally:
        receiver.close()
    assert status.webhook.state == "delivered" and status.webhook.attempts == 3
    assert len(receiver.requests) == 3
    assert len({h["webhook-id"] for h, _ in receiver.requests}) == 1, "the same id on every retry"
    assert len({b for _, b in receiver.requests}) == 1
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0, "exponential backoff with jitter"
    assert rig.exporter.total(mn.WEBHOOK_FAILURES) == 0


def test_persistent_failure_is_recorded_and_counted() -> None:
    receiver = Receiver(script=[500] * 10)
    try:
        rig = webhook_rig(receiver.url, attempts=4)
        status = finish(rig, Job(rig.jobs, n_chunks=1))
    finally:
        receiver.close()
    assert status.webhook.state == "webhook_failed" and status.webhook.attempts == 4
    assert status.webhook.last_error is not None and status.webhook.last_error.startswith("HTTP 500")
    assert len(receiver.requests) == 4
    assert rig.exporter.total(mn.WEBHOOK_FAILURES) == 1
    assert status.state == "done", "a webhook failure never changes the job's outcome"


def test_a_rejection_is_not_retried() -> None:
    receiver = Receiver(script=[401])
    try:
        rig = webhook_rig(receiver.url)
        status = finish(rig, Job(rig.jobs, n_chunks=1))
    finally:
        receiver.close()
    assert status.webhook.state == "webhook_failed" and status.webhook.attempts == 1
    assert len(receiver.requests) == 1


def test_unreachable_receiver_and_the_retry_budget() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake_now = [0.0]

    def sleep(seconds: float) -> None:
        fake_now[0] += seconds

    rig = webhook_rig(f"http://127.0.0.1:{port}/hook", attempts=20)
    rig.notifier = WebhookNotifier(WebhookOptions.from_settings(rig.settings), rig.jobs, rig.exporter, sleep=sleep,
                                   clock=lambda: fake_now[0], budget_s=20.0)
    rig.merger._notifier = rig.notifier
    status = finish(rig, Job(rig.jobs, n_chunks=1))
    assert status.webhook.state == "webhook_failed"
    assert "ConnectError" in (status.webhook.last_error or "")
    assert 3 <= status.webhook.attempts < 20, "the budget, not the attempt count, ended it"
    assert fake_now[0] <= 20.0


def test_options_take_what_the_webhook_reads_and_never_show_the_secret() -> None:
    s = make_settings(convex_webhook_url="https://example.invalid/hook", convex_webhook_secret=SECRET,
                      webhook_max_attempts=7, webhook_timeout_seconds=3)
    options = WebhookOptions.from_settings(s)
    assert (options.url, options.max_attempts, options.timeout_seconds) == ("https://example.invalid/hook", 7, 3.0)
    assert options.secret is not None and options.secret.get_secret_value() == SECRET
    assert SECRET not in repr(options) and SECRET not in str(options)


def test_no_url_means_disabled() -> None:
    rig = Rig()
    status = finish(rig, Job(rig.jobs, n_chunks=1))
    assert status.webhook.state == "disabled" and status.webhook.attempts == 0


def test_two_mergers_racing_deliver_once(receiver: Receiver) -> None:
    receiver.delay_s = 0.05
    store = CountingStore()
    rigs = []
    for _ in range(2):
        rig = webhook_rig(receiver.url)
        rig.store = store
        rig.jobs = type(rig.jobs)(store, rig.settings.state_bucket)
        rig.notifier = WebhookNotifier(WebhookOptions.from_settings(rig.settings), rig.jobs, rig.exporter)
        rig.merger = type(rig.merger)(rig.settings, store, rig.jobs, rig.publisher, rig.exporter, rig.notifier)
        rigs.append(rig)
    job = Job(rigs[0].jobs, n_chunks=2)
    rigs[0].push(job.results[0])
    barrier = threading.Barrier(2)
    errors: list[Exception] = []

    def run(rig: Rig, result: ChunkResult) -> None:
        barrier.wait()
        try:
            rig.push(result)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(rig, job.results[1])) for rig in rigs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A loser that finds the claim still in progress is nacked for a retry; one that comes later just acks.
    assert len(errors) <= 1
    assert all(isinstance(e, TransientError) and "is not finished yet; retry" in e.reason for e in errors), errors
    assert len(receiver.requests) == 1
    assert rigs[0].status(job.job_id).webhook.state == "delivered"


def test_redeliver_sends_the_stored_status_again(receiver: Receiver) -> None:
    rig = webhook_rig(receiver.url)
    job = Job(rig.jobs, n_chunks=1)
    first = finish(rig, job)
    options = WebhookOptions.from_settings(rig.settings)
    state = redeliver(options, rig.jobs, job.job_id)
    assert state.state == "delivered"
    assert len(receiver.requests) == 2
    (h1, b1), (h2, b2) = receiver.requests
    assert h1["webhook-id"] == h2["webhook-id"] == job.job_id and b1 == b2
    verify(SECRET, h2, b2)
    assert json.loads(b2) == build_payload(first)

    with pytest.raises(PermanentError, match="no job"):
        redeliver(options, rig.jobs, "jmissing")
    other = Job(rig.jobs, n_chunks=2, name="other.wav")
    with pytest.raises(PermanentError, match="queued"):
        redeliver(options, rig.jobs, other.job_id)


def test_payload_without_summary_or_source() -> None:
    status = JobStatus(job_id="j1", state="failed", reason="x")
    p = build_payload(status)
    assert p["source"] is None and p["summary"]["word_count"] == 0 and p["type"] == "transcription.failed"
    status.source = SourceRef(bucket="b", name="n", generation="1", size=0)
    assert build_payload(status)["source"]["uri"] == "gs://b/n"


CONVEX = Path(__file__).resolve().parents[2] / "examples" / "convex"


def test_the_convex_example_verifies_what_we_sign(tmp_path: Path) -> None:
    """Runs examples/convex/convex/webhookSignature.ts (WebCrypto) in Node against our signatures."""
    esbuild = CONVEX / "node_modules" / ".bin" / "esbuild"
    if shutil.which("node") is None or not esbuild.exists():
        pytest.skip("needs node and `npm install` in examples/convex to run the Convex verifier")
    bundle = tmp_path / "verify.cjs"
    subprocess.run([str(esbuild), "scripts/verify-cli.ts", "--bundle", "--platform=node", f"--outfile={bundle}",
                    "--log-level=warning"], cwd=CONVEX, check=True, timeout=60)
    now = int(time.time())
    body = json.dumps({"job_id": "j1", "status": "done", "note": "ünïcode"}).encode()

    def case(secret: str, sig_secret: str | None = None, ts: int = now, data: bytes = body,
             extra_sig: str = "", drop: str = "") -> dict[str, object]:
        sig = sign(secret_bytes(sig_secret or secret), "j1", ts, data)
        headers = {"webhook-id": "j1", "webhook-timestamp": str(ts),
                   "webhook-signature": f"{extra_sig} {sig}".strip()}
        headers.pop(drop, None)
        return {"secret": secret, "headers": headers, "body_b64": base64.b64encode(body).decode(), "now": now}

    vector = {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "now": 1614265330,
              "body_b64": base64.b64encode(b'{"test": 2432232314}').decode(),
              "headers": {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
                          "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}}
    cases = [
        case(SECRET),                                     # whsec_ secret
        case("a raw shared secret"),                      # raw secret bytes
        case(SECRET, extra_sig="v1,bm9wZQ== v2,xyz"),     # one of several signatures
        vector,                                           # the Standard Webhooks test vector
        case(SECRET, data=body + b" "),                   # body changed after signing
        case(SECRET, sig_secret="whsec_" + base64.b64encode(b"other").decode()),  # wrong secret
        case(SECRET, ts=now - 301),                       # too old
        case(SECRET, ts=now + 301),                       # too far ahead
        case(SECRET, drop="webhook-signature"),           # unsigned
    ]
    run = subprocess.run(["node", str(bundle)], input=json.dumps(cases), capture_output=True, text=True,
                         check=True, timeout=60)
    verdicts = json.loads(run.stdout)
    assert [v["ok"] for v in verdicts] == [True, True, True, True, False, False, False, False, False]
    assert [v.get("status") for v in verdicts[4:]] == [401, 401, 401, 401, 400]


class TricklingHandler(BaseHTTPRequestHandler):
    """Answers 200 with a body sent one byte every 0.3 s: never idle long enough for a per-read timeout."""

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "40")
        self.end_headers()
        for _ in range(40):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.3)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_each_attempt_has_a_total_deadline_so_a_trickling_receiver_cannot_hold_the_merger() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), TricklingHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rig = webhook_rig(f"http://127.0.0.1:{server.server_address[1]}/hook", attempts=2)
        started = time.monotonic()
        status = finish(rig, Job(rig.jobs, n_chunks=1))
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert status.webhook.state == "webhook_failed" and status.webhook.attempts == 2
    assert status.webhook.last_error == "no complete answer within 2 s (WEBHOOK_TIMEOUT_SECONDS)"
    assert elapsed < 2 * 2 + 2, f"two attempts of at most 2 s each took {elapsed:.1f} s (a trickle lasts 12 s)"

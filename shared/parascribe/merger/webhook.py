"""The signed job webhook (Standard Webhooks) to the user's Convex backend.

When a job is done or failed, one small JSON body goes to ``CONVEX_WEBHOOK_URL``:
job id, status, reason, outputs (format → gs:// URI), summary and source. Never
the transcript: receivers fetch what they need from GCS.

Signing follows Standard Webhooks: headers ``webhook-id`` (the job id, the same
on every retry and redelivery, so receivers can deduplicate), ``webhook-timestamp``
(unix seconds, fresh per attempt) and ``webhook-signature`` =
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. The key: a secret of
the form ``whsec_<base64>`` is base64-decoded as Standard Webhooks libraries do;
any other secret is used as its raw UTF-8 bytes.

Retries: up to ``WEBHOOK_MAX_ATTEMPTS`` tries on network errors, 408, 409, 425,
429 and 5xx, with exponential backoff and jitter (0.5 s doubling, capped at 8 s
a wait, each wait drawn from its upper half). Other 4xx answers stop at once:
the receiver rejected the request and a retry would not change its mind. The
whole delivery stops starting new attempts once :data:`RETRY_BUDGET_S` (30 s) has
passed, and each attempt has a total deadline of ``WEBHOOK_TIMEOUT_SECONDS`` (not
only per read: a receiver that trickles its answer a byte at a time is cut off), so
a push handler is held for at most the budget plus one attempt, well inside the
merger's 60-s ack deadline.

Delivery is at least once: a merger that dies after sending and before recording
the delivery sends it again, with the same ``webhook-id``.
The job status records the state, the attempts and the last error; after the
last failed try the state is ``webhook_failed`` and ``webhook_failures`` counts
it. ``parascribe webhook redeliver JOB_ID`` (:func:`redeliver`) sends it again.

Per-job callbacks: an upload that names a ``callback_url`` (the API's
``callback_url``, carried in ``origin``) gets the same body, signed the same way
with ``CALLBACK_WEBHOOK_SECRET`` (the Convex secret when unset), with the same
retries, and its own record on the status (``callback``). Its address is checked
before every attempt: no private, link-local or metadata hosts (loopback only
with ``URL_ALLOW_LOOPBACK``, the local stack).

The notifier reads only :class:`WebhookOptions`, built once from the settings
with :meth:`WebhookOptions.from_settings`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from parascribe import metric_names as mn
from parascribe.config import Settings
from parascribe.contracts import JobStatus, WebhookState, utcnow
from parascribe.errors import ConfigError, PermanentError
from parascribe.jobs import JobStore
from parascribe.metrics import MetricsExporter
from parascribe.netguard import UnsafeUrlError, check_url

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
RETRY_BUDGET_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
TOLERANCE_S = 300
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class WebhookOptions:
    """What the webhook reads from the settings: where to send, the signing secret, attempts and timeout.

    The secret stays a :class:`~pydantic.SecretStr`, so printing or logging the options never shows it.
    """

    url: str | None
    """``CONVEX_WEBHOOK_URL``; None or empty disables the webhook."""
    secret: SecretStr | None = field(repr=False)
    """``CONVEX_WEBHOOK_SECRET`` (``whsec_<base64>`` or raw); required when ``url`` is set."""
    max_attempts: int
    """``WEBHOOK_MAX_ATTEMPTS``: tries per delivery, the first included."""
    timeout_seconds: float
    """``WEBHOOK_TIMEOUT_SECONDS``: the timeout of one request."""
    callback_secret: SecretStr | None = field(default=None, repr=False)
    """``CALLBACK_WEBHOOK_SECRET``, else ``CONVEX_WEBHOOK_SECRET``: signs per-job callbacks."""
    allow_loopback: bool = False
    """``URL_ALLOW_LOOPBACK``: callbacks may reach loopback addresses (the local stack only)."""

    @classmethod
    def from_settings(cls, s: Settings) -> WebhookOptions:
        """The webhook's options from the process settings."""
        return cls(
            url=s.convex_webhook_url,
            secret=s.convex_webhook_secret,
            max_attempts=s.webhook_max_attempts,
            timeout_seconds=s.webhook_timeout_seconds,
            callback_secret=s.callback_webhook_secret or s.convex_webhook_secret,
            allow_loopback=s.url_allow_loopback,
        )


def secret_bytes(secret: str) -> bytes:
    """The HMAC key: base64-decoded for ``whsec_…`` secrets, else the raw UTF-8 bytes.

    Raises:
        ConfigError: a ``whsec_`` secret whose remainder is not base64.
    """
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("CONVEX_WEBHOOK_SECRET starts with whsec_ but the rest is not base64") from None
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one request."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str | bytes, headers: Mapping[str, str], body: bytes, now: float | None = None,
           tolerance_s: int = TOLERANCE_S) -> None:
    """Check a request as a receiver should: a fresh timestamp and one matching ``v1`` signature.

    Args:
        secret: the shared secret as configured (``whsec_…`` or raw), or the key bytes.
        headers: the request headers (any case).
        body: the raw request body, exactly as received.

    Raises:
        PermanentError: saying what is wrong (missing header, stale timestamp, no matching signature).
    """
    key = secret if isinstance(secret, bytes) else secret_bytes(secret)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not msg_id or not ts or not sigs:
        raise PermanentError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(ts)
    except ValueError:
        raise PermanentError(f"webhook-timestamp {ts!r} is not unix seconds") from None
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > tolerance_s:
        raise PermanentError(f"webhook-timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'ahead'}; "
                             f"the tolerance is {tolerance_s} s")
    want = sign(key, msg_id, timestamp, body).split(",", 1)[1]
    for candidate in sigs.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), want.encode()):
            return
    raise PermanentError("no webhook-signature matches the body (wrong secret, or the body was changed)")


def build_payload(status: JobStatus) -> dict[str, Any]:
    """The webhook body for a final status: pointers and a summary, never the transcript."""
    s = status.summary
    source = status.source
    return {
        "type": f"transcription.{status.state}",
        "job_id": status.job_id,
        "status": status.state,
        "reason": status.reason,
        "outputs": dict(status.outputs),
        "summary": {
            "duration_s": s.duration_s if s else None,
            "word_count": s.word_count if s else 0,
            "engines": list(s.engines if s else status.engines),
            "cost_usd": s.cost_usd if s else 0.0,
            "deepgram_only_usd": s.deepgram_only_usd if s else 0.0,
            "savings_usd": s.savings_usd if s else 0.0,
        },
        "source": {"bucket": source.bucket, "name": source.name, "generation": source.generation, "uri": source.uri}
        if source
        else None,
        "created_at": status.created_at.isoformat(),
        "finished_at": status.finished_at.isoformat() if status.finished_at else None,
    }


def undelivered(status: JobStatus) -> bool:
    """Whether a final job's webhook or callback failed and is worth sending again."""
    return status.webhook.state == "webhook_failed" or \
        (status.callback is not None and status.callback.state == "webhook_failed")


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class WebhookNotifier:
    """Sends the job webhook with retries and records the outcome on the job status.

    Args:
        options: URL, secret, attempts and timeout (:meth:`WebhookOptions.from_settings`).
        jobs: where the outcome is recorded.
        exporter: counts ``webhook_failures``; optional.
        client: an ``httpx.Client`` (one per process); built if omitted.
        sleep, rng, clock: injectable for tests.
    """

    def __init__(
        self,
        options: WebhookOptions,
        jobs: JobStore,
        exporter: MetricsExporter | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        budget_s: float = RETRY_BUDGET_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        self._url = options.url
        secret = options.secret.get_secret_value() if options.secret else ""
        self._key = secret_bytes(secret) if self._url else b""
        self._callback_key = secret_bytes(options.callback_secret.get_secret_value()) \
            if options.callback_secret else None
        self._allow_loopback = options.allow_loopback
        self._attempts = options.max_attempts
        self._timeout = options.timeout_seconds
        self._jobs = jobs
        self._exporter = exporter
        self._client = client or httpx.Client(timeout=self._timeout, follow_redirects=False)
        # Attempts run here so each has a total deadline; a receiver stuck past it holds a thread, not the merger.
        self._senders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._budget = budget_s
        self._base = backoff_base_s
        self._cap = backoff_cap_s

    @property
    def enabled(self) -> bool:
        return bool(self._url)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): upper-half jitter."""
        ceiling = min(self._cap, self._base * 2 ** (attempt - 1))
        return ceiling / 2 + self._rng() * ceiling / 2

    def notify(self, status: JobStatus, resend: bool = False) -> JobStatus:
        """Deliver the webhook for a final ``status``, and its callback when it has one; record both on the job.

        Args:
            resend: skip a target that already has its delivery (the sweeper's and a redelivery's resend).

        Returns:
            ``status`` with the deliveries as recorded: ``webhook`` (``disabled`` when none is configured)
            and ``callback``.
        """
        body = encode_payload(build_payload(status))
        after = status.model_copy()
        if not self._url:
            after.webhook = self._record(status.job_id, WebhookState(state="disabled"))
        elif not (resend and status.webhook.state == "delivered"):
            self._record(status.job_id, WebhookState(state="pending"))
            after.webhook = self._record(status.job_id,
                                         self._deliver(status.job_id, self._url, self._key, body, "webhook"))
        callback_url = status.origin.callback_url
        if callback_url and not (resend and status.callback is not None and status.callback.state == "delivered"):
            self._record(status.job_id, WebhookState(state="pending"), callback=True)
            after.callback = self._record(status.job_id, self._callback(status.job_id, callback_url, body),
                                          callback=True)
        return after

    def _callback(self, job_id: str, url: str, body: bytes) -> WebhookState:
        if self._callback_key is None:
            return WebhookState(state="disabled", last_error=(
                "no signing secret for callbacks: set CALLBACK_WEBHOOK_SECRET (or CONVEX_WEBHOOK_SECRET)"))
        try:
            check_url(url, allow_loopback=self._allow_loopback)
        except UnsafeUrlError as err:
            log.warning("callback refused: %s", err.reason, extra={"job_id": job_id})
            return WebhookState(state="disabled", last_error=f"not sent: {err.reason}")
        return self._deliver(job_id, url, self._callback_key, body, "callback")

    def _deliver(self, job_id: str, url: str, key: bytes, body: bytes, what: str) -> WebhookState:
        """POST ``body`` to ``url`` with retries and backoff inside the retry budget."""
        started = self._clock()
        attempts, error = 0, ""
        while attempts < self._attempts:
            attempts += 1
            ok, retry, error = self._send_once(job_id, body, url, key)
            if ok:
                log.info("%s delivered", what, extra={"job_id": job_id, "attempt": attempts})
                return WebhookState(state="delivered", attempts=attempts, delivered_at=utcnow())
            log.warning("%s attempt %d failed: %s", what, attempts, error, extra={"job_id": job_id})
            if not retry or attempts >= self._attempts:
                break
            delay = self.backoff(attempts)
            if self._clock() - started + delay > self._budget:
                log.warning("%s retry budget of %.0f s spent", what, self._budget, extra={"job_id": job_id})
                break
            self._sleep(delay)
        if self._exporter is not None:
            self._exporter.record(mn.WEBHOOK_FAILURES, 1)
        log.error("%s failed after %d attempt(s): %s; redeliver with `parascribe webhook redeliver %s`",
                  what, attempts, error, job_id, extra={"job_id": job_id})
        return WebhookState(state="webhook_failed", attempts=attempts, last_error=error)

    def _send_once(self, job_id: str, body: bytes, url: str, key: bytes) -> tuple[bool, bool, str]:
        """One POST: (delivered, worth retrying, error)."""
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": job_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, job_id, timestamp, body),
        }
        attempt = self._senders.submit(self._client.post, url, content=body, headers=headers,
                                       timeout=self._timeout)
        try:
            response = attempt.result(timeout=self._timeout)
        except FuturesTimeout:
            attempt.cancel()
            return False, True, f"no complete answer within {self._timeout:g} s (WEBHOOK_TIMEOUT_SECONDS)"
        except httpx.HTTPError as err:
            return False, True, f"{type(err).__name__}: {err}"[:500]
        code = response.status_code
        if 200 <= code < 300:
            return True, False, ""
        detail = f"HTTP {code}: {response.text[:200]}".strip()
        return False, code >= 500 or code in _RETRYABLE_4XX, detail

    def _record(self, job_id: str, state: WebhookState, callback: bool = False) -> WebhookState:
        def change(current: JobStatus | None) -> JobStatus | None:
            if current is None:
                return None
            if callback:
                current.callback = state
            else:
                current.webhook = state
            return current

        self._jobs.update_status(job_id, change)
        return state

    def close(self) -> None:
        self._senders.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def redeliver(
    options: WebhookOptions, jobs: JobStore, job_id: str, notifier: WebhookNotifier | None = None
) -> WebhookState:
    """Send a finished job's webhook again from its stored status (``parascribe webhook redeliver``).

    Args:
        options: URL, secret, attempts and timeout; used when ``notifier`` is None.
        jobs: where the job's status is read and the outcome recorded.
        job_id: the finished job.
        notifier: an existing notifier to send with; one is built (and closed) if omitted.

    Raises:
        PermanentError: the job is unknown or not finished yet.
    """
    status = jobs.status(job_id)
    if status is None:
        raise PermanentError(f"no job {job_id} in gs://{jobs.bucket}/jobs/")
    if not status.final:
        raise PermanentError(f"job {job_id} is {status.progress}; a webhook is sent only once it is done or failed")
    own = notifier is None
    notifier = notifier or WebhookNotifier(options, jobs)
    try:
        return notifier.notify(status).webhook
    finally:
        if own:
            notifier.close()

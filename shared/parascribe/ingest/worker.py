"""The ingest worker: pulls ``ingest-pull`` (:class:`~parascribe.gcp.pull.Puller`), a few requests at a time.

A download of a long VOD outlasts any push request, so the worker pulls and extends its
own leases (every ``LEASE_EXTENSION_S``, for up to ``INGEST_TIMEOUT_MINUTES`` plus a
margin). Each message runs on a thread of its own; it is acked once its request is
``submitted`` or ``failed`` (:meth:`~parascribe.ingest.service.Ingestor.handle` returned)
and nacked when that raised, so Pub/Sub retries it.

``/healthz`` answers 200 while the pull runs. SIGTERM stops pulling and cancels the
requests in hand: each stops at its next read and is nacked, for another worker to redo.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1

from parascribe import names
from parascribe.config import Settings
from parascribe.gcp.pubsub import HealthServer, Message
from parascribe.gcp.pull import Ackable, Puller, run_until_stopped
from parascribe.ingest.service import Ingestor

log = logging.getLogger(__name__)

CONCURRENCY = 2
"""Requests one instance fetches at once; each holds one spool file and one connection."""
LEASE_EXTENSION_S = 20
LEASE_MARGIN_S = 600
"""How long past ``INGEST_TIMEOUT_MINUTES`` a lease is still extended (the upload after the fetch)."""


class IngestWorker:
    """Pulls ingest requests and runs them on a small thread pool.

    Args:
        settings: the project, ``INGEST_TIMEOUT_MINUTES``, ``PORT`` and ``HOST``.
        ingestor: what handles one request.
        health_port: port of ``/healthz``; None for none, 0 for any free port.
        concurrency: requests handled at once.
        subscriber: a ``SubscriberClient``; one is created when None.
    """

    def __init__(self, settings: Settings, ingestor: Ingestor, *, health_port: int | None = None,
                 concurrency: int = CONCURRENCY, subscriber: Any = None) -> None:
        self._settings = settings
        self.ingestor = ingestor
        self._concurrency = concurrency
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ingest")
        self._cancel = threading.Event()
        self._stop_requested = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._subscriber = subscriber
        self._own_subscriber = subscriber is None
        self._puller: Puller | None = None
        self._pull_error: BaseException | None = None
        self._health = HealthServer(health_port, self._health_state, settings.host) if health_port is not None else None

    def submit(self, message: Message, handle: Ackable) -> None:
        """Run a message on the pool (the pull thread calls this); nack it when the worker is stopping."""
        if self._cancel.is_set():
            handle.nack()
            return
        try:
            self._pool.submit(self._run, message, handle)
        except RuntimeError:  # the pool is shut down
            handle.nack()

    def _run(self, message: Message, handle: Ackable) -> None:
        try:
            outcome = self.ingestor.handle(message, self._cancel)
        except Exception as err:
            log.warning("ingest of message %s will be retried: %s", message.message_id, getattr(err, "reason", err),
                        exc_info=not hasattr(err, "reason"))
            handle.nack()
            return
        if outcome is not None:
            log.info("request %s is %s%s", outcome.record.request_id, outcome.record.state,
                     f": {outcome.record.reason}" if outcome.record.reason else "")
        handle.ack()

    @property
    def ready(self) -> bool:
        return self._puller is not None and self._puller.running and not self._cancel.is_set()

    def _health_state(self) -> tuple[bool, str]:
        if self.ready:
            return True, "ok"
        return False, "stopping" if self._cancel.is_set() else "starting"

    @property
    def health_port(self) -> int | None:
        return self._health.port if self._health is not None else None

    def start(self) -> None:
        """Start the health server and pull ``ingest-pull``."""
        if self._health is not None:
            self._health.start()
        if self._subscriber is None:
            self._subscriber = pubsub_v1.SubscriberClient()
        sub_path = names.subscription_path(self._settings.gcp_project, names.SUB_INGEST)
        max_lease_s = self._settings.ingest_timeout_minutes * 60.0 + LEASE_MARGIN_S
        self._puller = Puller(self._subscriber, sub_path, self.submit, self._on_pull_failed,
                              max_outstanding=self._concurrency, lease_s=LEASE_EXTENSION_S,
                              max_lease_s=max_lease_s).start()
        log.info("pulling %s, %d request(s) at a time", sub_path, self._concurrency)

    def _on_pull_failed(self, err: BaseException) -> None:
        if not self._cancel.is_set():
            self._pull_error = err
            self._stop_requested.set()

    def stop(self, timeout_s: float = 8.0) -> None:
        """Stop: cancel the requests in hand (each is nacked at its next read), then stop pulling.

        Idempotent; not from a signal handler (use :meth:`request_stop`).
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=False)
        # Pulling stops last, so the nacks above still reach Pub/Sub.
        if self._puller is not None:
            self._puller.stop(timeout_s)
        if self._subscriber is not None and self._own_subscriber:
            self._subscriber.close()
        if self._health is not None:
            self._health.stop()
        log.info("ingest worker stopped")

    def close(self) -> None:
        self.stop()

    def request_stop(self) -> None:
        """Ask :meth:`run_forever` to stop; safe from a signal handler."""
        self._stop_requested.set()

    def run_forever(self) -> int:
        """Start, serve until SIGTERM/SIGINT (or pulling fails), stop gracefully.

        Returns:
            The exit code: 0 after a requested stop, 1 when pulling failed.
        """
        run_until_stopped(self.start, self.stop, self._stop_requested)
        return 1 if self._pull_error is not None else 0

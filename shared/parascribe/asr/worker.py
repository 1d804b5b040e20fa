"""The GPU ASR worker: pulls ``asr-gpu`` (:class:`~parascribe.gcp.pull.Puller`), batched inference on one thread.

The pull thread only enqueues. One inference thread gathers a batch (up to
``GPU_BATCH_SIZE`` messages, or ``GPU_BATCH_LINGER_MS`` after the first) and hands
it to :class:`~parascribe.asr.batch.BatchProcessor`, which decodes, transcribes,
recovers and publishes; the thread then acks or nacks each message, so a message
is acked only after its result (or its fallback task) was published.

``/healthz`` answers 200 once the engine is loaded and the pull is running (the
Cloud Run startup probe). SIGTERM stops pulling, finishes the batch in hand,
nacks what was queued and closes the engine.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1

from parascribe import names
from parascribe.asr.batch import BatchProcessor, Outcome, Prepared
from parascribe.asr.segments import Segmenter
from parascribe.config import Settings
from parascribe.engines.base import AsrEngine
from parascribe.errors import EngineUnavailableError
from parascribe.gcp.pubsub import HealthServer, Message, Publisher
from parascribe.gcp.pull import Ackable, Puller, run_until_stopped
from parascribe.gcp.source_cache import SourceCache
from parascribe.gcp.storage import BlobStore
from parascribe.jobs import EndedJobs

log = logging.getLogger(__name__)

MAX_LEASE_S = 3600
"""The worker stops extending a message's lease after this long; it is then redelivered."""
LEASE_EXTENSION_S = 20
"""Each lease extension; the chunks of a worker that died come back to another within about this long."""
_POLL_S = 0.2


@dataclass
class _Pending:
    item: Prepared
    handle: Ackable


class AsrWorker:
    """Pulls chunk tasks, transcribes them in batches, publishes results.

    Args:
        settings: ``GPU_BATCH_SIZE``, ``GPU_BATCH_LINGER_MS`` and ``ENABLE_FALLBACK`` matter here.
        engine: the loaded engine, or None when it failed to load: every task then
            goes to Deepgram, which needs ``ENABLE_FALLBACK``.
        store: where sources are read from (through ``cache``).
        publisher: where results and fallback tasks go.
        cache: local copies of sources.
        engine_unavailable_reason: why ``engine`` is None, for logs and health.
        health_port: port of the ``/healthz`` server; None for none, 0 for any free port.
        decode_workers: threads that decode a batch's spans in parallel.
        subscriber: a ``SubscriberClient``; one is created when None.
        ended: tells which jobs have ended, so their remaining chunks are skipped; None checks nothing.
        segmenter: the VAD and segment planner (``VAD_ENABLED``); None transcribes each chunk whole.

    Raises:
        EngineUnavailableError: ``engine`` is None and ``ENABLE_FALLBACK`` is false.
    """

    def __init__(
        self,
        settings: Settings,
        engine: AsrEngine | None,
        store: BlobStore,
        publisher: Publisher,
        cache: SourceCache,
        *,
        engine_unavailable_reason: str | None = None,
        health_port: int | None = None,
        decode_workers: int | None = None,
        subscriber: Any = None,
        ended: EndedJobs | None = None,
        segmenter: Segmenter | None = None,
    ) -> None:
        if engine is None and not settings.enable_fallback:
            raise EngineUnavailableError(
                f"ASR engine unavailable ({engine_unavailable_reason or 'not loaded'}) and ENABLE_FALLBACK=false"
            )
        self._settings = settings
        self._store = store
        self._batch = BatchProcessor(settings, engine, publisher, cache,
                                     engine_unavailable_reason=engine_unavailable_reason,
                                     decode_workers=decode_workers, ended=ended, segmenter=segmenter)
        self._batch_size = settings.gpu_batch_size
        self._linger_s = settings.gpu_batch_linger_ms / 1000.0
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._halt = threading.Event()
        self._stop_requested = threading.Event()
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._accepting = False
        self._intake = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscriber = subscriber
        self._own_subscriber = subscriber is None
        self._puller: Puller | None = None
        self._pull_error: BaseException | None = None
        self._health = HealthServer(health_port, self._health_state, settings.host) if health_port is not None else None
        if engine is None:
            log.error("ASR ENGINE UNAVAILABLE (%s): this worker forwards EVERY task to Deepgram",
                      self._batch.unavailable_reason)

    @property
    def fallbacks(self) -> Counter[str]:
        """Chunks sent to Deepgram, by reason."""
        return self._batch.fallbacks

    @property
    def batch_sizes(self) -> list[int]:
        """Size of every batch handed to the engine, including retried halves."""
        return self._batch.batch_sizes

    def process_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """Transcribe a batch and publish what it produced; see :meth:`BatchProcessor.process_batch`."""
        return self._batch.process_batch(messages)

    # --- the inference thread ---

    def submit(self, inbound: Message, handle: Ackable) -> None:
        """Queue a message for the inference thread (the Pub/Sub callback calls this)."""
        with self._intake:
            if self._accepting:
                try:
                    self._queue.put(_Pending(self._batch.prepare(inbound), handle))
                    return
                except Exception:
                    log.exception("cannot queue message %s; nacking it", inbound.message_id)
        handle.nack()

    def _gather(self) -> list[_Pending] | None:
        """The next batch, or None once the worker is halting."""
        while True:
            if self._halt.is_set():
                return None
            try:
                first = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                continue
        batch = [first]
        deadline = time.monotonic() + self._linger_s
        while len(batch) < self._batch_size:
            if self._halt.is_set():
                for p in batch:
                    p.item.cancel()
                    p.handle.nack()
                return None
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=min(remaining, _POLL_S)) if remaining > 0
                             else self._queue.get_nowait())
            except queue.Empty:
                if remaining <= 0:
                    break
        return batch

    def _loop(self) -> None:
        while (batch := self._gather()) is not None:
            try:
                outcomes = self._batch.run([p.item for p in batch])
            except Exception:
                log.exception("batch of %d failed unexpectedly; nacking it", len(batch))
                outcomes = [Outcome(p.item.inbound.message_id, "nack", "retry") for p in batch]
            for pending, outcome in zip(batch, outcomes, strict=True):
                (pending.handle.ack if outcome.action == "ack" else pending.handle.nack)()


    # --- life cycle ---

    @property
    def ready(self) -> bool:
        """True while the engine is loaded (or the worker forwards everything) and tasks are pulled."""
        pulling = self._puller is None or self._puller.running
        return self._accepting and pulling and not self._halt.is_set()

    def _health_state(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "starting" if not self._halt.is_set() else "stopping"
        if self._batch.engine is not None:
            return True, "ok"
        return True, f"degraded: forwarding to Deepgram ({self._batch.unavailable_reason})"

    def start(self, pull: bool = True) -> None:
        """Start the health server, the inference thread and (when ``pull``) pulling ``asr-gpu``."""
        if self._health is not None:
            self._health.start()
        self._thread = threading.Thread(target=self._loop, name="asr-inference", daemon=True)
        self._thread.start()
        self._accepting = True
        if pull:
            if self._subscriber is None:
                self._subscriber = pubsub_v1.SubscriberClient()
            sub_path = names.subscription_path(self._settings.gcp_project, names.SUB_ASR_GPU)
            self._puller = Puller(self._subscriber, sub_path, self.submit, self._on_pull_failed,
                                  max_outstanding=2 * self._batch_size, lease_s=LEASE_EXTENSION_S,
                                  max_lease_s=MAX_LEASE_S).start()
            log.info("pulling %s in batches of up to %d (linger %d ms), engine %s", sub_path, self._batch_size,
                     self._settings.gpu_batch_linger_ms, self._batch.engine.name if self._batch.engine else "UNAVAILABLE")

    def _on_pull_failed(self, err: BaseException) -> None:
        if self._halt.is_set():
            return
        self._pull_error = err
        self._stop_requested.set()

    @property
    def health_port(self) -> int | None:
        """The port the health server listens on, once started."""
        return self._health.port if self._health is not None else None

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop gracefully: take no more tasks, finish the batch in hand, nack the queue, close the engine.

        Idempotent and safe from any thread except a signal handler (use :meth:`request_stop`).
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        with self._intake:
            self._accepting = False
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        nacked = 0
        while True:
            try:
                pending = self._queue.get_nowait()
                pending.item.cancel()
                pending.handle.nack()
                nacked += 1
            except queue.Empty:
                break
        # Pulling stops last, so the acks and nacks above still reach Pub/Sub.
        if self._puller is not None:
            self._puller.stop(timeout_s)
        if self._subscriber is not None and self._own_subscriber:
            self._subscriber.close()
        self._batch.close()
        if self._health is not None:
            self._health.stop()
        log.info("ASR worker stopped (%d queued messages nacked; fallbacks %s)", nacked, dict(self.fallbacks))

    def close(self) -> None:
        """:meth:`stop`, under the name every stage's service uses."""
        self.stop()

    def request_stop(self) -> None:
        """Ask :meth:`run_forever` to stop; safe from a signal handler."""
        self._stop_requested.set()

    def run_forever(self) -> int:
        """Start, serve until SIGTERM/SIGINT (or the stream fails), stop gracefully.

        Returns:
            The process exit code: 0 after a requested stop, 1 when the stream failed.
        """
        run_until_stopped(self.start, self.stop, self._stop_requested)
        return 1 if self._pull_error is not None else 0

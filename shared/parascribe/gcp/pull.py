"""Pull delivery with leases this process extends itself: what the ASR worker consumes ``asr-gpu`` with.

Unary ``Pull`` calls fetch at most ``max_outstanding`` messages at a time; a thread extends every
lease held by ``lease_s`` every ``lease_s / 2`` (for at most ``max_lease_s``), and ``Lease.ack`` /
``Lease.nack`` settle one message. When the process dies its leases simply run out, and Pub/Sub
hands the messages to another worker within ``lease_s``.

Why not the client library's streaming pull: its leases are right in GCP, but Google's Pub/Sub
emulator (0.8.20) kept some messages of a killed streaming-pull client leased for many minutes
(seen: two of six not redelivered within 90 s with a 10 s ack deadline and 20 s lease
extensions), while unary-pulled messages came back exactly when their lease ran out. A GPU worker
takes a few messages per batch, so unary pulls cost nothing that matters.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from google.api_core import exceptions as gexc

from parascribe.gcp.pubsub import Message

log = logging.getLogger(__name__)

_RETRYABLE = (gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.InternalServerError, gexc.Aborted,
              gexc.TooManyRequests, gexc.Unknown)


class Ackable(Protocol):
    """What a worker needs to settle a received message: a :class:`Lease` has both."""

    def ack(self) -> None: ...

    def nack(self) -> None: ...


class Lease:
    """One pulled message's lease; what the worker acks or nacks once the message is settled."""

    def __init__(self, puller: Puller, ack_id: str) -> None:
        self._puller = puller
        self.ack_id = ack_id

    def ack(self) -> None:
        self._puller.settle(self.ack_id, ack=True)

    def nack(self) -> None:
        self._puller.settle(self.ack_id, ack=False)


class Puller:
    """Pulls ``subscription`` on a thread and hands each message with its :class:`Lease` to ``deliver``.

    Args:
        subscriber: a ``pubsub_v1.SubscriberClient`` (``pull``, ``acknowledge``, ``modify_ack_deadline``).
        subscription: the subscription's full path.
        deliver: called for each message on the pull thread; it must return quickly (queue the work).
        on_failure: called once if pulling fails for good (the subscription is gone, say).
        max_outstanding: messages leased at once, settled or not.
        lease_s: each lease extension.
        max_lease_s: a message held longer than this is left to expire and be redelivered.
        pull_timeout_s: how long one ``Pull`` call may wait for messages.
    """

    def __init__(self, subscriber: Any, subscription: str, deliver: Callable[[Message, Lease], None],
                 on_failure: Callable[[BaseException], None], *, max_outstanding: int, lease_s: float = 20.0,
                 max_lease_s: float = 3600.0, pull_timeout_s: float = 5.0) -> None:
        self._subscriber = subscriber
        self._subscription = subscription
        self._deliver = deliver
        self._on_failure = on_failure
        self._max = max_outstanding
        self._lease_s = lease_s
        self._max_lease_s = max_lease_s
        self._pull_timeout_s = pull_timeout_s
        self._held: dict[str, float] = {}
        """ack id → when it was pulled."""
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads) and self.error is None

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._held)

    def start(self) -> Puller:
        self._threads = [threading.Thread(target=self._pull_loop, name="pull", daemon=True),
                         threading.Thread(target=self._lease_loop, name="lease", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop pulling and extending; leases still held run out and their messages are redelivered."""
        self._halt.set()
        for t in self._threads:
            t.join(timeout_s)

    def settle(self, ack_id: str, ack: bool) -> None:
        """Ack, or nack (a zero deadline: redeliver now)."""
        with self._lock:
            self._held.pop(ack_id, None)
        try:
            if ack:
                self._subscriber.acknowledge(request={"subscription": self._subscription, "ack_ids": [ack_id]})
            else:
                self._subscriber.modify_ack_deadline(request={"subscription": self._subscription,
                                                              "ack_ids": [ack_id], "ack_deadline_seconds": 0})
        except gexc.GoogleAPICallError as err:  # the lease runs out and the message comes back: nothing lost
            log.warning("could not %s a message (it will be redelivered): %s", "ack" if ack else "nack", err)

    def _pull_loop(self) -> None:
        while not self._halt.is_set():
            room = self._max - self.outstanding
            if room <= 0:
                self._halt.wait(0.05)
                continue
            try:
                response = self._subscriber.pull(request={"subscription": self._subscription, "max_messages": room},
                                                 timeout=self._pull_timeout_s)
            except _RETRYABLE as err:
                if not isinstance(err, gexc.DeadlineExceeded):
                    log.warning("pull failed, retrying: %s", err)
                    self._halt.wait(1.0)
                continue
            except Exception as err:
                self.error = err
                log.error("pulling %s stopped: %s", self._subscription, err)
                self._on_failure(err)
                return
            now = time.monotonic()
            for received in response.received_messages:
                with self._lock:
                    self._held[received.ack_id] = now
                self._deliver(Message.from_received(received), Lease(self, received.ack_id))

    def _lease_loop(self) -> None:
        while not self._halt.wait(self._lease_s / 2):
            now = time.monotonic()
            with self._lock:
                expired = [a for a, since in self._held.items() if now - since > self._max_lease_s]
                for ack_id in expired:
                    del self._held[ack_id]
                ids = list(self._held)
            if expired:
                log.warning("%d message(s) held past %.0f s left to be redelivered", len(expired), self._max_lease_s)
            if not ids:
                continue
            try:
                self._subscriber.modify_ack_deadline(request={"subscription": self._subscription, "ack_ids": ids,
                                                              "ack_deadline_seconds": max(1, round(self._lease_s))})
            except gexc.GoogleAPICallError as err:
                log.warning("could not extend %d lease(s): %s", len(ids), err)


def run_until_stopped(start: Callable[[], None], stop: Callable[[], None], stop_requested: threading.Event) -> None:
    """A pull worker's process life: start, wait for ``stop_requested``, stop gracefully.

    On the main thread, SIGTERM (Cloud Run's notice) and SIGINT set ``stop_requested``;
    the worker sets it itself when pulling fails for good.
    """
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    start()
    while not stop_requested.wait(1.0):
        pass
    stop()

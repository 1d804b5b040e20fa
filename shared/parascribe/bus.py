"""Message publishing behind a narrow interface, and its Pub/Sub adapter."""

from __future__ import annotations

import logging
from typing import Protocol

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from parascribe.contracts import Contract
from parascribe.errors import TransientError

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, topic: str, message: Contract, attributes: dict[str, str] | None = None) -> str:
        """Publish and block until the server has it; return the message id."""
        ...


class PubSubPublisher:
    """:class:`Publisher` over ``pubsub_v1.PublisherClient``.

    The client reads ``PUBSUB_EMULATOR_HOST`` itself, so the same code runs
    against the emulator and against GCP.
    """

    def __init__(self, project: str, client: pubsub_v1.PublisherClient | None = None, timeout_s: float = 60.0) -> None:
        self._project = project
        self._client = client or pubsub_v1.PublisherClient()
        self._timeout_s = timeout_s

    def topic_path(self, topic: str) -> str:
        return self._client.topic_path(self._project, topic)

    def publish(self, topic: str, message: Contract, attributes: dict[str, str] | None = None) -> str:
        future = self._client.publish(self.topic_path(topic), message.to_bytes(), **(attributes or {}))
        try:
            return str(future.result(timeout=self._timeout_s))
        except (gexc.GoogleAPICallError, TimeoutError) as err:
            raise TransientError(f"publishing to {topic}: {err}") from err

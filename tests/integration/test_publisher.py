"""The Pub/Sub publisher on the real emulator: a batch goes out whole, in order, with its attributes."""

from __future__ import annotations

import uuid

import google.cloud.pubsub_v1 as pubsub_v1
import pytest

from parascribe import names
from parascribe.contracts import JobFailed, parse
from parascribe.gcp.pubsub import PubSubPublisher
from parascribe.local.emulators import Emulators

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_publish_many_delivers_every_message_with_its_attributes(emulators: Emulators,
                                                                  publisher: PubSubPublisher) -> None:
    subscriber = pubsub_v1.SubscriberClient()
    sub = names.subscription_path(emulators.project, f"publish-many-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(request={"name": sub, "topic": names.topic_path(emulators.project,
                                                                                     names.TOPIC_DEAD_LETTER)})
    try:
        sent = [JobFailed(job_id=f"j{i:020x}", reason=f"reason {i}") for i in range(50)]
        ids = publisher.publish_many([(names.TOPIC_DEAD_LETTER, m, m.attributes()) for m in sent])
        assert len(ids) == 50 and len(set(ids)) == 50
        got: dict[str, JobFailed] = {}
        for _ in range(20):
            resp = subscriber.pull(request={"subscription": sub, "max_messages": 100}, timeout=10)
            for received in resp.received_messages:
                body = parse(JobFailed, received.message.data)
                assert dict(received.message.attributes) == body.attributes()
                got[received.message.message_id] = body
            if resp.received_messages:
                subscriber.acknowledge(request={"subscription": sub,
                                                "ack_ids": [r.ack_id for r in resp.received_messages]})
            if len(got) == 50:
                break
        assert sorted(got) == sorted(ids)
        assert {m.reason for m in got.values()} == {m.reason for m in sent}
    finally:
        subscriber.delete_subscription(request={"subscription": sub})
        subscriber.close()

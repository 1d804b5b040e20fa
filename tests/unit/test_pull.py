"""The puller extends the leases it holds, stops extending settled ones, and never holds more than its limit."""

from __future__ import annotations

import time

from parascribe.gcp.pubsub import Message
from parascribe.gcp.pull import Lease, Puller
from tests.unit.test_asr_worker import FakeSubscriber, wait_for


def test_held_leases_are_extended_until_settled() -> None:
    sub = FakeSubscriber()
    got: list[tuple[Message, Lease]] = []
    for i in range(3):
        sub.put(Message(data=b"{}", message_id=f"m{i}"), f"a{i}")
    puller = Puller(sub, "projects/p/subscriptions/s", lambda m, lease: got.append((m, lease)), lambda err: None,
                    max_outstanding=2, lease_s=2.0).start()
    try:
        wait_for(lambda: len(got) == 2)
        time.sleep(1.3)
        assert [m.message_id for m, _ in got] == ["m0", "m1"] and [m.ack_id for m in sub.inbox] == ["a2"]
        assert (["a0", "a1"], 2) in [(sorted(ids), s) for ids, s in sub.deadlines], sub.deadlines
        got[0][1].ack()
        wait_for(lambda: len(got) == 3)
        sub.deadlines.clear()
        time.sleep(1.3)
        extended = {a for ids, seconds in sub.deadlines if seconds > 0 for a in ids}
        assert extended == {"a1", "a2"} and sub.acked == ["a0"]
    finally:
        puller.stop()

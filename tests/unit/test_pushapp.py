"""Push endpoints: the ack/nack mapping every push service relies on."""

from __future__ import annotations

import base64

from flask.testing import FlaskClient

from parascribe.errors import BadAudioError, TransientError
from parascribe.gcp.pubsub import Message, create_push_app


def envelope(data: bytes, **attributes: str) -> dict[str, object]:
    return {
        "message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "42"},
        "subscription": "projects/p/subscriptions/s",
        "deliveryAttempt": 3,
    }


def client_for(behaviour: str, seen: list[Message]) -> FlaskClient:
    def handler(msg: Message) -> None:
        seen.append(msg)
        if behaviour == "permanent":
            raise BadAudioError("the uploaded object is empty")
        if behaviour == "transient":
            raise TransientError("storage said 503")
        if behaviour == "crash":
            raise RuntimeError("bug")

    return create_push_app("t", {"/pubsub": handler},
                           health=lambda: (behaviour != "starting", behaviour)).test_client()


def test_success_acks_and_passes_the_decoded_message() -> None:
    seen: list[Message] = []
    r = client_for("ok", seen).post("/pubsub", json=envelope(b'{"a":1}', type="chunk_result"))
    assert r.status_code == 204
    assert seen[0].data == b'{"a":1}' and seen[0].attributes == {"type": "chunk_result"}
    assert seen[0].delivery_attempt == 3 and seen[0].message_id == "42"


def test_permanent_errors_ack_and_transient_errors_nack() -> None:
    assert client_for("permanent", []).post("/pubsub", json=envelope(b"x")).status_code == 204
    assert client_for("transient", []).post("/pubsub", json=envelope(b"x")).status_code == 503
    assert client_for("crash", []).post("/pubsub", json=envelope(b"x")).status_code == 500


def test_malformed_envelopes_are_dropped_not_retried_forever() -> None:
    seen: list[Message] = []
    client = client_for("ok", seen)
    assert client.post("/pubsub", data=b"not json", content_type="application/json").status_code == 204
    assert client.post("/pubsub", json={"no": "message"}).status_code == 204
    assert client.post("/pubsub", json={"message": {"data": "%%%not-base64"}}).status_code == 204
    assert seen == []


def test_health_reflects_readiness() -> None:
    assert client_for("ok", []).get("/healthz").status_code == 200
    assert client_for("starting", []).get("/healthz").status_code == 503

"""A gs:// copy is a create-only rewrite, on the wire, with the official client.

fake-gcs-server ignores ``ifGenerationMatch`` on ``rewriteTo`` (the integration test
``test_a_second_copy_to_the_same_name_keeps_the_first`` records that), so what reaches GCS is
checked here against a stub of the JSON API: the query the official client sends, and how
``GcsUploads.copy_in`` reads GCS's answers (a multi-step rewrite, a 412, a 404).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from parascribe.api.errors import ApiError
from parascribe.api.uploads import GcsUploads, UploadOptions

UPLOADS = "uploads"
DEST = "api/req-1/talk.wav"


@dataclass
class StubGcs:
    """The JSON API's rewrite and object GET, with the uploads bucket in a dict."""

    objects: dict[str, int] = field(default_factory=dict)
    """Object name in the uploads bucket → generation."""
    rewrites: list[dict[str, list[str]]] = field(default_factory=list)
    steps: int = 1
    """Calls a rewrite takes (GCS answers with a token until it is done)."""
    missing_source: bool = False

    def handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, code: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = parse_qs(url.query)
                stub.rewrites.append(query)
                dest = unquote(url.path.rsplit("/o/", 1)[1])
                if stub.missing_source:
                    return self._send(404, {"error": {"code": 404, "message": "No such object"}})
                if query.get("ifGenerationMatch") == ["0"] and dest in stub.objects:
                    return self._send(412, {"error": {"code": 412, "message": "conditionNotMet"}})
                step = len([q for q in stub.rewrites if "rewriteToken" in q]) + 1
                if step < stub.steps:
                    return self._send(200, {"kind": "storage#rewriteResponse", "done": False,
                                            "rewriteToken": f"token-{step}", "totalBytesRewritten": "1",
                                            "objectSize": "2"})
                stub.objects[dest] = 1000 + len(stub.objects)
                return self._send(200, {"kind": "storage#rewriteResponse", "done": True, "objectSize": "2",
                                        "totalBytesRewritten": "2",
                                        "resource": self._resource(dest)})

            def do_GET(self) -> None:
                name = unquote(urlsplit(self.path).path.rsplit("/o/", 1)[1])
                if name not in stub.objects:
                    return self._send(404, {"error": {"code": 404, "message": "No such object"}})
                self._send(200, self._resource(name))

            def _resource(self, name: str) -> dict[str, object]:
                return {"kind": "storage#object", "bucket": UPLOADS, "name": name, "size": "2",
                        "generation": str(stub.objects[name]), "contentType": "audio/wav"}

        return Handler


@pytest.fixture
def gcs() -> Iterator[tuple[StubGcs, GcsUploads]]:
    stub = StubGcs()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), stub.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client = storage.Client(project="p", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": f"http://127.0.0.1:{httpd.server_port}"})
    try:
        yield stub, GcsUploads(client, UPLOADS)
    finally:
        httpd.shutdown()
        httpd.server_close()


def _copy(uploads: GcsUploads, source: str = "inbox/talk.wav") -> int:
    return uploads.copy_in("user-bucket", source, 42, DEST, "audio/wav", UploadOptions(request_id="req-1"))


def test_the_rewrite_asks_gcs_to_create_only_and_names_the_source_generation(
        gcs: tuple[StubGcs, GcsUploads]) -> None:
    stub, uploads = gcs
    assert _copy(uploads) == stub.objects[DEST]
    [query] = stub.rewrites
    assert query["ifGenerationMatch"] == ["0"] and query["sourceGeneration"] == ["42"]


def test_every_step_of_a_long_rewrite_keeps_the_precondition(gcs: tuple[StubGcs, GcsUploads]) -> None:
    stub, uploads = gcs
    stub.steps = 3
    assert _copy(uploads) == stub.objects[DEST]
    assert [q.get("rewriteToken") for q in stub.rewrites] == [None, ["token-1"], ["token-2"]]
    assert all(q["ifGenerationMatch"] == ["0"] for q in stub.rewrites)


def test_a_412_returns_the_object_already_there_instead_of_replacing_it(gcs: tuple[StubGcs, GcsUploads]) -> None:
    stub, uploads = gcs
    stub.objects[DEST] = 777
    assert _copy(uploads, "inbox/other.wav") == 777
    assert stub.objects == {DEST: 777}


def test_a_source_gone_mid_request_is_a_404_with_the_uri(gcs: tuple[StubGcs, GcsUploads]) -> None:
    stub, uploads = gcs
    stub.missing_source = True
    with pytest.raises(ApiError) as err:
        _copy(uploads)
    assert err.value.status == 404 and "gs://user-bucket/inbox/talk.wav no longer exists" in err.value.reason

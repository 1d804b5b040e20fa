"""The local Deepgram-compatible server over plain HTTP: auth, response shape, errors, fault injection.

A scripted engine stands in for faster-whisper here so the shape checks are exact
and fast; test_deepgram_engine.py drives the server with the real engine and SDK.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence

import httpx
import numpy as np
import pytest
import soundfile as sf

from parascribe.contracts import EngineName, Word
from parascribe.engines.base import AudioChunk, EngineOutput
from parascribe.local.deepgram_server import RunningServer, start_in_thread

KEY = "server-test-key"
WORDS = [Word(text="Hello,", start=0.1, end=0.4, confidence=0.9),
         Word(text="world.", start=0.5, end=0.9, confidence=0.7),
         Word(text="Again!", start=2.5, end=2.9, confidence=0.8)]


class ScriptedEngine:
    """Returns :data:`WORDS` for any audio and remembers how much audio it heard."""

    name: EngineName = "offline"

    def __init__(self) -> None:
        self.heard: list[float] = []

    def transcribe(self, batch: Sequence[AudioChunk]) -> list[EngineOutput]:
        self.heard.extend(c.duration_s for c in batch)
        return [EngineOutput(words=list(WORDS), text="Hello, world. Again!") for _ in batch]

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture(scope="module")
def server(engine: ScriptedEngine) -> Iterator[RunningServer]:
    srv = start_in_thread(api_key=KEY, engine=engine)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def no_faults(server: RunningServer) -> Iterator[None]:
    yield
    httpx.delete(server.url + "/_faults")


def wav(seconds: float, sr: int = 22_050) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def listen(server: RunningServer, body: bytes, key: str | None = KEY, **params: str) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"}
    if key is not None:
        headers["Authorization"] = f"Token {key}".strip()
    return httpx.post(server.url + "/v1/listen", content=body, params=params, headers=headers, timeout=30)


def assert_error_shape(resp: httpx.Response, status: int) -> dict[str, str]:
    assert resp.status_code == status
    body = resp.json()
    assert set(body) == {"err_code", "err_msg", "request_id"}
    assert body["request_id"] == resp.headers["dg-request-id"]
    return dict(body)


def test_health_answers_once_the_engine_is_loaded(server: RunningServer) -> None:
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_pre_recorded_response_shape(server: RunningServer, engine: ScriptedEngine) -> None:
    resp = listen(server, wav(3.0), model="nova-3", smart_format="true")
    assert resp.status_code == 200
    body = resp.json()
    meta = body["metadata"]
    assert {"request_id", "sha256", "created", "duration", "channels", "models", "model_info"} <= set(meta)
    assert meta["duration"] == pytest.approx(3.0, abs=0.01)
    assert engine.heard[-1] == pytest.approx(3.0, abs=0.01)  # decoded and resampled to 16 kHz
    assert meta["models"][0] in meta["model_info"]
    alt = body["results"]["channels"][0]["alternatives"][0]
    assert alt["transcript"] == "Hello, world. Again!"
    assert [w["word"] for w in alt["words"]] == ["hello", "world", "again"]
    assert [w["punctuated_word"] for w in alt["words"]] == ["Hello,", "world.", "Again!"]
    assert all("speaker" not in w for w in alt["words"])
    assert "utterances" not in body["results"]


def test_options_change_the_shape(server: RunningServer) -> None:
    body = listen(server, wav(3.0), punctuate="false", diarize="true", utterances="true", paragraphs="true").json()
    alt = body["results"]["channels"][0]["alternatives"][0]
    assert alt["transcript"] == "hello world again"
    assert all("punctuated_word" not in w and w["speaker"] == 0 for w in alt["words"])
    # A 1.6 s pause splits utterances and paragraphs.
    assert [u["transcript"] for u in body["results"]["utterances"]] == ["hello world", "again"]
    assert len(alt["paragraphs"]["paragraphs"]) == 2


def test_missing_or_wrong_key_is_401(server: RunningServer) -> None:
    assert assert_error_shape(listen(server, wav(0.5), key=None), 401)["err_code"] == "INVALID_AUTH"
    assert_error_shape(listen(server, wav(0.5), key="not-the-key"), 401)


def test_any_key_is_accepted_without_api_key(engine: ScriptedEngine) -> None:
    with start_in_thread(engine=engine) as srv:
        assert listen(srv, wav(0.5), key="whatever").status_code == 200
        assert_error_shape(listen(srv, wav(0.5), key=""), 401)


def test_corrupt_audio_is_400(server: RunningServer) -> None:
    body = assert_error_shape(listen(server, b"\x00\x01garbage" * 100), 400)
    assert "corrupt or unsupported data" in body["err_msg"]
    assert_error_shape(listen(server, b""), 400)


def test_json_body_without_url_is_400(server: RunningServer) -> None:
    resp = httpx.post(server.url + "/v1/listen", json={"nope": 1}, headers={"Authorization": f"Token {KEY}"})
    assert "JSON" in assert_error_shape(resp, 400)["err_msg"]


def test_injected_faults_fail_the_next_requests_then_clear(server: RunningServer) -> None:
    httpx.post(server.url + "/_faults", json={"status": 429, "count": 2, "retry_after": 3}).raise_for_status()
    first, second = listen(server, wav(0.5)), listen(server, wav(0.5))
    for resp in (first, second):
        assert_error_shape(resp, 429)
        assert resp.headers["Retry-After"] == "3"
    assert listen(server, wav(0.5)).status_code == 200

    httpx.post(server.url + "/_faults", json={"status": 503, "count": 5}).raise_for_status()
    assert httpx.get(server.url + "/_stats").json()["faults_pending"] == 5
    assert httpx.delete(server.url + "/_faults").status_code == 204
    assert listen(server, wav(0.5)).status_code == 200


def test_delay_fault_stalls_then_answers(server: RunningServer) -> None:
    httpx.post(server.url + "/_faults", json={"status": 0, "count": 1, "delay_s": 0.5}).raise_for_status()
    started = time.monotonic()
    assert listen(server, wav(0.5)).status_code == 200
    assert time.monotonic() - started >= 0.5


def test_stats_count_requests_by_status(server: RunningServer) -> None:
    before = httpx.get(server.url + "/_stats").json()
    listen(server, wav(0.5), key=None)
    listen(server, wav(0.5), model="nova-3", language="en")
    after = httpx.get(server.url + "/_stats").json()
    assert after["requests"] == before["requests"] + 2
    assert after["statuses"]["401"] == before["statuses"].get("401", 0) + 1
    assert after["last_params"] == {"model": "nova-3", "language": "en"}
    assert after["last_source"] == "bytes"


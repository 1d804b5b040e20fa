"""The real deepgram-sdk against the local Deepgram-compatible server: words, options, every error class."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from deepgram import DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.core.unchecked_base_model import construct_type
from deepgram.types.listen_v1response import ListenV1Response
from pydantic import SecretStr

from parascribe import metric_names
from parascribe.config import load_settings
from parascribe.deepgram.client import (
    LOCAL_PLACEHOLDER_KEY,
    DeepgramOptions,
    DeepgramTranscriber,
    build_client,
    classify,
    normalise,
)
from parascribe.errors import ConfigError, DeepgramAuthError, PermanentError, TransientError
from parascribe.local.deepgram_server import RunningServer, start_in_thread
from tests.fakes import RecordingExporter
from tests.speech import speak, word_error_rate

KEY = "test-key-0123456789"
SENTENCE = "please send the quarterly report to the finance team before friday afternoon"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    srv = start_in_thread(api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def no_faults(server: RunningServer) -> Iterator[None]:
    yield
    httpx.delete(server.url + "/_faults")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak(SENTENCE, tmp_path_factory.mktemp("dg-speech") / "report.wav", rate=140).read_bytes()


def options_for(server: RunningServer, **overrides: object) -> DeepgramOptions:
    values: dict[str, object] = {"deepgram_base_url": server.url, "deepgram_api_key": SecretStr(KEY)}
    values.update(overrides)
    return DeepgramOptions.from_settings(load_settings(**values))


def fault(server: RunningServer, **body: object) -> None:
    httpx.post(server.url + "/_faults", json=body).raise_for_status()


def stats(server: RunningServer) -> dict[str, object]:
    return dict(httpx.get(server.url + "/_stats").json())


def test_speech_becomes_punctuated_file_time_words(server: RunningServer, speech: bytes) -> None:
    transcriber = DeepgramTranscriber(options_for(server))
    result = transcriber.transcribe_bytes(speech, offset_s=30.0)

    assert word_error_rate(SENTENCE, " ".join(w.text for w in result.words)) <= 0.35, result.text
    assert word_error_rate(SENTENCE, result.text) <= 0.35
    assert 5.0 < result.billed_seconds < 7.0  # espeak speaks the sentence in ~5.5 s
    assert all(30.0 <= w.start <= w.end <= 30.0 + result.billed_seconds + 0.01 for w in result.words)
    assert [w.start for w in result.words] == sorted(w.start for w in result.words)
    assert result.words[-1].text.endswith(".")  # punctuated_word, an SDK extra field, was used
    assert all(w.speaker is None for w in result.words)
    assert str(uuid.UUID(result.request_id)) == result.request_id  # the server's id for this request
    sent = stats(server)["last_params"]
    assert isinstance(sent, dict)
    assert sent["model"] == "nova-3" and sent["smart_format"] == "true" and sent["language"] == "en"


def test_a_jobs_language_is_sent_in_place_of_the_default(server: RunningServer, speech: bytes) -> None:
    transcriber = DeepgramTranscriber(options_for(server))
    transcriber.transcribe_bytes(speech, language="es")
    sent = stats(server)["last_params"]
    assert isinstance(sent, dict) and sent["language"] == "es" and sent["model"] == "nova-3"
    transcriber.transcribe_bytes(speech)
    sent = stats(server)["last_params"]
    assert isinstance(sent, dict) and sent["language"] == "en", "no language: DEEPGRAM_LANGUAGE"


def test_diarized_words_carry_speakers(server: RunningServer, speech: bytes) -> None:
    result = DeepgramTranscriber(options_for(server, deepgram_diarize=True)).transcribe_bytes(speech)
    assert result.words and all(w.speaker == 0 for w in result.words)


class _OneFile(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/missing"):
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server(speech: bytes) -> Iterator[str]:
    handler = type("Handler", (_OneFile,), {"body": speech})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_is_fetched_by_the_server(server: RunningServer, file_server: str) -> None:
    result = DeepgramTranscriber(options_for(server)).transcribe_url(file_server + "/audio.wav?X-Goog-Signature=abc")
    assert word_error_rate(SENTENCE, result.text) <= 0.35
    assert stats(server)["last_source"] == "url"


def test_unreachable_url_is_permanent(server: RunningServer, file_server: str) -> None:
    with pytest.raises(PermanentError, match="404"):
        DeepgramTranscriber(options_for(server)).transcribe_url(file_server + "/missing.wav")


def test_corrupt_audio_is_permanent_with_deepgrams_message(server: RunningServer) -> None:
    with pytest.raises(PermanentError, match="corrupt or unsupported data"):
        DeepgramTranscriber(options_for(server)).transcribe_bytes(b"definitely not audio" * 50)


def test_wrong_key_is_an_auth_error_counted_and_never_logged(
    server: RunningServer, speech: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-secret-key-42"
    exporter = RecordingExporter()
    transcriber = DeepgramTranscriber(options_for(server, deepgram_api_key=SecretStr(wrong)), exporter=exporter)
    with caplog.at_level(logging.DEBUG), pytest.raises(DeepgramAuthError, match="401"):
        transcriber.transcribe_bytes(speech)
    assert exporter.records == [(metric_names.DEEPGRAM_AUTH_ERRORS, 1.0, {})]
    assert any(r.levelno >= logging.ERROR and "AUTHENTICATION" in r.getMessage() for r in caplog.records)
    assert all(wrong not in r.getMessage() and KEY not in r.getMessage() for r in caplog.records)


def test_rate_limit_honours_retry_after_then_succeeds(server: RunningServer, speech: bytes) -> None:
    fault(server, status=429, count=2, retry_after=1)
    before = stats(server)["requests"]
    started = time.monotonic()
    result = DeepgramTranscriber(options_for(server)).transcribe_bytes(speech)
    elapsed = time.monotonic() - started
    assert word_error_rate(SENTENCE, result.text) <= 0.35, result.text
    assert elapsed >= 2.0  # two Retry-After: 1 waits
    after = stats(server)
    assert isinstance(before, int) and after["requests"] == before + 3
    statuses = after["statuses"]
    assert isinstance(statuses, dict) and statuses.get("429", 0) >= 2


def test_server_error_is_retried_by_the_sdk(server: RunningServer, speech: bytes) -> None:
    fault(server, status=500, count=1, retry_after=1)
    before = stats(server)["requests"]
    result = DeepgramTranscriber(options_for(server)).transcribe_bytes(speech)
    assert word_error_rate(SENTENCE, result.text) <= 0.35, result.text
    assert isinstance(before, int) and stats(server)["requests"] == before + 2


def test_persistent_unavailability_is_transient_after_bounded_retries(server: RunningServer, speech: bytes) -> None:
    fault(server, status=503, count=10, retry_after=1)
    before = stats(server)["requests"]
    with pytest.raises(TransientError, match="503"):
        DeepgramTranscriber(options_for(server), max_retries=1).transcribe_bytes(speech)
    assert isinstance(before, int) and stats(server)["requests"] == before + 2


def test_timeout_is_transient(server: RunningServer, speech: bytes) -> None:
    fault(server, status=0, count=1, delay_s=2.5)
    transcriber = DeepgramTranscriber(options_for(server, deepgram_timeout_seconds=1.0), max_retries=0)
    with pytest.raises(TransientError, match="timed out"):
        transcriber.transcribe_bytes(speech)


def test_refused_connection_is_transient() -> None:
    options = DeepgramOptions.from_settings(
        load_settings(deepgram_base_url="http://127.0.0.1:9", deepgram_api_key=SecretStr(KEY))
    )
    with pytest.raises(TransientError):
        DeepgramTranscriber(options, max_retries=0).transcribe_bytes(b"RIFF....")


def test_real_api_without_a_key_fails_at_start_up() -> None:
    with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY"):
        build_client(DeepgramOptions.from_settings(load_settings(deepgram_api_key=None, deepgram_base_url=None)))


def test_local_server_needs_no_key(server: RunningServer, speech: bytes) -> None:
    options = DeepgramOptions.from_settings(
        load_settings(deepgram_api_key=None, deepgram_base_url=server.url + "/", deepgram_timeout_seconds=42)
    )
    client = build_client(options, max_retries=0)
    assert type(client) is DeepgramClient
    wrapper = client._client_wrapper  # where the SDK keeps the endpoint, key and timeout it was built with
    env = wrapper.get_environment()
    ws = "ws" + server.url.removeprefix("http")
    assert (env.base, env.production, env.agent, env.agent_rest) == (server.url, ws, ws, server.url)
    assert wrapper.get_headers()["Authorization"] == f"Token {LOCAL_PLACEHOLDER_KEY}"
    assert wrapper.get_timeout() == 42.0
    # The placeholder key really goes to this server, which was started with a key and so refuses it.
    before = stats(server)["requests"]
    with pytest.raises(DeepgramAuthError, match="401"):
        DeepgramTranscriber(options, client=client).transcribe_bytes(speech)
    assert isinstance(before, int) and stats(server)["requests"] == before + 1


def test_options_never_show_the_key() -> None:
    options = DeepgramOptions.from_settings(load_settings(deepgram_api_key=SecretStr(KEY), deepgram_base_url=None))
    assert KEY not in repr(options) and KEY not in str(options)
    assert options.api_key is not None and options.api_key.get_secret_value() == KEY


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, PermanentError), (413, PermanentError), (401, DeepgramAuthError), (402, DeepgramAuthError),
     (403, DeepgramAuthError), (408, TransientError), (429, TransientError), (500, TransientError),
     (504, TransientError)],
)
def test_status_classification(status: int, expected: type[Exception]) -> None:
    err = ApiError(status_code=status, body={"err_code": "X", "err_msg": "the reason", "request_id": "r1"})
    mapped = classify(err, "chunk")
    assert type(mapped) is expected
    assert "the reason" in str(mapped)


def test_normalise_reads_extras_offsets_and_clamps() -> None:
    body = {
        "metadata": {"request_id": "r", "sha256": "s", "created": "2026-01-01T00:00:00Z", "duration": 12.5,
                     "channels": 1, "models": ["m1"], "model_info": {"m1": {"name": "nova-3", "version": "1"}}},
        "results": {"channels": [{"alternatives": [{
            "transcript": "hello world",
            "confidence": 0.9,
            "words": [
                {"word": "hello", "start": 0.5, "end": 0.9, "confidence": 1.2, "punctuated_word": "Hello,",
                 "speaker": 1},
                {"word": "", "start": 1.0, "end": 1.0, "confidence": 0.5},
                {"word": "world", "start": 1.0, "end": 1.4, "confidence": 0.8, "speaker": 0},
            ],
        }]}]},
    }
    response = construct_type(type_=ListenV1Response, object_=body)
    plain = normalise(response, offset_s=100.0, diarized=False)
    assert [(w.text, w.start, w.end) for w in plain.words] == [("Hello,", 100.5, 100.9), ("world", 101.0, 101.4)]
    assert plain.words[0].confidence == 1.0 and plain.words[1].confidence == 0.8
    assert all(w.speaker is None for w in plain.words)
    assert plain.billed_seconds == 12.5 and plain.model == "nova-3" and plain.text == "hello world"
    assert [w.speaker for w in normalise(response, 0.0, diarized=True).words] == [1, 0]


def test_empty_results_give_no_words() -> None:
    body = {
        "metadata": {"request_id": "r", "sha256": "s", "created": "2026-01-01T00:00:00Z", "duration": 3.0,
                     "channels": 1, "models": [], "model_info": {}},
        "results": {"channels": [{"alternatives": [{"transcript": "", "confidence": 0.0, "words": []}]}]},
    }
    out = normalise(construct_type(type_=ListenV1Response, object_=body), 0.0, diarized=False)
    assert out.words == [] and out.billed_seconds == 3.0

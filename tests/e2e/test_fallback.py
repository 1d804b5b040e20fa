"""A GPU path that cannot work falls back to Deepgram and loses nothing.

A second stack runs beside the session's stack (its own home, its own ports),
with the ASR worker told to use Parakeet from a ``.nemo`` that does not exist:
the worker comes up degraded and forwards every chunk to Deepgram with a
``fallback_reason``; the job still finishes with every word.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jiwer
import pytest

from tests.e2e.conftest import STACK_ENV, Stack, words
from tests.speech import speak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENTENCE = (
    "The night shift keeps the harbour lights burning, and the ferry leaves on time every morning. "
    "Fresh bread arrives at six, and the market opens soon after the boats come in."
)


@pytest.fixture(scope="module")
def broken_gpu_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stack-broken-gpu")
    env = dict(stack.env)
    env.update(STACK_ENV)
    env.update({
        "PARASCRIBE_HOME": str(home),
        "ASR_ENGINE": "parakeet",
        "PARAKEET_MODEL_NAME": str(home / "missing" / "parakeet.nemo"),
        "CHUNK_DURATION_MINUTES": "0.1",
        "TRANSCRIPTION_METHOD": "gpu",
    })
    second = Stack(home=home, env=env)
    proc = second.cli("up", "--detach", timeout=400)
    assert proc.returncode == 0, f"second stack failed to start: {proc.stderr[-3000:]}"
    try:
        yield second
    finally:
        assert second.cli("down", timeout=120).returncode == 0


def test_two_stacks_run_side_by_side(stack: Stack, broken_gpu_stack: Stack) -> None:
    first, second = stack.state(), broken_gpu_stack.state()
    assert not set(first["ports"].values()) & set(second["ports"].values())
    assert first["pubsub_host"] != second["pubsub_host"] and first["storage_host"] != second["storage_host"]
    health = httpx.get(f"http://127.0.0.1:{second['ports']['asr_worker']}/healthz", timeout=5)
    assert health.status_code == 200 and "deepgram" in health.text.lower(), health.text


def test_unusable_gpu_engine_falls_back_to_deepgram_without_losing_words(
    broken_gpu_stack: Stack, tmp_path: Path
) -> None:
    clip = speak(SENTENCE, tmp_path / "harbour.wav", rate=150)
    [record] = broken_gpu_stack.submit(clip)
    assert record["status"] == "done", f"{record}\n{broken_gpu_stack.logs('asr_worker')}"
    assert record["engines"] == ["deepgram"]
    # A lost or doubled 6-s chunk would move the error rate far past the bound the other paths meet.
    error_rate = float(jiwer.wer(" ".join(words(SENTENCE)), " ".join(words(str(record["text"])))))
    assert error_rate <= 0.35, f"WER {error_rate:.3f} after fallback: {record['text']}"

    doc = json.loads(broken_gpu_stack.read_gs(str(dict(record["outputs"])["json"])))  # type: ignore[call-overload]
    status = json.loads(broken_gpu_stack.cli("status", str(record["job_id"]), "--json").stdout)
    assert status["chunks_total"] >= 2
    assert doc["metadata"]["fallbacks"] == status["chunks_total"], doc["metadata"]

    # The merger exports fallbacks by reason; the local exporter flushes every 10 s.
    deadline = time.monotonic() + 30
    summary = ""
    while time.monotonic() < deadline:
        summary = broken_gpu_stack.cli("metrics").stdout
        if "fallbacks" in summary:
            break
        time.sleep(2)
    assert "fallbacks" in summary and "engine_unavailable" in summary, summary

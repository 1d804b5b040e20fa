"""Spoken audio through the whole local stack, through the public CLI.

Real Pub/Sub emulator, real fake-gcs-server notifications, the four services as
processes, the offline engine for real words.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import jiwer
import numpy as np
import pytest
import soundfile as sf

from tests.e2e.conftest import PARAGRAPH, Stack, words
from tests.speech import speak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def job_status(stack: Stack, job_id: str) -> dict[str, object]:
    proc = stack.cli("status", job_id, "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def assert_no_boundary_doubles(doc: dict[str, object], boundaries: list[float]) -> None:
    ws = list(doc["words"])  # type: ignore[call-overload]
    for b in boundaries:
        near = [w for w in ws if abs((w["start"] + w["end"]) / 2 - b) < 3.0]
        for a, c in zip(near, near[1:], strict=False):
            same = words(a["text"]) == words(c["text"])
            assert not (same and c["start"] < a["end"] + 0.3), f"word doubled at boundary {b:.2f}s: {a} / {c}"


def wer(hypothesis: str) -> float:
    return float(jiwer.wer(" ".join(words(PARAGRAPH)), " ".join(words(hypothesis))))


def test_spoken_paragraph_through_many_chunks(stack: Stack, paragraph_wav: Path) -> None:
    duration = sf.info(str(paragraph_wav)).duration
    assert 45 <= duration <= 90, f"espeak paragraph is {duration:.1f}s"
    [record] = stack.submit(paragraph_wav)
    assert record["status"] == "done", f"{record}\nrouter: {stack.logs('router')}\nworker: {stack.logs('asr_worker')}"
    status = job_status(stack, str(record["job_id"]))
    assert int(status["chunks_total"]) >= 4
    error_rate = wer(str(record["text"]))
    print(f"\nauto (gpu path): {status['chunks_total']} chunks, WER {error_rate:.3f}")  # shown with pytest -s
    assert error_rate <= 0.35, f"WER {error_rate:.3f}: {record['text']}"

    outputs = dict(record["outputs"])  # type: ignore[call-overload]
    assert {"json", "txt"} <= set(outputs)
    doc = json.loads(stack.read_gs(outputs["json"]))
    chunk_s = 15.0
    boundaries = [chunk_s * i for i in range(1, int(duration // chunk_s) + 1) if chunk_s * i < duration]
    assert_no_boundary_doubles(doc, boundaries)
    starts = [w["start"] for w in doc["words"]]
    assert starts == sorted(starts), "words are not in file-time order"
    assert max(w["end"] for w in doc["words"]) <= duration + 0.5


def _publish_duplicate_notification(stack: Stack, bucket: str, name: str) -> None:
    """Publish the GCS notification for an object again, as at-least-once delivery may."""
    state = stack.state()
    host = state["storage_host"]
    meta = httpx.get(f"{host}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}").json()
    env = {**stack.env, "PUBSUB_EMULATOR_HOST": str(state["pubsub_host"])}
    code = (
        "import json,sys; from google.cloud import pubsub_v1 as p; c=p.PublisherClient(); m=json.loads(sys.argv[1]);"
        "c.publish(c.topic_path(sys.argv[2], 'audio-uploaded'), json.dumps(m).encode(), bucketId=m['bucket'],"
        " objectId=m['name'], objectGeneration=str(m['generation']), eventType='OBJECT_FINALIZE',"
        " payloadFormat='JSON_API_V1').result(30)"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(meta), str(state["project"])], env=env, check=True, timeout=60)


def test_duplicate_notification_yields_one_job_and_one_webhook(stack: Stack, tmp_path: Path) -> None:
    clip = speak("Hello from the duplicate notification test.", tmp_path / "short-hello.wav", rate=175)
    [record] = stack.submit(clip)
    assert record["status"] == "done", record
    source = str(record["source"]).removeprefix("gs://")
    bucket, _, name = source.partition("/")
    _publish_duplicate_notification(stack, bucket, name)
    time.sleep(8)
    status = job_status(stack, str(record["job_id"]))
    assert status["state"] == "done"
    deliveries = [w for w in stack.webhooks() if w.get("job_id") == record["job_id"]]
    assert len(deliveries) == 1, deliveries


def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """File → (path, a phrase the failure reason must contain)."""
    rng = np.random.default_rng(7)
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    noise = folder / "random-bytes.wav"
    noise.write_bytes(rng.integers(0, 256, 64_000, dtype=np.uint8).tobytes())
    text = folder / "notes.mp3"
    text.write_text("These are meeting notes, not audio.\n" * 200)
    good = folder / "good.wav"
    sf.write(str(good), (0.1 * np.sin(np.linspace(0, 4000, 16000 * 5))).astype(np.float32), 16000)
    truncated = folder / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    zero = folder / "zero-length.wav"
    sf.write(str(zero), np.zeros(0, dtype=np.float32), 16000)
    long = folder / "too-long.wav"
    sf.write(str(long), np.zeros(16000 * 60 * 4, dtype=np.int16), 16000, subtype="PCM_16")
    return {
        "empty": (empty, "empty"),
        "random": (noise, "not a readable audio"),
        "text": (text, "not a readable audio"),
        "truncated": (truncated, "truncated"),
        "zero": (zero, "no samples"),
        "long": (long, "limit"),
    }


def test_bad_inputs_fail_fast_with_reasons_and_the_next_upload_succeeds(stack: Stack, tmp_path: Path) -> None:
    cases = _bad_inputs(tmp_path)
    started = time.monotonic()
    records = stack.submit(*(p for p, _ in cases.values()), timeout=240)
    elapsed = time.monotonic() - started
    for (label, (_, phrase)), record in zip(cases.items(), records, strict=True):
        assert record["status"] == "failed", f"{label}: {record}"
        assert phrase in str(record["reason"]).lower(), f"{label}: reason {record['reason']!r} lacks {phrase!r}"
    assert elapsed < 120, f"bad inputs took {elapsed:.0f}s to fail"
    clip = speak("The pipeline keeps working after bad input.", tmp_path / "after-bad.wav", rate=175)
    [record] = stack.submit(clip)
    assert record["status"] == "done", record
    assert "pipeline" in words(str(record["text"]))


@pytest.mark.parametrize("method", ["deepgram", "hybrid"])
def test_deepgram_and_hybrid_methods(stack: Stack, paragraph_wav: Path, method: str) -> None:
    [record] = stack.submit(paragraph_wav, method=method)
    assert record["status"] == "done", f"{record}\n{stack.logs('deepgram_worker')}"
    error_rate = wer(str(record["text"]))
    print(f"\n{method}: engines {sorted(record['engines'])}, WER {error_rate:.3f}")  # type: ignore[call-overload]
    assert error_rate <= 0.35, f"{method}: WER {error_rate:.3f}: {record['text']}"
    engines = set(record["engines"])  # type: ignore[call-overload]
    assert "deepgram" in engines
    if method == "hybrid":
        assert len(engines) == 2, f"hybrid used only {engines}"


def test_a_spanish_upload_goes_to_deepgram_in_spanish(stack: Stack, tmp_path: Path) -> None:
    """``--language es``: the GPU (Parakeet, English only) is never asked; the whole job goes to Deepgram."""
    clip = speak("Buenos días. Esta grabación está en español.", tmp_path / "charla.wav", voice="es")
    [record] = stack.submit(clip, language="es", timeout=300)
    assert record["status"] == "done", f"{record}\n{stack.logs('router')}"
    assert record["engines"] == ["deepgram"] and record["language"] == "es"


def test_webhook_arrives_signed(stack: Stack) -> None:
    deliveries = stack.webhooks()
    assert deliveries, "no webhook reached the local receiver"
    assert all(d["verified"] is True for d in deliveries), deliveries
    assert {d["status"] for d in deliveries} <= {"done", "failed"}

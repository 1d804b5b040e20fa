"""Speech segmentation through the whole local stack: long pauses and music skipped, a file with no speech.

The stack runs the ASR worker as the service does (``VAD_ENABLED`` on by default): Silero VAD cuts
each 15 s chunk into speech segments, the offline engine gets them packed into windows, and the
merger reports the seconds skipped.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf

from parascribe.audio import SAMPLE_RATE, decode_span
from parascribe.merger.formats import NO_SPEECH_NOTE
from tests.e2e.conftest import PARAGRAPH, Stack, words
from tests.speech import speak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SR = SAMPLE_RATE
PAUSES_S = {2: 6.0, 7: 8.0}
"""Silence inserted before sentence ``i`` (0-based)."""
MUSIC_BEFORE, MUSIC_S = 4, 20.0
"""Music inserted before sentence 4."""
NOISE_STD = 0.003


def chords(seconds: float) -> np.ndarray:
    """Chords of sine tones with harmonics, a new one every half second: loud and tonal, no speech."""
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros_like(t)
    step = SR // 2
    for n, i in enumerate(range(0, len(t), step)):
        root, seg = (220.0, 261.6, 196.0, 246.9)[n % 4], t[i: i + step]
        out[i: i + step] = sum(0.05 / h * np.sin(2 * np.pi * root * r * h * seg) for r in (1.0, 1.26, 1.5)
                               for h in (1, 2))
    return out.astype(np.float32)


def noise(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * NOISE_STD).astype(np.float32)


def json_doc(stack: Stack, record: dict[str, object]) -> dict[str, object]:
    outputs = dict(record["outputs"])  # type: ignore[call-overload]
    return dict(json.loads(stack.read_gs(str(outputs["json"]))))


def test_pauses_and_music_are_skipped_and_the_paragraph_is_transcribed(stack: Stack, tmp_path: Path) -> None:
    sentences = [s.strip() for s in re.split(r"(?<=\.) ", PARAGRAPH) if s.strip()]
    assert len(sentences) == 10
    pieces: list[np.ndarray] = [np.zeros(SR, np.float32)]
    music_span = (0.0, 0.0)
    for i, text in enumerate(sentences):
        if i in PAUSES_S:
            pieces.append(np.zeros(int(PAUSES_S[i] * SR), np.float32))
        if i == MUSIC_BEFORE:
            at = sum(len(p) for p in pieces) / SR
            music_span = (at, at + MUSIC_S)
            pieces.append(chords(MUSIC_S))
        pieces.append(decode_span(speak(text, tmp_path / f"s{i}.wav", rate=145)).samples)
    audio = np.concatenate(pieces)
    audio += noise(len(audio), 3)
    path = tmp_path / "paragraph-with-pauses-and-music.wav"
    sf.write(str(path), audio, SR, subtype="PCM_16")
    duration = len(audio) / SR
    assert duration <= 170, f"{duration:.0f} s: over the stack's MAX_AUDIO_MINUTES"

    [record] = stack.submit(path)
    assert record["status"] == "done", f"{record}\nworker: {stack.logs('asr_worker')}"
    error_rate = float(jiwer.wer(" ".join(words(PARAGRAPH)), " ".join(words(str(record["text"])))))
    print(f"\nparagraph with pauses and music ({duration:.0f} s): WER {error_rate:.3f}")  # pytest -s
    assert error_rate <= 0.35, f"WER {error_rate:.3f}: {record['text']}"

    doc = json_doc(stack, record)
    meta = dict(doc["metadata"])  # type: ignore[call-overload]
    inserted = sum(PAUSES_S.values()) + MUSIC_S
    # Each stretch loses the speech pad (0.2 s) on both sides; chunk overlaps can only add.
    assert meta["skipped_seconds"] >= inserted - 3.0, meta
    assert meta["speech_seconds"] > 0 and "note" not in meta
    m0, m1 = music_span
    in_music = [w for w in doc["words"] if m0 + 0.3 < (w["start"] + w["end"]) / 2 < m1 - 0.3]  # type: ignore[attr-defined]
    assert in_music == [], f"words inside the music ({m0:.1f}-{m1:.1f} s): {in_music}"
    starts = [w["start"] for w in doc["words"]]  # type: ignore[attr-defined]
    assert starts == sorted(starts) and max(w["end"] for w in doc["words"]) <= duration + 0.5  # type: ignore[attr-defined]


def test_a_file_with_no_speech_is_done_empty_with_a_note_and_one_webhook(stack: Stack, tmp_path: Path) -> None:
    t = np.arange(25 * SR) / SR
    audio = noise(len(t), 5) * 3
    for k, (start, freq) in enumerate([(2.0, 440.0), (7.0, 1000.0), (12.5, 660.0), (19.0, 330.0)]):
        span = slice(int(start * SR), int((start + 2.0 + k) * SR))
        audio[span] += (0.2 * np.sin(2 * np.pi * freq * t[span])).astype(np.float32)
    path = tmp_path / "no-speech.wav"
    sf.write(str(path), audio, SR, subtype="PCM_16")

    [record] = stack.submit(path)
    assert record["status"] == "done", f"{record}\nworker: {stack.logs('asr_worker')}"
    assert str(record["text"]).strip() == "", f"hallucinated words: {record['text']!r}"
    doc = json_doc(stack, record)
    meta = dict(doc["metadata"])  # type: ignore[call-overload]
    assert doc["words"] == [] and meta["word_count"] == 0
    assert meta["note"] == NO_SPEECH_NOTE and "no speech" in str(meta["note"])
    assert meta["speech_seconds"] == 0 and meta["skipped_seconds"] >= 25 - 0.5, meta

    deadline = time.monotonic() + 30
    mine: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        mine = [w for w in stack.webhooks() if w.get("job_id") == record["job_id"]]
        if mine:
            break
        time.sleep(1)
    time.sleep(3)  # a second delivery, were there one, would be right behind the first
    mine = [w for w in stack.webhooks() if w.get("job_id") == record["job_id"]]
    assert len(mine) == 1, mine
    assert mine[0]["verified"] is True and mine[0]["status"] == "done", mine

"""Silero VAD with onnxruntime on real espeak-ng speech, silence, noise and music."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from parascribe.asr.vad import WINDOW, SileroVad, model_path, speech_regions
from parascribe.audio import SAMPLE_RATE, decode_span
from tests.speech import speak

SR = SAMPLE_RATE
TOLERANCE_S = 0.3


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    pytest.importorskip("onnxruntime", reason="the VAD runs on onnxruntime (pip install 'parascribe[offline]')")
    return SileroVad()


def spoken(tmp_path: Path, text: str, voice: str | None = None) -> np.ndarray:
    return decode_span(speak(text, tmp_path / "s.wav", voice=voice)).samples


def truth(audio: np.ndarray) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return loud[0] / SR, loud[-1] / SR


def chord(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)).astype(np.float32)


def test_weights_come_from_the_faster_whisper_wheel() -> None:
    path = model_path()
    assert path.name.startswith("silero_vad") and path.suffix == ".onnx" and path.is_file()
    assert "faster_whisper" in path.parts


def test_probabilities_match_faster_whisper(vad: SileroVad, tmp_path: Path) -> None:
    from faster_whisper.vad import get_vad_model

    audio = np.concatenate([np.zeros(SR, np.float32), spoken(tmp_path, "hello there, general kenobi")])
    ours = vad.probabilities(audio)
    padded = np.pad(audio, (0, WINDOW - len(audio) % WINDOW))
    np.testing.assert_allclose(ours, np.asarray(get_vad_model()(padded)).reshape(-1), atol=1e-6)


@pytest.mark.parametrize("voice", ["en-us", "en-gb-scotland", "en-us+f3"])
def test_speech_between_silences_is_found(vad: SileroVad, tmp_path: Path, voice: str) -> None:
    first = spoken(tmp_path, "the quick brown fox jumps over the lazy dog", voice)
    second = spoken(tmp_path, "we will meet at the station after lunch", voice)
    a, b = truth(first), truth(second)
    lead, gap = 2.0, 3.0
    audio = np.concatenate([np.zeros(int(lead * SR), np.float32), first, np.zeros(int(gap * SR), np.float32),
                            second, np.zeros(2 * SR, np.float32)])
    regions = [(s / SR, e / SR) for s, e in vad.detect(audio).regions]
    second_at = lead + len(first) / SR + gap
    expected = [(lead + a[0], lead + a[1]), (second_at + b[0], second_at + b[1])]
    assert len(regions) == 2, regions
    for (s, e), (ts, te) in zip(regions, expected, strict=True):
        assert abs(s - ts) <= TOLERANCE_S and abs(e - te) <= TOLERANCE_S, (regions, expected)


@pytest.mark.parametrize("kind", ["silence", "noise", "chord", "sweep"])
def test_no_speech_in_silence_noise_or_music(vad: SileroVad, kind: str) -> None:
    n = 10 * SR
    t = np.arange(n) / SR
    audio = {
        "silence": np.zeros(n, np.float32),
        "noise": (np.random.default_rng(0).standard_normal(n) * 0.05).astype(np.float32),
        "chord": chord(10),
        "sweep": (0.2 * np.sin(2 * np.pi * (200 + 80 * t) * t)).astype(np.float32),
    }[kind]
    speech = vad.detect(audio)
    assert sum(e - s for s, e in speech.regions) / SR <= 0.5, speech.regions


def test_sessions_are_per_thread_and_agree(vad: SileroVad, tmp_path: Path) -> None:
    audio = spoken(tmp_path, "one two three four five")
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(vad.probabilities(audio))) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(results) == 3
    for r in results:
        np.testing.assert_array_equal(r, results[0])


def test_empty_audio_has_no_speech(vad: SileroVad) -> None:
    assert vad.detect(np.zeros(0, np.float32)).regions == []


def test_regions_from_probabilities() -> None:
    probs = np.array([0.0, 0.9, 0.9, 0.2, 0.9, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0])
    # a 1-window dip (0.2 is below 0.5 but above the 0.35 release) does not end speech; 3 windows of 0 do
    assert speech_regions(probs, 12 * WINDOW, 0.5, min_silence=2 * WINDOW, min_speech=0) == [
        (WINDOW, 5 * WINDOW), (8 * WINDOW, 9 * WINDOW)]
    # too short to keep
    assert speech_regions(probs, 12 * WINDOW, 0.5, min_silence=2 * WINDOW, min_speech=2 * WINDOW) == [
        (WINDOW, 5 * WINDOW)]
    # speech running to the end stops at the audio's end
    assert speech_regions(np.array([0.0, 0.9, 0.9]), 2 * WINDOW + 100, 0.5, WINDOW, 0) == [(WINDOW, 2 * WINDOW + 100)]

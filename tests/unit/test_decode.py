"""Decoding every container the pipeline accepts, spans, resampling, bad input, the source cache."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from parascribe.audio import SAMPLE_RATE, decode_bytes, decode_file
from parascribe.contracts import SourceRef
from parascribe.errors import BadAudioError
from parascribe.gcp.source_cache import SourceCache
from tests.fakes import MemoryStore
from tests.speech import speak

BURST_AT_S = 2.0
TOTAL_S = 4.0

# (suffix, container format, codec, sample rate, channels)
CONTAINERS = [
    ("wav", "wav", "pcm_s16le", 44_100, 2),
    ("flac", "flac", "flac", 48_000, 1),
    ("mp3", "mp3", "libmp3lame", 44_100, 2),
    ("ogg", "ogg", "libopus", 48_000, 1),
    ("opus", "opus", "libopus", 48_000, 2),
    ("m4a", "ipod", "aac", 44_100, 2),
    ("mp4", "mp4", "aac", 48_000, 1),
    ("webm", "webm", "libopus", 48_000, 2),
]


def burst_signal(sr: int) -> np.ndarray:
    """Silence with a 100 ms 1 kHz burst at :data:`BURST_AT_S`: the burst tells where a span starts."""
    t = np.arange(int(TOTAL_S * sr)) / sr
    sig = np.zeros_like(t, dtype=np.float32)
    on = (t >= BURST_AT_S) & (t < BURST_AT_S + 0.1)
    sig[on] = 0.5 * np.sin(2 * np.pi * 1000 * t[on])
    return sig


def encode(path: Path, samples: np.ndarray, sr: int, fmt: str, codec: str, channels: int) -> Path:
    """Encode mono ``samples`` into a real container with PyAV."""
    layout = "stereo" if channels == 2 else "mono"
    data = np.tile(samples[np.newaxis, :], (channels, 1)).astype(np.float32)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        assert isinstance(stream, av.AudioStream)
        ctx = stream.codec_context
        resampler = av.AudioResampler(format=ctx.format.name, layout=layout, rate=sr, frame_size=ctx.frame_size or 1024)
        frame = av.AudioFrame.from_ndarray(data.T.reshape(1, -1).copy(), format="flt", layout=layout)
        frame.sample_rate = sr
        _encode_all(out, stream, [*resampler.resample(frame), *resampler.resample(None)])
    return path


def _encode_all(out: av.container.OutputContainer, stream: av.AudioStream, frames: list[av.AudioFrame]) -> None:
    # Frames need pts so the encoder can mark its priming samples and the muxer writes an edit list,
    # as every real encoder does; without them AAC files start with 1024 samples of silence.
    n = 0
    for f in frames:
        f.pts = n
        n += f.samples
        out.mux(stream.encode(f))
    out.mux(stream.encode(None))


def onset_s(samples: np.ndarray, threshold: float = 0.1) -> float:
    idx = np.flatnonzero(np.abs(samples) > threshold)
    assert idx.size, "no burst found"
    return float(idx[0]) / SAMPLE_RATE


@pytest.mark.parametrize(("suffix", "fmt", "codec", "sr", "channels"), CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_every_container_decodes_whole_and_span(tmp_path: Path, suffix: str, fmt: str, codec: str, sr: int,
                                                channels: int) -> None:
    path = encode(tmp_path / f"a.{suffix}", burst_signal(sr), sr, fmt, codec, channels)

    whole = decode_file(path)
    assert whole.dtype == np.float32 and whole.ndim == 1
    assert abs(len(whole) / SAMPLE_RATE - TOTAL_S) < 0.08
    assert abs(onset_s(whole) - BURST_AT_S) < 0.003
    assert float(np.max(np.abs(whole))) <= 1.0

    span = decode_file(path, 1.5, 3.0)
    assert abs(len(span) - 1.5 * SAMPLE_RATE) <= 2
    assert abs(onset_s(span) - 0.5) < 0.003

    from_bytes = decode_bytes(path.read_bytes(), 1.5, 3.0)
    np.testing.assert_allclose(from_bytes, span, atol=1e-6)


def test_lossless_span_matches_the_same_samples_of_the_whole(tmp_path: Path) -> None:
    sr = SAMPLE_RATE
    rng = np.random.default_rng(7)
    sig = (rng.uniform(-0.5, 0.5, 3 * sr)).astype(np.float32)
    path = tmp_path / "n.flac"
    sf.write(path, sig, sr, subtype="PCM_24")
    whole = decode_file(path)
    span = decode_file(path, 1.25, 2.5)
    np.testing.assert_allclose(span, whole[int(1.25 * sr): int(2.5 * sr)], atol=1e-6)
    np.testing.assert_allclose(whole, sig, atol=1e-6)


def test_resampling_keeps_pitch(tmp_path: Path) -> None:
    sr = 44_100
    t = np.arange(2 * sr) / sr
    path = tmp_path / "tone.wav"
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    out = decode_file(path)
    assert abs(len(out) - 2 * SAMPLE_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(out)
    assert abs(peak_hz - 440) < 2


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    sr = SAMPLE_RATE
    left = np.full(sr, 0.4, dtype=np.float32)
    right = np.full(sr, -0.4, dtype=np.float32)
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([left, right], axis=1), sr)
    out = decode_file(path)
    assert out.shape == (sr,)
    assert float(np.max(np.abs(out))) < 1e-3


def test_span_past_the_end_is_clipped_and_one_starting_after_it_is_bad(tmp_path: Path) -> None:
    path = encode(tmp_path / "a.mp3", burst_signal(44_100), 44_100, "mp3", "libmp3lame", 1)
    tail = decode_file(path, 3.5, 10.0)
    assert abs(len(tail) / SAMPLE_RATE - 0.5) < 0.06
    with pytest.raises(BadAudioError, match="ends before"):
        decode_file(path, 30.0, 40.0)
    wav = tmp_path / "a.wav"
    sf.write(wav, burst_signal(SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(BadAudioError, match="ends before"):
        decode_file(wav, 30.0)


@pytest.mark.parametrize("data", [b"\x00" * 4096, b"not audio at all " * 100, b"RIFF\x00\x00\x00\x00WAVEjunk"])
def test_bad_bytes_raise_bad_audio(data: bytes) -> None:
    with pytest.raises(BadAudioError):
        decode_bytes(data)


def test_empty_and_truncated_input(tmp_path: Path) -> None:
    with pytest.raises(BadAudioError, match="empty"):
        decode_bytes(b"")
    path = encode(tmp_path / "a.m4a", burst_signal(44_100), 44_100, "ipod", "aac", 1)
    with pytest.raises(BadAudioError):
        decode_bytes(path.read_bytes()[:200])


def test_video_without_audio_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 32, 32
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, dtype=np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(BadAudioError, match="no audio stream"):
        decode_file(path)


def test_video_audio_track_decodes(tmp_path: Path) -> None:
    path = tmp_path / "av.mp4"
    sr = 48_000
    sig = burst_signal(sr)
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=5)
        v.width, v.height = 32, 32
        a = out.add_stream("aac", rate=sr, layout="mono")
        for _ in range(int(TOTAL_S * 5)):
            out.mux(v.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")))
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sr, frame_size=1024)
        frame = av.AudioFrame.from_ndarray(sig[np.newaxis, :], format="flt", layout="mono")
        frame.sample_rate = sr
        _encode_all(out, a, [*resampler.resample(frame), *resampler.resample(None)])
        out.mux(v.encode(None))
    span = decode_file(path, 1.0, 3.0)
    assert abs(onset_s(span) - 1.0) < 0.003


def test_invalid_span_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        decode_bytes(b"x", -1.0)
    with pytest.raises(ValueError):
        decode_bytes(b"x", 2.0, 1.0)
    with pytest.raises(FileNotFoundError):
        decode_file(tmp_path / "missing.wav")


def test_espeak_speech_decodes(tmp_path: Path) -> None:
    wav = speak("hello world", tmp_path / "s.wav", rate=175)
    info = sf.info(wav)
    out = decode_file(wav)
    assert abs(len(out) / SAMPLE_RATE - info.duration) < 0.01
    assert float(np.sqrt(np.mean(out**2))) > 0.01


# --- SourceCache ---


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.downloads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def download_to(self, bucket: str, name: str, dest: Path, generation: str | None = None) -> None:
        self.gate.wait(5)
        self.downloads.append(name)
        super().download_to(bucket, name, dest, generation)


def _source(store: MemoryStore, name: str, data: bytes) -> SourceRef:
    gen = store.write("uploads", name, data, content_type="audio/wav")
    assert gen is not None
    return SourceRef(bucket="uploads", name=name, generation=str(gen), size=len(data))


def test_cache_downloads_once_and_evicts_lru(tmp_path: Path) -> None:
    store = CountingStore()
    a = _source(store, "a.wav", b"a" * 100)
    b = _source(store, "b.wav", b"b" * 100)
    c = _source(store, "c.wav", b"c" * 100)
    cache = SourceCache(store, tmp_path / "cache", max_bytes=250)

    pa = cache.path(a)
    assert pa.read_bytes() == b"a" * 100 and pa.suffix == ".wav"
    assert cache.path(a) == pa
    cache.path(b)
    cache.path(a)  # a is now the most recently used
    cache.path(c)  # evicts b
    assert store.downloads == ["a.wav", "b.wav", "c.wav"]
    assert a in cache and c in cache and b not in cache
    assert cache.total_bytes == 200
    assert (cache.hits, cache.misses) == (2, 3)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([pa.name, cache.path(c).name])
    cache.path(b)
    assert store.downloads[-1] == "b.wav"


def test_cache_keys_on_generation(tmp_path: Path) -> None:
    store = CountingStore()
    cache = SourceCache(store, tmp_path, max_bytes=1000)
    old = _source(store, "a.wav", b"old")
    old_path = cache.path(old)  # fetched while it is the live generation: GCS serves no other
    new = _source(store, "a.wav", b"new!")
    new_path = cache.path(new)
    assert old_path != new_path
    assert (old_path.read_bytes(), new_path.read_bytes()) == (b"old", b"new!")
    assert store.downloads == ["a.wav", "a.wav"]


def test_cache_keeps_an_entry_larger_than_the_limit(tmp_path: Path) -> None:
    store = CountingStore()
    big = _source(store, "big.wav", b"x" * 500)
    cache = SourceCache(store, tmp_path, max_bytes=100)
    assert cache.path(big).stat().st_size == 500
    assert big in cache


def test_cache_concurrent_requests_download_once(tmp_path: Path) -> None:
    store = CountingStore()
    src = _source(store, "a.wav", b"a" * 1000)
    cache = SourceCache(store, tmp_path, max_bytes=10_000)
    store.gate.clear()
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(cache.path(src))) for _ in range(8)]
    for t in threads:
        t.start()
    store.gate.set()
    for t in threads:
        t.join(5)
    assert len(paths) == 8 and len(set(paths)) == 1
    assert store.downloads == ["a.wav"]


def test_cache_failed_download_leaves_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    missing = SourceRef(bucket="uploads", name="gone.wav", generation="1", size=10)
    cache = SourceCache(store, tmp_path, max_bytes=1000)
    with pytest.raises(BadAudioError, match="gs://uploads/gone.wav no longer exists"):
        cache.path(missing)
    assert list(tmp_path.iterdir()) == [] and missing not in cache


def test_cache_never_evicts_a_held_source(tmp_path: Path) -> None:
    store = CountingStore()
    a = _source(store, "a.wav", b"a" * 100)
    b = _source(store, "b.wav", b"b" * 100)
    cache = SourceCache(store, tmp_path, max_bytes=150)
    with cache.hold(a) as pa:
        cache.path(b)  # over the limit, but a is held
        assert pa.read_bytes() == b"a" * 100
        assert a in cache and b in cache
    assert a in cache and b not in cache  # released: back under the limit; the source just in use stays
    assert cache.total_bytes == 100

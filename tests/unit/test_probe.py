"""Header probe over ranged reads: every container, every bad input, and how little it fetches."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from parascribe.contracts import SourceRef
from parascribe.errors import AudioTooLongError, BadAudioError, TransientError
from parascribe.router.probe import BLOCK_SIZE, RangeFile, probe
from tests.fakes import MemoryStore
from tests.speech import speak

BUCKET = "uploads"
HOUR = 3600.0


def sine(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@functools.lru_cache(maxsize=8)
def soundfile_bytes(seconds: float, rate: int, fmt: str, subtype: str | None = None, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, sine(seconds, rate, channels), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@functools.lru_cache(maxsize=16)
def pyav_bytes(fmt: str, codec: str, seconds: float, rate: int, channels: int = 1, repeats: int = 1,
               options: tuple[tuple[str, str], ...] = ()) -> bytes:
    """Encode a sine with FFmpeg; ``repeats`` re-muxes the same packets to make long files cheaply."""
    layout = "mono" if channels == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt, options=dict(options)) as out:
        stream: Any = out.add_stream(codec, rate=rate, layout=layout)
        samples = sine(seconds, rate, channels).reshape(1, -1)  # packed (interleaved) layout
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        packets = [(bytes(p), p.pts, p.dts, p.duration, p.time_base) for p in [*stream.encode(frame), *stream.encode(None)]]
        span = packets[-1][1] + packets[-1][3] - packets[0][1]
        for r in range(repeats):
            for data, pts, dts, duration, time_base in packets:
                packet = av.Packet(data)
                packet.pts, packet.dts, packet.duration, packet.time_base = pts + r * span, dts + r * span, duration, time_base
                packet.stream = stream
                out.mux(packet)
    return buf.getvalue()


def video_only_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream: Any = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


class CountingStore(MemoryStore):
    """Counts ranged reads, and fails those after ``fail_after`` with a transient error."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.ranges: list[tuple[int, int]] = []
        self.fail_after = fail_after

    def read_range(self, bucket: str, name: str, start: int, end: int, generation: str | None = None) -> bytes:
        if self.fail_after is not None and len(self.ranges) >= self.fail_after:
            raise TransientError("storage answered 503")
        self.ranges.append((start, end))
        return super().read_range(bucket, name, start, end, generation)


def put(store: MemoryStore, name: str, data: bytes) -> SourceRef:
    gen = store.write(BUCKET, name, data, content_type="application/octet-stream")
    return SourceRef(bucket=BUCKET, name=name, generation=str(gen), size=len(data))


def probe_bytes(name: str, data: bytes, max_s: float = 6 * HOUR) -> Any:
    store = MemoryStore()
    return probe(store, put(store, name, data), max_s)


# --- every supported container ---

@pytest.mark.parametrize(
    ("name", "make", "duration", "rate", "channels", "codec", "container"),
    [
        ("a.wav", lambda: soundfile_bytes(3.0, 16000, "WAV", "PCM_16"), 3.0, 16000, 1, "pcm_s16le", "wav"),
        ("b.wav", lambda: soundfile_bytes(2.5, 44100, "WAV", "FLOAT", channels=2), 2.5, 44100, 2, "pcm_f32le", "wav"),
        ("a.flac", lambda: soundfile_bytes(3.0, 22050, "FLAC"), 3.0, 22050, 1, "flac", "flac"),
        ("a.opus", lambda: soundfile_bytes(3.0, 48000, "OGG", "OPUS"), 3.0, 48000, 1, "opus", "ogg"),
        ("b.ogg", lambda: pyav_bytes("ogg", "libopus", 3.0, 48000, channels=2), 3.0, 48000, 2, "opus", "ogg"),
        ("a.mp3", lambda: pyav_bytes("mp3", "libmp3lame", 3.0, 16000), 3.0, 16000, 1, "mp3", "mp3"),
        ("a.m4a", lambda: pyav_bytes("mp4", "aac", 3.0, 16000), 3.0, 16000, 1, "aac", "mp4"),
        ("a.webm", lambda: pyav_bytes("webm", "libopus", 3.0, 48000), 3.0, 48000, 1, "opus", "webm"),
    ],
)
def test_probe_reads_every_supported_container(
    name: str, make: Any, duration: float, rate: int, channels: int, codec: str, container: str
) -> None:
    info = probe_bytes(name, make())
    assert info.duration_s == pytest.approx(duration, abs=0.1)  # encoder priming adds a few ms
    assert (info.sample_rate, info.channels, info.codec, info.container) == (rate, channels, codec, container)


def test_recording_without_a_duration_in_its_header_is_measured() -> None:
    """Browser MediaRecorder webm files carry no duration; the probe reads the stream instead."""
    data = pyav_bytes("webm", "libopus", 5.0, 48000, repeats=4, options=(("live", "1"),))
    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.duration is None
    info = probe_bytes("recording.webm", data)
    assert info.duration_s == pytest.approx(20.0, abs=0.1)
    assert (info.codec, info.container) == ("opus", "webm")


def test_probe_reads_speech_from_espeak(tmp_path: Path) -> None:
    wav = speak("the quick brown fox jumps over the lazy dog", tmp_path / "speech.wav", rate=175)
    expected = sf.info(str(wav))
    info = probe_bytes("speech.wav", wav.read_bytes())
    assert info.duration_s == pytest.approx(expected.frames / expected.samplerate)
    assert info.sample_rate == expected.samplerate
    assert info.duration_s > 1.0


# --- bad input, each with a reason a person can act on ---

def test_empty_object() -> None:
    with pytest.raises(BadAudioError, match=r"the uploaded object is empty \(0 bytes\)"):
        probe_bytes("empty.wav", b"")


@pytest.mark.parametrize(
    ("name", "data", "found"),
    [
        ("noise.wav", np.random.default_rng(7).bytes(200_000), "unrecognised binary data"),
        ("notes.mp3", b"these are my meeting notes, not a recording\n" * 200, "a text file"),
        ("slides.m4a", b"%PDF-1.7\n" + bytes(5000), "a PDF document"),
    ],
)
def test_not_audio_names_what_was_found(name: str, data: bytes, found: str) -> None:
    with pytest.raises(BadAudioError) as err:
        probe_bytes(name, data)
    assert err.value.reason.startswith(f"not a readable audio file: found {found}")
    assert "supported: wav, flac, mp3, ogg/opus, m4a/mp4, webm" in err.value.reason


def test_video_without_audio_stream() -> None:
    with pytest.raises(BadAudioError, match=r"no audio stream \(found: video in the mp4 container\)"):
        probe_bytes("clip.mp4", video_only_mp4())


def test_zero_length_audio_stream() -> None:
    data = soundfile_bytes(0.0, 16000, "WAV", "PCM_16")
    assert len(data) == 44  # a valid header, no frames
    with pytest.raises(BadAudioError, match="^the audio stream has no samples$"):
        probe_bytes("silence.wav", data)


def test_truncated_wav_reports_declared_and_present_bytes() -> None:
    data = soundfile_bytes(2.0, 16000, "WAV", "PCM_16")  # 64,000 bytes of audio after a 44-byte header
    with pytest.raises(BadAudioError) as err:
        probe_bytes("cut.wav", data[:30_044])
    assert err.value.reason == (
        "the WAV file is truncated: header declares 64000 bytes of audio but only 30000 are present; "
        "re-upload the complete file"
    )


def test_wav_with_trailing_chunks_is_not_truncated() -> None:
    data = soundfile_bytes(1.0, 16000, "WAV", "PCM_16") + b"LIST" + (8).to_bytes(4, "little") + b"INFOtest"
    assert probe_bytes("tagged.wav", data).duration_s == pytest.approx(1.0)


def test_too_long_names_the_limit_and_setting() -> None:
    store = MemoryStore()
    # 7.2 h at a 100 Hz sample rate keeps the object small (2.6 MB); the probe reads only its header.
    data = soundfile_bytes(7.2 * HOUR, 100, "WAV", "PCM_U8")
    with pytest.raises(AudioTooLongError) as err:
        probe(store, put(store, "long.wav", data), 360 * 60.0)
    assert err.value.reason == "audio is 7.2 h long; the limit is 6.0 h (MAX_AUDIO_MINUTES=360)"


def test_object_deleted_before_probe() -> None:
    source = SourceRef(bucket=BUCKET, name="gone.wav", generation="1", size=1000)
    with pytest.raises(BadAudioError, match="no longer exists"):
        probe(MemoryStore(), source, HOUR)


# --- transient storage errors are retried, never turned into bad input ---

@pytest.mark.parametrize(
    ("name", "make", "duration", "codec", "container"),
    [
        # moov at the end: a second read. Each of the 40 encoded repeats adds ~62 ms of AAC priming.
        ("a.m4a", lambda: pyav_bytes("mp4", "aac", 5.0, 16000, repeats=40), 202.5, "aac", "mp4"),
        # soundfile reads the last page too
        ("a.opus", lambda: pyav_bytes("ogg", "libopus", 5.0, 48000, repeats=12), 60.07, "opus", "ogg"),
    ],
)
@pytest.mark.parametrize("fail_after", [0, 1])
def test_transient_storage_error_propagates(name: str, make: Any, duration: float, codec: str, container: str,
                                            fail_after: int) -> None:
    store = CountingStore()
    source = put(store, name, make())
    info = probe(store, source, HOUR)
    assert info.duration_s == pytest.approx(duration, abs=0.1)
    assert (info.codec, info.container) == (codec, container)
    assert len(store.ranges) > fail_after  # the failure below lands inside the decoder's reads
    flaky = CountingStore(fail_after=fail_after)
    flaky_source = put(flaky, name, store.read(BUCKET, name).data)  # type: ignore[union-attr]
    with pytest.raises(TransientError, match="503"):
        probe(flaky, flaky_source, HOUR)


# --- range-read economy ---

@pytest.mark.parametrize(
    ("name", "make", "duration"),
    [
        ("long.wav", lambda: soundfile_bytes(600.0, 8000, "WAV", "PCM_16"), 600.0),
        ("long.mp3", lambda: pyav_bytes("mp3", "libmp3lame", 5.0, 16000, repeats=240,
                                        options=(("write_xing", "0"),)), 1200.0),
        ("long.m4a", lambda: pyav_bytes("mp4", "aac", 5.0, 16000, repeats=240), 1215.0),
        ("long.webm", lambda: pyav_bytes("webm", "libopus", 5.0, 48000, repeats=240), 1200.0),
    ],
)
def test_probe_fetches_a_small_fraction_of_a_long_file(name: str, make: Any, duration: float) -> None:
    store = CountingStore()
    data = make()
    assert len(data) > 3_000_000
    info = probe(store, put(store, name, data), 6 * HOUR)
    assert info.duration_s == pytest.approx(duration, rel=0.02)
    fetched = sum(end - start for start, end in store.ranges)
    assert fetched <= 3 * BLOCK_SIZE
    assert fetched < 0.2 * len(data)


def test_mp4_with_index_at_the_end_reads_head_and_tail_only() -> None:
    store = CountingStore()
    data = pyav_bytes("mp4", "aac", 5.0, 16000, repeats=240)
    moov = data.rfind(b"moov")
    assert moov > len(data) // 2  # the muxer put the index after the audio
    probe(store, put(store, "talk.m4a", data), 6 * HOUR)
    blocks = {start // BLOCK_SIZE for start, _ in store.ranges}
    assert 0 in blocks and (moov // BLOCK_SIZE) in blocks
    assert len(blocks) <= 4


# --- RangeFile behaves like a file ---

@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=3000),
    block=st.integers(min_value=1, max_value=700),
    ops=st.lists(st.tuples(st.sampled_from(["set", "cur", "end"]), st.integers(-3500, 3500), st.integers(0, 1200)),
                 max_size=12),
)
def test_rangefile_matches_bytesio(data: bytes, block: int, ops: list[tuple[str, int, int]]) -> None:
    store = MemoryStore()
    store.write(BUCKET, "x", data)
    f = RangeFile(store, BUCKET, "x", len(data), block_size=block, max_blocks=3)
    ref = io.BytesIO(data)
    whence = {"set": io.SEEK_SET, "cur": io.SEEK_CUR, "end": io.SEEK_END}
    for how, offset, n in ops:
        target = {"set": offset, "cur": ref.tell() + offset, "end": len(data) + offset}[how]
        if target < 0:
            with pytest.raises(ValueError):
                f.seek(offset, whence[how])
            continue
        assert f.seek(offset, whence[how]) == ref.seek(offset, whence[how])
        assert f.read(n) == ref.read(n)
        assert f.tell() == ref.tell()


def test_rangefile_caches_blocks() -> None:
    store = CountingStore()
    data = bytes(range(256)) * 40
    store.write(BUCKET, "x", data)
    f = RangeFile(store, BUCKET, "x", len(data), block_size=1024)
    for _ in range(3):
        f.seek(10)
        assert f.read(100) == data[10:110]
    f.seek(1000)
    assert f.read(100) == data[1000:1100]  # spans blocks 0 and 1
    assert store.ranges == [(0, 1024), (1024, 2048)]
    assert f.bytes_fetched == 2048 and f.requests == 2

"""Decoding that trusts no header: spans stop at their cap, corrupt packets are skipped and counted,
and a PCM WAV's span is read by byte range."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parascribe import audio
from parascribe.audio import SAMPLE_RATE, decode_bytes, decode_file, decode_span
from parascribe.contracts import (
    DECODE_MARGIN_FRACTION,
    DECODE_MARGIN_MIN_S,
    AudioInfo,
    ChunkSpec,
    ChunkTask,
    SourceRef,
)
from parascribe.errors import BadAudioError
from parascribe.router.probe import probe
from parascribe.wav import read_pcm_layout
from tests.bad_audio import claimed_seconds, damage, lying_mp3, mp3_bytes, tone
from tests.fakes import MemoryStore

LIMIT_S = claimed_seconds() + 30.0


@pytest.fixture
def decoded_seconds(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Counts the 16 kHz audio every decode produces (both paths resample through ``_frames_to_arrays``)."""
    total = [0.0]
    real = audio._frames_to_arrays

    def counting(frames: list) -> list[np.ndarray]:  # type: ignore[type-arg]
        out = real(frames)
        total[0] += sum(len(a) for a in out) / SAMPLE_RATE
        return out

    monkeypatch.setattr(audio, "_frames_to_arrays", counting)
    return total


def test_the_probe_believes_a_lying_mp3_header() -> None:
    data = lying_mp3()
    store = MemoryStore()
    gen = store.write("uploads", "lying.mp3", data)
    info = probe(store, SourceRef(bucket="uploads", name="lying.mp3", generation=str(gen), size=len(data)), 3600.0)
    # 0.57 s (23 frames less LAME's encoder delay), though it holds 120 s
    assert info.duration_s == pytest.approx(claimed_seconds(), abs=0.05)


def test_a_capped_decode_of_a_lying_mp3_fails_without_decoding_the_tail(tmp_path: Path,
                                                                        decoded_seconds: list[float]) -> None:
    path = tmp_path / "lying.mp3"
    path.write_bytes(lying_mp3())
    with pytest.raises(BadAudioError) as err:
        decode_span(path, 0.0, None, limit_s=LIMIT_S, header_s=claimed_seconds())
    reason = err.value.reason
    assert "more audio than its header claims" in reason and "MAX_AUDIO_MINUTES" in reason
    assert f"{claimed_seconds():.1f} s" in reason and f"{LIMIT_S:.1f} s" in reason
    assert decoded_seconds[0] <= LIMIT_S + 0.5, f"decoded {decoded_seconds[0]:.1f} s of a file capped at {LIMIT_S:.1f} s"
    decoded_seconds[0] = 0.0
    assert len(decode_file(path)) / SAMPLE_RATE == pytest.approx(120.0, abs=0.1)  # uncapped: all of it
    assert decoded_seconds[0] >= 119.0


def test_a_header_short_by_less_than_the_margin_keeps_the_tail(tmp_path: Path) -> None:
    data = lying_mp3(real_s=10.0, claimed_frames=200)  # claims 5.2 s, holds 10 s
    out = decode_span(data, 0.0, None, limit_s=claimed_seconds(200) + 30.0, header_s=claimed_seconds(200))
    assert len(out.samples) / SAMPLE_RATE == pytest.approx(10.0, abs=0.1)
    assert out.corrupt_packets == 0


def test_a_capped_soundfile_decode_reads_nothing_past_the_cap(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, tone(120.0, SAMPLE_RATE), SAMPLE_RATE)
    reads: list[int] = []
    real_read = sf.SoundFile.read

    def counting_read(self: sf.SoundFile, frames: int = -1, *args: object, **kw: object) -> object:
        reads.append(frames)
        return real_read(self, frames, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    with pytest.raises(BadAudioError, match="more audio than its header claims"):
        decode_span(path, 0.0, None, limit_s=30.0, header_s=0.6)
    assert reads == []
    assert len(decode_span(path, 0.0, None, limit_s=150.0).samples) == 120 * SAMPLE_RATE


def test_a_capped_span_with_an_end_is_not_limited() -> None:
    data = mp3_bytes(10.0)
    out = decode_span(data, 2.0, 4.0, limit_s=3.0)  # the limit applies to open-ended (last) spans only
    assert len(out.samples) == 2 * SAMPLE_RATE


# --- corrupt packets ---


def test_garbage_in_an_mp3_skips_packets_and_counts_them() -> None:
    clean = mp3_bytes(20.0)
    damaged = damage(clean, (0.3, 0.5, 0.7), 3000)
    out = decode_span(damaged)
    assert out.corrupt_packets > 0
    assert len(out.samples) / SAMPLE_RATE > 18.0
    rms = float(np.sqrt(np.mean(out.samples**2)))
    assert rms == pytest.approx(0.3 / np.sqrt(2), rel=0.1)
    assert len(decode_bytes(damaged)) == len(out.samples)  # the old entry points skip them too
    assert decode_span(clean).corrupt_packets == 0


def test_a_span_after_the_damage_keeps_its_packets_count(tmp_path: Path) -> None:
    damaged = damage(mp3_bytes(20.0), (0.3,), 3000)
    assert decode_span(damaged, 0.0, 10.0).corrupt_packets > 0
    assert decode_span(damaged, 12.0, 16.0).corrupt_packets == 0


def test_too_much_garbage_fails_with_a_reason() -> None:
    damaged = damage(mp3_bytes(20.0), tuple(i / 40 for i in range(4, 38)), 1500)
    with pytest.raises(BadAudioError, match=r"corrupt: \d+ of \d+ packets"):
        decode_span(damaged)


def test_the_fraction_of_corrupt_packets_allowed_is_named() -> None:
    assert 0 < audio.MAX_CORRUPT_FRACTION <= 0.1


# --- PCM WAV spans by byte range ---


class RangeCounter:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fetched = 0
        self.calls = 0

    def __call__(self, start: int, end: int) -> bytes:
        self.calls += 1
        piece = self.data[start:end]
        self.fetched += len(piece)
        return piece


def _wav(seconds: float, rate: int, channels: int, subtype: str, title: str | None = None) -> bytes:
    rng = np.random.default_rng(3)
    sig = rng.uniform(-0.5, 0.5, (int(seconds * rate), channels)).astype(np.float32)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, subtype=subtype, format="WAV") as f:
        if title:
            f.title = title  # a LIST chunk; soundfile writes it before the data
        f.write(sig)
    return buf.getvalue()


@pytest.mark.parametrize(("rate", "channels", "subtype"), [(44_100, 2, "PCM_16"), (16_000, 1, "PCM_24"),
                                                           (48_000, 1, "FLOAT"), (22_050, 1, "PCM_U8")])
def test_a_pcm_wav_span_decodes_from_its_byte_range(rate: int, channels: int, subtype: str) -> None:
    data = _wav(20.0, rate, channels, subtype, title="a talk")
    read = RangeCounter(data)
    layout = read_pcm_layout(read, len(data))
    assert layout is not None
    assert (layout.sample_rate, layout.channels) == (rate, channels)
    assert layout.duration_s == pytest.approx(20.0)
    lo, hi = layout.byte_range(5.0, 9.0)
    step = 4096 * layout.block_align
    span = layout.decode(data[p : min(hi, p + step)] for p in range(lo, hi, step))
    expected = decode_bytes(data, 5.0, 9.0)
    assert abs(len(span) - len(expected)) <= 1
    n = min(len(span), len(expected))
    np.testing.assert_allclose(span[:n], expected[:n], atol=2e-3 if subtype == "PCM_U8" else 1e-4)
    assert read.fetched < 70 * 1024  # the header only
    assert hi - lo == pytest.approx(4.0 * rate * layout.block_align, abs=layout.block_align)


def test_the_last_pcm_span_is_capped() -> None:
    data = _wav(40.0, SAMPLE_RATE, 1, "PCM_16")
    layout = read_pcm_layout(RangeCounter(data), len(data))
    assert layout is not None
    assert layout.byte_range(30.0)[1] == len(data)
    with pytest.raises(BadAudioError, match="more audio than its header claims"):
        layout.byte_range(30.0, limit_s=35.0, header_s=5.0)
    with pytest.raises(BadAudioError, match="ends at 40.00 s, before 45.00 s"):
        layout.byte_range(45.0, 50.0)


def test_pcm_layout_reads_a_streaming_wav_to_the_end_of_the_object() -> None:
    data = bytearray(_wav(3.0, SAMPLE_RATE, 1, "PCM_16"))
    at = data.find(b"data")
    data[at + 4 : at + 8] = b"\xff\xff\xff\xff"  # a streaming writer left the size unset
    layout = read_pcm_layout(RangeCounter(bytes(data)), len(data))
    assert layout is not None and layout.duration_s == pytest.approx(3.0)


@pytest.mark.parametrize("kind", ["flac", "mp3", "adpcm", "junk"])
def test_pcm_layout_is_none_for_anything_but_pcm_wav(kind: str) -> None:
    if kind == "flac":
        buf = io.BytesIO()
        sf.write(buf, tone(1.0, SAMPLE_RATE), SAMPLE_RATE, format="FLAC")
        data = buf.getvalue()
    elif kind == "mp3":
        data = mp3_bytes(1.0)
    elif kind == "adpcm":
        data = _wav(1.0, SAMPLE_RATE, 1, "IMA_ADPCM")
    else:
        data = b"RIFF\x10\x00\x00\x00WAVEjunkjunk"
    assert read_pcm_layout(RangeCounter(data), len(data)) is None


# --- the cap each chunk task decodes under ---


def _task(index: int, n: int, duration: float, start: float, end: float) -> ChunkTask:
    return ChunkTask(
        job_id="j" + "0" * 20, source=SourceRef(bucket="uploads", name="a.mp3", generation="1", size=1),
        audio=AudioInfo(duration_s=duration, sample_rate=44_100, channels=1, codec="mp3", container="mp3"),
        chunk=ChunkSpec(index=index, start_s=start, end_s=end, core_start_s=start, core_end_s=end),
        n_chunks=n, path="gpu",
    )


def test_every_chunk_task_decodes_under_a_cap() -> None:
    inner = _task(0, 3, 1800.0, 0.0, 602.0)
    assert inner.decode_end_s == inner.decode_limit_s == 602.0
    last = _task(2, 3, 1800.0, 1198.0, 1800.0)
    assert last.decode_end_s is None  # it still reads to the real end of the stream...
    assert last.decode_limit_s == pytest.approx(1800.0 + 0.10 * 1800.0)  # ...but no further than this
    short = _task(0, 1, claimed_seconds(), 0.0, claimed_seconds())
    assert short.decode_limit_s == pytest.approx(claimed_seconds() + DECODE_MARGIN_MIN_S)
    assert DECODE_MARGIN_MIN_S == 30.0 and DECODE_MARGIN_FRACTION == 0.10

"""Audio for the whole package: decode any container to 16 kHz mono float32, encode FLAC.

PyAV (bundled FFmpeg) reads every container the pipeline accepts: wav, flac,
mp3, ogg/opus, m4a/mp4 and webm. soundfile is a faster, sample-exact path for
wav, flac and aiff, which it can seek without decoding from the start.

Times are seconds in *file time*: zero is the first audio sample of the stream.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf

from parascribe.errors import BadAudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
"""Every decoded span is 16 kHz mono float32: what Parakeet, faster-whisper and the VAD expect."""

_SF_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF"})
_SF_BLOCK = 1 << 16
# Decode a little past the end so the resampler's filter has context at the edge.
_TAIL_MARGIN_S = 0.1
# A seek that lands this far after the requested start means the demuxer could not seek well.
_SEEK_TOLERANCE_S = 0.05

Source = Path | bytes


def decode_file(path: Path, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """Decode ``[start_s, end_s)`` of a local audio file.

    Args:
        path: any container PyAV or soundfile reads.
        start_s: span start, seconds of file time.
        end_s: span end, or None for the end of the audio.

    Returns:
        16 kHz mono float32 samples in [-1, 1].

    Raises:
        FileNotFoundError: ``path`` does not exist.
        BadAudioError: the file is not audio we can decode, or ends before ``start_s``.
    """
    _check_span(start_s, end_s)
    if not path.is_file():
        raise FileNotFoundError(str(path))
    return _decode(path, start_s, end_s)


def decode_bytes(data: bytes, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """Decode ``[start_s, end_s)`` of an audio file held in memory.

    Args:
        data: the whole file's bytes.
        start_s: span start, seconds of file time.
        end_s: span end, or None for the end of the audio.

    Returns:
        16 kHz mono float32 samples in [-1, 1].

    Raises:
        BadAudioError: the bytes are not audio we can decode, or end before ``start_s``.
    """
    _check_span(start_s, end_s)
    if not data:
        raise BadAudioError("audio is empty (0 bytes)")
    return _decode(data, start_s, end_s)


def _check_span(start_s: float, end_s: float | None) -> None:
    if start_s < 0:
        raise ValueError(f"start_s must be >= 0, got {start_s}")
    if end_s is not None and end_s <= start_s:
        raise ValueError(f"end_s ({end_s}) must be after start_s ({start_s})")


def _open(source: Source) -> str | BinaryIO:
    return str(source) if isinstance(source, Path) else io.BytesIO(source)


def _decode(source: Source, start_s: float, end_s: float | None) -> np.ndarray:
    samples = _decode_soundfile(source, start_s, end_s)
    if samples is None:
        samples = _decode_av(source, start_s, end_s)
    if samples.size == 0 and start_s > 0:
        raise BadAudioError(f"audio ends before {start_s:.2f} s (truncated, or shorter than its header says)")
    if samples.size == 0 and end_s is None:
        raise BadAudioError("audio stream holds no samples")
    return np.clip(samples, -1.0, 1.0, out=samples)


def _decode_soundfile(source: Source, start_s: float, end_s: float | None) -> np.ndarray | None:
    """The sample-exact fast path; None when soundfile does not handle this input."""
    try:
        f = sf.SoundFile(_open(source))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    with f:
        if f.format not in _SF_FORMATS or f.frames <= 0 or not f.seekable():
            return None
        sr = f.samplerate
        first = int(round(start_s * sr))
        if first >= f.frames:
            return np.zeros(0, dtype=np.float32)
        last = f.frames if end_s is None else min(f.frames, int(round(end_s * sr)))
        f.seek(first)
        resampler = None if sr == SAMPLE_RATE else av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        parts: list[np.ndarray] = []
        remaining = last - first
        try:
            while remaining > 0:
                block = f.read(min(_SF_BLOCK, remaining), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                remaining -= len(block)
                mono = np.ascontiguousarray(block.mean(axis=1, dtype=np.float32))
                if resampler is None:
                    parts.append(mono)
                else:
                    frame = av.AudioFrame.from_ndarray(mono[np.newaxis, :], format="flt", layout="mono")
                    frame.sample_rate = sr
                    parts.extend(_frames_to_arrays(resampler.resample(frame)))
        except sf.LibsndfileError as err:
            raise BadAudioError(f"audio data is corrupt: {err}") from None
        if resampler is not None:
            parts.extend(_frames_to_arrays(resampler.resample(None)))
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if end_s is not None:
        out = out[: int(round((end_s - start_s) * SAMPLE_RATE))]
    return out


def _frames_to_arrays(frames: list[av.AudioFrame]) -> list[np.ndarray]:
    return [f.to_ndarray().reshape(-1).astype(np.float32, copy=False) for f in frames]


def _decode_av(source: Source, start_s: float, end_s: float | None) -> np.ndarray:
    try:
        out = _decode_av_pass(source, start_s, end_s, seek=start_s > 0)
        if out is None:  # the demuxer overshot the seek target: decode from the start instead
            out = _decode_av_pass(source, start_s, end_s, seek=False)
    except av.FFmpegError as err:
        raise BadAudioError(f"cannot decode audio: {err}") from None
    except (ValueError, EOFError) as err:
        raise BadAudioError(f"cannot decode audio: {err}") from None
    assert out is not None
    return out


def _decode_av_pass(source: Source, start_s: float, end_s: float | None, *, seek: bool) -> np.ndarray | None:
    """One decoding pass; None when a seek landed after ``start_s``."""
    with av.open(_open(source), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise BadAudioError("no audio stream in the file")
        stream = container.streams.audio[0]
        tb = stream.time_base
        origin = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else 0.0
        origin = max(origin, 0.0)
        if seek and tb is not None:
            try:
                container.seek(int((start_s + origin) / tb), stream=stream)
            except av.FFmpegError:
                seek = False
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        parts: list[np.ndarray] = []
        t0: float | None = None
        decoded_s = 0.0
        stop_at = None if end_s is None else end_s + _TAIL_MARGIN_S
        for frame in container.decode(stream):
            if t0 is None:
                if frame.time is None:
                    if seek:
                        return None
                    t0 = 0.0
                else:
                    t0 = frame.time - origin
                if seek and t0 > start_s + _SEEK_TOLERANCE_S:
                    return None
            parts.extend(_frames_to_arrays(resampler.resample(frame)))
            decoded_s += frame.samples / frame.sample_rate
            if stop_at is not None and t0 + decoded_s >= stop_at:
                break
        parts.extend(_frames_to_arrays(resampler.resample(None)))
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    # Samples before file time zero (codec priming) or before the start are dropped.
    skip = int(round((start_s - (t0 or 0.0)) * SAMPLE_RATE))
    if skip > 0:
        audio = audio[skip:]
    elif skip < 0:
        audio = np.concatenate([np.zeros(-skip, dtype=np.float32), audio])
    if end_s is not None:
        audio = audio[: int(round((end_s - start_s) * SAMPLE_RATE))]
    return np.ascontiguousarray(audio, dtype=np.float32)


def encode_flac(samples: np.ndarray) -> bytes:
    """16 kHz mono float32 → 16-bit FLAC bytes."""
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()

"""Audio for the whole package: decode any container to 16 kHz mono float32, encode FLAC.

PyAV (bundled FFmpeg) reads every container the pipeline accepts: wav, flac,
mp3, ogg/opus, m4a/mp4 and webm. soundfile is a faster, sample-exact path for
wav, flac and aiff, which it can seek without decoding from the start.

Nothing here trusts a header's length. A span without an end (a job's last
chunk) decodes to the real end of the stream, but never past its ``limit_s``:
audio that goes on past it fails with a reason instead of being decoded without
bound. A packet that will not decode is skipped, counted and replaced by silence
of its length, so later audio keeps its time; a span fails only when more than
:data:`MAX_CORRUPT_FRACTION` of its packets are bad. :func:`decode_pcm` decodes a
PCM WAV's span read by byte range (:mod:`parascribe.wav` finds the bytes).

Times are seconds in *file time*: zero is the first audio sample of the stream.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import soundfile as sf

from parascribe.errors import BadAudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
"""Every decoded span is 16 kHz mono float32: what Parakeet, faster-whisper and the VAD expect."""
MAX_CORRUPT_FRACTION = 0.05
"""A span fails when more than this share of its packets will not decode; fewer are skipped and counted."""
COMPRESSED_MAX_BPS = 2_000_000
"""A generous ceiling on the bitrate of compressed audio (mp3, aac, opus, vorbis), in bits a second."""

_SF_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF"})
_SF_BLOCK = 1 << 16
# Decode a little past the end so the resampler's filter has context at the edge.
_TAIL_MARGIN_S = 0.1
# A seek that lands this far after the requested start means the demuxer could not seek well.
_SEEK_TOLERANCE_S = 0.05
# Tags, cover art and container overhead a file may carry on top of its audio. Small, since guessing
# wrong only costs a short file being cut into a span instead of sent whole.
_OVERHEAD_BYTES = 256 << 10
_LOSSLESS = frozenset({"flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd"})
_PCM_BITS = re.compile(r"pcm_[suf](8|16|24|32|64)")

Source = Path | bytes


@dataclass(frozen=True)
class Decoded:
    """A decoded span: 16 kHz mono float32 samples in [-1, 1], and the packets skipped as corrupt."""

    samples: np.ndarray
    corrupt_packets: int = 0


def decode_file(path: Path, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """The samples of :func:`decode_span` of a local file, without a limit (FileNotFoundError, BadAudioError)."""
    return decode_span(path, start_s, end_s).samples


def decode_bytes(data: bytes, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """The samples of :func:`decode_span` of a file held in memory, without a limit (BadAudioError)."""
    return decode_span(data, start_s, end_s).samples


def decode_span(source: Source, start_s: float = 0.0, end_s: float | None = None, *,
                limit_s: float | None = None, header_s: float | None = None) -> Decoded:
    """Decode ``[start_s, end_s)`` of a local file, or of a whole file's bytes.

    Args:
        source: a path, or the file's bytes.
        start_s: span start, seconds of file time.
        end_s: span end, or None for the end of the audio.
        limit_s: with ``end_s`` None, the furthest file time decoding may reach; audio going on
            past it raises rather than be decoded (a header that understates the length).
        header_s: the duration the header claims, for that reason.

    Returns:
        The samples and the number of corrupt packets skipped.

    Raises:
        ValueError: an invalid span.
        FileNotFoundError: ``source`` is a path that does not exist.
        BadAudioError: not audio we can decode, ends before ``start_s``, has too many corrupt
            packets, or goes on past ``limit_s``.
    """
    _check_span(start_s, end_s)
    if isinstance(source, Path) and not source.is_file():
        raise FileNotFoundError(str(source))
    if not isinstance(source, Path) and not source:
        raise BadAudioError("audio is empty (0 bytes)")
    limit = _Limit(limit_s, header_s) if end_s is None and limit_s is not None else None
    decoded = _decode_soundfile(source, start_s, end_s, limit) or _decode_av(source, start_s, end_s, limit)
    samples = decoded.samples
    if samples.size == 0 and start_s > 0:
        raise _ends_before(start_s)
    if samples.size == 0 and end_s is None:
        raise BadAudioError("audio stream holds no samples")
    np.clip(samples, -1.0, 1.0, out=samples)
    return decoded


def plausible_max_bytes(duration_s: float, codec: str, sample_rate: int, channels: int) -> float:
    """The most bytes ``duration_s`` of this audio can plausibly fill; a larger file holds more than its header says.

    Uncompressed PCM at the header's rate and channels (32 bits a sample for lossless codecs such as
    FLAC, whose worst case is about their PCM), :data:`COMPRESSED_MAX_BPS` for compressed codecs, plus
    256 KiB for tags, cover art and container overhead.
    """
    name = codec.lower()
    match = _PCM_BITS.match(name)
    bits = int(match[1]) if match else 32 if name.startswith("pcm_") or name in _LOSSLESS else 0
    bps = bits * (sample_rate or 384_000) * (channels or 8) if bits else COMPRESSED_MAX_BPS
    return max(0.0, duration_s) * bps / 8 + _OVERHEAD_BYTES


def overrun_error(limit_s: float, header_s: float | None) -> BadAudioError:
    """The reason a span fails when its audio goes on past ``limit_s``: the header understates the length."""
    claim = f"its header says {header_s:.1f} s" if header_s is not None else "its header says less"
    return BadAudioError(
        f"the file holds more audio than its header claims: {claim}, but the audio goes on past "
        f"{limit_s:.1f} s, where decoding stops (MAX_AUDIO_MINUTES bounds how long a file may be, so no "
        "stream is read without end); re-encode the file so its header gives its true length, and upload it again"
    )


@dataclass(frozen=True)
class _Limit:
    at_s: float
    header_s: float | None

    def exceeded(self) -> BadAudioError:
        return overrun_error(self.at_s, self.header_s)


def _ends_before(start_s: float) -> BadAudioError:
    return BadAudioError(f"audio ends before {start_s:.2f} s (truncated, or shorter than its header says)")


def _check_span(start_s: float, end_s: float | None) -> None:
    if start_s < 0:
        raise ValueError(f"start_s must be >= 0, got {start_s}")
    if end_s is not None and end_s <= start_s:
        raise ValueError(f"end_s ({end_s}) must be after start_s ({start_s})")


def _open(source: Source) -> str | BinaryIO:
    return str(source) if isinstance(source, Path) else io.BytesIO(source)


class _Mono16k:
    """Collects float32 blocks (frames × channels) at ``rate`` as 16 kHz mono."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._resampler = None if rate == SAMPLE_RATE else av.AudioResampler(format="flt", layout="mono",
                                                                             rate=SAMPLE_RATE)
        self._parts: list[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        mono = np.ascontiguousarray(block.mean(axis=1, dtype=np.float32))
        if self._resampler is None:
            self._parts.append(mono)
            return
        frame = av.AudioFrame.from_ndarray(mono[np.newaxis, :], format="flt", layout="mono")
        frame.sample_rate = self._rate
        self._parts.extend(_frames_to_arrays(self._resampler.resample(frame)))

    def finish(self) -> np.ndarray:
        if self._resampler is not None:
            self._parts.extend(_frames_to_arrays(self._resampler.resample(None)))
        return np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.float32)


def _decode_soundfile(source: Source, start_s: float, end_s: float | None, limit: _Limit | None) -> Decoded | None:
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
            return Decoded(np.zeros(0, dtype=np.float32))
        if limit is not None and f.frames > math.ceil(limit.at_s * sr):
            raise limit.exceeded()
        last = f.frames if end_s is None else min(f.frames, int(round(end_s * sr)))
        f.seek(first)
        mono = _Mono16k(sr)
        remaining = last - first
        try:
            while remaining > 0:
                block = f.read(min(_SF_BLOCK, remaining), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                remaining -= len(block)
                mono.add(block)
        except sf.LibsndfileError as err:
            raise BadAudioError(f"audio data is corrupt: {err}") from None
    out = mono.finish()
    if end_s is not None:
        out = out[: int(round((end_s - start_s) * SAMPLE_RATE))]
    return Decoded(out)


def _frames_to_arrays(frames: list[av.AudioFrame]) -> list[np.ndarray]:
    return [f.to_ndarray().reshape(-1).astype(np.float32, copy=False) for f in frames]


def _decode_av(source: Source, start_s: float, end_s: float | None, limit: _Limit | None) -> Decoded:
    try:
        out = _decode_av_pass(source, start_s, end_s, limit, seek=start_s > 0)
        if out is None:  # the demuxer overshot the seek target: decode from the start instead
            out = _decode_av_pass(source, start_s, end_s, limit, seek=False)
    except av.FFmpegError as err:
        raise BadAudioError(f"cannot decode audio: {err}") from None
    except (ValueError, EOFError) as err:
        raise BadAudioError(f"cannot decode audio: {err}") from None
    assert out is not None
    return out


class _Packets:
    """Counts a pass's packets and those that would not decode."""

    def __init__(self) -> None:
        self.total = 0
        self.corrupt = 0
        self.first_error = ""

    def check(self, found_audio: bool) -> None:
        """Raise when too much would not decode; log what was skipped."""
        if not self.corrupt:
            return
        if not found_audio or self.corrupt > MAX_CORRUPT_FRACTION * self.total:
            raise BadAudioError(
                f"audio data is corrupt: {self.corrupt} of {self.total} packets would not decode "
                f"({self.first_error}); at most {MAX_CORRUPT_FRACTION:.0%} of them may be skipped"
            )
        log.warning("skipped %d of %d packets that would not decode (%s)", self.corrupt, self.total, self.first_error)


def _frames(container: Any, stream: Any, packets: _Packets) -> Iterator[av.AudioFrame]:
    """The stream's frames; a packet that will not decode is counted and becomes silence of its length."""
    last: av.AudioFrame | None = None
    missing_s = 0.0
    for packet in container.demux(stream):
        if packet.size:
            packets.total += 1
        try:
            frames = packet.decode()
        except av.FFmpegError as err:
            if packet.size:
                packets.corrupt += 1
                packets.first_error = packets.first_error or str(getattr(err, "strerror", None) or err).lower()
                missing_s += _packet_seconds(packet, last)
            continue
        for frame in frames:
            gap = int(round(missing_s * frame.sample_rate)) if last is not None else 0
            if gap > 0:
                yield _silence_like(frame, gap)
            missing_s = 0.0
            last = frame
            yield frame


def _packet_seconds(packet: Any, last: av.AudioFrame | None) -> float:
    if packet.duration and packet.time_base is not None:
        return float(packet.duration * packet.time_base)
    return last.samples / last.sample_rate if last is not None else 0.0


def _silence_like(frame: av.AudioFrame, samples: int) -> av.AudioFrame:
    """``samples`` of silence in ``frame``'s format, layout and rate (what the resampler was set up for)."""
    template = frame.to_ndarray()
    per_sample = template.shape[1] // max(1, frame.samples)  # packed formats interleave the channels
    zeros = np.zeros((template.shape[0], samples * per_sample), dtype=template.dtype)
    silence = av.AudioFrame.from_ndarray(zeros, format=frame.format.name, layout=frame.layout.name)
    silence.sample_rate = frame.sample_rate
    return silence


def _decode_av_pass(source: Source, start_s: float, end_s: float | None, limit: _Limit | None, *,
                    seek: bool) -> Decoded | None:
    """One decoding pass; None when a seek landed after ``start_s``."""
    packets = _Packets()
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
        for frame in _frames(container, stream, packets):
            if t0 is None:
                if frame.time is None:
                    if seek:
                        return None
                    t0 = 0.0
                else:
                    t0 = frame.time - origin
                if seek and t0 > start_s + _SEEK_TOLERANCE_S:
                    return None
            if limit is not None and t0 + decoded_s >= limit.at_s:
                raise limit.exceeded()
            parts.extend(_frames_to_arrays(resampler.resample(frame)))
            decoded_s += frame.samples / frame.sample_rate
            if stop_at is not None and t0 + decoded_s >= stop_at:
                break
        parts.extend(_frames_to_arrays(resampler.resample(None)))
    packets.check(found_audio=t0 is not None)
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    # Samples before file time zero (codec priming) or before the start are dropped.
    skip = int(round((start_s - (t0 or 0.0)) * SAMPLE_RATE))
    if skip > 0:
        audio = audio[skip:]
    elif skip < 0:
        audio = np.concatenate([np.zeros(-skip, dtype=np.float32), audio])
    if end_s is not None:
        audio = audio[: int(round((end_s - start_s) * SAMPLE_RATE))]
    return Decoded(np.ascontiguousarray(audio, dtype=np.float32), packets.corrupt)


def decode_pcm(blocks: Iterable[bytes], *, sample_rate: int, channels: int, subtype: str,
               block_align: int) -> np.ndarray:
    """Decode raw little-endian sample bytes (a WAV's data, read by range) to 16 kHz mono float32 in [-1, 1].

    Args:
        blocks: consecutive pieces of whole frames; a short last piece is cut to whole frames.
        sample_rate: frames a second.
        channels: samples a frame.
        subtype: soundfile's name for the sample format (``PCM_16``, ``FLOAT``, ...).
        block_align: bytes a frame.
    """
    mono = _Mono16k(sample_rate)
    for block in blocks:
        whole = len(block) - len(block) % block_align
        if whole:
            samples, _ = sf.read(io.BytesIO(block[:whole]), dtype="float32", always_2d=True, format="RAW",
                                 samplerate=sample_rate, channels=channels, subtype=subtype, endian="LITTLE")
            mono.add(samples)
    out = mono.finish()
    return np.clip(out, -1.0, 1.0, out=out)


def encode_flac(samples: np.ndarray) -> bytes:
    """16 kHz mono float32 → 16-bit FLAC bytes."""
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()

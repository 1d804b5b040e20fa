"""Keep only the audio track: copied into a container that fits its codec, or re-encoded to FLAC.

The output is spooled to a temporary file, not streamed into GCS, because the containers
that carry a duration write it at the end: MP4 writes its index (``moov``) after the
media, FLAC its total sample count into STREAMINFO, MP3 its Xing header, each by seeking
back. The router plans a job's chunks from that duration, so a header-less stream (ADTS,
fragmented MP4) would be planned from a guess. The spool is bounded: a copied track is no
larger than the bytes received (``INGEST_MAX_MB``), and a re-encode is 16 kHz mono FLAC
(about 2 MB a minute), refused past the same cap. On Cloud Run ``/tmp`` is memory, so the
service sets ``TMPDIR`` to a volume when ``INGEST_MAX_MB`` is large.

Nothing here trusts a header: the duration is counted from the packets as they are read
and the copy stops, failed, as soon as it passes ``MAX_AUDIO_MINUTES``.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from parascribe.audio import SAMPLE_RATE
from parascribe.errors import BadAudioError, PermanentError
from parascribe.ingest.httpio import Budget, OverCapError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """An output container for a codec: FFmpeg's muxer name, the file extension and its Content-Type."""

    muxer: str
    ext: str
    content_type: str


COPY_TARGETS: dict[str, Target] = {
    "aac": Target("mp4", ".m4a", "audio/mp4"),
    "alac": Target("mp4", ".m4a", "audio/mp4"),
    "mp3": Target("mp3", ".mp3", "audio/mpeg"),
    "opus": Target("ogg", ".opus", "audio/ogg"),
    "vorbis": Target("ogg", ".ogg", "audio/ogg"),
    "flac": Target("flac", ".flac", "audio/flac"),
}
"""Codecs copied as they are; any other audio codec is re-encoded to :data:`FLAC`."""
FLAC = Target("flac", ".flac", "audio/flac")
_CHECK_EVERY = 64
"""Packets between checks of the spool's size."""


@dataclass(frozen=True)
class Extracted:
    """The audio track, spooled to ``path``."""

    path: Path
    target: Target
    codec: str
    """The input's audio codec."""
    copied: bool
    """True when the packets were copied, False when re-encoded to FLAC."""
    duration_s: float
    size: int


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} minutes"


def too_long(duration_s: float, max_s: float, what: str) -> OverCapError:
    return OverCapError(f"the audio is too long: {what} {_minutes(round(duration_s))}; "
                        f"the limit is {_minutes(max_s)} (MAX_AUDIO_MINUTES)")


def extract_audio(source: io.RawIOBase, out_dir: Path, *, max_s: float, budget: Budget,
                  format_hint: str | None = None) -> Extracted:
    """Copy (or re-encode) the first audio stream of ``source`` into a file under ``out_dir``.

    Args:
        source: the remote body (:class:`~parascribe.ingest.httpio.HttpReader` or ``SegmentReader``).
        out_dir: where the spool file goes; the caller deletes it.
        max_s: ``MAX_AUDIO_MINUTES`` in seconds.
        budget: the caps; the spool must also fit ``budget.max_bytes``.
        format_hint: FFmpeg's demuxer name, when the caller knows it.

    Raises:
        BadAudioError: not media FFmpeg can read, or no audio track.
        OverCapError: longer than ``max_s``, or larger than the byte cap.
        TransientError: reading the body failed (from ``source``).
    """
    try:
        container = av.open(source, mode="r", format=format_hint, options={"probesize": str(5 << 20)})
    except av.error.FFmpegError as err:
        raise BadAudioError(f"the URL's body is not media FFmpeg can read ({err.strerror or err})") from None
    try:
        audio = next((s for s in container.streams if s.type == "audio"), None)
        if audio is None:
            kinds = ", ".join(sorted({str(s.type) for s in container.streams})) or "no streams"
            raise BadAudioError(f"the media has no audio track (it has {kinds})")
        if container.duration is not None and container.duration / av.time_base > max_s:
            raise too_long(container.duration / av.time_base, max_s, "its header says")
        codec = audio.codec_context.name
        target = COPY_TARGETS.get(codec)
        fd, name = tempfile.mkstemp(dir=out_dir, prefix="ingest-", suffix=(target or FLAC).ext)
        os.close(fd)
        path = Path(name)
        try:
            if target is not None:
                duration = _copy(container, audio, path, target, max_s, budget)
            else:
                duration = _encode_flac(container, audio, path, max_s, budget)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    except av.error.FFmpegError as err:
        raise BadAudioError(f"the media could not be read ({err.strerror or err})") from None
    finally:
        container.close()
    size = path.stat().st_size
    log.info("audio track %s %s: %.1f s, %d bytes", codec, "copied" if target else "re-encoded to FLAC",
             duration, size)
    if duration <= 0:
        path.unlink(missing_ok=True)
        raise BadAudioError("the media's audio track holds no audio")
    return Extracted(path=path, target=target or FLAC, codec=codec, copied=target is not None,
                     duration_s=duration, size=size)


class _Clock:
    """The audio's length so far, from packet timestamps, checked against the cap as it grows."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.first: float | None = None
        self.end = 0.0

    def see(self, packet: Any) -> None:
        if packet.pts is None or packet.time_base is None:
            return
        start = float(packet.pts * packet.time_base)
        end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
        if self.first is None:
            self.first = start
        self.end = max(self.end, end)
        if self.duration > self.max_s:
            raise too_long(self.duration, self.max_s, "it goes on past")

    @property
    def duration(self) -> float:
        return self.end - self.first if self.first is not None else 0.0


def _check_spool(path: Path, count: int, budget: Budget) -> None:
    if count % _CHECK_EVERY == 0:
        budget.check()
        if path.stat().st_size > budget.max_bytes:
            raise budget.too_big("its audio track alone is larger than that")


def _copy(container: Any, audio: Any, path: Path, target: Target, max_s: float, budget: Budget) -> float:
    clock = _Clock(max_s)
    with av.open(str(path), mode="w", format=target.muxer) as out:
        stream = out.add_stream_from_template(audio)
        for count, packet in enumerate(container.demux(audio), start=1):
            if packet.dts is None and packet.pts is None:
                continue  # the demuxer's flush packet
            clock.see(packet)
            packet.stream = stream
            out.mux(packet)
            _check_spool(path, count, budget)
    return clock.duration


def _encode_flac(container: Any, audio: Any, path: Path, max_s: float, budget: Budget) -> float:
    clock = _Clock(max_s)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(path), mode="w", format=FLAC.muxer) as out:
        stream: Any = out.add_stream("flac", rate=SAMPLE_RATE)
        stream.layout = "mono"
        stream.format = "s16"
        count = 0
        for packet in container.demux(audio):
            if packet.dts is None and packet.pts is None:
                continue
            clock.see(packet)
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue  # one bad packet; the router's decoder judges the rest
            for frame in frames:
                for resampled in resampler.resample(frame):
                    out.mux(stream.encode(resampled))
            count += 1
            _check_spool(path, count, budget)
        for resampled in resampler.resample(None):
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    if clock.duration <= 0 and path.stat().st_size > 0:
        raise PermanentError("the media's audio track has no timestamps")
    return clock.duration

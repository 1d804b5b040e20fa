"""Probe an uploaded object's audio header without downloading the whole object.

:class:`RangeFile` is a seekable, read-only file over ranged reads of one object
generation, with a small block cache. soundfile reads the headers of WAV, FLAC
and Ogg through it; PyAV (bundled FFmpeg) reads every other container (mp3,
m4a/mp4, webm, opus). Either reads only the header, plus the tail where the
container keeps its index there (an mp4 with ``moov`` at the end, an Ogg's last
page), so probing a long recording fetches a few hundred KiB.

:func:`probe` validates what it finds and raises a :class:`BadAudioError` or
:class:`AudioTooLongError` whose reason tells a person what to fix.
"""

from __future__ import annotations

import io
import logging
import struct
from collections import OrderedDict
from typing import Any

import av
import soundfile as sf

from parascribe.contracts import AudioInfo, SourceRef
from parascribe.errors import AudioTooLongError, BadAudioError, ParascribeError
from parascribe.gcp.storage import BlobStore

log = logging.getLogger(__name__)

BLOCK_SIZE = 256 * 1024
SUPPORTED = "wav, flac, mp3, ogg/opus, m4a/mp4, webm"

_CACHE_BLOCKS = 16
# Streaming WAV writers leave the data size unset; the real length is the object's.
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
_SF_CODECS = {
    "PCM_U8": "pcm_u8",
    "PCM_S8": "pcm_s8",
    "PCM_16": "pcm_s16le",
    "PCM_24": "pcm_s24le",
    "PCM_32": "pcm_s32le",
    "FLOAT": "pcm_f32le",
    "DOUBLE": "pcm_f64le",
    "ULAW": "pcm_mulaw",
    "ALAW": "pcm_alaw",
    "IMA_ADPCM": "adpcm_ima_wav",
    "MS_ADPCM": "adpcm_ms",
    "GSM610": "gsm_ms",
}


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over ``BlobStore.read_range`` of one object generation.

    Reads are served from fixed-size blocks kept in a small LRU cache, so the
    many small reads a demuxer makes cost one ranged request per block.

    Callers such as soundfile's C callbacks swallow Python exceptions, so the
    first storage error is also kept in :attr:`error` for the caller to re-raise.
    """

    def __init__(
        self,
        store: BlobStore,
        bucket: str,
        name: str,
        size: int,
        generation: str | None = None,
        block_size: int = BLOCK_SIZE,
        max_blocks: int = _CACHE_BLOCKS,
    ) -> None:
        super().__init__()
        if block_size <= 0 or max_blocks <= 0:
            raise ValueError("block_size and max_blocks must be positive")
        self._store = store
        self._bucket = bucket
        self._name = name
        self._size = size
        self._generation = generation
        self._block_size = block_size
        self._max_blocks = max_blocks
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0
        self.bytes_fetched = 0
        self.requests = 0
        self.error: ParascribeError | None = None
        self.quiet = False
        """When True, a storage error ends the read (returns what was read) instead of raising.

        For C callers (soundfile) that cannot pass a Python exception through."""

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"unsupported whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        done = 0
        while done < want:
            index, skip = divmod(self._pos, self._block_size)
            try:
                block = self._block(index)
            except ParascribeError:
                if self.quiet:
                    break
                raise
            piece = block[skip : skip + want - done]
            if not piece:
                break  # the object is shorter than its recorded size
            view[done : done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
        return done

    def _block(self, index: int) -> bytes:
        cached = self._blocks.get(index)
        if cached is not None:
            self._blocks.move_to_end(index)
            return cached
        start = index * self._block_size
        end = min(start + self._block_size, self._size)
        try:
            data = self._store.read_range(self._bucket, self._name, start, end, self._generation)
        except FileNotFoundError:
            self.error = BadAudioError(
                f"gs://{self._bucket}/{self._name} no longer exists (deleted or overwritten)"
            )
            raise self.error from None
        except ParascribeError as err:
            self.error = err
            raise
        self.requests += 1
        self.bytes_fetched += len(data)
        self._blocks[index] = data
        if len(self._blocks) > self._max_blocks:
            self._blocks.popitem(last=False)
        return data


def probe(store: BlobStore, source: SourceRef, max_audio_seconds: float) -> AudioInfo:
    """Read an uploaded object's header and check that it is audio we can transcribe.

    Args:
        store: where the object lives.
        source: the object and the generation to read.
        max_audio_seconds: the longest audio accepted (``MAX_AUDIO_MINUTES`` × 60).

    Returns:
        Duration, sample rate, channels, codec and container.

    Raises:
        BadAudioError: the object is empty, not audio, has no audio stream, no
            samples, or is a truncated WAV.
        AudioTooLongError: the audio is longer than ``max_audio_seconds``.
        TransientError: storage failed in a way a retry may fix.
    """
    if source.size == 0:
        raise BadAudioError("the uploaded object is empty (0 bytes); upload the complete audio file")
    f = RangeFile(store, source.bucket, source.name, source.size, source.generation)
    info = _probe_file(f)
    log.info(
        "probed %s: %.1f s, %s in %s, %d Hz, %d ch (fetched %d of %d bytes)",
        source.uri, info.duration_s, info.codec, info.container, info.sample_rate, info.channels,
        f.bytes_fetched, source.size,
    )
    if info.duration_s <= 0:
        raise BadAudioError("the audio stream has no samples")
    if info.duration_s > max_audio_seconds:
        raise AudioTooLongError(
            f"audio is {_human(info.duration_s)} long; the limit is {_human(max_audio_seconds)} "
            f"(MAX_AUDIO_MINUTES={max_audio_seconds / 60:g})"
        )
    return info


def _probe_file(f: RangeFile) -> AudioInfo:
    head = _read_at(f, 0, 64)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        _check_wav_length(f)
    if head[:4] in (b"RIFF", b"fLaC", b"OggS"):
        try:
            return _probe_soundfile(f)
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            _reraise_storage_error(f)
            log.debug("soundfile could not read the header (%s); trying FFmpeg", err)
    return _probe_av(f, head)


def _read_at(f: RangeFile, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n) or b""


def _reraise_storage_error(f: RangeFile) -> None:
    if f.error is not None:
        raise f.error


def _check_wav_length(f: RangeFile) -> None:
    """Compare the data chunk's declared size with the bytes actually present."""
    offset = 12
    while offset + 8 <= f.size:
        header = _read_at(f, offset, 8)
        if len(header) < 8:
            return
        chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
        body = offset + 8
        if chunk_id == b"data":
            present = f.size - body
            if chunk_size in _WAV_UNKNOWN_SIZES and present > 0:
                return
            if chunk_size > present:
                raise BadAudioError(
                    f"the WAV file is truncated: header declares {chunk_size} bytes of audio but only "
                    f"{present} are present; re-upload the complete file"
                )
            return
        offset = body + chunk_size + (chunk_size & 1)


def _probe_soundfile(f: RangeFile) -> AudioInfo:
    f.seek(0)
    f.quiet = True
    try:
        with sf.SoundFile(f) as snd:
            fmt, subtype, frames, rate, channels = snd.format, snd.subtype, snd.frames, snd.samplerate, snd.channels
    finally:
        f.quiet = False
    _reraise_storage_error(f)
    if frames <= 0 or rate <= 0:
        raise BadAudioError("the audio stream has no samples")
    if fmt == "FLAC":
        codec = "flac"
    elif fmt == "OGG":
        codec = subtype.lower()
    else:
        codec = _SF_CODECS.get(subtype, subtype.lower())
    container = {"WAVEX": "wav", "RF64": "wav"}.get(fmt, fmt.lower())
    return AudioInfo(duration_s=frames / rate, sample_rate=rate, channels=channels, codec=codec, container=container)


def _probe_av(f: RangeFile, head: bytes) -> AudioInfo:
    f.seek(0)
    try:
        container = av.open(f, mode="r")
    except ParascribeError:
        raise
    except (av.FFmpegError, ValueError, OSError) as err:
        _reraise_storage_error(f)
        raise _unreadable(head, err) from None
    try:
        return _inspect(container, f, head)
    except ParascribeError:
        raise
    except (av.FFmpegError, ValueError, OSError) as err:
        _reraise_storage_error(f)
        raise _unreadable(head, err) from None
    finally:
        container.close()


def _unreadable(head: bytes, err: Exception) -> BadAudioError:
    return BadAudioError(f"not a readable audio file: found {_describe(head)} ({_av_reason(err)}); supported: {SUPPORTED}")


_MAGIC = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"RIFF", "a RIFF file that is not valid audio"),
    (b"fLaC", "a damaged FLAC file"),
    (b"OggS", "a damaged Ogg file"),
    (b"ID3", "a damaged MP3 file"),
    (b"\x1a\x45\xdf\xa3", "a damaged WebM/Matroska file"),
)


def _describe(head: bytes) -> str:
    """What the first bytes look like, so the reason names what was uploaded."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return "a damaged MP4/M4A file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of the sniffed bytes
            return "unrecognised binary data"
        text = head[: err.start].decode("utf-8")
    if text.lstrip().startswith(("<", "{", "[")):
        return "a text file (markup or JSON)"
    if all(c.isprintable() or c.isspace() for c in text):
        return "a text file"
    return "unrecognised binary data"


def _inspect(container: Any, f: RangeFile, head: bytes) -> AudioInfo:
    fmt = container.format.name.split(",")[0]
    fmt = "webm" if fmt == "matroska" and b"webm" in head else {"mov": "mp4"}.get(fmt, fmt)
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise BadAudioError(
            f"the file has no audio stream (found: {', '.join(kinds)} in the {fmt} container); "
            "upload a file with an audio track"
        )
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    duration = _stream_duration(container, stream)
    if not _decodes_a_frame(container, stream):
        _reraise_storage_error(f)
        raise BadAudioError("the audio stream has no samples")
    if duration is None:
        log.warning("the %s header has no duration; reading the stream to measure it", fmt)
        duration = _measure_duration(container, stream)
    channels = getattr(ctx.layout, "nb_channels", None) or getattr(ctx, "channels", 0) or 0
    return AudioInfo(
        duration_s=duration,
        sample_rate=int(ctx.sample_rate or 0),
        channels=int(channels),
        codec=ctx.codec.canonical_name,
        container=fmt,
    )


def _stream_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def _decodes_a_frame(container: Any, stream: Any, max_packets: int = 50) -> bool:
    """Whether the first packets decode to audio: a header alone proves little."""
    for i, packet in enumerate(container.demux(stream)):
        if i >= max_packets:
            break
        try:
            for frame in packet.decode():
                if frame.samples > 0:
                    return True
        except av.InvalidDataError:
            continue
    return False


def _measure_duration(container: Any, stream: Any) -> float:
    container.seek(0)
    end = 0.0
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end


def _av_reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return str(text).rstrip(".").lower()


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"

"""Where a PCM WAV keeps its samples, read from its header, so a span is fetched by byte range.

A PCM WAV stores frames of fixed size one after another, so the bytes of any span
follow from the header. :func:`read_pcm_layout` reads that header through any
ranged reader (a few small reads) and :meth:`PcmLayout.byte_range` names the bytes
of a span; :func:`parascribe.audio.decode_pcm` decodes them. Anything but PCM or
float samples in a RIFF/WAVE file (ADPCM, RF64, compressed) has no layout here:
callers decode such files whole-file instead.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from parascribe.audio import decode_pcm, overrun_error
from parascribe.errors import BadAudioError

_HEAD_BYTES = 64 * 1024
_MAX_CHUNKS = 64
# Streaming writers leave the data size unset; the data then runs to the end of the file.
_UNSET_SIZES = (0, 0xFFFFFFFF)
# (format tag, bits a sample) → soundfile subtype. 0xFFFE (extensible) names its tag in its sub-format.
_SUBTYPES = {(1, 8): "PCM_U8", (1, 16): "PCM_16", (1, 24): "PCM_24", (1, 32): "PCM_32", (3, 32): "FLOAT",
             (3, 64): "DOUBLE"}

Reader = Callable[[int, int], bytes]
"""Returns bytes ``[start, end)`` of the file (a ranged read); fewer at its end."""


@dataclass(frozen=True)
class PcmLayout:
    """Where a PCM WAV's sample frames lie."""

    data_offset: int
    """Byte offset of the first frame."""
    data_bytes: int
    """Bytes of whole frames present: the header's size, or up to the end of the file when it is unset."""
    block_align: int
    sample_rate: int
    channels: int
    subtype: str
    """soundfile's name for the sample format (``PCM_16``, ``FLOAT``, ...)."""

    @property
    def frames(self) -> int:
        return self.data_bytes // self.block_align

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def byte_range(self, start_s: float, end_s: float | None = None, *, limit_s: float | None = None,
                   header_s: float | None = None) -> tuple[int, int]:
        """The bytes ``[lo, hi)`` of whole frames that hold ``[start_s, end_s)``, clipped to the data.

        Args:
            start_s: span start, seconds of file time.
            end_s: span end, or None for the end of the data.
            limit_s: with ``end_s`` None, the furthest the span may reach (see :func:`parascribe.audio.decode_span`).
            header_s: the duration the probe read from the header, for the reason.

        Raises:
            ValueError: an invalid span.
            BadAudioError: the data ends before ``start_s``, or (``end_s`` None) goes on past ``limit_s``.
        """
        if start_s < 0 or (end_s is not None and end_s <= start_s):
            raise ValueError(f"invalid span [{start_s}, {end_s})")
        first = int(round(start_s * self.sample_rate))
        if first >= self.frames:
            raise BadAudioError(f"audio ends at {self.duration_s:.2f} s, before {start_s:.2f} s (truncated, "
                                "or shorter than its header says)")
        if end_s is None and limit_s is not None and self.frames > math.ceil(limit_s * self.sample_rate):
            raise overrun_error(limit_s, header_s)
        last = self.frames if end_s is None else min(self.frames, int(round(end_s * self.sample_rate)))
        return self.data_offset + first * self.block_align, self.data_offset + last * self.block_align

    def decode(self, blocks: Iterable[bytes]) -> np.ndarray:
        """16 kHz mono float32 of consecutive pieces of whole frames, as read from :meth:`byte_range`."""
        return decode_pcm(blocks, sample_rate=self.sample_rate, channels=self.channels, subtype=self.subtype,
                          block_align=self.block_align)


def read_pcm_layout(read: Reader, size: int) -> PcmLayout | None:
    """The layout of a PCM WAV from its header; None for any other file.

    Args:
        read: a ranged reader over the file.
        size: the file's size in bytes.
    """
    head = read(0, min(size, _HEAD_BYTES))

    def at(start: int, n: int) -> bytes:
        return head[start : start + n] if start + n <= len(head) else read(start, min(size, start + n))

    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int, str] | None = None
    offset = 12
    for _ in range(_MAX_CHUNKS):
        header = at(offset, 8)
        if len(header) < 8:
            return None
        chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            fmt = _pcm_format(at(body, min(chunk_size, 64)))
            if fmt is None:
                return None
        elif chunk_id == b"data":
            if fmt is None:
                return None
            rate, channels, align, subtype = fmt
            present = max(0, size - body)
            n = present if chunk_size in _UNSET_SIZES else min(chunk_size, present)
            return PcmLayout(body, n - n % align, align, rate, channels, subtype)
        offset = body + chunk_size + (chunk_size & 1)
    return None


def _pcm_format(raw: bytes) -> tuple[int, int, int, str] | None:
    """(rate, channels, block align, soundfile subtype) of a ``fmt `` chunk of PCM or float samples, else None."""
    if len(raw) < 16:
        return None
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", raw[:16])
    if tag == 0xFFFE and len(raw) >= 26:
        tag = struct.unpack("<H", raw[24:26])[0]
    subtype = _SUBTYPES.get((tag, bits))
    if subtype is None or channels <= 0 or rate <= 0 or align != channels * bits // 8:
        return None
    return rate, channels, align, subtype

"""Audio files that lie or are damaged, built with PyAV, for the tests that must not trust a header."""

from __future__ import annotations

import functools
import io
import struct
from typing import Any

import av
import numpy as np

MP3_RATE = 44_100
MP3_FRAME_SAMPLES = 1152


def tone(seconds: float, rate: int) -> np.ndarray:
    """A quiet 440 Hz sine, mono float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def mp3_bytes(seconds: float, rate: int = MP3_RATE) -> bytes:
    """A mono CBR MP3 of a sine, with the Xing/Info header LAME writes into its first frame."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream: Any = out.add_stream("libmp3lame", rate=rate, layout="mono")
        ctx = stream.codec_context
        resampler = av.AudioResampler(format=ctx.format.name, layout="mono", rate=rate, frame_size=ctx.frame_size)
        frame = av.AudioFrame.from_ndarray(tone(seconds, rate).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        n = 0
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            f.pts = n
            n += f.samples
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return buf.getvalue()


def lying_mp3(real_s: float = 120.0, claimed_frames: int = 23) -> bytes:
    """An MP3 that holds ``real_s`` of audio while its Xing/Info header counts ``claimed_frames`` frames.

    23 frames of 1152 samples at 44.1 kHz is 0.6 s: FFmpeg, and so the probe, believe the header.
    """
    data = mp3_bytes(real_s)
    tag = max(data.find(b"Xing"), data.find(b"Info"))
    assert tag > 0, "LAME wrote no Xing/Info header"
    flags = struct.unpack(">I", data[tag + 4 : tag + 8])[0]
    assert flags & 1, "the Xing/Info header carries no frame count"
    return data[: tag + 8] + struct.pack(">I", claimed_frames) + data[tag + 12 :]


def claimed_seconds(claimed_frames: int = 23) -> float:
    return claimed_frames * MP3_FRAME_SAMPLES / MP3_RATE


def damage(data: bytes, at: tuple[float, ...], length: int, seed: int = 1) -> bytes:
    """``data`` with ``length`` random bytes written at each fraction ``at`` of its size (its packet data)."""
    out = bytearray(data)
    rng = np.random.default_rng(seed)
    for frac in at:
        off = int(len(out) * frac)
        out[off : off + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    return bytes(out)

"""Files for the load and fault run: spoken clips in several formats, and a corpus of bad inputs.

Speech comes from espeak-ng, so the offline engine hears real words; other
formats are encoded with PyAV. Every bad input says whether a person should see
it fail (with a phrase its reason must contain) or be transcribed anyway (a
corrupt packet in the middle of an otherwise good file, a misleading extension).
"""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf

SENTENCES = (
    "The committee met on Tuesday to review the budget for the coming year.",
    "Rain fell softly over the harbour while the boats waited for the morning tide.",
    "Please remember to send the signed contract before the end of the week.",
    "Our latest release improves search results and makes the dashboard faster.",
    "The museum opens at nine and the guided tour starts every hour on the hour.",
    "She asked whether the train to the airport still leaves from platform four.",
)
FORMATS = ("wav", "flac", "mp3", "opus", "m4a")
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Clip:
    path: Path
    seconds: float
    text: str


@dataclass(frozen=True)
class BadInput:
    kind: str
    path: Path
    expect: str
    """``failed`` or ``done``."""
    phrase: str = ""
    """For ``failed``: a phrase the reason must contain (lower case)."""


def speak(text: str, dest: Path, rate: int = 160) -> Path:
    """espeak-ng speech as a 16 kHz mono wav."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed for speech (make setup installs it)")
    raw = dest.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", str(rate), "-w", str(raw), text], check=True, capture_output=True)
    audio, sr = sf.read(str(raw), dtype="float32")
    raw.unlink()
    if sr != SAMPLE_RATE:
        idx = np.linspace(0, len(audio) - 1, int(len(audio) * SAMPLE_RATE / sr))
        audio = np.interp(idx, np.arange(len(audio)), audio).astype(np.float32)
    sf.write(str(dest), audio, SAMPLE_RATE, subtype="PCM_16")
    return dest


def encode(samples: np.ndarray, dest: Path, fmt: str) -> Path:
    """Encode 16 kHz mono float32 into ``fmt`` (a real container with a real codec)."""
    if fmt == "wav":
        sf.write(str(dest), samples, SAMPLE_RATE, subtype="PCM_16")
        return dest
    if fmt == "flac":
        sf.write(str(dest), samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        return dest
    codec, container, rate = {"mp3": ("libmp3lame", "mp3", 16_000), "opus": ("libopus", "ogg", 48_000),
                              "m4a": ("aac", "mp4", 16_000)}[fmt]
    with av.open(str(dest), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        step = SAMPLE_RATE // 10
        for i in range(0, len(samples), step):
            frame = av.AudioFrame.from_ndarray(samples[np.newaxis, i:i + step].astype(np.float32), format="flt",
                                               layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for rf in resampler.resample(frame):
                for packet in stream.encode(rf):
                    out.mux(packet)
        for rf in resampler.resample(None):
            for packet in stream.encode(rf):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return dest


def clips(folder: Path, count: int, seed: int = 0) -> list[Clip]:
    """``count`` uploads of 3 to about 25 s of speech, in every format in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    bases: list[tuple[np.ndarray, str]] = []
    for k in range(4):
        text = " ".join(SENTENCES[(k + j) % len(SENTENCES)] for j in range(1 + 2 * k))
        path = speak(text, folder / f"base-{k}.wav")
        bases.append((sf.read(str(path), dtype="float32")[0], text))
    out = []
    for i in range(count):
        samples, text = bases[rng.randrange(len(bases))]
        fmt = FORMATS[i % len(FORMATS)]
        path = encode(samples, folder / f"upload-{i:04d}.{fmt}", fmt)
        out.append(Clip(path, len(samples) / SAMPLE_RATE, text))
    return out


def long_clip(folder: Path, minutes: float) -> Clip:
    """About ``minutes`` of speech with pauses, as one wav (the 1-hour overhead measurement)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = speak(" ".join(SENTENCES), folder / "long-base.wav")
    speech, _ = sf.read(str(base), dtype="float32")
    pause = np.zeros(SAMPLE_RATE * 2, dtype=np.float32)
    unit = np.concatenate([speech, pause])
    reps = int(np.ceil(minutes * 60 * SAMPLE_RATE / len(unit)))
    dest = folder / f"long-{minutes:g}min.wav"
    with sf.SoundFile(str(dest), "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        for _ in range(reps):
            f.write(unit)
    return Clip(dest, reps * len(unit) / SAMPLE_RATE, " ".join(SENTENCES))


def bad_inputs(folder: Path, max_audio_minutes: float) -> list[BadInput]:
    """At least fifteen kinds of bad input, each with what a person should see."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    tone = (0.1 * np.sin(np.linspace(0, 4000, SAMPLE_RATE * 5))).astype(np.float32)
    speech = speak(SENTENCES[0], folder / "speech.wav")
    speech_samples = sf.read(str(speech), dtype="float32")[0]
    good_wav = encode(tone, folder / "good.wav", "wav").read_bytes()
    mp3 = encode(speech_samples, folder / "speech.mp3", "mp3").read_bytes()
    cases: list[BadInput] = []

    def add(kind: str, name: str, data: bytes, expect: str = "failed", phrase: str = "") -> None:
        path = folder / name
        path.write_bytes(data)
        cases.append(BadInput(kind, path, expect, phrase))

    add("empty", "empty.wav", b"", phrase="empty")
    add("random_bytes", "random.wav", rng.integers(0, 256, 64_000, dtype=np.uint8).tobytes(),
        phrase="not a readable audio")
    add("text_as_mp3", "notes.mp3", b"These are meeting notes, not audio.\n" * 200, phrase="not a readable audio")
    add("json_as_m4a", "export.m4a", b'{"not": "audio", "rows": [1, 2, 3]}' * 100, phrase="not a readable audio")
    png = io.BytesIO()
    png.write(b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    add("image_as_wav", "photo.wav", png.getvalue(), phrase="no audio stream")
    add("truncated_wav", "truncated.wav", good_wav[: len(good_wav) // 2], phrase="truncated")
    add("header_only_wav", "header-only.wav", good_wav[:44], phrase="truncated")
    zero = io.BytesIO()
    sf.write(zero, np.zeros(0, dtype=np.float32), SAMPLE_RATE, format="WAV")
    add("zero_length_stream", "zero.wav", zero.getvalue(), phrase="no samples")
    huge = bytearray(good_wav)
    struct.pack_into("<I", huge, 4, 0xFFFFFFF0)   # RIFF size
    struct.pack_into("<I", huge, 40, 0xFFFFFFD0)  # data size: claims about 37 hours of 16 kHz audio
    add("huge_declared_size", "huge-header.wav", bytes(huge), phrase="truncated")
    too_long = io.BytesIO()
    sf.write(too_long, np.zeros(int(SAMPLE_RATE * 60 * (max_audio_minutes + 1)), dtype=np.int16), SAMPLE_RATE,
             format="WAV", subtype="PCM_16")
    add("too_long", "too-long.wav", too_long.getvalue(), phrase="limit")
    add("truncated_mp3", "truncated.mp3", mp3[: len(mp3) // 3], expect="done")
    corrupt = bytearray(mp3)
    mid = len(corrupt) // 2
    corrupt[mid:mid + 600] = rng.integers(0, 256, 600, dtype=np.uint8).tobytes()
    add("corrupt_packets_mid_file", "corrupt-middle.mp3", bytes(corrupt), expect="done")
    add("wrong_extension", "speech-really-mp3.wav", mp3, expect="done")
    video = folder / "video-only.mp4"
    with av.open(str(video), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    cases.append(BadInput("video_without_audio", video, "failed", "no audio stream"))
    midi = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x60MTrk\x00\x00\x00\x04\x00\xff\x2f\x00"
    add("unsupported_format_midi", "tune.mid", midi * 50, phrase="not a readable audio")
    add("lying_content_type_zip", "archive.flac", b"PK\x03\x04" + rng.integers(0, 256, 30_000, dtype=np.uint8).tobytes(),
        phrase="not a readable audio")
    return cases

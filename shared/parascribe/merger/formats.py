"""Transcript output formats: JSON, TXT, SRT, VTT and two CSVs. docs/outputs.md describes each.

Captions (SRT, VTT) follow common subtitle practice: at most
:data:`MAX_LINE_CHARS` characters a line, :data:`MAX_LINES` lines a cue, and
:data:`MAX_CUE_SECONDS` seconds a cue. A cue never spans two segments, so a cue
never runs across a long pause or a speaker change.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from parascribe import names
from parascribe.contracts import JobManifest, JobSummary, SourceRef, Word
from parascribe.merger.stitch import Transcript

MAX_LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_SECONDS = 7.0

FORMATS = names.OUTPUT_FORMATS
CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "words.csv": "text/csv; charset=utf-8",
    "segments.csv": "text/csv; charset=utf-8",
}
MAX_OBJECT_NAME_BYTES = 1024
"""GCS's limit on an object name, in bytes of UTF-8."""
_FORMAT_ROOM = 16  # bytes kept for ".<fmt>" (".segments.csv" is 13), so every format of a job is cut alike
_STEM_BYTES = 200  # what a shortened base name keeps
WORDS_CSV_COLUMNS = ("word", "start", "end", "confidence", "speaker")
SEGMENTS_CSV_COLUMNS = ("index", "start", "end", "speaker", "text")


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str] = field(default_factory=list)


def output_name(source_name: str, job_id: str, fmt: str) -> str:
    """Where one output goes in the transcripts bucket.

    ``<object path without extension>/<job_id>/<base name>.<fmt>``: uploads of
    ``talk.mp3`` give ``talk/<job_id>/talk.json`` and so on. The job id folder keeps
    two uploads of the same name (two generations) apart, and the outputs of one
    upload sit together next to the others of that name.

    A name that would pass GCS's :data:`MAX_OBJECT_NAME_BYTES` is shortened, the
    same way for every format of the job and on every call: the path and the base
    name are cut at a character boundary and each ends in ``~`` and a hash of the
    whole source name, so names that differ only past the cut stay apart; the job
    id and the extension are kept whole.
    """
    folder, _, base = source_name.rpartition("/")
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = stem or "audio"
    prefix = f"{folder}/{stem}" if folder else stem
    if len(f"{prefix}/{job_id}/{stem}".encode()) + _FORMAT_ROOM > MAX_OBJECT_NAME_BYTES:
        tag = "~" + hashlib.sha256(source_name.encode()).hexdigest()[:16]
        stem = _clip(stem, _STEM_BYTES) + tag
        room = MAX_OBJECT_NAME_BYTES - _FORMAT_ROOM - len(f"/{job_id}/{stem}{tag}".encode())
        prefix = _clip(prefix, max(0, room)).rstrip("/") + tag
    return f"{prefix}/{job_id}/{stem}.{fmt}"


def _clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def _t(x: float) -> float:
    return round(x, 3)


def _word_json(w: Word) -> dict[str, Any]:
    d: dict[str, Any] = {"text": w.text, "start": _t(w.start), "end": _t(w.end), "confidence": round(w.confidence, 4)}
    if w.speaker is not None:
        d["speaker"] = w.speaker
    return d


NO_SPEECH_NOTE = "no speech detected: the whole file was skipped as silence, music or noise"


def to_json(transcript: Transcript, job_id: str, source: SourceRef | None, summary: JobSummary) -> bytes:
    """The full transcript: words, segments and job metadata (engines, cost, savings)."""
    segments = []
    for i, s in enumerate(transcript.segments):
        d: dict[str, Any] = {"index": i, "start": _t(s.start), "end": _t(s.end), "text": s.text}
        if s.speaker is not None:
            d["speaker"] = s.speaker
        segments.append(d)
    doc = {
        "schema_version": 1,
        "job_id": job_id,
        "source": {"uri": source.uri, "bucket": source.bucket, "name": source.name, "generation": source.generation}
        if source
        else None,
        "duration_s": _t(transcript.duration_s),
        "text": transcript.text,
        "segments": segments,
        "words": [_word_json(w) for w in transcript.words],
        "metadata": {
            "engines": summary.engines,
            "chunk_count": summary.chunks,
            "word_count": len(transcript.words),
            "audio_seconds": summary.duration_s,
            "processing_seconds": summary.processing_seconds,
            "cost_usd": summary.cost_usd,
            "cost_by_method": summary.cost_by_method,
            "deepgram_only_usd": summary.deepgram_only_usd,
            "savings_usd": summary.savings_usd,
            "fallbacks": summary.fallbacks,
            "corrupt_packets": summary.corrupt_packets,
            "speech_seconds": summary.speech_s,
            "skipped_seconds": summary.skipped_s,
            "language": summary.language,
        },
    }
    if summary.skipped_s > 0 and summary.speech_s == 0:
        metadata: dict[str, Any] = doc["metadata"]  # type: ignore[assignment]
        metadata["note"] = NO_SPEECH_NOTE
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def to_txt(transcript: Transcript) -> bytes:
    """One segment a line; ``Speaker N:`` where the speaker changes (diarised audio only)."""
    lines = []
    prev: int | None = None
    for s in transcript.segments:
        if s.speaker is not None and s.speaker != prev:
            lines.append(f"Speaker {s.speaker}: {s.text}")
        else:
            lines.append(s.text)
        prev = s.speaker
    return ("\n".join(lines) + "\n").encode() if lines else b""


def to_words_csv(transcript: Transcript) -> bytes:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(WORDS_CSV_COLUMNS)
    for w in transcript.words:
        out.writerow([w.text, f"{w.start:.3f}", f"{w.end:.3f}", f"{w.confidence:.4f}", "" if w.speaker is None else w.speaker])
    return buf.getvalue().encode()


def to_segments_csv(transcript: Transcript) -> bytes:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(SEGMENTS_CSV_COLUMNS)
    for i, s in enumerate(transcript.segments):
        out.writerow([i, f"{s.start:.3f}", f"{s.end:.3f}", "" if s.speaker is None else s.speaker, s.text])
    return buf.getvalue().encode()


def _tokens(words: list[Word]) -> list[tuple[str, float, float]]:
    """Word texts for captions; a word longer than a line is cut into line-sized pieces."""
    out = []
    for w in words:
        text = " ".join(w.text.split())
        if not text:
            continue
        if len(text) <= MAX_LINE_CHARS:
            out.append((text, w.start, w.end))
            continue
        pieces = [text[i : i + MAX_LINE_CHARS] for i in range(0, len(text), MAX_LINE_CHARS)]
        step = (w.end - w.start) / len(pieces)
        out.extend((p, w.start + k * step, w.start + (k + 1) * step) for k, p in enumerate(pieces))
    return out


def build_cues(transcript: Transcript) -> list[Cue]:
    """Caption cues within the line, line-count and duration limits, never overlapping."""
    cues: list[Cue] = []
    for i in range(len(transcript.segments)):
        cue: Cue | None = None
        for text, start, end in _tokens(transcript.segment_words(i)):
            if cue is not None and end - cue.start > MAX_CUE_SECONDS:
                cues.append(cue)
                cue = None
            if cue is None:
                cue = Cue(start=start, end=end, lines=[text])
                continue
            last = cue.lines[-1]
            if len(last) + 1 + len(text) <= MAX_LINE_CHARS:
                cue.lines[-1] = f"{last} {text}"
            elif len(cue.lines) < MAX_LINES:
                cue.lines.append(text)
            else:
                cues.append(cue)
                cue = Cue(start=start, end=end, lines=[text])
                continue
            cue.end = max(cue.end, end)
        if cue is not None:
            cues.append(cue)
    for k, c in enumerate(cues):
        c.end = min(c.end, c.start + MAX_CUE_SECONDS)
        if k + 1 < len(cues):
            c.end = min(c.end, cues[k + 1].start)
        c.end = max(c.end, c.start)
    return cues


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(transcript: Transcript) -> bytes:
    blocks = []
    for n, c in enumerate(build_cues(transcript), start=1):
        times = f"{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}"
        blocks.append(f"{n}\n{times}\n" + "\n".join(c.lines) + "\n")
    return "\n".join(blocks).encode()


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(transcript: Transcript) -> bytes:
    blocks = ["WEBVTT\n"]
    for c in build_cues(transcript):
        times = f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}"
        blocks.append(f"{times}\n" + "\n".join(_vtt_escape(line) for line in c.lines) + "\n")
    return "\n".join(blocks).encode()


def render_all(transcript: Transcript, manifest: JobManifest, summary: JobSummary) -> dict[str, bytes]:
    """Every output format, keyed by its name in :data:`FORMATS`."""
    return {
        "json": to_json(transcript, manifest.job_id, manifest.source, summary),
        "txt": to_txt(transcript),
        "srt": to_srt(transcript),
        "vtt": to_vtt(transcript),
        "words.csv": to_words_csv(transcript),
        "segments.csv": to_segments_csv(transcript),
    }

"""Output formats, parsed back: captions within limits, CSV and JSON round trips."""

from __future__ import annotations

import csv
import io
import json
import random
import re

import pytest

from parascribe.contracts import JobSummary, SourceRef, Word
from parascribe.merger.formats import (
    FORMATS,
    MAX_CUE_SECONDS,
    MAX_LINE_CHARS,
    MAX_LINES,
    output_name,
    render_all,
    to_json,
    to_segments_csv,
    to_srt,
    to_txt,
    to_vtt,
    to_words_csv,
)
from parascribe.merger.stitch import SegmentRules, Transcript, build_segments
from tests.unit.test_stitch import manifest_for

_TS = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"


def seconds(m: re.Match[str], k: int) -> float:
    h, mi, s, ms = (int(m.group(k + i)) for i in range(4))
    return h * 3600 + mi * 60 + s + ms / 1000


def parse_captions(text: str, vtt: bool) -> list[tuple[float, float, list[str]]]:
    """A small SRT/VTT reader: (start, end, lines) per cue."""
    if vtt:
        assert text.startswith("WEBVTT\n\n")
        text = text[len("WEBVTT\n\n"):]
    cues = []
    for n, block in enumerate(text.strip("\n").split("\n\n"), start=1):
        lines = block.split("\n")
        if not vtt:
            assert lines.pop(0) == str(n)
        m = re.fullmatch(_TS + " --> " + _TS, lines[0])
        assert m, lines[0]
        cues.append((seconds(m, 1), seconds(m, 5), lines[1:]))
    return cues


def transcript_of(words: list[Word]) -> Transcript:
    segments, spans = build_segments(words, SegmentRules())
    return Transcript(words=words, segments=segments, spans=spans, duration_s=words[-1].end if words else 0.0)


def speech(n: int, seed: int = 3) -> list[Word]:
    rng = random.Random(seed)
    vocab = ["we", "shipped", "the", "new", "pipeline", "yesterday", "and", "it", "works", "internationalisation",
             "R&D", "<b>", "okay."]
    words, t = [], 0.0
    for _ in range(n):
        d = rng.uniform(0.1, 0.7)
        words.append(Word(text=rng.choice(vocab), start=t, end=t + d, confidence=rng.uniform(0.5, 1),
                          speaker=rng.choice([None, None, 0, 1]) if n > 50 else None))
        t += d + rng.choice([0.05, 0.1, 0.2, 1.0])
    return words


@pytest.mark.parametrize("vtt", [False, True])
def test_captions_respect_limits_and_keep_every_word(vtt: bool) -> None:
    words = speech(800)
    t = transcript_of(words)
    raw = (to_vtt(t) if vtt else to_srt(t)).decode()
    cues = parse_captions(raw, vtt)
    assert cues
    text_back = []
    prev_end = 0.0
    for start, end, lines in cues:
        assert 1 <= len(lines) <= MAX_LINES
        for line in lines:
            shown = line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") if vtt else line
            assert 0 < len(shown) <= MAX_LINE_CHARS
            text_back.extend(shown.split(" "))
        assert start <= end <= start + MAX_CUE_SECONDS + 1e-3
        assert start >= prev_end - 1e-3, "cues overlap"
        prev_end = end
    assert text_back == [w.text for w in words]
    if vtt:
        assert "R&amp;D" in raw and "&lt;b&gt;" in raw


def test_long_word_is_cut_to_fit_a_line() -> None:
    url = "https://example.com/" + "x" * 100
    t = transcript_of([Word(text="see", start=0, end=0.3), Word(text=url, start=0.4, end=2.0)])
    cues = parse_captions(to_srt(t).decode(), vtt=False)
    lines = [line for _, _, ls in cues for line in ls]
    assert all(len(line) <= MAX_LINE_CHARS for line in lines)
    assert "".join(lines).replace("see", "", 1).replace(" ", "") == url


def test_srt_timestamps_are_exact() -> None:
    t = transcript_of([Word(text="hi", start=3725.0456, end=3726.5)])
    assert to_srt(t).decode() == "1\n01:02:05,046 --> 01:02:06,500\nhi\n"
    assert to_vtt(t).decode() == "WEBVTT\n\n01:02:05.046 --> 01:02:06.500\nhi\n"


def test_words_and_segments_csv_round_trip() -> None:
    words = speech(120)
    words[5] = Word(text='say "hi", ok', start=words[5].start, end=words[5].end, confidence=0.5)
    t = transcript_of(words)
    rows = list(csv.DictReader(io.StringIO(to_words_csv(t).decode())))
    assert list(rows[0].keys()) == ["word", "start", "end", "confidence", "speaker"]
    assert [r["word"] for r in rows] == [w.text for w in words]
    for r, w in zip(rows, words, strict=True):
        assert float(r["start"]) == pytest.approx(w.start, abs=5e-4)
        assert float(r["end"]) == pytest.approx(w.end, abs=5e-4)
        assert float(r["confidence"]) == pytest.approx(w.confidence, abs=5e-5)
        assert r["speaker"] == ("" if w.speaker is None else str(w.speaker))
    segs = list(csv.DictReader(io.StringIO(to_segments_csv(t).decode())))
    assert list(segs[0].keys()) == ["index", "start", "end", "speaker", "text"]
    assert [s["text"] for s in segs] == [s.text for s in t.segments]
    assert [int(s["index"]) for s in segs] == list(range(len(t.segments)))


def test_json_and_txt() -> None:
    words = speech(45)  # no speakers
    t = transcript_of(words)
    summary = JobSummary(duration_s=40.0, chunks=2, engines=["deepgram", "parakeet"], cost_usd=0.01,
                         cost_by_method={"gpu": 0.002, "deepgram": 0.008}, deepgram_only_usd=0.02, savings_usd=0.01)
    src = SourceRef(bucket="uploads", name="a/talk.mp3", generation="7", size=10)
    doc = json.loads(to_json(t, "j1", src, summary))
    assert doc["job_id"] == "j1" and doc["source"]["uri"] == "gs://uploads/a/talk.mp3"
    assert [w["text"] for w in doc["words"]] == [w.text for w in words]
    assert all(set(w) >= {"start", "end", "confidence"} for w in doc["words"])
    assert doc["metadata"]["engines"] == ["deepgram", "parakeet"]
    assert doc["metadata"]["cost_by_method"] == {"gpu": 0.002, "deepgram": 0.008}
    assert doc["metadata"]["savings_usd"] == 0.01 and doc["metadata"]["chunk_count"] == 2
    assert doc["text"] == " ".join(w.text for w in words)
    assert to_txt(t).decode().splitlines() == [s.text for s in t.segments]


def test_txt_names_speakers_when_they_change() -> None:
    words = [Word(text="hello.", start=0, end=0.5, speaker=0), Word(text="hi.", start=0.6, end=1, speaker=1),
             Word(text="bye.", start=1.1, end=1.4, speaker=1)]
    assert to_txt(transcript_of(words)).decode() == "Speaker 0: hello.\nSpeaker 1: hi.\nbye.\n"


def test_empty_transcript_renders_every_format() -> None:
    manifest = manifest_for([], 5.0, 1.0)
    out = render_all(Transcript(words=[], segments=[], duration_s=5.0), manifest, JobSummary())
    assert set(out) == set(FORMATS)
    assert out["vtt"] == b"WEBVTT\n"
    assert out["srt"] == b"" and out["txt"] == b""
    assert json.loads(out["json"])["words"] == []


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("talk.mp3", "talk/j1/talk.json"),
        ("meetings/2026/q1.review.m4a", "meetings/2026/q1.review/j1/q1.review.json"),
        ("noext", "noext/j1/noext.json"),
        (".hidden", ".hidden/j1/.hidden.json"),
    ],
)
def test_output_names_are_unique_per_job(name: str, want: str) -> None:
    assert output_name(name, "j1", "json") == want
    assert output_name(name, "j1", "json") != output_name(name, "j2", "json")


def test_corrupt_packets_are_summed_and_shown_in_the_json_metadata() -> None:
    from parascribe.contracts import AudioInfo, ChunkResult, JobManifest
    from parascribe.costs import Prices
    from parascribe.merger.summary import summarise

    manifest = JobManifest(job_id="j1", source=SourceRef(bucket="uploads", name="a.mp3", generation="1", size=10),
                           audio=AudioInfo(duration_s=40.0, sample_rate=44_100, channels=1, codec="mp3",
                                           container="mp3"),
                           method="gpu", deadline_minutes=60.0, chunks=[])
    results = [ChunkResult(job_id="j1", chunk_index=i, n_chunks=2, engine="parakeet", path="gpu", audio_seconds=20,
                           processing_seconds=1, corrupt_packets=n) for i, n in enumerate([3, 4])]
    summary = summarise(manifest, results, Prices(deepgram_per_second=0.0001, gpu_instance_per_second=0.0002))
    assert summary.corrupt_packets == 7
    doc = json.loads(to_json(transcript_of(speech(5)), "j1", manifest.source, summary))
    assert doc["metadata"]["corrupt_packets"] == 7
    assert json.loads(to_json(transcript_of(speech(5)), "j1", None, JobSummary()))["metadata"]["corrupt_packets"] == 0


LONG_NAME = "録音/" + "会議の記録" * 198 + "議事録.mp3"  # 1,000 characters, 2,990 bytes of UTF-8
JOB = "j" + "a" * 20


def test_an_output_name_past_gcs_s_limit_is_shortened_deterministically() -> None:
    assert len(LONG_NAME) == 1000
    names = {fmt: output_name(LONG_NAME, JOB, fmt) for fmt in FORMATS}
    for fmt, name in names.items():
        assert len(name.encode()) <= 1024, (fmt, len(name.encode()))
        assert name.endswith(f"/{JOB}/" + name.rsplit("/", 1)[1]) and name.endswith("." + fmt)
        assert name == output_name(LONG_NAME, JOB, fmt)  # the same every time: a retry writes the same object
        name.encode().decode()  # never cut inside a character
    assert len({n.rsplit("/", 1)[0] for n in names.values()}) == 1  # one job's outputs share one folder
    other = output_name(LONG_NAME[:-5] + "X.mp3", JOB, "json")
    assert other != names["json"]  # names differing only past the cut stay apart
    assert output_name(LONG_NAME, "j" + "b" * 20, "json") != names["json"]
    assert output_name("talk.mp3", JOB, "json") == f"talk/{JOB}/talk.json"  # short names are untouched


def test_every_format_of_a_job_is_shortened_alike_or_not_at_all() -> None:
    for length in range(480, 520):
        name = "a" * length + ".wav"
        outs = [output_name(name, JOB, fmt) for fmt in FORMATS]
        assert all(len(o.encode()) <= 1024 for o in outs)
        assert len({o.rsplit("/", 1)[0] for o in outs}) == 1, length  # never split across two folders
        assert len({o.rsplit("/", 1)[1].split(".")[0] for o in outs}) == 1, length
    assert output_name("a" * 480 + ".wav", JOB, "json") == f"{'a' * 480}/{JOB}/{'a' * 480}.json"

"""What a job amounted to: duration, words, engines, cost and savings against all-Deepgram."""

from __future__ import annotations

from collections.abc import Sequence

from parascribe.contracts import ChunkResult, JobManifest, JobSummary
from parascribe.costs import Prices
from parascribe.merger.stitch import Transcript


def chunk_cost(result: ChunkResult, prices: Prices) -> float:
    """USD spent on one chunk: GPU instance time on the GPU path, billed audio on Deepgram."""
    if result.path == "deepgram":
        return prices.deepgram(result.billed_seconds or result.audio_seconds)
    return prices.gpu(result.processing_seconds)


def summarise(
    manifest: JobManifest | None,
    results: Sequence[ChunkResult],
    prices: Prices,
    transcript: Transcript | None = None,
    complete: bool = True,
) -> JobSummary:
    """Summarise a finished (or failed) job from its stored chunk results.

    ``corrupt_packets`` sums the packets the chunks skipped because they would not decode.
    ``speech_s`` and ``skipped_s`` sum, over the transcribed chunks, the seconds sent to an
    engine and those left out as non-speech (a chunk that did not measure it sent all of its audio;
    overlaps count once per chunk, as in ``processing_seconds``).
    Cost is what the chunks actually cost; ``deepgram_only_usd`` is what the whole
    file would have cost on Deepgram alone, and savings are the difference
    (negative if the GPU path cost more; zero for a job that did not complete,
    since nothing was delivered to compare against).
    """
    by_method: dict[str, float] = {}
    engines: list[str] = []
    for r in results:
        by_method[r.path] = by_method.get(r.path, 0.0) + chunk_cost(r, prices)
        if r.engine not in engines:
            engines.append(r.engine)
    cost = sum(by_method.values())
    done = [r for r in results if r.error is None]
    duration = manifest.audio.duration_s if manifest else 0.0
    deepgram_only = prices.deepgram(duration) if manifest else 0.0
    return JobSummary(
        duration_s=round(duration, 3),
        word_count=len(transcript.words) if transcript else 0,
        segment_count=len(transcript.segments) if transcript else 0,
        chunks=manifest.n_chunks if manifest else 0,
        engines=sorted(engines),
        processing_seconds=round(sum(r.processing_seconds for r in results), 3),
        cost_usd=round(cost, 6),
        cost_by_method={k: round(v, 6) for k, v in sorted(by_method.items())},
        deepgram_only_usd=round(deepgram_only, 6),
        savings_usd=round(deepgram_only - cost, 6) if manifest and complete else 0.0,
        fallbacks=sum(1 for r in results if r.fallback_reason),
        corrupt_packets=sum(r.corrupt_packets for r in results),
        speech_s=round(sum(r.audio_seconds if r.speech_s is None else r.speech_s for r in done), 3),
        skipped_s=round(sum(r.skipped_s for r in done), 3),
        language=manifest.language if manifest else None,
    )

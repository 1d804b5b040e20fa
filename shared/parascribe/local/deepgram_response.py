"""Deepgram's pre-recorded response shape, built from words, for the local Deepgram-compatible server."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from parascribe.contracts import Word

# The id the real API reports for nova-3; clients only echo it.
_MODEL_IDS = {"nova-3": "2187e11a-3532-4498-b076-81fa530bdd49"}
_TRUE = {"true", "1", "yes"}
_WORD_CHARS = re.compile(r"[^\w'’-]+", re.UNICODE)


def _flag(params: dict[str, str], name: str) -> bool:
    return params.get(name, "").lower() in _TRUE


def _plain(text: str) -> str:
    return _WORD_CHARS.sub("", text).lower()


def _word_json(w: Word, punctuated: bool, diarize: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "word": _plain(w.text) or w.text.lower(),
        "start": round(w.start, 3),
        "end": round(w.end, 3),
        "confidence": round(w.confidence, 4),
    }
    if punctuated:
        out["punctuated_word"] = w.text
    if diarize:
        out["speaker"] = 0
        out["speaker_confidence"] = 1.0
    return out


def _split(words: list[Word], gap_s: float) -> list[list[Word]]:
    """Group words into utterances at pauses of at least ``gap_s``."""
    groups: list[list[Word]] = []
    for w in words:
        if groups and w.start - groups[-1][-1].end < gap_s:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


def build_response(
    words: list[Word], duration_s: float, params: dict[str, str], request_id: str, sha256: str
) -> dict[str, Any]:
    """A pre-recorded response body in Deepgram's shape for ``words``."""
    punctuated = _flag(params, "punctuate") or _flag(params, "smart_format")
    diarize = _flag(params, "diarize") or bool(params.get("diarize_model"))
    model = params.get("model", "nova-3") or "nova-3"
    model_id = _MODEL_IDS.get(model, str(uuid.uuid5(uuid.NAMESPACE_URL, model)))
    shown = [w.text if punctuated else (_plain(w.text) or w.text.lower()) for w in words]
    transcript = " ".join(shown)
    confidence = sum(w.confidence for w in words) / len(words) if words else 0.0
    alternative: dict[str, Any] = {
        "transcript": transcript,
        "confidence": round(confidence, 4),
        "words": [_word_json(w, punctuated, diarize) for w in words],
    }
    groups = _split(words, float(params.get("utt_split", "0.8") or 0.8))
    if _flag(params, "paragraphs"):
        alternative["paragraphs"] = {
            "transcript": "\n" + "\n\n".join(" ".join(w.text for w in g) for g in groups) if words else "",
            "paragraphs": [
                {
                    "sentences": [{"text": " ".join(w.text for w in g), "start": g[0].start, "end": g[-1].end}],
                    "num_words": len(g),
                    "start": g[0].start,
                    "end": g[-1].end,
                    **({"speaker": 0} if diarize else {}),
                }
                for g in groups
            ],
        }
    results: dict[str, Any] = {"channels": [{"alternatives": [alternative]}]}
    if _flag(params, "utterances"):
        results["utterances"] = [
            {
                "start": g[0].start,
                "end": g[-1].end,
                "confidence": round(sum(w.confidence for w in g) / len(g), 4),
                "channel": 0,
                "transcript": " ".join(w.text if punctuated else _plain(w.text) for w in g),
                "words": [_word_json(w, punctuated, diarize) for w in g],
                "speaker": 0,
                "id": str(uuid.uuid4()),
            }
            for g in groups
        ]
    return {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": request_id,
            "sha256": sha256,
            "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "duration": round(duration_s, 6),
            "channels": 1,
            "models": [model_id],
            "model_info": {model_id: {"name": f"{model}-local", "version": "local", "arch": "offline"}},
        },
        "results": results,
    }

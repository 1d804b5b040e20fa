"""What ``make demo`` prints of the local receiver's deliveries, and the note it adds for the CPU stand-in."""

from __future__ import annotations

import json
from pathlib import Path

from parascribe.local.webhook_receiver import OFFLINE_COST_NOTE, show


def _log(path: Path, *engines: list[str]) -> Path:
    path.write_text("".join(json.dumps({"verified": True, "status": "done", "job_id": f"j{i}", "body": {
        "summary": {"engines": e, "savings_usd": -0.001}}}) + "\n" for i, e in enumerate(engines)))
    return path


def test_deliveries_are_listed_and_the_offline_engine_gets_a_cost_note(tmp_path: Path) -> None:
    text = show(_log(tmp_path / "a.jsonl", ["offline"], ["deepgram"]))
    lines = text.splitlines()
    assert lines[0].startswith("webhook done for job j0 (signature verified); summary: ")
    assert lines[1].startswith("webhook done for job j1") and lines[2] == OFFLINE_COST_NOTE and len(lines) == 3
    assert OFFLINE_COST_NOTE not in show(_log(tmp_path / "b.jsonl", ["deepgram"], ["parakeet"]))
    assert "no webhook deliveries" in show(tmp_path / "missing.jsonl")

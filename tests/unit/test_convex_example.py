"""The Convex example ignores a repeated ``webhook-id``: webhooks are delivered at least once.

Runs ``examples/convex/scripts/dedupe-test.ts`` in Node: it posts signed webhooks to the
example's HTTP action, whose mutation works on an in-memory stand-in for ``ctx.db``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

CONVEX = Path(__file__).resolve().parents[2] / "examples" / "convex"


def test_the_convex_example_ignores_a_repeated_webhook_id(tmp_path: Path) -> None:
    esbuild = CONVEX / "node_modules" / ".bin" / "esbuild"
    if shutil.which("node") is None or not esbuild.exists():
        pytest.skip("needs node and `make convex-deps` (npm ci in examples/convex) to run the Convex example")
    bundle = tmp_path / "dedupe-test.cjs"
    subprocess.run([str(esbuild), "scripts/dedupe-test.ts", "--bundle", "--platform=node", f"--outfile={bundle}",
                    "--log-level=warning"], cwd=CONVEX, check=True, timeout=60)
    run = subprocess.run(["node", str(bundle)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True
    assert report["outcomes"] == ["applied", "duplicate", "duplicate", "applied"]
    assert report["processed"] == [["j1", 3], ["j2", 1]]

"""The load and fault benchmark, small: every upload ends exactly once, with a webhook, through faults.

Runs ``bench/pipeline_load.py --quick`` (its own stack: 3 clean uploads, then 12 with SIGKILLed
services, a webhook receiver that goes away, duplicate notifications, poison messages on every
topic and sixteen kinds of bad input) and checks the targets it reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.load]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "pipeline_load.py"


def test_quick_load_and_fault_run_meets_every_target() -> None:
    if shutil.which("gcloud") is None or shutil.which("java") is None:
        pytest.skip("the Pub/Sub emulator needs gcloud and java on PATH; the load run cannot start a stack")
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=1500,
                          check=False)
    assert proc.stdout.strip().startswith("{"), f"no report; stderr:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)
    print(json.dumps({k: report[k] for k in ("baseline", "faults", "targets")}, indent=2))
    faults = report["faults"]
    assert faults["uploads"] == 12 + len(report["bad_inputs"]) and len(report["bad_inputs"]) >= 15
    assert sum(faults["kills"].values()) == 3, faults["kills"]
    assert sum(faults["restarts_seen"].values()) >= 3, faults["restarts_seen"]
    assert faults["duplicate_notifications"] >= 1 and faults["poison_messages"] >= 20
    failed_targets = [name for name, ok in report["targets"].items() if not ok]
    assert failed_targets == [], f"{failed_targets}: {json.dumps(report, indent=2)[-6000:]}"
    assert proc.returncode == 0

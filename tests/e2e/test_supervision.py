"""The local stack survives what Cloud Run survives: a service killed mid-job is restarted and the job ends.

And the CLI says what is wrong, never a traceback, when there is no stack or part of one is down.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.test_pipeline import job_status
from tests.speech import speak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENTENCE = "Every upload ends done or failed exactly once, even when a worker is killed in the middle of a job."


def part(stack: Stack, name: str) -> dict[str, object]:
    return dict(stack.state()["parts"][name])


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.mark.parametrize("service", ["asr_worker", "merger"])
def test_a_service_killed_mid_job_is_restarted_and_the_job_ends_once(
    stack: Stack, tmp_path: Path, service: str
) -> None:
    clip = speak(SENTENCE, tmp_path / f"killed-{service}.wav")
    before = part(stack, service)
    proc = stack.cli("submit", "--json", str(clip), timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id = json.loads(proc.stdout.splitlines()[-1])["job_id"]
    time.sleep(1.0)
    os.killpg(int(before["pid"]), signal.SIGKILL)  # type: ignore[call-overload]

    wait_until(lambda: part(stack, service)["restarts"] == int(before["restarts"]) + 1  # type: ignore[call-overload]
               and part(stack, service)["state"] == "running", 60, f"{service} to be restarted")
    assert part(stack, service)["last_exit"] == -signal.SIGKILL
    wait_until(lambda: job_status(stack, job_id)["state"] in ("done", "failed"), 400, f"job {job_id} to end")
    status = job_status(stack, job_id)
    assert status["state"] == "done", status
    webhooks = [w for w in stack.webhooks() if w.get("job_id") == job_id]
    assert len(webhooks) >= 1 and all(w["verified"] for w in webhooks), webhooks
    table = stack.cli("status", timeout=60)
    row = next(line for line in table.stdout.splitlines() if line.startswith(service))
    assert row.split()[1] == "running" and int(row.split()[3]) >= 1, table.stdout


def test_the_cli_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST",
                                                            "PARASCRIBE_TARGET")}
    env["PARASCRIBE_HOME"] = str(tmp_path / "nothing-here")
    for args in (["status"], ["submit", __file__], ["metrics"]):
        proc = Stack(home=tmp_path, env=env).cli(*args, timeout=60)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "no local stack is running" in proc.stderr and "parascribe up --detach" in proc.stderr
        assert "PARASCRIBE_TARGET=gcp" in proc.stderr


def test_a_stack_whose_supervisor_died_is_reported_not_used(tmp_path: Path) -> None:
    home = tmp_path / "dead-stack"
    home.mkdir()
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    (home / "stack.json").write_text(json.dumps({
        "home": str(home), "project": "p", "pubsub_host": "127.0.0.1:9", "storage_host": "http://127.0.0.1:9",
        "supervisor_pid": gone, "ready": True,
    }))
    env = {**os.environ, "PARASCRIBE_HOME": str(home)}
    proc = Stack(home=home, env=env).cli("status", timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is not running (its supervisor exited" in proc.stderr and "parascribe down" in proc.stderr

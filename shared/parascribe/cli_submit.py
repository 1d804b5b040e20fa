"""``parascribe submit``, ``cancel`` and ``transcript``: a job's life from the client side.

``submit`` uploads local files into the uploads bucket and sends URLs to the API; ``cancel`` and
``transcript`` go through the API (the local stack's, or ``PARASCRIBE_API_URL``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parascribe.config import Settings
    from parascribe.gcp.storage import GcsStore
    from parascribe.jobs import JobStore


def submit(args: argparse.Namespace, clients: Callable[[], tuple[Settings, GcsStore, JobStore]]) -> int:
    """``parascribe submit``: files are uploaded to the bucket, URLs go through the API."""
    urls = [f for f in args.files if f.startswith(("http://", "https://"))]
    files = [f for f in args.files if f not in urls]
    code = _submit_urls(args, urls) if urls else 0
    return max(code, _submit_files(args, files, clients) if files else 0)


def _submit_urls(args: argparse.Namespace, urls: list[str]) -> int:
    """URLs go through the API: the ingest worker fetches them into the uploads bucket."""
    from parascribe import sdk

    client = sdk.connect()
    jobs = [(url, sdk.submit(url, method=args.method, deadline_minutes=args.deadline_minutes,
                                  language=getattr(args, "language", None), client=client))
            for url in urls]
    failed = False
    for url, job in jobs:
        if not args.wait:
            print(json.dumps({"url": url, "job_id": job.id}) if args.json else f"{job.id}  {url}")
            continue
        try:
            status = job.wait(timeout=args.timeout)
        except TimeoutError as err:
            status = {"state": "timeout", "reason": str(err)}
        failed |= status.get("state") != "done"
        text = job.output("txt").decode() if status.get("state") == "done" else None
        record: dict[str, Any] = {"url": url, "request_id": job.id, "job_id": status.get("job_id"), "status": status.get("state"),
                  "reason": status.get("reason"), "text": text, "outputs": status.get("outputs") or {},
                  "engines": status.get("engines") or []}
        if args.json:
            print(json.dumps(record))
        else:
            print(f"{url}: {record['status']}" + (f" ({record['reason']})" if record["reason"] else ""))
            for fmt, uri in sorted(record["outputs"].items()):
                print(f"  {fmt:<13} {uri}")
            if text:
                print(text.strip())
    return 1 if failed else 0


def _submit_files(args: argparse.Namespace, files: list[str],
                  clients: Callable[[], tuple[Settings, GcsStore, JobStore]]) -> int:
    from tqdm import tqdm

    from parascribe.client import result_record, transcript_text, upload, wait_for

    settings, store, jobs = clients()
    subs = [upload(store.client, settings, Path(f), args.method, args.deadline_minutes,
                   getattr(args, "language", None)) for f in files]
    if not args.wait:
        for sub in subs:
            print(json.dumps({"file": str(sub.file), "job_id": sub.job_id, "source": sub.uri}) if args.json
                  else f"{sub.job_id}  {sub.uri}")
        return 0
    # Chunks finish in bursts, so a rate would mislead: show done/total, elapsed time and the state.
    fmt = "{desc}: {n_fmt}/{total_fmt} chunks |{bar}| {elapsed} {postfix}"
    bars = {s.job_id: tqdm(total=None, desc=s.file.name, bar_format=fmt, disable=None, file=sys.stderr) for s in subs}

    def progress(job_id: str, status: object) -> None:
        from parascribe.contracts import JobStatus

        bar = bars[job_id]
        if isinstance(status, JobStatus):
            bar.total = max(status.chunks_total, 1)
            bar.n = status.chunks_total if status.state == "done" else status.chunks_done
            bar.set_postfix_str(status.state)
            bar.refresh()

    statuses = wait_for(jobs, [s.job_id for s in subs], args.timeout, progress)
    for bar in bars.values():
        bar.close()
    failed = False
    for sub in subs:
        status = statuses[sub.job_id]
        text = transcript_text(store, status) if status and status.state == "done" else None
        record = result_record(sub, status, text, timed_out=True)
        failed |= record["status"] != "done"
        if args.json:
            print(json.dumps(record))
        else:
            print(f"{sub.file}: {record['status']}" + (f" ({record['reason']})" if record["reason"] else ""))
            if status is not None:
                engines = ", ".join(status.engines) or "-"
                print(f"  job {status.job_id}: {status.chunks_total} chunk(s), engines: {engines}")
            for fmt, uri in sorted(dict(record["outputs"]).items()):  # type: ignore[call-overload]
                print(f"  {fmt:<13} {uri}")
            if text:
                print(text.strip())
    return 1 if failed else 0


def cancel(args: argparse.Namespace) -> int:
    """``parascribe cancel ID``: through the API (the local stack's, or PARASCRIBE_API_URL)."""
    from parascribe import sdk

    answer = sdk.Job(sdk.connect(), args.job_id).cancel()
    print(json.dumps(answer) if args.json else f"{args.job_id}: cancel requested; {answer.get('note')}")
    return 0


def transcript(args: argparse.Namespace) -> int:
    """``parascribe transcript ID``: one output of a done job, to stdout or a file, through the API."""
    from parascribe import sdk

    data = sdk.Job(sdk.connect(), args.job_id).output(args.format)
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(args.output).write_bytes(data)
        print(f"{args.job_id}: {args.format} written to {args.output} ({len(data):,} bytes)", file=sys.stderr)
    return 0

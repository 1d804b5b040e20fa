"""A local stand-in for the user's Convex HTTP action: it verifies signed webhooks.

The local stack starts it when no ``CONVEX_WEBHOOK_URL`` is set. Each delivery
is appended to a JSON-lines file with whether its signature verified, so the demo
and the tests can show the webhook arriving, and arriving once.

    python -m parascribe.local.webhook_receiver --port 8099 --log webhooks.jsonl
    python -m parascribe.local.webhook_receiver --show webhooks.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from flask import Flask, Response, request

from parascribe.errors import PermanentError
from parascribe.merger.webhook import verify


def create_app(secret: str, log_path: Path) -> Flask:
    app = Flask("webhook_receiver")
    lock = threading.Lock()

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok")

    @app.post("/parascribe/webhook")
    def receive() -> Response:
        body = request.get_data()
        try:
            verify(secret, dict(request.headers), body)
            verified, error = True, None
        except PermanentError as err:
            verified, error = False, err.reason
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        entry = {
            "received_at": time.time(),
            "verified": verified,
            "error": error,
            "webhook_id": request.headers.get("webhook-id"),
            "job_id": payload.get("job_id"),
            "status": payload.get("status"),
            "body": payload,
        }
        with lock, log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        return Response(status=204 if verified else 401)

    return app


OFFLINE_COST_NOTE = (
    "note: engine 'offline' is faster-whisper on this machine's CPU, standing in for Parakeet on an L4. Its "
    "processing time is priced at the L4 instance's rate, so cost and savings here say nothing of the GPU "
    "path (docs/performance.md has its figures).")


def show(log_path: Path) -> str:
    """A readable summary of the deliveries in ``log_path``."""
    if not log_path.exists():
        return f"no webhook deliveries recorded in {log_path}"
    lines = []
    offline = False
    for raw in log_path.read_text().splitlines():
        d = json.loads(raw)
        mark = "signature verified" if d["verified"] else f"REJECTED: {d['error']}"
        summary = d["body"].get("summary") or {}
        offline |= "offline" in (summary.get("engines") or [])
        lines.append(
            f"webhook {d['status']} for job {d['job_id']} ({mark}); "
            f"summary: {json.dumps(summary, sort_keys=True)}"
        )
    if offline:
        lines.append(OFFLINE_COST_NOTE)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="parascribe webhook-receiver")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--log", type=Path, default=Path(".parascribe/webhooks.jsonl"))
    p.add_argument("--show", type=Path, help="print the deliveries recorded in this file and exit")
    args = p.parse_args(argv)
    if args.show:
        print(show(args.show))
        return 0
    secret = os.environ.get("CONVEX_WEBHOOK_SECRET")
    if not secret:
        print("CONVEX_WEBHOOK_SECRET must be set: the receiver verifies every delivery", file=sys.stderr)
        return 2
    args.log.parent.mkdir(parents=True, exist_ok=True)
    create_app(secret, args.log).run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

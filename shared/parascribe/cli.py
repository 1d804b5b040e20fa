"""``parascribe``: run the local stack, submit audio, follow jobs.

The forms below are a public interface; keep them stable:

    parascribe up [--detach]            parascribe down
    parascribe submit FILE|URL... [--wait] [--json] [--method M] [--deadline-minutes N] [--language L]
    parascribe status [JOB_ID] [--json]  parascribe cancel ID [--json]
    parascribe transcript ID [--format txt|json|srt|vtt|words.csv|segments.csv] [-o FILE]
    parascribe env                      (eval "$(parascribe env)": gcloud and the Google clients use the stack)
    parascribe metrics                  parascribe webhook redeliver JOB_ID
    parascribe console [--no-open]
    parascribe plan FILE | --duration HOURS [--deadline-minutes N] [--backlog-seconds S] [--deepgram-queue N]
                    [--method M] [--language L] [--json]
    parascribe costs [--since 30d] [--json]
    parascribe deepgram-server          parascribe names --json

When a local stack runs (``$PARASCRIBE_HOME/stack.json``), commands talk to its
emulators. Without one they stop and say how to start one, unless
``PARASCRIBE_TARGET=gcp`` asks for the GCP project in the environment: they never
fall back to Google credentials by themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from google.auth.exceptions import DefaultCredentialsError

from parascribe import cli_submit, names
from parascribe.errors import ConfigError, ParascribeError

if TYPE_CHECKING:
    from parascribe.config import Settings
    from parascribe.gcp.storage import GcsStore
    from parascribe.jobs import JobStore

log = logging.getLogger("parascribe.cli")


TARGET_ENV = "PARASCRIBE_TARGET"


def _stack_env() -> None:
    """Point this process at the local stack, or fail saying what is wrong and what to do.

    Raises:
        StackError: no stack and no ``PARASCRIBE_TARGET=gcp``; the stack stopped; an emulator is down.
    """
    from parascribe.local.stack import StackError, StackState, home_dir, problems, process_alive

    home = home_dir()
    try:
        state = StackState.load(home)
    except StackError:
        if os.environ.get(TARGET_ENV, "").lower() == "gcp":
            return
        raise StackError(
            f"no local stack is running in {home}. Start one with `parascribe up --detach` (or `make up`), "
            f"or set {TARGET_ENV}=gcp with GCP_PROJECT and application-default credentials "
            "(`gcloud auth application-default login`) to use a GCP project"
        ) from None
    if not (state.supervisor_pid and process_alive(state.supervisor_pid)):
        raise StackError(f"the local stack in {home} is not running (its supervisor exited; see "
                         f"{home}/logs/supervisor.log). Run `parascribe down`, then `parascribe up --detach`")
    if not state.ready:
        raise StackError(f"the local stack in {home} is still starting; try again in a moment")
    fatal, warnings = problems(state)
    if fatal:
        raise StackError("; ".join(fatal))
    for warning in warnings:
        print(f"parascribe: warning: {warning}", file=sys.stderr)
    state.export_env()


def _clients() -> tuple[Settings, GcsStore, JobStore]:
    from parascribe.config import load_settings
    from parascribe.gcp.storage import GcsStore
    from parascribe.jobs import JobStore

    _stack_env()
    settings = load_settings()
    try:
        store = GcsStore.create(settings.gcp_project, settings.storage_emulator_host)
    except DefaultCredentialsError as err:
        raise ConfigError(f"no Google credentials for project {settings.gcp_project!r} ({err}); run "
                          "`gcloud auth application-default login`, or start a local stack") from None
    return settings, store, JobStore(store, settings.state_bucket)


def cmd_up(args: argparse.Namespace) -> int:
    from parascribe.local import stack

    state = stack.up()
    print(f"parascribe stack is up (home {state.home})", file=sys.stderr)
    for part, port in sorted(state.ports.items()):
        print(f"  {part:<17} http://127.0.0.1:{port}", file=sys.stderr)
    print(f"  pubsub emulator   {state.pubsub_host}\n  fake-gcs-server   {state.storage_host}", file=sys.stderr)
    if state.api_key and "api" in state.ports:
        print(f"API {state.url('api')}  (docs: {state.url('api')}/docs)\nAPI key {state.api_key}\n"
              f"  curl -X POST {state.url('api')}/transcribe -H 'Authorization: Bearer {state.api_key}' "
              "-H 'Content-Type: application/json' -d '{\"video_url\": \"https://...\"}'", file=sys.stderr)
        print(f"Console {console_url(state.url('api'), state.api_key)}  (or `parascribe console`)", file=sys.stderr)
    if args.detach:
        return 0
    print("press Ctrl-C to stop", file=sys.stderr)
    try:
        stack.wait_forever(state)
    except KeyboardInterrupt:
        pass
    finally:
        stack.down()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from parascribe.local import stack

    stopped = stack.down()
    print("parascribe stack stopped" if stopped else "no parascribe stack was running", file=sys.stderr)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    return cli_submit.submit(args, _clients)


def cmd_status(args: argparse.Namespace) -> int:
    settings, store, jobs = _clients()
    if args.job_id:
        status = jobs.status(args.job_id)
        if status is None:
            print(f"no job {args.job_id}", file=sys.stderr)
            return 1
        if args.json:
            print(status.model_dump_json(indent=2))
        else:
            print(f"{status.job_id}  {status.progress}" + (f"  reason: {status.reason}" if status.reason else ""))
            print(f"  source   {status.source.uri if status.source else '-'}")
            print(f"  created  {status.created_at:%Y-%m-%d %H:%M:%S}  updated {status.updated_at:%H:%M:%S}")
            for fmt, uri in sorted(status.outputs.items()):
                print(f"  {fmt:<13} {uri}")
            print(f"  webhook  {status.webhook.state} ({status.webhook.attempts} attempts)")
        return 0
    recent = jobs.recent(args.limit)
    if args.json:
        print(json.dumps([json.loads(s.model_dump_json()) for s in recent]))
        return 0
    _print_stack()
    print(f"{'JOB':<22} {'STATE':<20} {'CREATED':<20} SOURCE")
    for s in recent:
        print(f"{s.job_id:<22} {s.progress:<20} {s.created_at:%Y-%m-%d %H:%M:%S}  {s.source.uri if s.source else '-'}")
    return 0


def _print_stack() -> None:
    """The local stack's processes: state, pid, restarts and log (nothing when GCP is the target)."""
    from parascribe.local.stack import StackError, StackState, process_alive

    try:
        state = StackState.load()
    except StackError:
        return
    print(f"{'SERVICE':<17} {'STATE':<11} {'PID':>7} {'RESTARTS':>8}  LOG")
    for name, part in sorted(state.parts.items()):
        shown = part.state if part.state != "running" or process_alive(part.pid) else "exited"
        print(f"{name:<17} {shown:<11} {part.pid:>7} {part.restarts:>8}  {part.log}")
    print()


def cmd_metrics(args: argparse.Namespace) -> int:
    from parascribe.local.stack import running_state
    from parascribe.metrics import summarise_local

    state = running_state()
    settings, _, _ = _clients()
    path = state.env.get("METRICS_LOCAL_PATH") if state else None
    print(summarise_local(Path(path or settings.metrics_local_path)))
    return 0


def console_url(api_url: str, key: str | None = None) -> str:
    """The console's address; with ``key`` in the fragment, which the browser keeps and never sends."""
    from urllib.parse import quote

    return f"{api_url.rstrip('/')}/console/" + (f"#key={quote(key, safe='')}" if key else "")


def cmd_console(args: argparse.Namespace) -> int:
    import webbrowser

    from parascribe.local.stack import StackError, running_state

    api = os.environ.get("PARASCRIBE_API_URL")
    state = None if api else running_state()
    if api:
        url = console_url(api)  # a deployment's key is typed into the page, never put in a URL here
    elif state is not None and state.api_key and "api" in state.ports:
        url = console_url(state.url("api"), state.api_key)
    else:
        raise StackError("no local stack with an API is running: start one with `parascribe up --detach`, or set "
                         "PARASCRIBE_API_URL to a deployment's API")
    print(url)
    if not args.no_open and not webbrowser.open(url):
        print("parascribe: no browser could be opened here; open the URL above", file=sys.stderr)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """``parascribe env``: ``export`` lines for the running local stack (``eval "$(parascribe env)"``)."""
    import shlex

    from parascribe.local.stack import StackError, running_state

    state = running_state()
    if state is None:
        raise StackError("no local stack is running: start one with `parascribe up --detach`")
    for key, value in state.shell_env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_webhook(args: argparse.Namespace) -> int:
    from parascribe.merger.webhook import WebhookOptions, redeliver

    settings, _, jobs = _clients()
    if not settings.convex_webhook_url:
        from parascribe.local.stack import running_state

        state = running_state()
        if state is not None and state.webhook_secret:
            from parascribe.config import load_settings

            settings = load_settings(
                convex_webhook_url=state.env["CONVEX_WEBHOOK_URL"], convex_webhook_secret=state.webhook_secret
            )
    result = redeliver(WebhookOptions.from_settings(settings), jobs, args.job_id)
    print(result)
    return 0


def _delegate(command: str, rest: list[str]) -> int:
    if command == "deepgram-server":
        from parascribe.local import deepgram_server

        return int(deepgram_server.main(rest) or 0)
    from parascribe.local import webhook_receiver

    return int(webhook_receiver.main(rest) or 0)


def cmd_plan(args: argparse.Namespace) -> int:
    from parascribe.router.explain import run

    return run(args)


def cmd_costs(args: argparse.Namespace) -> int:
    from parascribe.local.stack import running_state
    from parascribe.router.report import run

    settings, store, _ = _clients()
    state = running_state()
    return run(args, settings, store, Path((state.env.get("METRICS_LOCAL_PATH") if state else None)
                                          or settings.metrics_local_path))


def cmd_names(args: argparse.Namespace) -> int:
    from parascribe import metric_names

    doc = {
        "topics": list(names.TOPICS),
        "buckets": list(names.BUCKETS),
        "subscriptions": [vars(s) for s in names.SUBSCRIPTIONS],
        "metrics": list(metric_names.ALL),
    }
    print(json.dumps(doc, indent=2))
    return 0


def _language(value: str) -> str:
    from parascribe.languages import parse_language

    try:
        return parse_language(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parascribe", description="Self-hosted transcription pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local stack")
    up.add_argument("--detach", action="store_true", help="return once the stack is ready")
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(fn=cmd_down)

    s = sub.add_parser("submit", help="upload audio, or send URLs to the API, and (optionally) wait for transcripts")
    s.add_argument("files", nargs="+", metavar="FILE|URL", help="local files, or http(s) URLs of media or pages")
    s.add_argument("--wait", action="store_true", help="wait until every job is done or failed")
    s.add_argument("--json", action="store_true", help="print one JSON object per file")
    s.add_argument("--method", choices=["auto", "gpu", "deepgram", "hybrid"])
    s.add_argument("--deadline-minutes", type=float, dest="deadline_minutes")
    s.add_argument("--language", type=_language, help="the spoken language: en (default), es, pt-BR, multi...")
    s.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait with --wait (default 1800)")
    s.set_defaults(fn=cmd_submit)

    st = sub.add_parser("status", help="one job, or a table of recent jobs")
    st.add_argument("job_id", nargs="?")
    st.add_argument("--json", action="store_true")
    st.add_argument("--limit", type=int, default=20)
    st.set_defaults(fn=cmd_status)

    sub.add_parser("env", help="print export lines that point gcloud, the Google clients and the SDK at the "
                               "local stack: eval \"$(parascribe env)\"").set_defaults(fn=cmd_env)

    ca = sub.add_parser("cancel", help="cancel a job that has not ended (request id or job id)")
    ca.add_argument("job_id")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(fn=cli_submit.cancel)

    tr = sub.add_parser("transcript", help="print or save one output of a done job (request id or job id)")
    tr.add_argument("job_id")
    tr.add_argument("--format", default="txt", choices=names.OUTPUT_FORMATS, help="the output to fetch (default txt)")
    tr.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead of standard output")
    tr.set_defaults(fn=cli_submit.transcript)

    sub.add_parser("metrics", help="summarise the local stack's metrics").set_defaults(fn=cmd_metrics)

    wh = sub.add_parser("webhook", help="webhook operations")
    wh_sub = wh.add_subparsers(dest="webhook_command", required=True)
    rd = wh_sub.add_parser("redeliver", help="send a job's webhook again")
    rd.add_argument("job_id")
    rd.set_defaults(fn=cmd_webhook)

    con = sub.add_parser("console", help="open the web console (prints its URL)")
    con.add_argument("--no-open", action="store_true", dest="no_open", help="only print the URL")
    con.set_defaults(fn=cmd_console)

    # These two parse their own options (see main()); listed here for --help.
    sub.add_parser("deepgram-server", help="run the local Deepgram-compatible server", add_help=False)
    sub.add_parser("webhook-receiver", help="run a local receiver that verifies signed webhooks", add_help=False)

    n = sub.add_parser("names", help="print topic, subscription, bucket and metric names")
    n.add_argument("--json", action="store_true")
    n.set_defaults(fn=cmd_names)

    pl = sub.add_parser("plan", help="show how a file or a duration would be planned, without submitting it")
    pl.add_argument("file", nargs="?", metavar="FILE")
    pl.add_argument("--duration", type=float, metavar="HOURS")
    pl.add_argument("--deadline-minutes", type=float, dest="deadline_minutes")
    pl.add_argument("--backlog-seconds", type=float, dest="backlog_seconds", help="audio already queued for the GPU")
    pl.add_argument("--deepgram-queue", type=int, dest="deepgram_queue", metavar="N",
                    help="Deepgram requests already queued or in flight, a chunk each")
    pl.add_argument("--method", choices=["auto", "gpu", "deepgram", "hybrid"])
    pl.add_argument("--language", type=_language, help="the spoken language (the GPU transcribes English only)")
    pl.add_argument("--spent-usd", type=float, dest="spent_usd",
                    help="what-if: the month's spend so far, against MONTHLY_BUDGET_USD")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=cmd_plan)
    co = sub.add_parser("costs", help="the period's spend, savings, spills and recommendations")
    co.add_argument("--since", default="30d", help="how far back, in days (default 30d)")
    co.add_argument("--json", action="store_true")
    co.set_defaults(fn=cmd_costs)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("deepgram-server", "webhook-receiver"):
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except ConfigError as err:
        print(f"parascribe: {err.reason}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"parascribe: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # StackError and start-up failures
        print(f"parascribe: {err}", file=sys.stderr)
        return 1
    except ParascribeError as err:  # the API refused a request, or none is reachable
        print(f"parascribe: {err.reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

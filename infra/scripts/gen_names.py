#!/usr/bin/env python3
"""Write ``infra/names.auto.tfvars.json`` from :mod:`parascribe.names` and :mod:`parascribe.metric_names`.

Terraform loads ``*.auto.tfvars.json`` by itself, so topics, subscriptions, buckets
and metric types are defined once, in Python. Run ``make infra-names`` (or this
script) after changing either module; ``--check`` exits 1 when the committed file
is stale, which is what the unit test and CI rely on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from parascribe import metric_names, names
from parascribe.metrics import DISTRIBUTION_METRICS, INT_METRICS

TFVARS = Path(__file__).resolve().parents[1] / "names.auto.tfvars.json"


def _constants(module: ModuleType, prefix: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """``PREFIX_SOME_ROLE = "value"`` constants as ``{"some_role": "value"}``, limited to ``allowed``."""
    found = {
        attr[len(prefix):].lower(): value
        for attr, value in vars(module).items()
        if attr.startswith(prefix) and isinstance(value, str) and value in allowed
    }
    missing = set(allowed) - set(found.values())
    if missing:
        raise ValueError(f"{module.__name__}: {sorted(missing)} have no {prefix}* constant to name them by")
    return dict(sorted(found.items()))


def tfvars() -> dict[str, Any]:
    """The Terraform variables that carry every shared name.

    Topics and buckets are keyed by role (``audio_uploaded``, ``uploads``) so the
    Terraform can refer to a role without repeating the name; subscriptions are
    keyed by their name and carry everything :class:`parascribe.names.Subscription` holds.
    Metric value types follow what :mod:`parascribe.metrics` writes (INT64 for counts, DISTRIBUTION for
    job latency).
    """
    subs = {
        s.name: {
            "topic": s.topic,
            "push_path": s.push_path,
            "service": s.service,
            "ack_deadline_s": s.ack_deadline_s,
            "max_delivery_attempts": s.max_delivery_attempts,
            "dead_letter": s.dead_letter,
        }
        for s in names.SUBSCRIPTIONS
    }
    metrics = {
        attr.lower(): value
        for attr, value in vars(metric_names).items()
        if attr.isupper() and isinstance(value, str) and value in metric_names.ALL
    }
    return {
        "metric_value_types": {k: "INT64" if v in INT_METRICS else "DISTRIBUTION" if v in DISTRIBUTION_METRICS
                               else "DOUBLE" for k, v in sorted(metrics.items())},
        "topics": _constants(names, "TOPIC_", names.TOPICS),
        "buckets": _constants(names, "BUCKET_", names.BUCKETS),
        "subscriptions": dict(sorted(subs.items())),
        "metric_types": dict(sorted(metrics.items())),
    }


def render() -> str:
    """The file's exact text: sorted, two-space indented, one trailing newline."""
    return json.dumps(tfvars(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the Python names")
    parser.add_argument("--out", type=Path, default=TFVARS, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run `make infra-names`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

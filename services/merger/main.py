"""Merger entry point: ``app`` for gunicorn, or ``python main.py`` serving on ``$PORT``.

All logic lives in :mod:`parascribe.merger`; this file only wires it up and
flushes metrics when the process stops (SIGTERM from Cloud Run, or exit).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
from types import FrameType

from parascribe import logs
from parascribe.config import get_settings
from parascribe.merger import build_merger
from parascribe.pushapp import create_app

SERVICE = "merger"

settings = get_settings()
logs.setup(SERVICE, settings.log_level)
merger, exporter = build_merger(settings, service=SERVICE)
app = create_app(SERVICE, merger.routes())
atexit.register(exporter.close)


_previous = signal.getsignal(signal.SIGTERM)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Flush metrics, then shut down as the handler we replaced would (gunicorn's, in a worker)."""
    exporter.close()
    if callable(_previous):
        _previous(signum, frame)
    elif _previous != signal.SIG_IGN:
        raise SystemExit(0)


with contextlib.suppress(ValueError):  # not the main thread: atexit still flushes
    signal.signal(signal.SIGTERM, _on_sigterm)

if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "8080")), threaded=True)

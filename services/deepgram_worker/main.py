"""Deepgram worker entry point: ``app`` for gunicorn, or ``python main.py`` serving on ``$PORT``.

All logic lives in :mod:`parascribe.deepgram`; this file only calls its ``build``.
Metrics are flushed when the process stops (SIGTERM from Cloud Run, or exit).
"""

from __future__ import annotations

from parascribe import logs
from parascribe.config import get_settings
from parascribe.deepgram.app import SERVICE, build

settings = get_settings()
logs.setup(SERVICE, settings.log_level)
service = build(settings)
service.close_on_exit()
app = service.app

if __name__ == "__main__":
    service.serve(settings.port, settings.host)

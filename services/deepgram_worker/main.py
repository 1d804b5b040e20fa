"""Deepgram worker entry point: ``app`` for gunicorn, or ``python main.py`` serving on ``$PORT``.

All logic lives in :mod:`parascribe.deepgram_worker`; this file only wires it up.
"""

from __future__ import annotations

import atexit
import os

from parascribe import logs
from parascribe.config import get_settings
from parascribe.deepgram_worker import SERVICE, build_worker, create_app
from parascribe.engines.deepgram import auth_errors
from parascribe.metrics import exporter_from_settings, forward_events

settings = get_settings()
logs.setup(SERVICE, settings.log_level)
# 401/403 from Deepgram become the deepgram_auth_errors metric, which an alert policy watches.
exporter = exporter_from_settings(settings, SERVICE)
forward_events(auth_errors, exporter)
atexit.register(exporter.close)
app = create_app(build_worker(settings))

if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "0.0.0.0"), port=settings.port, threaded=True)

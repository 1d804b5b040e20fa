"""Deepgram worker entry point: ``app`` for gunicorn, or ``python main.py`` serving on ``$PORT``.

All logic lives in :mod:`parascribe.deepgram_worker`; this file only wires it up.
"""

from __future__ import annotations

import os

from parascribe import logs
from parascribe.config import get_settings
from parascribe.deepgram_worker import SERVICE, build_worker, create_app

settings = get_settings()
logs.setup(SERVICE, settings.log_level)
app = create_app(build_worker(settings))

if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "0.0.0.0"), port=settings.port, threaded=True)

"""API entry point: ``app`` for uvicorn, or ``python main.py`` serving on ``$HOST:$PORT``.

All logic lives in :mod:`parascribe.api`; this file only calls its ``build``.
"""

from __future__ import annotations

import uvicorn

from parascribe import logs
from parascribe.api.app import SERVICE, build
from parascribe.config import get_settings

settings = get_settings()
logs.setup(SERVICE, settings.log_level)
app = build(settings)

if __name__ == "__main__":
    # log_config=None keeps the JSON lines set up above; on SIGTERM uvicorn finishes requests in flight.
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, proxy_headers=True,
                forwarded_allow_ips="*", timeout_graceful_shutdown=8)

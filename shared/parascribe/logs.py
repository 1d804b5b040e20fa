"""JSON-line logging that Cloud Logging reads. Only entry points call :func:`setup`."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_EXTRA_KEYS = ("job_id", "chunk_index", "engine", "path", "topic", "attempt", "elapsed_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per line with ``severity`` and ``message``, plus job context."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "service": self._service,
            "logger": record.name,
        }
        for key in _EXTRA_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(service: str, level: str = "INFO") -> None:
    """Send every log record to stdout as a JSON line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "google.auth", "google.api_core.bidi", "werkzeug", "httpx", "numba", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

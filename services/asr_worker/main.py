"""ASR worker entry point: ``python main.py`` pulls ``asr-gpu`` until SIGTERM.

All logic lives in :mod:`parascribe.asr_worker`; this file only wires it up.
"""

from __future__ import annotations

import logging
import sys

from parascribe import logs
from parascribe.asr_worker import build_worker
from parascribe.config import get_settings
from parascribe.errors import EngineUnavailableError

SERVICE = "asr_worker"


def main() -> int:
    settings = get_settings()
    logs.setup(SERVICE, settings.log_level)
    try:
        worker = build_worker(settings)
    except EngineUnavailableError as err:
        logging.getLogger(SERVICE).critical("cannot start: %s", err.reason)
        return 1
    return worker.run_forever()


if __name__ == "__main__":
    sys.exit(main())

"""ASR worker entry point: ``python main.py`` pulls ``asr-gpu`` until SIGTERM.

All logic lives in :mod:`parascribe.asr`; this file only calls its ``build``.
"""

from __future__ import annotations

import logging
import sys

from parascribe import logs
from parascribe.asr.app import SERVICE, build
from parascribe.config import get_settings
from parascribe.errors import EngineUnavailableError


def main() -> int:
    settings = get_settings()
    logs.setup(SERVICE, settings.log_level)
    try:
        worker = build(settings)
    except EngineUnavailableError as err:
        logging.getLogger(SERVICE).critical("cannot start: %s", err.reason)
        return 1
    return worker.run_forever()


if __name__ == "__main__":
    sys.exit(main())

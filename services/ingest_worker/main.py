"""URL ingest worker entry point: ``python main.py`` pulls ``ingest-pull`` until SIGTERM.

All logic lives in :mod:`parascribe.ingest`; this file only calls its ``build``.
"""

from __future__ import annotations

import sys

from parascribe import logs
from parascribe.config import get_settings
from parascribe.ingest.app import SERVICE, build


def main() -> int:
    settings = get_settings()
    logs.setup(SERVICE, settings.log_level)
    return build(settings).run_forever()


if __name__ == "__main__":
    sys.exit(main())

"""Puts the repository root on ``sys.path``, so a benchmark run as ``python bench/<name>.py`` can import
``tests.parakeet_arch`` (the Parakeet architecture built from a config, which is not shipped in the package)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

"""Load a service's ``services/<svc>/main.py`` in a test, undoing what importing it does to the process."""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from parascribe.config import get_settings

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def load_service_main(service: str) -> Iterator[ModuleType]:
    """Import ``services/<service>/main.py`` as a module, with settings read fresh from the environment.

    The entry point configures root logging, may install a SIGTERM handler and caches its settings;
    all three are put back on exit. The module stays usable after exit.

    Args:
        service: The service folder's name, e.g. ``"merger"``.

    Yields:
        The loaded entry-point module.
    """
    name = f"{service}_main"
    get_settings.cache_clear()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "services" / service / "main.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        get_settings.cache_clear()
        sys.modules.pop(name, None)
        signal.signal(signal.SIGTERM, saved_sigterm)

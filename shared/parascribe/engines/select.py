"""Choose the ASR engine from ``ASR_ENGINE``: parakeet, offline, or auto."""

from __future__ import annotations

import logging
import os
from types import ModuleType

from parascribe.config import Settings
from parascribe.engines.base import AsrEngine
from parascribe.errors import EngineUnavailableError

log = logging.getLogger(__name__)


def _parakeet_module() -> ModuleType | None:
    """The Parakeet engine module, or None when it (or NeMo under it) cannot be imported."""
    try:
        from parascribe.engines.parakeet import engine as parakeet
    except ImportError as err:
        log.debug("parakeet engine not importable: %s", err)
        return None
    return parakeet


def load_offline(settings: Settings) -> AsrEngine:
    """The faster-whisper engine, with ``OFFLINE_MODEL_PATH`` or the bundled tiny.en weights."""
    from parascribe.engines.offline import OfflineEngine

    threads = max(1, min(os.cpu_count() or 1, 8))
    return OfflineEngine(model_path=settings.offline_model_path, cpu_threads=threads)


def load_engine(settings: Settings) -> AsrEngine:
    """Load the engine ``ASR_ENGINE`` names; the model loads here, once.

    - ``offline``: faster-whisper on the CPU.
    - ``parakeet``: NeMo Parakeet from ``PARAKEET_MODEL_NAME``.
    - ``auto``: Parakeet when its weights are available locally, else the offline engine
      (logged once as a WARNING, with the reason).

    Raises:
        EngineUnavailableError: the chosen engine cannot be loaded.
    """
    if settings.asr_engine == "offline":
        return load_offline(settings)
    parakeet = _parakeet_module()
    if settings.asr_engine == "parakeet":
        if parakeet is None:
            raise EngineUnavailableError(
                "ASR_ENGINE=parakeet but the Parakeet engine cannot be imported "
                "(is NeMo installed? pip install 'parascribe[nemo]')"
            )
        engine: AsrEngine = parakeet.ParakeetEngine.from_settings(settings)
        return engine
    if parakeet is None:
        reason = "the Parakeet engine cannot be imported (NeMo missing)"
    elif not parakeet.weights_available(settings):
        reason = f"Parakeet weights {settings.parakeet_model_name!r} are not available locally"
    else:
        engine = parakeet.ParakeetEngine.from_settings(settings)
        return engine
    log.warning(
        "ASR_ENGINE=auto: using the OFFLINE engine (faster-whisper tiny.en on CPU) because %s; "
        "transcripts will be of lower quality. Set PARAKEET_MODEL_NAME to a local .nemo file "
        "or a cached Hugging Face model to use Parakeet.",
        reason,
    )
    return load_offline(settings)

"""One exception tree. Every error says whether retrying can help.

Edges map them: :class:`PermanentError` → ack and mark the job ``failed`` with
``reason``; :class:`TransientError` → nack (HTTP 5xx for push) and let Pub/Sub
retry, with the dead-letter topic catching what never succeeds.
"""

from __future__ import annotations


class ParascribeError(Exception):
    """Base of every error this package raises on purpose."""

    retryable: bool = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(ParascribeError):
    """A setting is missing or wrong; fail at start-up."""


class PermanentError(ParascribeError):
    """Retrying cannot help: the input is bad or unsupported."""


class BadAudioError(PermanentError):
    """The object is not audio we can read (empty, corrupt, truncated, not audio)."""


class AudioTooLongError(PermanentError):
    """The audio is longer than ``MAX_AUDIO_MINUTES``."""


class MalformedMessageError(PermanentError):
    """A message or event does not match its contract."""


class TransientError(ParascribeError):
    """A dependency failed in a way that may pass (5xx, timeout, quota)."""

    retryable = True


class EngineError(ParascribeError):
    """The ASR engine failed on a batch or a chunk."""


class EngineOOMError(EngineError, TransientError):
    """The accelerator ran out of memory; a smaller batch may fit."""


class EngineUnavailableError(EngineError, TransientError):
    """The engine could not be loaded or is not usable on this machine."""


class DeepgramAuthError(ParascribeError):
    """Deepgram rejected the key (401/403): a configuration problem, not the audio's."""

    retryable = True

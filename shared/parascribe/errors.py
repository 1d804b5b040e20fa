"""One exception tree. An error's type alone says whether retrying can help.

- :class:`PermanentError`: retrying cannot help. The edge acks the message and the job
  ends ``failed`` with ``reason``.
- :class:`TransientError`: retrying may help, because a dependency may recover or an
  operator may fix a setting. The edge nacks (HTTP 5xx for push), Pub/Sub retries with
  backoff, and the dead-letter topic catches what never succeeds.

Every edge asks :func:`is_transient` and nothing else. An error this package did not
raise on purpose counts as transient: a bug or an outage should be retried, not turn a
user's job into a failure.
"""

from __future__ import annotations


class ParascribeError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PermanentError(ParascribeError):
    """Retrying cannot help: the input is bad or unsupported."""


class BadAudioError(PermanentError):
    """The object is not audio we can read (empty, corrupt, truncated, not audio)."""


class AudioTooLongError(PermanentError):
    """The audio is longer than ``MAX_AUDIO_MINUTES``."""


class MalformedMessageError(PermanentError):
    """A message or event does not match its contract."""


class TransientError(ParascribeError):
    """Retrying may help: a dependency failed (5xx, timeout, quota) or a setting must be fixed."""


class ConfigError(TransientError):
    """A setting is missing or wrong.

    At start-up the process exits with this reason. Inside a request the message is
    retried until someone fixes the setting, and never fails a user's job.
    """


class NewerSchemaError(TransientError):
    """A message was written by a newer release than this reader: retried until this reader is updated.

    During a rolling deploy an old instance may receive a new message; nacking it lets a
    new instance take it, so nothing is lost.
    """


class DeepgramAuthError(TransientError):
    """Deepgram rejected the key (401/402/403): retried until someone fixes ``DEEPGRAM_API_KEY``."""


class EngineError(TransientError):
    """The ASR engine failed on a batch or a chunk; a smaller batch or another path may succeed."""


class EngineOOMError(EngineError):
    """The accelerator ran out of memory; a smaller batch may fit."""


class EngineUnavailableError(EngineError):
    """The engine could not be loaded or is not usable on this machine."""


def is_transient(err: BaseException) -> bool:
    """Whether a message whose handling raised ``err`` should be retried (nack) rather than acked."""
    return not isinstance(err, PermanentError)

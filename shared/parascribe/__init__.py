"""parascribe: the library every service imports, and the Python API.

    import parascribe
    transcript = parascribe.transcribe("https://example.com/talk.mp4")
    job = parascribe.submit("meeting.m4a", wait=False)

See :mod:`parascribe.sdk`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Job", "Transcript", "connect", "list_jobs", "submit", "transcribe"]


def __getattr__(name: str) -> Any:
    # The services import this package too; they never pay for the client unless they use it.
    if name in __all__:
        from parascribe import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'parascribe' has no attribute {name!r}")

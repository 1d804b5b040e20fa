"""The one error the API's handlers raise: an HTTP status and a reason a person can act on."""

from __future__ import annotations


class ApiError(Exception):
    """Answered as ``{"detail": reason}`` with ``status``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}

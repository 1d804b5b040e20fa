"""Bearer API keys, checked against SHA-256 digests so that no key is stored anywhere.

``API_KEY_HASHES`` holds comma-separated hex digests. An operator makes one with::

    python -c "from parascribe.api.auth import hash_api_key; print(hash_api_key('KEY'))"

or without this package: ``printf %s KEY | sha256sum``. A presented key is hashed and
compared with every digest by :func:`hmac.compare_digest`, never stopping at the first
match, so the time taken says nothing about which digest (if any) matched. Keys are never
logged, and never repeated in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from parascribe.api.errors import ApiError
from parascribe.errors import ConfigError

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest of ``key``: what goes into ``API_KEY_HASHES``."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh random key (256 bits, URL-safe)."""
    return "psk_" + secrets.token_urlsafe(32)


def parse_key_hashes(value: str) -> tuple[str, ...]:
    """The digests in ``API_KEY_HASHES``.

    Raises:
        ConfigError: when there are none, or one is not a SHA-256 hex digest.
    """
    digests = tuple(d.strip().lower() for d in value.split(",") if d.strip())
    if not digests:
        raise ConfigError("API_KEY_HASHES is empty: set it to the SHA-256 hex digest of at least one API key "
                          "(python -c \"from parascribe.api.auth import hash_api_key; print(hash_api_key('KEY'))\")")
    bad = [i for i, d in enumerate(digests, 1) if not _HEX_DIGEST.fullmatch(d)]
    if bad:
        raise ConfigError(f"API_KEY_HASHES: entry {bad[0]} is not a SHA-256 hex digest (64 hex characters); "
                          "it must hold digests of keys, never the keys themselves")
    return digests


class ApiKeys:
    """The accepted keys, as digests."""

    def __init__(self, digests: tuple[str, ...]) -> None:
        self._digests = tuple(d.encode() for d in digests)

    @classmethod
    def from_setting(cls, value: str) -> ApiKeys:
        return cls(parse_key_hashes(value))

    def matches(self, key: str) -> bool:
        """Whether ``key`` is accepted, in time independent of which digest matches."""
        presented = hash_api_key(key).encode()
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found

    def check(self, authorization: str | None) -> None:
        """Accept an ``Authorization`` header value or raise 401.

        Raises:
            ApiError: 401 with ``WWW-Authenticate: Bearer`` for a missing, malformed or wrong key.
        """
        if not authorization:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'", _CHALLENGE)
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "the Authorization header must be 'Bearer <key>'", _CHALLENGE)
        if not self.matches(key.strip()):
            raise ApiError(401, "the API key is not valid (revoked, mistyped, or for another deployment)", _INVALID)

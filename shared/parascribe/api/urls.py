"""The API's check of a URL it is asked to fetch or call back, before anything is queued.

The form is checked here, with reasons for the person who sent it: length, spaces, an
http(s) scheme, no credentials, a host. Which hosts and addresses are forbidden is
:mod:`parascribe.netguard`'s to say (the ingest worker and the webhook sender use it
too): the metadata server, loopback, private, link-local and other non-public
addresses, by name, as a literal in any form, or as what the name resolves to.
``URL_ALLOW_LOOPBACK`` (the local stack) allows loopback only.

Resolving blocks the request's worker thread for as long as DNS takes (the resolver's
own timeout, a few seconds at worst); a resolver failure is a 503, a name that does not
exist a 422. The ingest worker checks again, with every redirect, when it fetches.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from parascribe.netguard import Resolver, UnsafeUrlError, literal_address
from parascribe.netguard import check_url as guard

MAX_URL_LENGTH = 2048


class UrlRejected(ValueError):
    """The URL cannot be accepted; ``reason`` says why, for the person who sent it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_url(url: str, *, allow_loopback: bool = False, what: str = "url", resolve: Resolver | None = None) -> str:
    """Return ``url`` (stripped) when it may be fetched or called.

    Args:
        url: the URL as the client sent it.
        allow_loopback: accept loopback hosts (``localhost``, 127.0.0.0/8, ::1); nothing else private.
        what: the field's name, for the reason.
        resolve: how names are resolved; :func:`parascribe.netguard.system_resolver` when None.

    Raises:
        UrlRejected: with a reason naming ``what``.
        TransientError: the resolver failed (it may answer later).
    """
    text = url.strip()
    if not text:
        raise UrlRejected(f"{what} is empty")
    if len(text) > MAX_URL_LENGTH:
        raise UrlRejected(f"{what} is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or c == "\x7f" for c in text):
        raise UrlRejected(f"{what} contains spaces or control characters; percent-encode them")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as err:
        raise UrlRejected(f"{what} is not a valid URL: {err}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}://" if scheme else "none"
        raise UrlRejected(f"{what} must be an http:// or https:// URL (scheme: {shown})")
    if parts.username is not None or parts.password is not None:
        raise UrlRejected(f"{what} must not carry credentials (user:password@host); use a signed or public URL")
    if not (parts.hostname or "").rstrip("."):
        raise UrlRejected(f"{what} has no host")
    try:
        guard(text, allow_loopback, resolve)
    except UnsafeUrlError as err:
        raise UrlRejected(_reason(err, what)) from None
    return text


def _reason(err: UnsafeUrlError, what: str) -> str:
    if err.problem is None:
        return f"{what} cannot be fetched: {err.reason}"
    host = err.host or ""
    if err.address is None or host == str(err.address):
        where = host or str(err.address)
    elif literal_address(host) is not None:
        where = f"{host}, that is {err.address}"
    else:
        where = f"{host} resolves to {err.address}"
    advice = ", which is never fetched" if err.problem.startswith("the metadata server") else \
        "; give a public address"
    return f"{what} points at {err.problem} ({where}){advice}"

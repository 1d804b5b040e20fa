"""The API's early check of a URL it is asked to fetch or call back: scheme and literal host only.

This refuses what is wrong on its face, before anything is queued: a scheme other than
http(s), credentials in the URL, and a host that names the metadata server or a
loopback, private, link-local or otherwise non-public address literally (including the
legacy IPv4 forms a resolver still accepts, such as ``2852039166`` or ``0x7f.1``). It does
not resolve names: the ingest worker checks every address a name resolves to, and every
redirect, when it fetches. ``URL_ALLOW_LOOPBACK`` (the local stack) allows loopback only.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})
_METADATA_IPS = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRejected(ValueError):
    """The URL cannot be accepted; ``reason`` says why, for the person who sent it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_url(url: str, *, allow_loopback: bool = False, what: str = "url") -> str:
    """Return ``url`` when it may be fetched or called, judged by its text alone.

    Args:
        url: the URL as the client sent it.
        allow_loopback: accept loopback hosts (``localhost``, 127.0.0.0/8, ::1); nothing else private.
        what: the field's name, for the reason.

    Raises:
        UrlRejected: with a reason naming ``what``.
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
    _check_host(parts, allow_loopback, what)
    return text


def _check_host(parts: SplitResult, allow_loopback: bool, what: str) -> None:
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UrlRejected(f"{what} has no host")
    if host in _METADATA_HOSTS:
        raise UrlRejected(f"{what} points at the metadata server ({host}), which is never fetched")
    if host == "localhost" or host.endswith(".localhost"):
        if allow_loopback:
            return
        raise UrlRejected(f"{what} points at this machine ({host}); give a public address")
    if host.endswith(".internal"):
        raise UrlRejected(f"{what} points at a private network name ({host}); give a public address")
    ip = literal_ip(host)
    if ip is not None:
        problem = address_problem(ip, allow_loopback)
        if problem:
            raise UrlRejected(f"{what} points at {problem} ({ip}); give a public address")


def literal_ip(host: str) -> IpAddress | None:
    """The address ``host`` spells out literally, in any form a resolver accepts; None for a name."""
    try:
        ip: IpAddress = ipaddress.ip_address(host)
    except ValueError:
        if not _LEGACY_IPV4.fullmatch(host) or not any(c.isdigit() for c in host):
            return None
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_problem(ip: IpAddress, allow_loopback: bool = False) -> str | None:
    """What is wrong with fetching from ``ip`` (a phrase), or None for a public address."""
    if ip in _METADATA_IPS:
        return "the metadata server"
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None

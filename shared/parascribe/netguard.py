"""The SSRF guard: which URLs a user may make this service fetch, and a fetch that keeps to them.

A user hands the API a URL and a worker inside the project's network fetches it, so
the URL must not reach what only the network can: the metadata server (which hands
out the service account's tokens), private ranges (VPC services, the emulators),
loopback and link-local addresses.

:func:`check_url` allows only ``http`` and ``https`` and resolves the host; *every*
address it resolves to must be public. :class:`GuardedHttp` fetches with httpx and:

- follows redirects itself (at most :data:`MAX_REDIRECTS`), checking each hop;
- pins each connection to the address it checked: the request goes to the IP
  literal, with the ``Host`` header and the TLS server name (SNI, and so certificate
  verification) set to the original host. DNS is therefore asked once per hop and a
  second answer (DNS rebinding) cannot move the connection to another address;
- ignores proxy variables (``trust_env=False``), since a proxy would connect for us.

Names are refused before they are resolved when they can only mean the metadata server,
this machine (``localhost``) or a private network (``*.internal``); IP literals, in every form
a resolver accepts (``2852039166``, ``0x7f.1``, ``[::ffff:a9fe:a9fe]``), are judged without
asking DNS. The API checks submitted URLs with this module too, so there is one definition
of a forbidden address.

What remains: a name on the deny list is matched as written, so an attacker's own
name for the metadata address is caught by its address, not its name.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from parascribe.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""host, port → the addresses it resolves to (strings); :func:`system_resolver` by default."""


class UnsafeUrlError(PermanentError):
    """The URL may not be fetched: a scheme other than http(s), or a host that is, or resolves to, a private address.

    Attributes:
        host: the URL's host, when the host is what is refused.
        problem: what the host or its address is (``"a private address"``), when that is why.
        address: the address refused, when it was an address (None for a name refused as written).
    """

    def __init__(self, reason: str, *, host: str | None = None, problem: str | None = None,
                 address: IP | None = None) -> None:
        super().__init__(reason)
        self.host = host
        self.problem = problem
        self.address = address


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, by ``getaddrinfo``.

    Raises:
        UnsafeUrlError: the name does not exist.
        TransientError: the resolver failed (it may answer later).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        if err.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None)):
            raise TransientError(f"resolving {host}: {err}") from err
        raise UnsafeUrlError(f"the host {host} does not resolve ({err.strerror})") from err
    return [str(info[4][0]) for info in infos]


def forbidden_reason(address: IP, allow_loopback: bool = False) -> str | None:
    """Why ``address`` may not be reached, or None when it is public (or loopback and ``allow_loopback``)."""
    if address in METADATA_ADDRESSES:
        return "the metadata server"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = forbidden_reason(embedded, allow_loopback)
            return f"{inner} (inside an IPv6 address)" if inner else None
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    for test, what in ((address.is_unspecified, "the unspecified address"),
                       (address.is_link_local, "a link-local address"),
                       (address.is_multicast, "a multicast address"),
                       (address in _CGNAT, "a carrier-grade NAT address (100.64.0.0/10)"),
                       (address.is_reserved, "a reserved address"),
                       (address.is_private, "a private address"),
                       (not address.is_global, "not a public address")):
        if test:
            return what
    return None


def host_problem(host: str, allow_loopback: bool = False) -> str | None:
    """Why a host *name* may not be reached as written (lower case, no trailing dot), or None."""
    if host in METADATA_HOSTS:
        return "the metadata server"
    if host == "localhost" or host.endswith(".localhost"):
        return None if allow_loopback else "this machine's loopback name"
    if host.endswith(".internal"):
        return "a private network name"
    return None


def literal_address(host: str) -> IP | None:
    """The address ``host`` spells out, in any form a resolver accepts (``127.1``, ``0x7f.0.0.1``); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _LEGACY_IPV4.fullmatch(host) or not any(c.isdigit() for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed :func:`check_url`, with the addresses its host resolved to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IP, ...]

    def pinned(self) -> str:
        """The URL with its host replaced by the first checked address (the one connected to)."""
        parts = urlsplit(self.url)
        address = self.addresses[0]
        host = f"[{address}]" if address.version == 6 else str(address)
        return urlunsplit((parts.scheme, f"{host}:{self.port}", parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: str, allow_loopback: bool = False, resolve: Resolver | None = None) -> CheckedUrl:
    """Check that ``url`` may be fetched, and resolve its host.

    Args:
        url: what a user asked for.
        allow_loopback: let it reach 127.0.0.0/8 and ::1 (``URL_ALLOW_LOOPBACK``, the local stack only).
        resolve: the resolver; :func:`system_resolver` when None.

    Raises:
        UnsafeUrlError: not http(s), no host, credentials in the URL, a metadata host name, or any
            address the host resolves to is not public.
        TransientError: the resolver failed.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UnsafeUrlError(f"the URL {url!r} is not valid ({err})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrlError(f"only http and https URLs can be fetched, not {scheme or 'a URL without a scheme'}")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeUrlError(f"the URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrlError("URLs with a user name or password cannot be fetched")
    problem = host_problem(host, allow_loopback)
    if problem is not None:
        raise UnsafeUrlError(f"the URL's host {host} is {problem}, which may not be fetched",
                             host=host, problem=problem)
    port = port or (443 if scheme == "https" else 80)
    literal = literal_address(host)
    raw = [str(literal)] if literal is not None else (resolve or system_resolver)(host, port)
    addresses: list[IP] = []
    for text in raw:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        why = forbidden_reason(address, allow_loopback)
        if why is not None:
            raise UnsafeUrlError(f"the URL's host {host} resolves to {address}, {why}, which may not be fetched",
                                 host=host, problem=why, address=address)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeUrlError(f"the host {host} resolves to no address")
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


@dataclass
class Fetched:
    """An open, streamed response and the URL it finally came from (after redirects)."""

    url: str
    response: httpx.Response


class GuardedHttp:
    """GETs by httpx that reach only what :func:`check_url` allows, at every redirect.

    Args:
        allow_loopback: see :func:`check_url`.
        resolve: the resolver; :func:`system_resolver` when None.
        timeout_s: connect and read timeout of each request.
        client: the httpx client (tests); one without proxies or redirects is made when None.
    """

    def __init__(self, allow_loopback: bool = False, resolve: Resolver | None = None, timeout_s: float = 30.0,
                 client: httpx.Client | None = None, user_agent: str = "parascribe-ingest/1") -> None:
        self._allow_loopback = allow_loopback
        self._resolve = resolve
        self._user_agent = user_agent
        self._client = client or httpx.Client(follow_redirects=False, trust_env=False,
                                              timeout=httpx.Timeout(timeout_s))

    def check(self, url: str) -> CheckedUrl:
        return check_url(url, self._allow_loopback, self._resolve)

    def open(self, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
        """Send a streamed GET to ``url``, following up to :data:`MAX_REDIRECTS` checked redirects.

        The caller closes ``response``. Statuses other than redirects are returned as they are.

        Raises:
            UnsafeUrlError: the URL, or a redirect, may not be fetched.
            PermanentError: too many redirects, or a redirect without a location.
            TransientError: the connection failed or timed out.
        """
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            checked = self.check(current)
            request_headers = {"User-Agent": self._user_agent, **(headers or {}), "Host": checked.host_header}
            extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
            request = self._client.build_request("GET", checked.pinned(), headers=request_headers,
                                                 extensions=extensions)
            try:
                response = self._client.send(request, stream=True)
            except httpx.TransportError as err:
                raise TransientError(f"fetching {current}: {type(err).__name__}: {err}") from err
            if response.status_code not in _REDIRECTS:
                return Fetched(current, response)
            location = response.headers.get("location")
            response.close()
            if not location:
                raise PermanentError(f"the URL {current} redirects without saying where ({response.status_code})")
            current = urljoin(current, location)
            log.debug("redirected to %s", current)
        raise PermanentError(f"the URL {url} redirects more than {MAX_REDIRECTS} times")

    @contextmanager
    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Iterator[Fetched]:
        """:meth:`open` as a context manager that closes the response."""
        fetched = self.open(url, headers)
        try:
            yield fetched
        finally:
            fetched.response.close()

    def close(self) -> None:
        self._client.close()

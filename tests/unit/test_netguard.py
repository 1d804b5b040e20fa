"""The SSRF guard: what it refuses, what it allows, and that every redirect and connection is checked."""

from __future__ import annotations

import httpx
import pytest

from parascribe.errors import PermanentError, is_transient
from parascribe.netguard import GuardedHttp, UnsafeUrlError, check_url, forbidden_reason


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        return table[host]
    return resolve


PUBLIC = "93.184.215.14"


@pytest.mark.parametrize(("address", "what"), [
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("169.254.10.10", "link-local"),
    ("fe80::1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("fc00::1", "private"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:127.0.0.1", "loopback"),
    ("64:ff9b::a00:1", "private"),
    ("2002:a00:1::", "private"),
])
def test_refuses_what_only_the_network_can_reach(address: str, what: str) -> None:
    with pytest.raises(UnsafeUrlError) as err:
        check_url("http://victim.example/x", resolve=resolver({"victim.example": [address]}))
    assert what in err.value.reason and "victim.example" in err.value.reason
    assert not is_transient(err.value)


def test_refuses_when_any_resolved_address_is_private() -> None:
    with pytest.raises(UnsafeUrlError, match="10.1.2.3"):
        check_url("https://mixed.example/", resolve=resolver({"mixed.example": [PUBLIC, "10.1.2.3"]}))


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://[::ffff:a00:1]/", "http://169.254.169.254/computeMetadata/v1/",
                                 "http://[fd00:ec2::254]/"])
def test_refuses_ip_literals_without_asking_the_resolver(url: str) -> None:
    def never(host: str, port: int) -> list[str]:
        raise AssertionError("an IP literal was resolved")
    with pytest.raises(UnsafeUrlError):
        check_url(url, resolve=never)


@pytest.mark.parametrize("url", ["http://metadata.google.internal/computeMetadata/v1/", "http://metadata/",
                                 "http://METADATA.google.internal./"])
def test_refuses_the_metadata_server_by_name(url: str) -> None:
    with pytest.raises(UnsafeUrlError, match="metadata"):
        check_url(url, resolve=resolver({}))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.mp3", "gopher://x/", "//example.com/a",
                                 "http://user:pw@example.com/a.mp3", "http:///nohost"])
def test_refuses_other_schemes_credentials_and_missing_hosts(url: str) -> None:
    with pytest.raises(UnsafeUrlError):
        check_url(url, resolve=resolver({"example.com": [PUBLIC], "x": [PUBLIC]}))


def test_allows_public_addresses_and_loopback_only_when_asked() -> None:
    checked = check_url("https://media.example:8443/a.mp3?x=1",
                        resolve=resolver({"media.example": [PUBLIC, "2606:2800:220:1::1"]}))
    assert checked.host == "media.example" and checked.port == 8443
    assert checked.pinned() == f"https://{PUBLIC}:8443/a.mp3?x=1"
    assert checked.host_header == "media.example:8443"
    local = resolver({"localhost": ["127.0.0.1"]})
    with pytest.raises(UnsafeUrlError, match="loopback"):
        check_url("http://localhost:9000/a.mp3", resolve=local)
    assert check_url("http://localhost:9000/a.mp3", allow_loopback=True, resolve=local).port == 9000
    # Loopback allowed never opens private ranges or the metadata server.
    assert forbidden_reason(__import__("ipaddress").ip_address("10.0.0.1"), allow_loopback=True) == "a private address"
    assert forbidden_reason(__import__("ipaddress").ip_address("169.254.169.254"), True) == "the metadata server"


def _client(handler) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)


def test_every_redirect_is_checked_and_the_connection_is_pinned() -> None:
    seen: list[tuple[str, str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["host"], request.extensions.get("sni_hostname")))
        if request.url.path == "/start":
            return httpx.Response(302, headers={"location": "https://cdn.example/next"})
        if request.url.path == "/next":
            return httpx.Response(301, headers={"location": "http://internal.example/secret"})
        return httpx.Response(200, content=b"secret")

    table = {"start.example": [PUBLIC], "cdn.example": ["93.184.215.15"], "internal.example": ["10.0.0.1"]}
    http = GuardedHttp(resolve=resolver(table), client=_client(handler))
    with pytest.raises(UnsafeUrlError, match="internal.example resolves to 10.0.0.1"):
        http.open("http://start.example/start")
    assert seen == [(f"http://{PUBLIC}/start", "start.example", None),
                    ("https://93.184.215.15/next", "cdn.example", "cdn.example")]


def test_a_redirect_to_a_public_address_is_followed_to_its_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a":
            return httpx.Response(307, headers={"location": "/b"})
        return httpx.Response(200, content=b"audio")

    http = GuardedHttp(resolve=resolver({"ok.example": [PUBLIC]}), client=_client(handler))
    with http.get("http://ok.example/a") as fetched:
        assert fetched.url == "http://ok.example/b"
        assert fetched.response.read() == b"audio"


def test_redirect_loops_end() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "/again"})

    http = GuardedHttp(resolve=resolver({"loop.example": [PUBLIC]}), client=_client(handler))
    with pytest.raises(PermanentError, match="redirects more than"):
        http.open("http://loop.example/")

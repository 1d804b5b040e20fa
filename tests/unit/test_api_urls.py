"""The API's URL check: its own reasons for the URL's form, netguard's rules for hosts and addresses (resolved)."""

from __future__ import annotations

import ipaddress

import pytest

from parascribe.api.urls import MAX_URL_LENGTH, UrlRejected, check_url
from parascribe.errors import TransientError
from parascribe.netguard import UnsafeUrlError, forbidden_reason, literal_address

PUBLIC = "93.184.215.14"
DNS = {"www.youtube.com": [PUBLIC], "example.com": [PUBLIC, "2606:2800:220:1::1"], "localhost": ["127.0.0.1"],
       "api.localhost": ["127.0.0.1"], "rebind.example": [PUBLIC, "10.9.8.7"], "meta.example": ["169.254.169.254"]}


def dns(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise UnsafeUrlError(f"the host {host} does not resolve (Name or service not known)")
    return DNS[host]


@pytest.mark.parametrize("url", [
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
    "http://example.com/a.mp3",
    "HTTPS://Example.COM:8443/path?q=1#frag",
    "https://8.8.8.8/file.wav",
    "https://[2001:4860:4860::8888]/x",
    "https://example.com./trailing-dot",
])
def test_public_urls_pass_unchanged(url: str) -> None:
    assert check_url(url, resolve=dns) == url


@pytest.mark.parametrize("url,reason", [
    ("file:///etc/passwd", "scheme: file://"),
    ("ftp://example.com/a.mp3", "scheme: ftp://"),
    ("gopher://example.com/", "scheme: gopher://"),
    ("javascript:alert(1)", "scheme: javascript://"),
    ("example.com/a.mp3", "scheme: none"),
    ("", "is empty"),
    ("http://", "has no host"),
    ("http://exa mple.com/", "spaces or control characters"),
    ("http://user:pw@example.com/", "credentials"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://example.com/" + "a" * MAX_URL_LENGTH, "longer than"),
])
def test_malformed_or_non_http_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(UrlRejected, match=reason):
        check_url(url, resolve=dns)


@pytest.mark.parametrize("url,problem", [
    ("http://169.254.169.254/computeMetadata/v1/", "metadata server"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata server"),
    ("http://METADATA.GOOGLE.INTERNAL./", "metadata server"),
    ("http://metadata/", "metadata server"),
    ("http://[fd00:ec2::254]/", "metadata server"),
    ("http://10.0.0.1/x", "private address"),
    ("http://192.168.1.10/", "private address"),
    ("http://172.16.5.4/", "private address"),
    ("http://[fc00::1]/", "private address"),
    ("http://169.254.10.10/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://240.0.0.1/", "reserved"),
    ("http://[64:ff9b::a00:1]/", "private address"),  # NAT64 of 10.0.0.1
    ("http://127.0.0.1:8080/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:169.254.169.254]/", "metadata server"),
    ("http://[::ffff:10.0.0.1]/", "private address"),
    ("http://2852039166/", "metadata server"),          # 169.254.169.254 as one number
    ("http://0xa9.0xfe.0xa9.0xfe/", "metadata server"),  # ...in hex parts
    ("http://0x7f.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://localhost:9000/", "this machine"),
    ("http://api.localhost/", "this machine"),
    ("http://db.c.my-project.internal/", "private network name"),
    ("http://rebind.example/", r"private address \(rebind.example resolves to 10.9.8.7\)"),
    ("http://meta.example/", "metadata server"),
    ("http://nowhere.example/", "does not resolve"),
])
def test_hosts_that_are_not_public_are_refused(url: str, problem: str) -> None:
    with pytest.raises(UrlRejected, match=problem) as info:
        check_url(url, what="callback_url", resolve=dns)
    assert info.value.reason.startswith("callback_url ")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost:3000/x", "http://[::1]/",
                                 "http://0x7f.1/"])
def test_allow_loopback_lets_loopback_through(url: str) -> None:
    assert check_url(url, allow_loopback=True, resolve=dns) == url


@pytest.mark.parametrize("url", ["http://10.0.0.1/x", "http://169.254.169.254/", "http://metadata.google.internal/",
                                 "http://192.168.0.2/", "file:///etc/passwd"])
def test_allow_loopback_allows_nothing_else(url: str) -> None:
    with pytest.raises(UrlRejected):
        check_url(url, allow_loopback=True, resolve=dns)


def test_literals_are_judged_without_asking_the_resolver() -> None:
    def never(host: str, port: int) -> list[str]:
        raise AssertionError(f"{host} was resolved")

    assert literal_address("example.com") is None and literal_address("cafe.be") is None
    assert literal_address("deadbeef") is None
    assert literal_address("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert check_url("https://8.8.8.8/a.mp3", resolve=never) == "https://8.8.8.8/a.mp3"
    with pytest.raises(UrlRejected, match=r"metadata server \(0xa9.0xfe.0xa9.0xfe, that is 169.254.169.254\)"):
        check_url("http://0xa9.0xfe.0xa9.0xfe/", resolve=never)


def test_a_resolver_failure_is_transient_not_a_rejection() -> None:
    def down(host: str, port: int) -> list[str]:
        raise TransientError(f"resolving {host}: Temporary failure in name resolution")

    with pytest.raises(TransientError):
        check_url("https://example.com/a.mp3", resolve=down)


def test_public_addresses_have_no_problem() -> None:
    assert forbidden_reason(ipaddress.ip_address("1.1.1.1")) is None
    assert forbidden_reason(ipaddress.ip_address("2606:4700:4700::1111")) is None

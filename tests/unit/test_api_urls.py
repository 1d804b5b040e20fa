"""The API's early URL check: http(s) only, and no host that is the metadata server or not public, by its text."""

from __future__ import annotations

import ipaddress

import pytest

from parascribe.api.urls import MAX_URL_LENGTH, UrlRejected, address_problem, check_url, literal_ip


@pytest.mark.parametrize("url", [
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
    "http://example.com/a.mp3",
    "HTTPS://Example.COM:8443/path?q=1#frag",
    "https://8.8.8.8/file.wav",
    "https://[2001:4860:4860::8888]/x",
    "https://example.com./trailing-dot",
])
def test_public_urls_pass_unchanged(url: str) -> None:
    assert check_url(url) == url


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
        check_url(url)


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
    ("http://100.64.0.1/", "reserved"),
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
])
def test_hosts_that_are_not_public_are_refused(url: str, problem: str) -> None:
    with pytest.raises(UrlRejected, match=problem) as info:
        check_url(url, what="callback_url")
    assert info.value.reason.startswith("callback_url ")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost:3000/x", "http://[::1]/",
                                 "http://0x7f.1/"])
def test_allow_loopback_lets_loopback_through(url: str) -> None:
    assert check_url(url, allow_loopback=True) == url


@pytest.mark.parametrize("url", ["http://10.0.0.1/x", "http://169.254.169.254/", "http://metadata.google.internal/",
                                 "http://192.168.0.2/", "file:///etc/passwd"])
def test_allow_loopback_allows_nothing_else(url: str) -> None:
    with pytest.raises(UrlRejected):
        check_url(url, allow_loopback=True)


def test_names_are_not_resolved_here() -> None:
    assert literal_ip("example.com") is None and literal_ip("cafe.be") is None and literal_ip("deadbeef") is None
    assert literal_ip("2130706433") == ipaddress.ip_address("127.0.0.1")


def test_public_addresses_have_no_problem() -> None:
    assert address_problem(ipaddress.ip_address("1.1.1.1")) is None
    assert address_problem(ipaddress.ip_address("2606:4700:4700::1111")) is None

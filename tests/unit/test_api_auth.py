"""API keys: digests only, every digest compared, 401 with a Bearer challenge, no key in any answer or log."""

from __future__ import annotations

import hashlib
import hmac
import logging
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from parascribe.api import auth
from parascribe.api.app import build
from parascribe.api.auth import ApiKeys, hash_api_key, new_api_key, parse_key_hashes
from parascribe.api.errors import ApiError
from parascribe.config import load_settings
from parascribe.errors import ConfigError
from tests.fakes import MemoryStore, NoUploads, RecordingPublisher

KEY = "psk_test-key-1"
OTHER = "psk_test-key-2"


def test_hash_is_the_sha256_hex_digest_and_matches_the_documented_commands() -> None:
    assert hash_api_key(KEY) == hashlib.sha256(KEY.encode()).hexdigest()
    out = subprocess.run([sys.executable, "-c", f"from parascribe.api.auth import hash_api_key; "
                          f"print(hash_api_key({KEY!r}))"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hash_api_key(KEY)


def test_new_keys_are_long_and_distinct() -> None:
    keys = {new_api_key() for _ in range(50)}
    assert len(keys) == 50 and all(len(k) >= 40 for k in keys)


def test_parse_accepts_spaces_case_and_empty_entries() -> None:
    h1, h2 = hash_api_key(KEY), hash_api_key(OTHER)
    assert parse_key_hashes(f" {h1.upper()} ,, {h2} ,") == (h1, h2)


@pytest.mark.parametrize("value,match", [("", "empty"), (" , ", "empty"), (KEY, "entry 1 is not a SHA-256"),
                                         (f"{hash_api_key(KEY)},abc", "entry 2")])
def test_parse_refuses_empty_or_raw_keys(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_key_hashes(value)
    assert KEY not in info.value.reason, "a key pasted by mistake is never echoed"


def test_any_listed_key_matches_and_others_do_not() -> None:
    keys = ApiKeys((hash_api_key(KEY), hash_api_key(OTHER)))
    assert keys.matches(KEY) and keys.matches(OTHER)
    assert not keys.matches("psk_wrong") and not keys.matches("")
    assert not keys.matches(hash_api_key(KEY)), "the digest itself is not a key"


def test_every_digest_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    digests = tuple(hash_api_key(k) for k in (KEY, OTHER, "third"))
    assert ApiKeys(digests).matches(KEY)
    assert calls == [d.encode() for d in digests]


@pytest.mark.parametrize("header,reason", [
    (None, "missing API key"), ("", "missing API key"), (f"Basic {KEY}", "must be 'Bearer <key>'"),
    ("Bearer ", "must be 'Bearer <key>'"), ("Bearer nope", "not valid"),
])
def test_check_raises_401_with_a_bearer_challenge(header: str | None, reason: str) -> None:
    with pytest.raises(ApiError) as info:
        ApiKeys((hash_api_key(KEY),)).check(header)
    assert info.value.status == 401 and reason in info.value.reason
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_check_accepts_any_case_of_the_scheme() -> None:
    keys = ApiKeys((hash_api_key(KEY),))
    keys.check(f"Bearer {KEY}")
    keys.check(f"bearer {KEY}")


def test_the_app_refuses_to_start_without_keys() -> None:
    with pytest.raises(ConfigError, match="API_KEY_HASHES"):
        build(load_settings(api_key_hashes=""))


def test_routes_need_the_key_and_healthz_does_not(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(api_key_hashes=hash_api_key(KEY))
    publisher = RecordingPublisher()
    app = build(settings, store=MemoryStore(), publisher=publisher, uploads=NoUploads())  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        none = client.get("/v1/jobs")
        assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in none.json()["detail"]
        wrong = client.get("/v1/jobs", headers={"Authorization": "Bearer psk_guess"})
        assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]
        assert "psk_guess" not in wrong.text
        ok = client.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json() == {"jobs": [], "next_cursor": None}
    assert KEY not in caplog.text and "psk_guess" not in caplog.text
    assert publisher.messages == []

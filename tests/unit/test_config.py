"""Settings: defaults, user variable names, and failures that name the variable."""

from __future__ import annotations

import pytest

from parascribe.config import load_settings
from parascribe.errors import ConfigError


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TRANSCRIPTION_METHOD", "CHUNK_DURATION_MINUTES", "CONVEX_WEBHOOK_URL", "GPU_BATCH_SIZE"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.transcription_method == "auto"
    assert s.chunk_seconds == 600.0
    assert s.parakeet_model_name == "nvidia/parakeet-tdt-0.6b-v2"


def test_reads_the_variables_users_already_have(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "ENABLE_GPU_TRANSCRIPTION": "false",
        "TRANSCRIPTION_METHOD": "hybrid",
        "PARAKEET_MODEL_NAME": "/models/parakeet.nemo",
        "GPU_BATCH_SIZE": "64",
        "GPU_MEMORY_LIMIT_GB": "20",
        "CHUNK_DURATION_MINUTES": "0.25",
        "ENABLE_FALLBACK": "0",
        "COST_OPTIMIZATION": "no",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert (s.enable_gpu_transcription, s.transcription_method, s.gpu_batch_size) == (False, "hybrid", 64)
    assert s.gpu_memory_limit_gb == 20.0
    assert s.chunk_seconds == pytest.approx(15.0)
    assert s.enable_fallback is False and s.cost_optimization is False
    assert s.parakeet_model_name == "/models/parakeet.nemo"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("TRANSCRIPTION_METHOD", "fast", "TRANSCRIPTION_METHOD: Input should be 'auto', 'gpu', 'deepgram' or 'hybrid'"),
        ("GPU_BATCH_SIZE", "0", "GPU_BATCH_SIZE: Input should be greater than or equal to 1"),
        ("CHUNK_DURATION_MINUTES", "-1", "CHUNK_DURATION_MINUTES: Input should be greater than 0"),
        ("ENABLE_FALLBACK", "maybe", "ENABLE_FALLBACK"),
        ("METRICS_EXPORTER", "stdout", "METRICS_EXPORTER: Input should be 'cloud', 'local' or 'none'"),
    ],
)
def test_wrong_values_fail_with_the_variable_name(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert expected in err.value.reason
    assert repr(value) in err.value.reason


def test_inconsistent_settings_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSCRIPTION_METHOD", "gpu")
    monkeypatch.setenv("ENABLE_GPU_TRANSCRIPTION", "false")
    with pytest.raises(ConfigError, match="ENABLE_GPU_TRANSCRIPTION"):
        load_settings()


def test_webhook_url_requires_a_secret_and_the_secret_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEX_WEBHOOK_URL", "https://example.convex.site/parascribe")
    with pytest.raises(ConfigError, match="CONVEX_WEBHOOK_SECRET"):
        load_settings()
    monkeypatch.setenv("CONVEX_WEBHOOK_SECRET", "s3cr3t-value")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-key-value")
    s = load_settings()
    assert "s3cr3t-value" not in repr(s) and "dg-key-value" not in repr(s)
    assert s.convex_webhook_secret is not None and s.convex_webhook_secret.get_secret_value() == "s3cr3t-value"


def test_bucket_prefix_applies_to_every_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKET_PREFIX", "acme-prod")
    s = load_settings()
    assert (s.uploads_bucket, s.transcripts_bucket, s.state_bucket) == (
        "acme-prod-uploads", "acme-prod-transcripts", "acme-prod-state",
    )

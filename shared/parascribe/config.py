"""One validated settings object for every service.

Variables are read from the environment without a prefix, because users already
set ``TRANSCRIPTION_METHOD``, ``GPU_BATCH_SIZE`` and friends by those names.
A wrong value fails at start-up with the variable's name and what is allowed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parascribe import names
from parascribe.contracts import Method
from parascribe.errors import ConfigError


class Settings(BaseSettings):
    """Every setting the pipeline reads. See the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- where things live ---
    gcp_project: str = Field("parascribe-local", min_length=1)
    bucket_prefix: str = Field("", pattern=r"^[a-z0-9-]*$")
    pubsub_emulator_host: str | None = None
    storage_emulator_host: str | None = None

    # --- transcription choices (names users already have) ---
    enable_gpu_transcription: bool = True
    transcription_method: Method = "auto"
    parakeet_model_name: str = Field("nvidia/parakeet-tdt-0.6b-v2", min_length=1)
    gpu_batch_size: int = Field(16, ge=1, le=512)
    gpu_memory_limit_gb: float | None = Field(None, gt=0)
    chunk_duration_minutes: float = Field(10.0, gt=0, le=60)
    enable_fallback: bool = True
    cost_optimization: bool = True

    # --- planning and limits ---
    chunk_overlap_seconds: float = Field(2.0, ge=0, le=30)
    max_audio_minutes: float = Field(360.0, gt=0)
    max_upload_mb: float = Field(4096.0, gt=0)
    default_deadline_minutes: float = Field(60.0, gt=0)
    gpu_expected_rtfx: float = Field(150.0, gt=0)
    gpu_startup_seconds: float = Field(60.0, ge=0)
    deepgram_expected_rtfx: float = Field(60.0, gt=0)
    deepgram_request_overhead_seconds: float = Field(3.0, ge=0)

    # --- ASR worker ---
    asr_engine: Literal["auto", "parakeet", "offline"] = "auto"
    asr_device: Literal["auto", "cuda", "cpu"] = "auto"
    gpu_batch_linger_ms: int = Field(200, ge=0, le=10_000)
    long_audio_threshold_seconds: float | None = Field(None, gt=0)
    parakeet_cpu_fallback: bool = False
    parakeet_cpu_int8: bool = False
    offline_model_path: str | None = None
    source_cache_mb: float = Field(default=2048.0, gt=0)
    port: int = Field(default=8080, ge=0, le=65535)
    host: str = Field(default="0.0.0.0", min_length=1)

    # --- Deepgram ---
    deepgram_api_key: SecretStr | None = None
    deepgram_base_url: str | None = None
    deepgram_model: str = "nova-3"
    deepgram_language: str = "en"
    deepgram_smart_format: bool = True
    deepgram_utterances: bool = False
    deepgram_paragraphs: bool = False
    deepgram_diarize: bool = False
    deepgram_timeout_seconds: float = Field(300.0, gt=0)
    deepgram_max_concurrency: int = Field(16, ge=1, le=100)
    deepgram_max_instances: int = Field(1, ge=1, le=100)
    """Deepgram worker instances at most: with DEEPGRAM_MAX_CONCURRENCY, the requests the planner's Deepgram path
    holds in flight at once. Terraform sets both on the router from what it deploys."""

    # --- sweeper: ends jobs past their deadline plus a grace period ---
    sweep_grace_minutes: float = Field(30.0, gt=0)
    sweep_interval_seconds: float = Field(0.0, ge=0)
    """Seconds between sweeps the merger runs itself (the local stack); 0 in GCP, where Cloud Scheduler calls /sweep."""

    # --- webhook ---
    convex_webhook_url: str | None = None
    convex_webhook_secret: SecretStr | None = None
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_resend_seconds: float = Field(300.0, gt=0)
    """How often the sweeper sends a webhook that failed again (for a day)."""

    # --- metrics and prices (USD) ---
    metrics_exporter: Literal["cloud", "local", "none"] = "local"
    metrics_flush_seconds: float = Field(60.0, ge=10)
    metrics_local_path: str = Field(".parascribe/metrics.jsonl", min_length=1)
    metrics_location: str = Field("global", min_length=1)
    deepgram_price_per_minute: float = Field(0.0043, ge=0)
    gpu_price_per_second: float = Field(0.0001867, ge=0)
    cpu_price_per_vcpu_second: float = Field(0.000018, ge=0)
    memory_price_per_gib_second: float = Field(0.000002, ge=0)
    gpu_instance_vcpus: int = Field(4, ge=1)
    gpu_instance_memory_gib: int = Field(16, ge=1)

    # --- API and URL ingest ---
    api_key_hashes: str = ""
    """Comma-separated SHA-256 hex digests of the accepted API keys (the keys live in Secret Manager)."""
    api_public_url: str | None = None
    """The API's own base URL for status links; derived from each request when unset."""
    callback_webhook_secret: SecretStr | None = None
    """Signs per-job ``callback_url`` deliveries (Standard Webhooks); CONVEX_WEBHOOK_SECRET when unset."""
    url_allow_loopback: bool = False
    """Let URL ingest and callbacks reach loopback addresses: the local stack only. Private ranges stay refused."""
    ingest_max_mb: float = Field(4096.0, gt=0)
    ingest_timeout_minutes: float = Field(120.0, gt=0)
    ytdlp_cookies_file: str | None = None
    """Cookies for yt-dlp; none unless set. yt-dlp never reads config files or runs external commands."""

    # --- speech segmentation (Silero VAD) in the ASR worker ---
    vad_enabled: bool = True
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    vad_min_silence_ms: int = Field(300, ge=0, le=10_000)
    vad_min_speech_ms: int = Field(250, ge=0, le=10_000)
    vad_speech_pad_ms: int = Field(200, ge=0, le=2_000)
    segment_max_seconds: float = Field(30.0, gt=1, le=120)
    segment_max_pause_seconds: float = Field(2.0, gt=0, le=60)
    """A pause longer than this always ends a segment."""
    segment_batch_size: int = Field(64, ge=1, le=1024)
    """Segments per engine call with VAD on (short segments batch far larger than 10-minute chunks)."""
    expected_speech_ratio: float = Field(0.8, gt=0, le=1)
    """The planner's guess of how much of a file is speech, until the worker has measured it."""

    # --- GPU capacity and the monthly budget (planner) ---
    gpu_max_instances: int = Field(1, ge=1, le=100)
    backlog_cache_seconds: float = Field(5.0, ge=0)
    monthly_budget_usd: float | None = Field(None, gt=0)
    budget_exhausted_policy: Literal["reject", "gpu_only", "allow"] = "gpu_only"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.transcription_method == "gpu" and not self.enable_gpu_transcription:
            raise ValueError(
                "TRANSCRIPTION_METHOD=gpu needs ENABLE_GPU_TRANSCRIPTION=true "
                "(or choose auto|deepgram|hybrid)"
            )
        if self.convex_webhook_url and not self.convex_webhook_secret:
            raise ValueError("CONVEX_WEBHOOK_URL is set but CONVEX_WEBHOOK_SECRET is empty: webhooks are always signed")
        if self.convex_webhook_url and not self.convex_webhook_url.startswith(("http://", "https://")):
            raise ValueError("CONVEX_WEBHOOK_URL must start with http:// or https://")
        return self

    def bucket(self, base: str) -> str:
        """The deployed name of one of :data:`parascribe.names.BUCKETS`."""
        return names.bucket_name(base, self.bucket_prefix)

    @property
    def uploads_bucket(self) -> str:
        return self.bucket(names.BUCKET_UPLOADS)

    @property
    def transcripts_bucket(self) -> str:
        return self.bucket(names.BUCKET_TRANSCRIPTS)

    @property
    def state_bucket(self) -> str:
        return self.bucket(names.BUCKET_STATE)

    @property
    def chunk_seconds(self) -> float:
        return self.chunk_duration_minutes * 60.0



def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]).upper() or "settings"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"{loc}: {e['msg']}{got_s}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, failing with a readable message.

    Raises:
        ConfigError: naming each wrong variable and the values it allows.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once."""
    return load_settings()

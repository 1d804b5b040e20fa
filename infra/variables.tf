# ---------------------------------------------------------------------------
# Shared names: filled by names.auto.tfvars.json, which infra/scripts/gen_names.py
# writes from parascribe.names and parascribe.metric_names. Never edit by hand.
# ---------------------------------------------------------------------------

variable "topics" {
  description = "Pub/Sub topic names keyed by role (audio_uploaded, asr_gpu, ..., dead_letter)."
  type        = map(string)
}

variable "buckets" {
  description = "Bucket base names keyed by role (uploads, transcripts, state, models); deployed as <bucket_prefix>-<base>."
  type        = map(string)
}

variable "subscriptions" {
  description = "Subscriptions keyed by name, exactly as parascribe.names.SUBSCRIPTIONS defines them."
  type = map(object({
    topic                 = string
    push_path             = string # null for streaming pull
    service               = string
    ack_deadline_s        = number
    max_delivery_attempts = number
    dead_letter           = bool
  }))

  validation {
    condition     = alltrue([for s in values(var.subscriptions) : s.ack_deadline_s >= 10 && s.ack_deadline_s <= 600])
    error_message = "Pub/Sub ack deadlines must be between 10 and 600 seconds."
  }
  validation {
    condition     = alltrue([for s in values(var.subscriptions) : !s.dead_letter || (s.max_delivery_attempts >= 5 && s.max_delivery_attempts <= 100)])
    error_message = "A dead-letter policy needs max_delivery_attempts between 5 and 100."
  }
}

variable "metric_types" {
  description = "Custom metric types keyed by short name (cost_usd, rtfx, ...)."
  type        = map(string)
}

variable "metric_value_types" {
  description = "INT64, DOUBLE or DISTRIBUTION per metric short name, as parascribe.metrics writes the points."
  type        = map(string)
}

# ---------------------------------------------------------------------------
# Where and what to deploy
# ---------------------------------------------------------------------------

variable "project_id" {
  description = "GCP project that holds everything."
  type        = string
}

variable "region" {
  description = "Region for buckets, Cloud Run, the function and Artifact Registry. It must offer NVIDIA L4 on Cloud Run."
  type        = string
  default     = "us-central1"
}

variable "bucket_prefix" {
  description = "Prefix for bucket names (bucket names are global). Services receive it as BUCKET_PREFIX."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}[a-z0-9]$", var.bucket_prefix))
    error_message = "bucket_prefix must be 3-42 characters of lower-case letters, digits and dashes (it also satisfies BUCKET_PREFIX in config.py)."
  }
}

variable "labels" {
  description = "Labels on every resource that takes them."
  type        = map(string)
  default     = { app = "parascribe" }
}

variable "deletion_protection" {
  description = "Refuse to destroy Cloud Run services and worker pools."
  type        = bool
  default     = true
}

variable "artifact_repository" {
  description = "Artifact Registry Docker repository that Cloud Build pushes the images to."
  type        = string
  default     = "parascribe"
}

variable "image_tag" {
  description = "Tag of the asr-worker, deepgram-worker and merger images (cloudbuild.yaml passes digests through `images` instead)."
  type        = string
  default     = "latest"
}

variable "images" {
  description = "Full image references by service (asr_worker, deepgram_worker, merger), e.g. digests; overrides image_tag."
  type        = map(string)
  default     = {}
}

variable "router_zip" {
  description = "Cloud Functions source zip built by infra/scripts/package_router.py. Empty: ../build/router.zip next to this module."
  type        = string
  default     = ""
}

# ---------------------------------------------------------------------------
# Service shape
# ---------------------------------------------------------------------------

variable "log_level" {
  description = "LOG_LEVEL for every service."
  type        = string
  default     = "INFO"
}

variable "transcription_method" {
  description = "TRANSCRIPTION_METHOD: auto | gpu | deepgram | hybrid."
  type        = string
  default     = "auto"

  validation {
    condition     = contains(["auto", "gpu", "deepgram", "hybrid"], var.transcription_method)
    error_message = "transcription_method must be auto, gpu, deepgram or hybrid."
  }
}

variable "service_env" {
  description = "Extra settings for every service, by environment variable name (e.g. CHUNK_DURATION_MINUTES). Never secrets."
  type        = map(string)
  default     = {}
}

variable "convex_webhook_url" {
  description = "CONVEX_WEBHOOK_URL. Empty disables webhooks; when set, the convex-webhook-secret secret needs a version."
  type        = string
  default     = ""
}

variable "router_max_instances" {
  description = "Most router function instances."
  type        = number
  default     = 20
}

variable "router_concurrency" {
  description = "Requests one router instance handles at once (header probes are I/O bound)."
  type        = number
  default     = 4
}

variable "asr_worker_mode" {
  description = "worker_pool (Cloud Run worker pool, manual scaling: the right shape for a pull consumer) or service (Cloud Run service with min instances, for projects without worker-pool GPU access)."
  type        = string
  default     = "worker_pool"

  validation {
    condition     = contains(["worker_pool", "service"], var.asr_worker_mode)
    error_message = "asr_worker_mode must be worker_pool or service."
  }
}

variable "worker_pool_launch_stage" {
  description = "Launch stage to request for the GPU worker pool (GPU on worker pools was BETA when this was written)."
  type        = string
  default     = "BETA"
}

variable "asr_worker_instances" {
  description = "GPU instances that pull from the ASR subscription (worker pool: exact count; service: minimum)."
  type        = number
  default     = 1

  validation {
    condition     = var.asr_worker_instances >= 1
    error_message = "The ASR worker pulls, so at least one instance must always run."
  }
}

variable "asr_worker_max_instances" {
  description = "Most GPU instances in service mode (bounded by the project's L4 quota)."
  type        = number
  default     = 3
}

variable "gpu_type" {
  description = "Cloud Run accelerator for the ASR worker."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_zonal_redundancy" {
  description = "Reserve zonal failover capacity for the GPU (about 1.6x the GPU price)."
  type        = bool
  default     = false
}

variable "parakeet_model_name" {
  description = "PARAKEET_MODEL_NAME: a Hugging Face id, or /models/<file>.nemo to load from the models bucket mounted read-only at /models."
  type        = string
  default     = "nvidia/parakeet-tdt-0.6b-v2"
}

variable "gpu_batch_size" {
  description = "GPU_BATCH_SIZE for the ASR worker."
  type        = number
  default     = 16
}

variable "deepgram_concurrency_limit" {
  description = "Deepgram's limit on concurrent pre-recorded requests per project."
  type        = number
  default     = 100

  validation {
    condition     = var.deepgram_concurrency_limit >= 1 && var.deepgram_concurrency_limit <= 100
    error_message = "Deepgram allows at most 100 concurrent pre-recorded requests per project."
  }
}

variable "deepgram_worker_concurrency" {
  description = "Requests one Deepgram worker instance serves at once; max instances = floor(limit / this)."
  type        = number
  default     = 10

  validation {
    condition     = var.deepgram_worker_concurrency >= 1 && var.deepgram_worker_concurrency <= 100
    error_message = "deepgram_worker_concurrency must be between 1 and 100 (DEEPGRAM_MAX_CONCURRENCY's range)."
  }
}

variable "deepgram_source_cache_mb" {
  description = "SOURCE_CACHE_MB for the Deepgram worker. Its /tmp is memory, shared with the requests in its 1 GiB."
  type        = number
  default     = 256

  validation {
    condition     = var.deepgram_source_cache_mb >= 1 && var.deepgram_source_cache_mb <= 512
    error_message = "deepgram_source_cache_mb must be between 1 and 512: the cache lives in the Deepgram worker's 1 GiB of memory."
  }
}

variable "merger_max_instances" {
  description = "Most merger instances."
  type        = number
  default     = 10
}

variable "merger_concurrency" {
  description = "Requests one merger instance handles at once (also its gunicorn threads)."
  type        = number
  default     = 8
}

variable "sweep_schedule" {
  description = "Cloud Scheduler cron (UTC) on which the merger's POST /sweep ends jobs past their deadline plus SWEEP_GRACE_MINUTES."
  type        = string
  default     = "*/5 * * * *"
}

variable "sweep_grace_minutes" {
  description = "SWEEP_GRACE_MINUTES: how long past its deadline a job may run before the sweeper fails it."
  type        = number
  default     = 30

  validation {
    condition     = var.sweep_grace_minutes > 0
    error_message = "sweep_grace_minutes must be positive."
  }
}

variable "retry_minimum_backoff" {
  description = "Pub/Sub retry policy: first redelivery delay."
  type        = string
  default     = "10s"
}

variable "retry_maximum_backoff" {
  description = "Pub/Sub retry policy: longest redelivery delay (at most 600s)."
  type        = string
  default     = "600s"
}

variable "state_retention_days" {
  description = "Delete job state (manifests, chunk results, status) this many days after it was written."
  type        = number
  default     = 30

  validation {
    condition     = var.state_retention_days >= 1
    error_message = "state_retention_days must be at least 1."
  }
}

variable "uploads_retention_days" {
  description = "Delete uploaded audio after this many days; 0 keeps it."
  type        = number
  default     = 0
}

# ---------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------

variable "alert_emails" {
  description = "E-mail addresses that receive the alerts."
  type        = list(string)
  default     = []
}

variable "create_metric_descriptors" {
  description = "Create descriptors for the alerted custom metrics, so alert policies can be created before the first point is written."
  type        = bool
  default     = true
}

variable "dlq_backlog_threshold" {
  description = "Alert when the dead-letter subscription holds more than this many messages for 10 minutes."
  type        = number
  default     = 0
}

# ---------------------------------------------------------------------------
# API and URL ingest
# ---------------------------------------------------------------------------

variable "api_public_url" {
  description = "API_PUBLIC_URL: the API's base URL in status links (a custom domain). Empty: the URL each request came in on."
  type        = string
  default     = ""
}

variable "api_max_instances" {
  description = "Most API instances."
  type        = number
  default     = 10
}

variable "api_concurrency" {
  description = "Requests one API instance serves at once (its routes block on GCS and Pub/Sub in a thread pool)."
  type        = number
  default     = 40
}

variable "ingest_worker_instances" {
  description = "Always-on ingest worker instances: a streaming pull needs a running instance."
  type        = number
  default     = 1
}

variable "ingest_worker_max_instances" {
  description = "Most ingest worker instances (Cloud Run adds them on CPU load)."
  type        = number
  default     = 3
}

variable "ingest_max_mb" {
  description = "INGEST_MAX_MB: the largest download, spooled in /tmp (memory on Cloud Run, 4 GiB per ingest instance)."
  type        = number
  default     = 2048

  validation {
    condition     = var.ingest_max_mb > 0 && var.ingest_max_mb <= 2560
    error_message = "ingest_max_mb must be positive and at most 2560: the spool shares the ingest worker's 4 GiB of memory."
  }
}

# Shared locals, APIs and the image registry. Each concern has its own file:
# storage.tf, pubsub.tf, iam.tf, run.tf, ingest.tf, functions.tf, scheduler.tf, monitoring.tf, outputs.tf.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # parascribe.names.bucket_name(base, prefix)
  bucket_names = { for role, base in var.buckets : role => "${var.bucket_prefix}-${base}" }

  # Service keys as parascribe.names uses them (router, asr_worker, ...) -> GCP resource names. The API
  # owns no subscription, so it is named here; every other service comes from names.SUBSCRIPTIONS.
  subscribed_services = distinct([for s in values(var.subscriptions) : s.service])
  service_names       = { for svc in distinct(concat(local.subscribed_services, ["api"])) : svc => replace(svc, "_", "-") }

  image_base = "${var.region}-docker.pkg.dev/${var.project_id}/${var.artifact_repository}"
  images = {
    for svc in ["asr_worker", "deepgram_worker", "merger", "api", "ingest_worker"] :
    svc => lookup(var.images, svc, "${local.image_base}/${local.service_names[svc]}:${var.image_tag}")
  }

  # A push endpoint must answer within the subscription's ack deadline, so each
  # service's request timeout is the longest deadline among its subscriptions.
  ack_deadline_s = {
    for svc in local.subscribed_services :
    svc => max([for s in values(var.subscriptions) : s.ack_deadline_s if s.service == svc]...)
  }

  # Pull subscriptions by the service that pulls them (the ASR worker, the ingest worker).
  pull_subscriptions       = { for name, s in var.subscriptions : s.service => name if s.push_path == null }
  dead_letter_subscription = one([for name, s in var.subscriptions : name if s.topic == var.topics.dead_letter])

  # Environment by service. Keys are config.py settings; secrets are never here (see secret_env).
  env_common = merge({
    GCP_PROJECT          = var.project_id
    BUCKET_PREFIX        = var.bucket_prefix
    METRICS_EXPORTER     = "cloud"
    LOG_LEVEL            = var.log_level
    TRANSCRIPTION_METHOD = var.transcription_method
    GPU_PRICE_PER_SECOND = var.gpu_zonal_redundancy ? "0.0002909" : "0.0001867"
  }, var.service_env)
  env_webhook = { for name, value in { CONVEX_WEBHOOK_URL = var.convex_webhook_url } : name => value if value != "" }
  env = {
    # The planner's capacity: the GPU worker pool's fixed count (or the service's maximum), and the
    # Deepgram path's requests in flight, instances x concurrency, as run.tf deploys them.
    router = merge(local.env_common, {
      GPU_MAX_INSTANCES        = tostring(var.asr_worker_mode == "worker_pool" ? var.asr_worker_instances : var.asr_worker_max_instances)
      DEEPGRAM_MAX_INSTANCES   = tostring(local.deepgram_max_instances)
      DEEPGRAM_MAX_CONCURRENCY = tostring(var.deepgram_worker_concurrency)
    })
    asr_worker = merge(local.env_common, {
      ASR_ENGINE              = "parakeet"
      ASR_DEVICE              = "cuda"
      PARAKEET_MODEL_NAME     = var.parakeet_model_name
      GPU_BATCH_SIZE          = tostring(var.gpu_batch_size)
      GPU_INSTANCE_VCPUS      = tostring(local.gpu_instance.cpu)
      GPU_INSTANCE_MEMORY_GIB = tostring(local.gpu_instance.memory_gib)
    })
    deepgram_worker = merge(local.env_common, {
      DEEPGRAM_MAX_CONCURRENCY = tostring(var.deepgram_worker_concurrency)
      # /tmp is memory on Cloud Run: the source cache shares the instance's 1 GiB with the requests.
      SOURCE_CACHE_MB = tostring(var.deepgram_source_cache_mb)
    })
    merger = merge(local.env_common, local.env_webhook, {
      GUNICORN_CMD_ARGS   = "--threads=${var.merger_concurrency}"
      SWEEP_GRACE_MINUTES = tostring(var.sweep_grace_minutes)
    })
    ingest_worker = merge(local.env_common, {
      # The spool of one track lives in /tmp, which is the instance's memory on Cloud Run.
      INGEST_MAX_MB = tostring(var.ingest_max_mb)
    })
    api = merge(local.env_common, { for name, value in { API_PUBLIC_URL = var.api_public_url } : name => value if value != "" })
  }

  # Secret Manager secret ids; each service reads only its own. Only the merger
  # sends webhooks: the router reports a rejected upload as JobFailed on asr-results.
  secrets = {
    deepgram_api_key      = "deepgram-api-key"
    convex_webhook_secret = "convex-webhook-secret"
    api_key_hashes        = "api-key-hashes"
  }
  webhook_secret_env = { for name, secret in { CONVEX_WEBHOOK_SECRET = "convex_webhook_secret" } : name => secret if var.convex_webhook_url != "" }
  secret_env = {
    router          = {}
    asr_worker      = {}
    deepgram_worker = { DEEPGRAM_API_KEY = "deepgram_api_key" }
    merger          = local.webhook_secret_env
    ingest_worker   = {}
    api             = { API_KEY_HASHES = "api_key_hashes" }
  }

  # Cloud Run GPU minimum for an L4: 4 vCPU and 16 GiB, instance-based billing.
  gpu_instance = { cpu = 4, memory_gib = 16 }
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

resource "google_artifact_registry_repository" "images" {
  location      = var.region
  repository_id = var.artifact_repository
  format        = "DOCKER"
  description   = "parascribe service images (cloudbuild.yaml)"
  labels        = var.labels
  depends_on    = [google_project_service.apis]
}

resource "google_secret_manager_secret" "secrets" {
  for_each  = local.secrets
  secret_id = each.value
  labels    = var.labels
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

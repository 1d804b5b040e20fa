# Cloud Run: the GPU ASR worker (pull), the Deepgram worker and the merger (push targets).

locals {
  # instances x concurrency never exceeds Deepgram's per-project limit on concurrent requests.
  deepgram_max_instances = floor(var.deepgram_concurrency_limit / var.deepgram_worker_concurrency)

  gpu_limits = {
    cpu              = tostring(local.gpu_instance.cpu)
    memory           = "${local.gpu_instance.memory_gib}Gi"
    "nvidia.com/gpu" = "1"
  }
  models_mount = "/models"
}

# --- ASR worker: Parakeet on an NVIDIA L4 ----------------------------------------
# Default: a worker pool. It has no HTTP endpoint and no request-driven scaling,
# which is what a streaming-pull consumer is; instances are always allocated CPU.

resource "google_cloud_run_v2_worker_pool" "asr_worker" {
  count = var.asr_worker_mode == "worker_pool" ? 1 : 0

  name                = local.service_names.asr_worker
  location            = var.region
  launch_stage        = var.worker_pool_launch_stage
  deletion_protection = var.deletion_protection
  labels              = var.labels

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = var.asr_worker_instances
  }

  template {
    service_account               = google_service_account.service["asr_worker"].email
    gpu_zonal_redundancy_disabled = !var.gpu_zonal_redundancy

    node_selector {
      accelerator = var.gpu_type
    }

    containers {
      image = local.images.asr_worker
      resources {
        limits = local.gpu_limits
      }
      dynamic "env" {
        for_each = local.env.asr_worker
        content {
          name  = env.key
          value = env.value
        }
      }
      volume_mounts {
        name       = "models"
        mount_path = local.models_mount
      }
    }

    volumes {
      name = "models"
      gcs {
        bucket    = google_storage_bucket.buckets["models"].name
        read_only = true
      }
    }
  }

  depends_on = [google_project_service.apis, google_storage_bucket_iam_member.service]
}

# Fallback shape: a service that never scales to zero and is never CPU-throttled.
# The container must then also answer HTTP on $PORT (GET /healthz).
resource "google_cloud_run_v2_service" "asr_worker" {
  count = var.asr_worker_mode == "service" ? 1 : 0

  name                = local.service_names.asr_worker
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    service_account               = google_service_account.service["asr_worker"].email
    gpu_zonal_redundancy_disabled = !var.gpu_zonal_redundancy
    timeout                       = "${local.ack_deadline_s.asr_worker}s"

    scaling {
      min_instance_count = var.asr_worker_instances
      max_instance_count = max(var.asr_worker_instances, var.asr_worker_max_instances)
    }

    node_selector {
      accelerator = var.gpu_type
    }

    containers {
      image = local.images.asr_worker
      resources {
        limits            = local.gpu_limits
        cpu_idle          = false
        startup_cpu_boost = true
      }
      dynamic "env" {
        for_each = local.env.asr_worker
        content {
          name  = env.key
          value = env.value
        }
      }
      volume_mounts {
        name       = "models"
        mount_path = local.models_mount
      }
      startup_probe {
        # Model load: allow up to 10 minutes.
        period_seconds    = 10
        failure_threshold = 60
        http_get {
          path = "/healthz"
        }
      }
    }

    volumes {
      name = "models"
      gcs {
        bucket    = google_storage_bucket.buckets["models"].name
        read_only = true
      }
    }
  }

  depends_on = [google_project_service.apis, google_storage_bucket_iam_member.service]
}

# --- Deepgram worker: push target for asr-deepgram ----------------------------------

resource "google_cloud_run_v2_service" "deepgram_worker" {
  name                = local.service_names.deepgram_worker
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    service_account                  = google_service_account.service["deepgram_worker"].email
    timeout                          = "${local.ack_deadline_s.deepgram_worker}s"
    max_instance_request_concurrency = var.deepgram_worker_concurrency

    scaling {
      min_instance_count = 0
      max_instance_count = local.deepgram_max_instances
    }

    containers {
      image = local.images.deepgram_worker
      resources {
        limits = {
          cpu    = "1"
          memory = "1Gi"
        }
        cpu_idle = true
      }
      dynamic "env" {
        for_each = local.env.deepgram_worker
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = local.secret_env.deepgram_worker
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secrets[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.deepgram_max_instances >= 1 && local.deepgram_max_instances * var.deepgram_worker_concurrency <= var.deepgram_concurrency_limit
      error_message = "Deepgram worker instances x concurrency must stay within deepgram_concurrency_limit."
    }
  }

  depends_on = [google_project_service.apis, google_secret_manager_secret_iam_member.service]
}

# --- Merger: push target for asr-results and the dead-letter topic ------------------

resource "google_cloud_run_v2_service" "merger" {
  name                = local.service_names.merger
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    service_account                  = google_service_account.service["merger"].email
    timeout                          = "${local.ack_deadline_s.merger}s"
    max_instance_request_concurrency = var.merger_concurrency

    scaling {
      min_instance_count = 0
      max_instance_count = var.merger_max_instances
    }

    containers {
      image = local.images.merger
      resources {
        limits = {
          cpu    = "1"
          memory = "2Gi"
        }
        cpu_idle = true
      }
      dynamic "env" {
        for_each = local.env.merger
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = local.secret_env.merger
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secrets[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [google_project_service.apis, google_secret_manager_secret_iam_member.service]
}

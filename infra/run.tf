# Cloud Run: the GPU ASR worker (pull); the Deepgram worker and the merger (push targets) and the API.

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

# --- The HTTP services: the Deepgram worker, the merger and the API ---------------------
# One shape, differing only in the values below; each scales from zero on requests and is
# CPU-throttled between them. (The ASR and ingest workers pull, so they are always on.)

locals {
  http_services = {
    # Push target for asr-deepgram. Instances x concurrency stays within Deepgram's per-project limit.
    deepgram_worker = {
      public        = false
      cpu           = "1"
      memory        = "1Gi"
      concurrency   = var.deepgram_worker_concurrency
      max_instances = local.deepgram_max_instances
      timeout_s     = local.ack_deadline_s.deepgram_worker
    }
    # Push target for asr-results and the dead-letter topic; Cloud Scheduler calls its /sweep.
    merger = {
      public        = false
      cpu           = "1"
      memory        = "2Gi"
      concurrency   = var.merger_concurrency
      max_instances = var.merger_max_instances
      timeout_s     = local.ack_deadline_s.merger
    }
    # The public API is reached from the internet with API keys, not Google identities, so the
    # Cloud Run invoker check is off (invoker_iam_disabled; no allUsers grant, which domain-restricted
    # sharing would refuse) and the Authorization header reaches the app, which checks it against
    # API_KEY_HASHES.
    api = {
      public        = true
      cpu           = "1"
      memory        = "512Mi"
      concurrency   = var.api_concurrency
      max_instances = var.api_max_instances
      timeout_s     = 60
    }
  }
}

resource "google_cloud_run_v2_service" "http" {
  for_each = local.http_services

  name                 = local.service_names[each.key]
  location             = var.region
  ingress              = each.value.public ? "INGRESS_TRAFFIC_ALL" : "INGRESS_TRAFFIC_INTERNAL_ONLY"
  invoker_iam_disabled = each.value.public ? true : null
  deletion_protection  = var.deletion_protection
  labels               = var.labels

  template {
    service_account                  = google_service_account.service[each.key].email
    timeout                          = "${each.value.timeout_s}s"
    max_instance_request_concurrency = each.value.concurrency

    scaling {
      min_instance_count = 0
      max_instance_count = each.value.max_instances
    }

    containers {
      image = local.images[each.key]
      resources {
        limits = {
          cpu    = each.value.cpu
          memory = each.value.memory
        }
        cpu_idle = true
      }
      dynamic "env" {
        for_each = local.env[each.key]
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = local.secret_env[each.key]
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
      condition     = each.key != "deepgram_worker" || (local.deepgram_max_instances >= 1 && local.deepgram_max_instances * var.deepgram_worker_concurrency <= var.deepgram_concurrency_limit)
      error_message = "Deepgram worker instances x concurrency must stay within deepgram_concurrency_limit."
    }
  }

  depends_on = [google_project_service.apis, google_secret_manager_secret_iam_member.service]
}

# Each service was once its own resource: keep their state, so applying this creates nothing anew.
moved {
  from = google_cloud_run_v2_service.deepgram_worker
  to   = google_cloud_run_v2_service.http["deepgram_worker"]
}

moved {
  from = google_cloud_run_v2_service.merger
  to   = google_cloud_run_v2_service.http["merger"]
}

moved {
  from = google_cloud_run_v2_service.api
  to   = google_cloud_run_v2_service.http["api"]
}

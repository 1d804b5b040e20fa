# The URL ingest worker: pulls ingest-pull, streams audio into uploads. The API that feeds it is in run.tf.
#
# A streaming pull needs a running instance with CPU between requests: min instances and no CPU
# throttling. It is a service rather than a worker pool because it is CPU-only (worker pools are
# used for the GPU worker, whose launch stage is still set apart) and it answers GET /healthz on
# $PORT, which Cloud Run probes. Internal ingress and no invoker: nothing calls it.

resource "google_cloud_run_v2_service" "ingest_worker" {
  name                = local.service_names.ingest_worker
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    service_account = google_service_account.service["ingest_worker"].email
    timeout         = "${local.ack_deadline_s.ingest_worker}s"

    scaling {
      min_instance_count = var.ingest_worker_instances
      max_instance_count = max(var.ingest_worker_instances, var.ingest_worker_max_instances)
    }

    containers {
      image = local.images.ingest_worker
      resources {
        limits = {
          cpu    = "2"
          memory = "4Gi"
        }
        cpu_idle          = false
        startup_cpu_boost = true
      }
      dynamic "env" {
        for_each = local.env.ingest_worker
        content {
          name  = env.key
          value = env.value
        }
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [google_project_service.apis, google_storage_bucket_iam_member.service,
  google_pubsub_subscription_iam_member.pulls]
}
